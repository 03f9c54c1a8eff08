//! `fedcrm demo-data`: a seeded synthetic jewellery dataset, one purchase file per node
//! in the documented CSV format (with `birthday` and `anniversary`), a
//! consent-withdrawal file per node, and `manifest.json`. Same seed and options, same
//! bytes: one ChaCha20 stream (`seed_from_u64`), drawn in a fixed order; no clock, no
//! hash-map order in any output. (Amounts go through `ln`/`exp` of the platform's
//! libm; a different libm could move a cent in rare rows.)
//!
//! # The brand
//!
//! "Jinyu Jewellery" sells through its own channels — own stores (`hq-stores`), a
//! Tmall-style marketplace shop (`hq-tmall`) and a WeChat mini-program
//! (`hq-miniprogram`), organisation [`HQ`] — and through five franchisees, each an
//! independent company with one or two franchised stores (`fr-hangzhou`, `fr-suzhou`,
//! `fr-chengdu`, `fr-wuhan`, `fr-shenzhen`). Each node is one data file; the `channel`
//! column names the store or shop. See [`brand::NODES`].
//!
//! # The people
//!
//! Each person has one mainland mobile number (unique), a birthday (born 1962–2001), and
//! is married with probability 0.55 (born before 1995) or 0.2, with a wedding date before
//! the period. 85 % share their birthday with the brand and 75 % of the married their
//! anniversary; a channel records what was shared (a marketplace only 40 % of the time).
//! A person has a home channel (weights in [`brand::NODES`]) and some join a second one:
//! an online member also joins an offline channel with probability 0.30 (and the other
//! online shop with 0.10), an offline member an online one with 0.18 (and another store
//! with 0.04). That puts the online/offline overlap — people who bought both online and
//! offline, over everyone who bought — near 10 % (reported in the manifest; the
//! reports say "under 20 %"); many members of a second channel never buy there.
//! Every channel has its own member key, so only the phone number links a person's
//! records; channels write it differently (`13812345678`, `138 1234 5678`,
//! `+86 138-1234-5678`, `+8613812345678`, `86 13812345678`, or not at all in 5 % of
//! store records), so the private-set-intersection step has normalising to do.
//!
//! # Purchases
//!
//! A person becomes a customer on an acquisition day (uniform from a year before the
//! period to 30 days before its end; the acquisition purchase is in the period only if
//! that day is) and buys as a Poisson process of a latent rate `λ` ~ Gamma(1.5, 0.8)
//! purchases a year (mean 1.2), modulated by
//! - the season: ×1.6 in the three weeks before Spring Festival and in the week before
//!   Qixi, ×1.8 in the week up to 520 (20 May), ×1.3 in stores in National Day week,
//!   ×2.5 on the marketplace and ×1.8 in the mini-program for Singles' Day (1–11 November);
//! - occasions: +2× in the three weeks before the person's birthday and +2× before
//!   the wedding anniversary (then 30 % of purchases are diamonds);
//! - decline: in the 270 days before dropout the rate falls linearly to half.
//!
//! 55 % of a multi-channel person's purchases are in the home channel. Categories: a
//! main category (gold 45 %, diamond 22 %, jade 18 %, platinum 15 %); 40 % of people buy
//! only that, the rest buy it 55 % of the time and otherwise draw anew. Prices in CNY:
//! gold by weight (median 8 g, log-normal) at the day's gold price (550 CNY/g in January
//! 2023 rising to 1,150 in October 2025) plus 15–30 CNY/g labour; diamond median 12,000;
//! jade median 4,000 with a wide spread; platinum median 3,500; times a personal spend
//! level (log-normal, σ 0.3), the channel's price level (marketplace 0.9, mini-program
//! 0.95) and the decline below; clamped to 200–500,000. Times are Asia/Shanghai
//! (`+08:00`): stores 10:00–22:00, online any hour, mostly evenings.
//!
//! # What drives churn
//!
//! Each person leaves (buys nothing more, anywhere) after an exponential lifetime from
//! acquisition with hazard, per year, 0.30 times
//!
//! | observable                               | factor |
//! |------------------------------------------|--------|
//! | `λ` < 0.6 (low frequency)                | 1.8    |
//! | 0.6 ≤ `λ` < 1.2                          | 1.2    |
//! | `λ` ≥ 1.2 (high frequency)               | 0.8    |
//! | buys only gold                           | 1.5    |
//! | member of the marketplace only           | 1.6    |
//! | shared a birthday                        | 0.8    |
//! | shared a wedding anniversary             | 0.65   |
//! | member of more than one channel          | 0.8    |
//!
//! and before leaving their spend declines: amounts fall linearly to 60 % and the
//! purchase rate to 50 % over the last 270 days. So recency, frequency, the trend of
//! spend, category mix, channel and the presence of a birthday or an anniversary all
//! carry signal a churn model can learn; a person's `λ` and dropout day are not written
//! anywhere.
//!
//! # Consent
//!
//! In each node, each customer withdrew consent with probability 1.5 % (at least one per
//! node); their rows stay in the purchase export, as in a real POS export, and the
//! node's consent file excludes them.

