//! Normalisation of identifiers as Chinese exports write them: phone numbers with and
//! without country code or trunk prefix, separators, full-width digits; landlines and
//! malformed values refused with their reason; e-mail addresses; the tally.

use proptest::prelude::*;

use super::*;

const MOBILE: &str = "+8613800138000";

#[test]
fn chinese_mobile_formats_normalise_to_e164() {
    for raw in [
        "13800138000",
        "138 0013 8000",
        "138-0013-8000",
        "138.0013.8000",
        "(138) 0013 8000",
        "  13800138000\t",
        "+86-138-0013-8000",
        "+86 138 0013 8000",
        "(+86) 138 0013 8000",
        "+86 (0)138 0013 8000",
        "008613800138000",
        "0086 138 0013 8000",
        "8613800138000",
        "86 138 0013 8000",
        "013800138000",
        "0138-0013-8000",
        "１３８００１３８０００",
        "＋８６　１３８－００１３－８０００",
        "（１３８）００１３ ８０００",
        "138\u{2014}0013\u{2014}8000",
    ] {
        assert_eq!(normalise(MatchOn::Phone, raw).as_deref(), Ok(MOBILE), "{raw:?}");
    }
    // Every mobile prefix 13x–19x.
    for second in 3..=9 {
        let raw = format!("1{second}900001111");
        assert_eq!(normalise(MatchOn::Phone, &raw), Ok(format!("+86{raw}")));
    }
}

/// The styles `fedcrm demo-data` writes its channels' phones in (src/demodata/model.rs,
/// `format_phone`): the same person must match across channels.
#[test]
fn the_demo_datas_phone_styles_meet() {
    for raw in
        ["13812345678", "138 1234 5678", "138-1234-5678", "+86 138-1234-5678", "+8613812345678", "86 13812345678"]
    {
        assert_eq!(normalise(MatchOn::Phone, raw).as_deref(), Ok("+8613812345678"), "{raw:?}");
    }
    assert_eq!(normalise(MatchOn::Phone, ""), Err(BadIdentifier::Empty));
}

#[test]
fn other_countries_are_kept_in_e164() {
    for (raw, e164) in [
        ("+44 20 7946 0958", "+442079460958"),
        ("0044 20 7946 0958", "+442079460958"),
        ("+1 (415) 555-2671", "+14155552671"),
        ("+852 9123 4567", "+85291234567"),
        ("+886 912 345 678", "+886912345678"),
    ] {
        assert_eq!(normalise(MatchOn::Phone, raw).as_deref(), Ok(e164), "{raw:?}");
    }
}

#[test]
fn bad_phone_numbers_are_refused_with_their_reason() {
    use BadIdentifier::*;
    for (raw, reason) in [
        ("", Empty),
        ("   ", Empty),
        ("010-12345678", PhoneLandline),
        ("(010) 6123 4567", PhoneLandline),
        ("021 6234 5678", PhoneLandline),
        ("0755-8888888", PhoneLandline),
        ("+86 10 1234 5678", PhoneLandline),
        ("0086 21 6234 5678", PhoneLandline),
        ("62345678", PhoneLandline),
        ("12345", PhoneTooShort),
        ("1380013800", PhoneTooShort),
        ("138 0013 800", PhoneTooShort),
        ("138001380001", PhoneTooLong),
        ("+86 138 0013 80001", PhoneTooLong),
        ("12012345678", PhoneNotMobile),
        ("11800138000", PhoneNotMobile),
        ("+86 120 1234 5678", PhoneNotMobile),
        ("138abc38000", PhoneCharacters),
        ("tel:13800138000", PhoneCharacters),
        ("138 0013 8000 ext 12", PhoneCharacters),
        ("138 0013 8000 转 12", PhoneCharacters),
        ("++8613800138000", PhoneCharacters),
        ("138+00138000", PhoneCharacters),
        ("13800138000/13900139000", PhoneCharacters),
        ("+", PhoneTooShort),
        ("+0 123 456 789", PhoneCountryCode),
        ("+44 20", PhoneTooShort),
        ("+1234 5678 9012 3456", PhoneTooLong),
    ] {
        assert_eq!(normalise(MatchOn::Phone, raw), Err(reason), "{raw:?}");
    }
}

#[test]
fn emails_are_trimmed_and_lower_cased() {
    for (raw, want) in [
        ("alice.wang@example.com", "alice.wang@example.com"),
        ("  Alice.Wang@Example.COM \t", "alice.wang@example.com"),
        ("\u{3000}LI.NA@QQ.COM\u{3000}", "li.na@qq.com"),
        ("ＡＬＩＣＥ＠ｅｘａｍｐｌｅ．ｃｏｍ", "alice@example.com"),
        ("Zhang+VIP@mail.163.com", "zhang+vip@mail.163.com"),
    ] {
        assert_eq!(normalise(MatchOn::Email, raw).as_deref(), Ok(want), "{raw:?}");
    }
    use BadIdentifier::*;
    for (raw, reason) in [
        ("", Empty),
        ("  ", Empty),
        ("alice", EmailNoAt),
        ("alice.example.com", EmailNoAt),
        ("a@b@example.com", EmailManyAt),
        ("@example.com", EmailEmptyLocal),
        ("alice@localhost", EmailDomain),
        ("alice@", EmailDomain),
        ("alice@.com", EmailDomain),
        ("alice@example.", EmailDomain),
        ("alice wang@example.com", EmailCharacters),
        ("alice@exa\u{7}mple.com", EmailCharacters),
    ] {
        assert_eq!(normalise(MatchOn::Email, raw), Err(reason), "{raw:?}");
    }
}

