//! Identifier normalisation for matching customers across channels (issue 12): phone
//! numbers to E.164 with China (+86) as the default region, e-mail addresses trimmed and
//! lower-cased, and a tally of the values that could not be normalised, by reason, so
//! that `node check` can show them rather than drop them silently.
//!
//! Pure: no I/O. Never logs, hashes or sends an identifier, and no error message or
//! `Debug` output here contains one (they name the reason only).
//!
//! Spec: ITU-T E.164 (a `+`, a country code not starting with 0, at most 15 digits in
//! all); China's numbering plan as dialled in exports (MIIT): mainland mobiles are 11
//! digits `1[3-9]xxxxxxxxx`, `0` is the trunk prefix (landlines are `0` + a 2–3 digit
//! area code, such as Beijing's `010`, + 7–8 digits), `00` the international prefix.
//! Only mainland mobiles are kept under +86: landlines are shared by households and
//! offices, not a customer's. E-mail: the shape of RFC 5321 §4.1.2's `Mailbox` (one `@`,
//! a non-empty local part, a dotted domain), lower-cased whole — local parts are
//! case-sensitive in principle, never in the mail systems customers use.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

/// Which identifier a node matches its customers on (set in node.toml).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchOn {
    /// A mobile number, normalised to E.164 (`+8613800138000`).
    #[default]
    Phone,
    /// An e-mail address, trimmed and lower-cased.
    Email,
    /// The customer key itself, trimmed: for a brand whose channels share one
    /// membership number (and for CDNOW, whose customer ids are global).
    CustomerKey,
}

impl MatchOn {
    /// `phone`, `email` or `customer_key`, as node.toml writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            MatchOn::Phone => "phone",
            MatchOn::Email => "email",
            MatchOn::CustomerKey => "customer_key",
        }
    }
}

/// Why a value is not a usable identifier. Never carries the value itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum BadIdentifier {
    #[error("empty value")]
    Empty,
    #[error("phone number: a character other than digits, spaces, dashes, dots, parentheses or a leading +")]
    PhoneCharacters,
    #[error("phone number: too few digits")]
    PhoneTooShort,
    #[error("phone number: too many digits")]
    PhoneTooLong,
    #[error("phone number: a mainland landline (area code), not a mobile")]
    PhoneLandline,
    #[error("phone number: 11 digits but not a mainland mobile (1[3-9]…)")]
    PhoneNotMobile,
    #[error("phone number: an international number whose country code starts with 0")]
    PhoneCountryCode,
    #[error("e-mail address: no @")]
    EmailNoAt,
    #[error("e-mail address: more than one @")]
    EmailManyAt,
    #[error("e-mail address: empty local part")]
    EmailEmptyLocal,
    #[error("e-mail address: the domain has no dot, or starts or ends with one")]
    EmailDomain,
    #[error("e-mail address: contains a space or a control character")]
    EmailCharacters,
}

/// The normalised identifier for matching, or why there is none.
pub fn normalise(on: MatchOn, raw: &str) -> Result<String, BadIdentifier> {
    match on {
        MatchOn::Phone => phone(raw),
        MatchOn::Email => email(raw),
        MatchOn::CustomerKey => match raw.trim() {
            "" => Err(BadIdentifier::Empty),
            key => Ok(key.to_string()),
        },
    }
}

/// Each customer's identifier for matching on `on`, normalised: one per customer —
/// the usable value on the customer's latest purchase that has one (ties: the later row
/// in the file), so a customer who changed numbers counts once, under the number the
/// node last saw, and a later mistyped value does not hide an earlier good one.
/// Customers with no value are counted as `empty`; customers with values but none
/// usable by the reason of the latest in `bad`; two customers with one identifier (a
/// shared family phone) as `duplicates`, and the list holds it once.
pub fn customer_identifiers(purchases: &[crate::data::Purchase], on: MatchOn) -> Normalised {
    Normalised::new(on, chosen_values(purchases, on).into_values())
}

/// Issue 12, segment profile: this node's identifiers in groups, `groups[s]` those of
/// customers in segment `s` (an index into `fedcrm_analysis::rfm::Segment::ALL`) —
/// each customer's identifier as [`customer_identifiers`] picks it, normalised; an
/// identifier two customers share goes to the group of the first of them by customer
/// key; customers without a segment (no purchase by the reference date) and without a
/// usable identifier are left out. Zeroized on drop.
pub fn identifiers_by_segment(
    purchases: &[crate::data::Purchase],
    on: MatchOn,
    segment_of: &std::collections::BTreeMap<String, usize>,
    groups: usize,
) -> Grouped {
    let mut out = Grouped { groups: vec![Vec::new(); groups] };
    let mut seen = std::collections::HashSet::new();
    for (customer, value) in chosen_values(purchases, on) {
        let Some(&g) = segment_of.get(customer).filter(|&&g| g < groups) else { continue };
        if let Ok(id) = normalise(on, value)
            && seen.insert(id.clone())
        {
            out.groups[g].push(id);
        }
    }
    for id in seen.into_iter() {
        let mut id = id;
        id.zeroize();
    }
    out
}

