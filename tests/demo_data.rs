//! The synthetic jewellery dataset (`fedcrm demo-data`, src/demodata.rs): the committed
//! sample in tests/data/jewellery/ is exactly what the documented command writes, every
//! node's file loads with the node's own loader, and the properties the churn and PSI
//! work rely on hold.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use fedcrm::demodata::{self, HQ, Manifest, Options, OrgKind};
use fedcrm_node::data::{DataConfig, Dataset, Format};
use time::macros::date;

/// `fedcrm demo-data --seed 11 --customers 3000 --out tests/data/jewellery`
const SEED: u64 = 11;
const CUSTOMERS: usize = 3000;

fn sample_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/jewellery")
}

fn sample_options() -> Options {
    Options { customers: CUSTOMERS, ..Options::new(SEED) }
}

fn manifest() -> Manifest {
    demodata::generate(&sample_options()).unwrap().manifest
}

fn files_under(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out
}

#[test]
fn the_committed_sample_is_what_the_documented_command_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let g = demodata::write(&sample_options(), tmp.path()).unwrap();
    let committed = sample_dir();
    assert_eq!(
        files_under(tmp.path()),
        files_under(&committed),
        "regenerate with: cargo run -- demo-data --seed {SEED} --customers {CUSTOMERS} --out tests/data/jewellery"
    );
    for (rel, bytes) in &g.files {
        let on_disk = std::fs::read(committed.join(rel)).unwrap();
        assert!(
            on_disk == *bytes,
            "{} differs from the generator's output; regenerate with: cargo run -- demo-data --seed {SEED} --customers {CUSTOMERS} --out tests/data/jewellery",
            rel.display()
        );
    }
    let size: u64 = g.files.iter().map(|(_, b)| b.len() as u64).sum();
    assert!(size < 1_600_000, "the committed sample stays small: {size} bytes");
    // Another seed is other data.
    let other = demodata::generate(&Options { seed: SEED + 1, ..sample_options() }).unwrap();
    assert_ne!(other.files[0].1, g.files[0].1);
}

/// Every node's purchases and consent file, through the node's loader.
fn load_all(m: &Manifest) -> Vec<(String, Dataset)> {
    m.nodes
        .iter()
        .map(|n| {
            let mut cfg = DataConfig::new(Format::Csv, sample_dir().join(&n.purchases));
            cfg.consent_withdrawals = Some(sample_dir().join(&n.consent_withdrawals));
            (n.name.clone(), cfg.load().unwrap())
        })
        .collect()
}

#[test]
fn every_node_loads_with_the_node_loader_without_a_skipped_row() {
    let m = manifest();
    for ((name, ds), n) in load_all(&m).iter().zip(&m.nodes) {
        assert_eq!(ds.report.skipped, 0, "{name}");
        assert_eq!(ds.report.rows, n.rows, "{name}");
        assert!(ds.consent.distinct > 0 && ds.consent.distinct == n.withdrawals, "{name}: consent file");
        assert_eq!(ds.consent.unmatched, 0, "{name}: every withdrawal is a customer of the node");
        assert_eq!(ds.withdrawn_customers, n.withdrawals, "{name}");
        assert_eq!(ds.customers + ds.withdrawn_customers, n.customers, "{name}");
        // About 1.5 % of the node's customers withdrew (at least one).
        assert!(n.withdrawals as f64 <= 0.04 * n.customers as f64 + 1.0, "{name}: {} withdrawals", n.withdrawals);
    }
}

#[test]
fn the_brand_has_hq_channels_and_at_least_four_franchisee_organisations() {
    let m = manifest();
    let orgs: BTreeSet<&str> =
        m.nodes.iter().filter(|n| n.kind == OrgKind::Franchisee).map(|n| n.organisation.as_str()).collect();
    assert!(orgs.len() >= 4 && !orgs.contains(HQ), "{orgs:?}");
    let hq: BTreeSet<&str> = m.nodes.iter().filter(|n| n.kind == OrgKind::Hq).map(|n| n.channel_type.label()).collect();
    assert_eq!(hq, BTreeSet::from(["marketplace", "mini-program", "own-store"]));
    assert!(m.nodes.iter().all(|n| n.name.is_ascii() && n.rows > 0));
}

#[test]
fn rows_look_like_jewellery_sales_in_shanghai_time() {
    let m = manifest();
    let mut categories = BTreeSet::new();
    let (mut customers, mut with_birthday, mut with_anniversary) = (0u64, 0u64, 0u64);
    for n in &m.nodes {
        let mut rdr = csv::Reader::from_path(sample_dir().join(&n.purchases)).unwrap();
        assert_eq!(rdr.headers().unwrap().iter().collect::<Vec<_>>(), demodata::HEADER);
        for r in rdr.records() {
            let r = r.unwrap();
            let ts = &r[3];
            assert!(ts.len() == 25 && ts.ends_with("+08:00"), "{ts}");
            let hour: u32 = ts[11..13].parse().unwrap();
            if !n.channel_type.online() {
                assert!((10..22).contains(&hour), "{}: a store sale at {ts}", n.name);
            }
            let (_, cents) = r[4].split_once('.').unwrap();
            assert_eq!(cents.len(), 2, "{}", &r[4]);
            categories.insert(r[5].to_string());
        }
        customers += n.customers;
        with_birthday += n.with_birthday;
        with_anniversary += n.with_anniversary;
    }
    assert_eq!(categories, BTreeSet::from(["diamond", "gold", "jade", "platinum"].map(String::from)));
    assert!(with_birthday * 10 > customers * 6, "{with_birthday} of {customers} with a birthday");
    assert!(with_anniversary * 10 > customers * 2, "{with_anniversary} of {customers} with an anniversary");
}