#[test]
fn the_tally_counts_what_was_left_out_and_why() {
    let raw = [
        "138 0013 8000",
        "+86-138-0013-8000", // the same customer's number, written differently
        "13900139000",
        "",
        "   ",
        "010-12345678",
        "021 6234 5678",
        "12345",
        "１５０００００１１１１",
    ];
    let n = Normalised::new(MatchOn::Phone, raw);
    assert_eq!(n.ids, ["+8613800138000", "+8613900139000", "+8615000001111"]);
    assert_eq!(n.empty, 2);
    assert_eq!(n.duplicates, 1);
    assert_eq!(n.bad, BTreeMap::from([(BadIdentifier::PhoneTooShort, 1), (BadIdentifier::PhoneLandline, 2)]));
    assert_eq!(n.bad_total(), 3);
    assert_eq!(n.ids.len() as u64 + n.duplicates + n.empty + n.bad_total(), raw.len() as u64);

    let printed = format!("{n:?}");
    assert!(printed.contains("3 identifiers") && !printed.contains("138"), "{printed}");

    let emails = Normalised::new(MatchOn::Email, vec!["B@x.cn".to_string(), "a@x.cn".into(), " b@X.CN".into()]);
    assert_eq!(emails.ids, ["a@x.cn", "b@x.cn"]);
    assert_eq!(emails.duplicates, 1);
}

#[test]
fn reasons_name_no_value_and_read_in_lower_case() {
    for raw in ["010-12345678", "138abc", "12345"] {
        let e = normalise(MatchOn::Phone, raw).unwrap_err().to_string();
        assert!(!e.contains(raw) && e.chars().next().unwrap().is_lowercase(), "{e}");
    }
    assert_eq!(serde_json::to_string(&BadIdentifier::PhoneLandline).unwrap(), "\"phone_landline\"");
    assert_eq!(
        toml::from_str::<std::collections::HashMap<String, MatchOn>>("on = \"phone\"").unwrap()["on"],
        MatchOn::Phone
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Never panics; what it accepts is E.164 and normalises to itself.
    #[test]
    fn phone_normalisation_is_e164_and_idempotent(raw in "[0-9０-９ +()\\-.a]{0,24}") {
        if let Ok(e164) = normalise(MatchOn::Phone, &raw) {
            let digits = &e164[1..];
            prop_assert!(e164.starts_with('+') && !digits.starts_with('0'), "{}", e164);
            prop_assert!((8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()), "{}", e164);
            prop_assert_eq!(normalise(MatchOn::Phone, &e164), Ok(e164.clone()));
        }
    }

    #[test]
    fn email_normalisation_is_idempotent(raw in "\\PC{0,30}") {
        if let Ok(e) = normalise(MatchOn::Email, &raw) {
            prop_assert_eq!(e.matches('@').count(), 1);
            prop_assert_eq!(normalise(MatchOn::Email, &e), Ok(e.clone()));
        }
    }
}

fn purchase(customer: &str, day: u8, phone: Option<&str>) -> crate::data::Purchase {
    crate::data::Purchase {
        customer: customer.into(),
        day: time::Date::from_calendar_date(2024, time::Month::March, day).unwrap(),
        amount_cents: 100,
        quantity: 1,
        channel: None,
        category: None,
        phone: phone.map(|p| crate::data::Contact::new(p.into())),
        email: None,
        birthday: None,
        anniversary: None,
    }
}

#[test]
fn one_identifier_per_customer_from_its_latest_row_that_has_one() {
    let rows = [
        // A changed number: the later row's counts (whatever the file order).
        purchase("c1", 5, Some("139 0000 0001")),
        purchase("c1", 2, Some("139 0000 0009")),
        // The latest row has none: the one before it does.
        purchase("c2", 1, Some("+86 139 0000 0002")),
        purchase("c2", 9, None),
        // Never a number.
        purchase("c3", 3, None),
        // A landline: left out, by reason.
        purchase("c4", 3, Some("0571-8888 8888")),
        // A mistyped later value does not hide an earlier good one.
        purchase("c7", 2, Some("139 0000 0007")),
        purchase("c7", 8, Some("139 0000 00")),
        // A family phone: two customers, one identifier.
        purchase("c5", 3, Some("13900000005")),
        purchase("c6", 4, Some("0086 139 0000 0005")),
    ];
    let ids = customer_identifiers(&rows, MatchOn::Phone);
    assert_eq!(ids.ids, vec!["+8613900000001", "+8613900000002", "+8613900000005", "+8613900000007"]);
    assert_eq!((ids.empty, ids.duplicates), (1, 1));
    assert_eq!(ids.bad.iter().map(|(r, n)| (*r, *n)).collect::<Vec<_>>(), vec![(BadIdentifier::PhoneLandline, 1)]);
    // On the customer key, every customer is one identifier.
    let keys = customer_identifiers(&rows, MatchOn::CustomerKey);
    assert_eq!(keys.ids, vec!["c1", "c2", "c3", "c4", "c5", "c6", "c7"]);
    assert_eq!((keys.empty, keys.duplicates, keys.bad_total()), (0, 0, 0));
    // No e-mail column: every customer is without one, none is an error.
    let mail = customer_identifiers(&rows, MatchOn::Email);
    assert_eq!((mail.ids.len(), mail.empty), (0, 7));
}