/// Identifiers in groups ([`identifiers_by_segment`]); `Debug` prints the group sizes
/// only; zeroized on drop.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Grouped {
    pub groups: Vec<Vec<String>>,
}

impl std::fmt::Debug for Grouped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sizes: Vec<usize> = self.groups.iter().map(Vec::len).collect();
        write!(f, "Grouped({sizes:?})")
    }
}

impl Drop for Grouped {
    fn drop(&mut self) {
        self.groups.iter_mut().for_each(|g| g.zeroize());
    }
}

/// Per customer (in key order), the raw value [`customer_identifiers`] matches on: the
/// usable value of its latest purchase that has one, else its latest value ("" when it
/// has none).
fn chosen_values(purchases: &[crate::data::Purchase], on: MatchOn) -> std::collections::BTreeMap<&str, &str> {
    #[derive(Default)]
    struct Seen<'a> {
        usable: Option<(time::Date, &'a str)>,
        any: Option<(time::Date, &'a str)>,
    }
    let later = |held: Option<(time::Date, &str)>, day: time::Date| held.is_none_or(|(d, _)| day >= d);
    let mut by: std::collections::BTreeMap<&str, Seen<'_>> = Default::default();
    for p in purchases {
        let seen = by.entry(p.customer.as_str()).or_default();
        let value = match on {
            MatchOn::Phone => p.phone.as_ref().map(crate::data::Contact::expose),
            MatchOn::Email => p.email.as_ref().map(crate::data::Contact::expose),
            MatchOn::CustomerKey => Some(p.customer.as_str()),
        };
        let Some(v) = value.filter(|v| !v.trim().is_empty()) else { continue };
        if later(seen.any, p.day) {
            seen.any = Some((p.day, v));
        }
        if later(seen.usable, p.day) && normalise(on, v).is_ok() {
            seen.usable = Some((p.day, v));
        }
    }
    by.into_iter().map(|(c, s)| (c, s.usable.or(s.any).map_or("", |(_, v)| v))).collect()
}

/// Full-width forms (U+FF01..U+FF5E, as Chinese input methods type them) to their ASCII
/// counterparts (the fixed offset 0xFEE0), and the ideographic space (U+3000) and the
/// no-break space to a space. Everything else is kept.
fn half_width(c: char) -> char {
    match c {
        '\u{ff01}'..='\u{ff5e}' => char::from_u32(c as u32 - 0xfee0).unwrap_or(c),
        '\u{3000}' | '\u{a0}' => ' ',
        _ => c,
    }
}

fn is_mainland_mobile(d: &str) -> bool {
    let b = d.as_bytes();
    b.len() == 11 && b[0] == b'1' && (b'3'..=b'9').contains(&b[1])
}

/// A phone number in E.164. Accepts, after removing separators: `+86`/`0086`/`86` + a
/// mainland mobile, a trunk `0` + a mainland mobile, a bare mainland mobile, and `+` or
/// `00` + another country's number of 8–15 digits (kept as `+` and its digits).
fn phone(raw: &str) -> Result<String, BadIdentifier> {
    let mut digits = String::with_capacity(raw.len());
    let mut plus = false;
    for c in raw.chars().map(half_width) {
        match c {
            '0'..='9' => digits.push(c),
            // Separators as exports write them; dashes include U+2010..U+2015 and U+2212.
            ' ' | '\t' | '-' | '(' | ')' | '.' | '\u{2010}'..='\u{2015}' | '\u{2212}' => {}
            '+' if !plus && digits.is_empty() => plus = true,
            _ => return Err(BadIdentifier::PhoneCharacters),
        }
    }
    if digits.is_empty() {
        return Err(if plus { BadIdentifier::PhoneTooShort } else { BadIdentifier::Empty });
    }
    if plus {
        return match digits.strip_prefix("86") {
            Some(national) => mainland(national, true),
            None => international(&digits),
        };
    }
    if let Some(national) = digits.strip_prefix("0086") {
        mainland(national, true)
    } else if let Some(rest) = digits.strip_prefix("00") {
        international(rest)
    } else if let Some(national) = digits.strip_prefix("86").filter(|n| is_mainland_mobile(n)) {
        mainland(national, true)
    } else if let Some(national) = digits.strip_prefix('0') {
        mainland(national, true)
    } else {
        mainland(&digits, false)
    }
}

/// A mainland number after its country code or trunk prefix (`prefixed`), or as written.
fn mainland(national: &str, prefixed: bool) -> Result<String, BadIdentifier> {
    if is_mainland_mobile(national) {
        return Ok(format!("+86{national}"));
    }
    // `+86 0138…`: a trunk 0 kept after the country code.
    if prefixed && let Some(m) = national.strip_prefix('0').filter(|m| is_mainland_mobile(m)) {
        return Ok(format!("+86{m}"));
    }
    let len = national.len();
    let length = |short: usize, long: usize| {
        if len < short {
            BadIdentifier::PhoneTooShort
        } else if len > long {
            BadIdentifier::PhoneTooLong
        } else {
            BadIdentifier::PhoneLandline
        }
    };
    Err(if prefixed && (!national.starts_with('1') || national.starts_with("10")) {
        // An area code (Beijing's is 10) and a 7–8 digit number: 9–11 digits.
        length(9, 11)
    } else if national.starts_with('1') {
        match len {
            ..11 => BadIdentifier::PhoneTooShort,
            11 => BadIdentifier::PhoneNotMobile,
            _ => BadIdentifier::PhoneTooLong,
        }
    } else if !prefixed && len <= 8 {
        // A local number without its area code.
        length(7, 8)
    } else {
        BadIdentifier::PhoneNotMobile
    })
}

/// Another country's number after `+` or `00`: E.164 allows 15 digits in all; fewer
/// than 8 is no country's subscriber number with its code.
fn international(digits: &str) -> Result<String, BadIdentifier> {
    if digits.starts_with('0') {
        Err(BadIdentifier::PhoneCountryCode)
    } else if digits.len() < 8 {
        Err(BadIdentifier::PhoneTooShort)
    } else if digits.len() > 15 {
        Err(BadIdentifier::PhoneTooLong)
    } else {
        Ok(format!("+{digits}"))
    }
}

fn email(raw: &str) -> Result<String, BadIdentifier> {
    let value: String = raw.chars().map(half_width).collect::<String>().trim().to_lowercase();
    if value.is_empty() {
        return Err(BadIdentifier::Empty);
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(BadIdentifier::EmailCharacters);
    }
    let mut parts = value.split('@');
    let (local, domain) = match (parts.next(), parts.next(), parts.next()) {
        (Some(local), Some(domain), None) => (local, domain),
        (_, None, _) => return Err(BadIdentifier::EmailNoAt),
        _ => return Err(BadIdentifier::EmailManyAt),
    };
    if local.is_empty() {
        return Err(BadIdentifier::EmailEmptyLocal);
    }
    if !domain.contains('.') || domain.starts_with('.') || domain.ends_with('.') {
        return Err(BadIdentifier::EmailDomain);
    }
    Ok(value)
}

/// A column of raw values normalised for matching: the distinct identifiers, sorted,
/// and counts of what was left out and why. Its `Debug` prints counts only, it is not
/// serializable (only counts leave this type, for `node check`), and its identifiers
/// are zeroized on drop, like [`crate::data::Contact`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Normalised {
    /// Distinct normalised identifiers, sorted.
    pub ids: Vec<String>,
    /// Values that are not identifiers, by reason (empty values not included).
    pub bad: BTreeMap<BadIdentifier, u64>,
    /// Empty or blank values (a customer without this identifier).
    pub empty: u64,
    /// Values whose normalised identifier another value already gave (e.g. the same
    /// phone written as `138 0013 8000` and `+86-138-0013-8000`).
    pub duplicates: u64,
}

impl std::fmt::Debug for Normalised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Normalised")
            .field("ids", &format_args!("{} identifiers", self.ids.len()))
            .field("bad", &self.bad)
            .field("empty", &self.empty)
            .field("duplicates", &self.duplicates)
            .finish()
    }
}

impl Drop for Normalised {
    fn drop(&mut self) {
        self.ids.zeroize();
    }
}

impl Normalised {
    /// Normalises every value of `raw` for matching on `on`.
    pub fn new<I, S>(on: MatchOn, raw: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut out = Self::default();
        let mut read = 0u64;
        for value in raw {
            read += 1;
            match normalise(on, value.as_ref()) {
                Ok(id) => out.ids.push(id),
                Err(BadIdentifier::Empty) => out.empty += 1,
                Err(reason) => *out.bad.entry(reason).or_default() += 1,
            }
        }
        out.ids.sort_unstable();
        out.ids.dedup();
        out.duplicates = read - out.empty - out.bad_total() - out.ids.len() as u64;
        out
    }

    /// Values that are not identifiers, all reasons together.
    pub fn bad_total(&self) -> u64 {
        self.bad.values().sum()
    }
}

#[cfg(test)]
mod tests;
