//! The customer model of the synthetic data (described in [`super`]'s module doc):
//! people, their memberships in channels, and their purchases. One seeded ChaCha20
//! stream drawn in a fixed order, so a seed gives the same data on every run.

use std::collections::HashSet;

use rand::Rng;
use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use rand_chacha::ChaCha20Rng;
use rand_distr::{Exp, Gamma, LogNormal};
use time::macros::{date, offset};
use time::{Date, Duration, Month, OffsetDateTime, Time, UtcOffset};

use fedcrm_model::features::Category;

use super::brand::{ChannelType, NODES, season, weeks_before_yearly};

/// The categories the brand sells (the model's, as written in the `category` column;
/// the generator never writes `other`), and how often each is a customer's main
/// category (gold leads in China's market).
const CATEGORIES: [Category; 4] = [Category::Gold, Category::Diamond, Category::Jade, Category::Platinum];
const CATEGORY_WEIGHTS: [f64; 4] = [0.45, 0.22, 0.18, 0.15];

/// One person's membership in one node's channel: the node's own member record.
#[derive(Debug)]
pub struct Membership {
    pub node: usize,
    /// Index into the node's `channels` (the store the member signed up in).
    pub store: usize,
    /// The node's customer key: every channel numbers its members its own way.
    pub key: String,
    /// The phone number as this channel's system wrote it ("" when not recorded).
    pub phone: String,
    pub birthday: Option<Date>,
    pub anniversary: Option<Date>,
}

/// One person of the population.
#[derive(Debug)]
pub struct Person {
    /// Memberships, the home channel first. (The latent rate and dropout day are
    /// deliberately not kept: nothing written may reveal them.)
    pub members: Vec<Membership>,
}

/// One purchase row, before formatting.
#[derive(Debug)]
pub struct Row {
    pub person: usize,
    /// Index into the person's memberships.
    pub member: usize,
    pub at: OffsetDateTime,
    pub amount_cents: i64,
    pub category: Category,
}

/// The simulated population and its purchases (rows in simulation order).
#[derive(Debug)]
pub struct Population {
    pub people: Vec<Person>,
    pub rows: Vec<Row>,
}

/// Asia/Shanghai has had no daylight-saving time since 1991: a fixed +08:00.
const SHANGHAI: UtcOffset = offset!(+8);

/// Mainland mobile prefixes (China Mobile, Unicom, Telecom).
const MOBILE_PREFIXES: [u16; 24] = [
    130, 131, 132, 133, 135, 136, 137, 138, 139, 150, 151, 152, 155, 156, 158, 159, 166, 176, 177, 180, 186, 188, 189,
    199,
];

/// How channels write phone numbers: `13812345678`, `138 1234 5678`, `138-1234-5678`,
/// `+86 138-1234-5678`, `+8613812345678`, `86 13812345678`, or not at all.
fn format_phone(digits: &str, style: usize) -> String {
    let (a, b, c) = (&digits[..3], &digits[3..7], &digits[7..]);
    match style {
        0 => digits.to_string(),
        1 => format!("{a} {b} {c}"),
        2 => format!("{a}-{b}-{c}"),
        3 => format!("+86 {a}-{b}-{c}"),
        4 => format!("+86{digits}"),
        5 => format!("86 {digits}"),
        _ => String::new(),
    }
}

/// Weights of the phone styles of [`format_phone`] per channel type: store POS
/// systems take what staff type (and sometimes nothing), online shops normalise more.
fn phone_styles(t: ChannelType) -> [f64; 7] {
    match t {
        ChannelType::OwnStore | ChannelType::FranchiseStore => [45.0, 20.0, 15.0, 8.0, 2.0, 5.0, 5.0],
        ChannelType::Marketplace => [40.0, 0.0, 0.0, 10.0, 35.0, 15.0, 0.0],
        ChannelType::MiniProgram => [35.0, 0.0, 0.0, 60.0, 5.0, 0.0, 0.0],
    }
}