pub mod brand;
mod model;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::Serialize;
use time::Date;
use time::format_description::well_known::Rfc3339;

pub use brand::{ChannelType, HQ, NODES};
pub use fedcrm_pki::OrgKind;
use model::{Period, Population};

/// Named in the manifest: a change to the model or the format changes this.
pub const GENERATOR: &str = "fedcrm-demo-data/1";

/// The purchase file's header.
pub const HEADER: [&str; 8] =
    ["customer_key", "phone", "channel", "timestamp", "amount", "category", "birthday", "anniversary"];

/// What to generate.
#[derive(Debug, Clone)]
pub struct Options {
    pub seed: u64,
    /// People in the population (those who buy nothing in the period appear nowhere).
    pub customers: usize,
    pub start: Date,
    pub end: Date,
}

impl Options {
    /// 30,000 people, 2023-01-01..2025-12-31.
    pub fn new(seed: u64) -> Self {
        Options {
            seed,
            customers: 30_000,
            start: time::macros::date!(2023 - 01 - 01),
            end: time::macros::date!(2025 - 12 - 31),
        }
    }
}

/// The online/offline overlap, counted over people (which only the generator knows).
#[derive(Debug, Clone, Serialize)]
pub struct Overlap {
    /// People who bought in an online channel.
    pub online: u64,
    /// People who bought in an offline channel.
    pub offline: u64,
    /// People who bought in both.
    pub both: u64,
    /// `both` over everyone who bought.
    pub share_of_buyers: f64,
    /// `both` over the online buyers.
    pub share_of_online: f64,
    /// `both` over the offline buyers.
    pub share_of_offline: f64,
}

/// One node in the manifest.
#[derive(Debug, Clone, Serialize)]
pub struct NodeEntry {
    pub name: String,
    pub organisation: String,
    /// `hq` or `franchisee`.
    #[serde(serialize_with = "org_kind")]
    pub kind: OrgKind,
    pub channel_type: ChannelType,
    /// Values of the `channel` column.
    pub channels: Vec<String>,
    /// Relative to the output directory.
    pub purchases: String,
    pub consent_withdrawals: String,
    pub rows: u64,
    pub customers: u64,
    pub withdrawals: u64,
    /// Customers whose record holds a birthday / an anniversary.
    pub with_birthday: u64,
    pub with_anniversary: u64,
}

fn org_kind<S: serde::Serializer>(k: &OrgKind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(k.as_str())
}

/// `manifest.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub generator: String,
    pub seed: u64,
    /// People in the population.
    pub population: u64,
    /// People with at least one purchase in the period.
    pub buyers: u64,
    pub start: String,
    pub end: String,
    pub timezone: String,
    pub online_offline_overlap: Overlap,
    pub nodes: Vec<NodeEntry>,
}