/// Digits of a mainland mobile number however the channel wrote it.
fn normalise(phone: &str) -> Option<String> {
    let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
    let d = digits.strip_prefix("86").filter(|d| d.len() == 11).unwrap_or(&digits);
    let b = d.as_bytes();
    (b.len() == 11 && b[0] == b'1' && (b'3'..=b'9').contains(&b[1])).then(|| d.to_string())
}

#[test]
fn online_offline_overlap_is_under_a_fifth_by_the_manifest_and_by_phone() {
    let m = manifest();
    let o = &m.online_offline_overlap;
    assert!(o.both > 0 && o.share_of_buyers < 0.2, "{o:?}");
    // The same figure as the PSI step would see it: people linked by phone number only.
    let mut online = BTreeSet::new();
    let mut offline = BTreeSet::new();
    let mut styles = BTreeSet::new();
    for ((_, ds), n) in load_all(&m).iter().zip(&m.nodes) {
        let mut rdr = csv::Reader::from_path(sample_dir().join(&n.purchases)).unwrap();
        for r in rdr.records() {
            let r = r.unwrap();
            styles.insert(r[1].chars().map(|c| if c.is_ascii_digit() { '9' } else { c }).collect::<String>());
            assert!(r[1].is_empty() || normalise(&r[1]).is_some(), "{}: not a mainland mobile number", n.name);
            if let Some(p) = normalise(&r[1]) {
                if n.channel_type.online() { &mut online } else { &mut offline }.insert(p);
            }
        }
        assert!(ds.customers > 0);
    }
    let both = online.intersection(&offline).count() as f64;
    let all = online.union(&offline).count() as f64;
    assert!(both / all < 0.2 && both > 0.0, "by phone: {both} of {all}");
    assert!(styles.len() >= 5, "phone numbers come in several formats: {styles:?}");
}

#[test]
fn churn_is_learnable_low_frequency_customers_leave_more() {
    // Label as the churn issue does: active before the last nine months of the period,
    // and no purchase in them. Compared between one-time and frequent (≥ 3) buyers, per
    // node key as a node would see its own customers.
    let cutoff = date!(2025 - 04 - 01);
    let m = manifest();
    let mut by_frequency: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut by_anniversary: BTreeMap<bool, (u64, u64)> = BTreeMap::new();
    for (_, ds) in load_all(&m) {
        let mut customers: BTreeMap<&str, (u32, bool, bool)> = BTreeMap::new();
        for p in &ds.purchases {
            let c = customers.entry(p.customer.as_str()).or_default();
            if p.day < cutoff {
                c.0 += 1;
            } else {
                c.1 = true;
            }
            c.2 |= p.anniversary.is_some();
        }
        for (before, after, anniversary) in customers.into_values() {
            if before == 0 {
                continue;
            }
            let group = match before {
                1 => "once",
                2 => "twice",
                _ => "three or more",
            };
            let churned = u64::from(!after);
            let e = by_frequency.entry(group).or_default();
            *e = (e.0 + churned, e.1 + 1);
            let e = by_anniversary.entry(anniversary).or_default();
            *e = (e.0 + churned, e.1 + 1);
        }
    }
    let rate = |(churned, of): (u64, u64)| churned as f64 / of as f64;
    let (once, often) = (rate(by_frequency["once"]), rate(by_frequency["three or more"]));
    println!("churn by frequency: {by_frequency:?}; by anniversary: {by_anniversary:?}");
    assert!(by_frequency["three or more"].1 >= 50, "enough frequent buyers: {by_frequency:?}");
    assert!(once - often >= 0.2, "one-time buyers churn {once:.3}, frequent ones {often:.3}");
    let (without, with) = (rate(by_anniversary[&false]), rate(by_anniversary[&true]));
    assert!(without - with >= 0.03, "anniversary on record: {with:.3} vs {without:.3}");
}

#[test]
fn a_period_that_ends_before_it_starts_is_refused() {
    let opts = Options { start: date!(2025 - 01 - 01), end: date!(2024 - 12 - 31), ..sample_options() };
    let err = demodata::generate(&opts).unwrap_err().to_string();
    assert!(err.contains("--end 2024-12-31 is not after --start 2025-01-01"), "{err}");
    assert!(demodata::parse_day("2024-02-30").is_err() && demodata::parse_day("2024-2-3").is_err());
}