/// A member number in the node's own style, unique within the node (`n` counts its members).
fn member_key(node: usize, n: u64) -> String {
    let def = &NODES[node];
    match def.channel_type {
        ChannelType::OwnStore | ChannelType::FranchiseStore => format!("{}{:07}", def.key_prefix, n + 1),
        // Multiplying by a constant coprime to the modulus is a bijection: unique, scattered.
        ChannelType::Marketplace => {
            format!("{}_{:010}", def.key_prefix, 1_000_000_000 + (n * 2_654_435_761) % 8_000_000_000)
        }
        // An odd multiplier modulo 2⁴⁸, likewise (an openid-like key).
        ChannelType::MiniProgram => {
            format!("o{}{:012x}", def.key_prefix, n.wrapping_mul(0x9E37_79B9_7F4A_7C15) & 0xFFFF_FFFF_FFFF)
        }
    }
}

/// Retail price of gold jewellery in CNY per gram (brand counters' 足金 price), piecewise
/// linear through rough levels of 2020–2026: the rise of 2024–2025 shows in the amounts.
fn gold_price_per_gram(day: Date) -> f64 {
    const LEVELS: [(i32, u8, f64); 6] = [
        (2020, 1, 400.0),
        (2023, 1, 550.0),
        (2024, 1, 620.0),
        (2025, 1, 800.0),
        (2025, 10, 1150.0),
        (2026, 12, 1250.0),
    ];
    let at = |(y, m, _): (i32, u8, f64)| {
        // Unwrap safety: the table's months are 1..=12.
        Date::from_calendar_date(y, Month::try_from(m).unwrap(), 1).unwrap().to_julian_day() as f64
    };
    let x = day.to_julian_day() as f64;
    let first = LEVELS[0];
    let last = LEVELS[LEVELS.len() - 1];
    if x <= at(first) {
        return first.2;
    }
    for w in LEVELS.windows(2) {
        let (a, b) = (w[0], w[1]);
        if x <= at(b) {
            return a.2 + (b.2 - a.2) * (x - at(a)) / (at(b) - at(a));
        }
    }
    last.2
}

/// Samplers of the model, built once.
struct Draws {
    rate: Gamma<f64>,
    spend: LogNormal<f64>,
    gold_grams: LogNormal<f64>,
    diamond: LogNormal<f64>,
    jade: LogNormal<f64>,
    platinum: LogNormal<f64>,
    home: WeightedIndex<f64>,
    category: WeightedIndex<f64>,
    offline_hour: WeightedIndex<f64>,
    online_hour: WeightedIndex<f64>,
}

impl Draws {
    fn new() -> Self {
        // Unwrap safety (all): constant, valid parameters.
        Draws {
            // Mean 1.2 purchases a year while active, most customers well below.
            rate: Gamma::new(1.5, 0.8).unwrap(),
            spend: LogNormal::new(0.0, 0.3).unwrap(),
            // Median 8 g.
            gold_grams: LogNormal::new(8f64.ln(), 0.55).unwrap(),
            diamond: LogNormal::new(12_000f64.ln(), 0.6).unwrap(),
            jade: LogNormal::new(4_000f64.ln(), 1.1).unwrap(),
            platinum: LogNormal::new(3_500f64.ln(), 0.5).unwrap(),
            home: WeightedIndex::new(NODES.iter().map(|n| n.home_weight)).unwrap(),
            category: WeightedIndex::new(CATEGORY_WEIGHTS).unwrap(),
            // Malls open 10:00–22:00, busiest in the evening and at weekends' afternoons.
            offline_hour: WeightedIndex::new([3.0, 5.0, 6.0, 6.0, 7.0, 8.0, 8.0, 7.0, 8.0, 10.0, 10.0, 6.0]).unwrap(),
            // Online shops never close; few buy at night.
            online_hour: WeightedIndex::new([
                2.0, 1.0, 0.5, 0.3, 0.2, 0.2, 0.5, 1.0, 2.0, 3.0, 4.0, 4.0, 5.0, 4.0, 4.0, 4.0, 4.0, 4.0, 5.0, 6.0,
                8.0, 10.0, 9.0, 5.0,
            ])
            .unwrap(),
        }
    }
}

/// The period, in days from its start.
#[derive(Debug, Clone, Copy)]
pub struct Period {
    pub start: Date,
    pub end: Date,
}

impl Period {
    fn days(&self) -> i64 {
        (self.end - self.start).whole_days() + 1
    }
}