/// The generated files, in memory: (path relative to the output directory, bytes),
/// in the order they are written.
#[derive(Debug)]
pub struct Generated {
    pub manifest: Manifest,
    pub files: Vec<(PathBuf, Vec<u8>)>,
}

/// A day as `YYYY-MM-DD` (the CLI's `--start` and `--end`).
pub fn parse_day(s: &str) -> Result<Date, String> {
    Date::parse(s, time::macros::format_description!("[year]-[month]-[day]"))
        .map_err(|e| format!("{s:?} is not a date YYYY-MM-DD: {e}"))
}

/// Generate the dataset.
pub fn generate(opts: &Options) -> Result<Generated> {
    if opts.end <= opts.start {
        bail!("--end {} is not after --start {}", opts.end, opts.start);
    }
    if opts.customers == 0 {
        bail!("--customers must be at least 1");
    }
    let mut rng = ChaCha20Rng::seed_from_u64(opts.seed);
    let pop = model::simulate(&mut rng, opts.customers, Period { start: opts.start, end: opts.end });
    let mut files = Vec::new();
    let mut nodes = Vec::new();
    for (i, def) in NODES.iter().enumerate() {
        let (csv, entry_counts) = purchases_csv(&pop, i)?;
        let (consent, withdrawals) = consent_file(&pop, i, &mut rng);
        let purchases = format!("{}/purchases.csv", def.name);
        let consent_path = format!("{}/consent-withdrawals.csv", def.name);
        files.push((PathBuf::from(&purchases), csv));
        files.push((PathBuf::from(&consent_path), consent));
        nodes.push(NodeEntry {
            name: def.name.into(),
            organisation: def.organisation.into(),
            kind: def.kind,
            channel_type: def.channel_type,
            channels: def.channels.iter().map(|c| c.to_string()).collect(),
            purchases,
            consent_withdrawals: consent_path,
            rows: entry_counts.rows,
            customers: entry_counts.customers,
            withdrawals,
            with_birthday: entry_counts.with_birthday,
            with_anniversary: entry_counts.with_anniversary,
        });
    }
    let (buyers, online_offline_overlap) = overlap(&pop);
    let manifest = Manifest {
        generator: GENERATOR.into(),
        seed: opts.seed,
        population: opts.customers as u64,
        buyers,
        start: opts.start.to_string(),
        end: opts.end.to_string(),
        timezone: "Asia/Shanghai (+08:00)".into(),
        online_offline_overlap,
        nodes,
    };
    let mut json = serde_json::to_vec_pretty(&manifest)?;
    json.push(b'\n');
    files.push((PathBuf::from("manifest.json"), json));
    Ok(Generated { manifest, files })
}