/// Days before dropout over which the spend and the purchase rate decline.
const DECLINE_DAYS: f64 = 270.0;
/// Bound on the product of the season and occasion factors (for thinning).
const MAX_FACTOR: f64 = 12.5;

/// The dropout hazard per year (the module doc's table).
fn hazard(rate: f64, gold_only: bool, marketplace_only: bool, birthday: bool, married: bool, channels: usize) -> f64 {
    let mut h = 0.30;
    h *= if rate < 0.6 {
        1.8
    } else if rate < 1.2 {
        1.2
    } else {
        0.8
    };
    if gold_only {
        h *= 1.5;
    }
    if marketplace_only {
        h *= 1.6;
    }
    if birthday {
        h *= 0.8;
    }
    if married {
        h *= 0.65;
    }
    if channels > 1 {
        h *= 0.8;
    }
    h
}

fn random_day(rng: &mut ChaCha20Rng, from: Date, days: i64) -> Date {
    from + Duration::days(rng.random_range(0..days.max(1)))
}

/// Simulate `customers` people over `period`.
pub fn simulate(rng: &mut ChaCha20Rng, customers: usize, period: Period) -> Population {
    let d = Draws::new();
    let mut phones = HashSet::new();
    let mut counters = vec![0u64; NODES.len()];
    let mut people = Vec::with_capacity(customers);
    let mut rows = Vec::new();
    let online: Vec<usize> = (0..NODES.len()).filter(|&i| NODES[i].channel_type.online()).collect();
    let offline: Vec<usize> = (0..NODES.len()).filter(|&i| !NODES[i].channel_type.online()).collect();
    let weights = |set: &[usize]| {
        // Unwrap safety: the brand has online and offline nodes, all with positive weights.
        WeightedIndex::new(set.iter().map(|&i| NODES[i].home_weight)).unwrap()
    };
    let (pick_online, pick_offline) = (weights(&online), weights(&offline));

    for person in 0..customers {
        // Who: a unique mainland mobile number, a birthday, maybe a wedding.
        let digits = loop {
            let p = MOBILE_PREFIXES[rng.random_range(0..MOBILE_PREFIXES.len())];
            let n: u64 = u64::from(p) * 100_000_000 + rng.random_range(0..100_000_000);
            if phones.insert(n) {
                break n.to_string();
            }
        };
        let born = random_day(rng, date!(1962 - 01 - 01), 40 * 365);
        let shares_birthday = rng.random_bool(0.85);
        let married = rng.random_bool(if born.year() < 1995 { 0.55 } else { 0.2 });
        let wedding = married.then(|| {
            let year = (born.year() + rng.random_range(23..34)).min(period.start.year() - 1);
            random_day(rng, Date::from_calendar_date(year, Month::January, 1).unwrap_or(period.start), 365)
        });
        let shares_anniversary = married && rng.random_bool(0.75);

        // Where: a home channel, and for some a second channel.
        let home = d.home.sample(rng);
        let mut nodes = vec![home];
        let home_online = NODES[home].channel_type.online();
        let also_online = rng.random_bool(if home_online { 0.10 } else { 0.18 });
        let also_offline = rng.random_bool(if home_online { 0.30 } else { 0.04 });
        if also_online {
            nodes.push(online[pick_online.sample(rng)]);
        }
        if also_offline {
            nodes.push(offline[pick_offline.sample(rng)]);
        }
        nodes.sort_by_key(|&n| (n != home, n));
        nodes.dedup();
        let members: Vec<Membership> = nodes
            .iter()
            .map(|&node| {
                let def = &NODES[node];
                let n = counters[node];
                counters[node] += 1;
                // Unwrap safety: constant weights, not all zero.
                let style = WeightedIndex::new(phone_styles(def.channel_type)).unwrap().sample(rng);
                // Marketplaces seldom learn a birthday; the brand's own channels ask.
                let records = if def.channel_type == ChannelType::Marketplace { 0.4 } else { 0.95 };
                Membership {
                    node,
                    store: rng.random_range(0..def.channels.len()),
                    key: member_key(node, n),
                    phone: format_phone(&digits, style),
                    birthday: (shares_birthday && rng.random_bool(records)).then_some(born),
                    anniversary: if shares_anniversary && rng.random_bool(records) { wedding } else { None },
                }
            })
            .collect();

        // How much, and for how long.
        let rate = d.rate.sample(rng);
        let spend = d.spend.sample(rng);
        let primary = CATEGORIES[d.category.sample(rng)];
        let single = rng.random_bool(0.4);
        let marketplace_only = members.iter().all(|m| NODES[m.node].channel_type == ChannelType::Marketplace);
        let h = hazard(
            rate,
            single && primary == Category::Gold,
            marketplace_only,
            shares_birthday,
            shares_anniversary,
            members.len(),
        );
        let acquired = random_day(rng, period.start - Duration::days(365), period.days() + 365 - 30);
        // Unwrap safety: the hazard is positive and finite.
        let life_years = Exp::new(h).unwrap().sample(rng);
        let dropout = acquired + Duration::days((life_years * 365.0).min(100.0 * 365.0) as i64);

        // When: a thinned Poisson process over the active days of the period.
        let from = acquired.max(period.start);
        let until = dropout.min(period.end);
        let mut events: Vec<(Date, usize, bool)> = Vec::new();
        if acquired >= period.start {
            events.push((acquired, 0, false)); // the purchase that made them a customer
        }
        if from < until {
            let bound = rate * MAX_FACTOR / 365.0;
            let gap = Exp::new(bound).ok();
            let mut t = 0.0f64;
            let span = (until - from).whole_days() as f64;
            while let Some(g) = gap {
                t += g.sample(rng);
                if t >= span {
                    break;
                }
                let day = from + Duration::days(t as i64);
                let member =
                    if members.len() == 1 || rng.random_bool(0.55) { 0 } else { rng.random_range(1..members.len()) };
                let channel = NODES[members[member].node].channel_type;
                // The three weeks before a birthday or a wedding anniversary: gifts.
                let birthday = weeks_before_yearly(day, born);
                let anniversary = wedding.is_some_and(|w| weeks_before_yearly(day, w));
                let occasion = birthday || anniversary;
                let personal = 1.0 + 2.0 * f64::from(u8::from(birthday)) + 2.0 * f64::from(u8::from(anniversary));
                let to_dropout = (dropout - day).whole_days() as f64;
                let decline = 0.5 + 0.5 * (to_dropout / DECLINE_DAYS).min(1.0);
                let factor = (season(day, channel) * personal).min(MAX_FACTOR) * decline;
                if rng.random_bool((factor / MAX_FACTOR).clamp(0.0, 1.0)) {
                    events.push((day, member, occasion));
                }
            }
        }

        // What: a category and an amount for each purchase.
        for (day, member, occasion) in events {
            let node = &NODES[members[member].node];
            let category = if occasion && rng.random_bool(0.3) {
                Category::Diamond
            } else if single || rng.random_bool(0.55) {
                primary
            } else {
                CATEGORIES[d.category.sample(rng)]
            };
            let list = match category {
                Category::Gold => d.gold_grams.sample(rng) * (gold_price_per_gram(day) + rng.random_range(15.0..30.0)),
                Category::Diamond => d.diamond.sample(rng),
                Category::Jade => d.jade.sample(rng),
                // Never drawn (not in `CATEGORIES`); priced like platinum if it were.
                Category::Platinum | Category::Other => d.platinum.sample(rng),
            };
            let to_dropout = (dropout - day).whole_days() as f64;
            // Spend falls over the months before a customer leaves.
            let decline = 0.6 + 0.4 * (to_dropout / DECLINE_DAYS).clamp(0.0, 1.0);
            let yuan = (list * spend * node.price_level * decline).clamp(200.0, 500_000.0);
            let amount_cents = (yuan * 100.0).round() as i64;
            let hour = if node.channel_type.online() {
                d.online_hour.sample(rng) as u8
            } else {
                10 + d.offline_hour.sample(rng) as u8
            };
            // Unwrap safety: hour < 24, minute < 60, second < 60.
            let time = Time::from_hms(hour, rng.random_range(0..60), rng.random_range(0..60)).unwrap();
            rows.push(Row { person, member, at: day.with_time(time).assume_offset(SHANGHAI), amount_cents, category });
        }
        people.push(Person { members });
    }
    Population { people, rows }
}