/// Generate and write into `out` (created if missing; existing files of the same names
/// are replaced).
pub fn write(opts: &Options, out: &Path) -> Result<Generated> {
    let g = generate(opts)?;
    for (rel, bytes) in &g.files {
        let p = out.join(rel);
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(&p, bytes).with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(g)
}

#[derive(Debug, Default)]
struct Counts {
    rows: u64,
    customers: u64,
    with_birthday: u64,
    with_anniversary: u64,
}

/// Node `node`'s purchase export, rows by time (then key), as its POS would list them.
fn purchases_csv(pop: &Population, node: usize) -> Result<(Vec<u8>, Counts)> {
    let def = &NODES[node];
    let mut rows: Vec<_> = pop.rows.iter().filter(|r| pop.people[r.person].members[r.member].node == node).collect();
    let key = |r: &model::Row| (r.at, pop.people[r.person].members[r.member].key.as_str());
    rows.sort_by(|a, b| key(a).cmp(&key(b)));
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(HEADER)?;
    let mut seen = BTreeSet::new();
    let mut c = Counts::default();
    for r in rows {
        let m = &pop.people[r.person].members[r.member];
        if seen.insert((r.person, r.member)) {
            c.customers += 1;
            c.with_birthday += u64::from(m.birthday.is_some());
            c.with_anniversary += u64::from(m.anniversary.is_some());
        }
        c.rows += 1;
        let date = |d: Option<Date>| d.map(|d| d.to_string()).unwrap_or_default();
        w.write_record([
            m.key.as_str(),
            m.phone.as_str(),
            def.channels[m.store],
            &r.at.format(&Rfc3339)?,
            &format!("{}.{:02}", r.amount_cents / 100, r.amount_cents % 100),
            r.category.label(),
            &date(m.birthday),
            &date(m.anniversary),
        ])?;
    }
    Ok((w.into_inner().context("csv buffer")?, c))
}

/// Node `node`'s consent-withdrawal file (the node's format: one key a line, `#` comments).
fn consent_file(pop: &Population, node: usize, rng: &mut ChaCha20Rng) -> (Vec<u8>, u64) {
    // Customers of this node, in a fixed order: (person, membership).
    let customers: BTreeSet<(usize, usize)> = pop
        .rows
        .iter()
        .filter(|r| pop.people[r.person].members[r.member].node == node)
        .map(|r| (r.person, r.member))
        .collect();
    let mut keys: Vec<&str> = customers
        .iter()
        .filter(|_| rng.random_bool(0.015))
        .map(|&(p, m)| pop.people[p].members[m].key.as_str())
        .collect();
    if keys.is_empty() && !customers.is_empty() {
        let pick = rng.random_range(0..customers.len());
        // Unwrap safety: pick < len.
        let &(p, m) = customers.iter().nth(pick).unwrap();
        keys.push(pop.people[p].members[m].key.as_str());
    }
    let mut text = String::from("# Customers who withdrew consent (PIPL Art. 15): one member key per line.\n");
    for k in &keys {
        text.push_str(k);
        text.push('\n');
    }
    (text.into_bytes(), keys.len() as u64)
}

/// People who bought online, offline and both.
fn overlap(pop: &Population) -> (u64, Overlap) {
    let mut online = BTreeSet::new();
    let mut offline = BTreeSet::new();
    for r in &pop.rows {
        let node = pop.people[r.person].members[r.member].node;
        if NODES[node].channel_type.online() { &mut online } else { &mut offline }.insert(r.person);
    }
    let both = online.intersection(&offline).count() as u64;
    let buyers = online.union(&offline).count() as u64;
    let share = |n: u64, of: usize| if of == 0 { 0.0 } else { round4(n as f64 / of as f64) };
    (
        buyers,
        Overlap {
            online: online.len() as u64,
            offline: offline.len() as u64,
            both,
            share_of_buyers: share(both, buyers as usize),
            share_of_online: share(both, online.len()),
            share_of_offline: share(both, offline.len()),
        },
    )
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// The summary `fedcrm demo-data` prints: one line per node, then the totals.
pub fn summary_table(m: &Manifest) -> String {
    use unicode_width::UnicodeWidthStr;
    let pad = |s: &str, w: usize| format!("{s}{}", " ".repeat(w.saturating_sub(s.width())));
    let mut s = format!(
        "{}  {}  {}  {}  {:>7}  {:>9}  {:>9}\n",
        pad("node", 15),
        pad("organisation", 22),
        pad("kind", 10),
        pad("channel", 15),
        "rows",
        "customers",
        "withdrawn"
    );
    for n in &m.nodes {
        s.push_str(&format!(
            "{}  {}  {}  {}  {:>7}  {:>9}  {:>9}\n",
            pad(&n.name, 15),
            pad(&n.organisation, 22),
            pad(n.kind.as_str(), 10),
            pad(n.channel_type.label(), 15),
            n.rows,
            n.customers,
            n.withdrawals
        ));
    }
    let o = &m.online_offline_overlap;
    s.push_str(&format!(
        "{} people, {} bought in {}..{} ({}); online/offline overlap {:.1} % of buyers ({} of {}; {:.1} % of online buyers)\n",
        m.population,
        m.buyers,
        m.start,
        m.end,
        m.generator,
        100.0 * o.share_of_buyers,
        o.both,
        m.buyers,
        100.0 * o.share_of_online
    ));
    s
}
