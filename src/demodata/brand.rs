//! The synthetic brand: its channels and their nodes, and the calendar its customers
//! buy by (Chinese festivals, Singles' Day). Fixed data, no randomness.

use fedcrm_pki::OrgKind;
use serde::Serialize;
use time::{Date, Month};

/// What a node sells through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelType {
    OwnStore,
    FranchiseStore,
    /// A Tmall-style marketplace shop.
    Marketplace,
    /// A WeChat mini-program.
    MiniProgram,
}

impl ChannelType {
    pub fn online(self) -> bool {
        matches!(self, ChannelType::Marketplace | ChannelType::MiniProgram)
    }

    pub fn label(self) -> &'static str {
        match self {
            ChannelType::OwnStore => "own-store",
            ChannelType::FranchiseStore => "franchise-store",
            ChannelType::Marketplace => "marketplace",
            ChannelType::MiniProgram => "mini-program",
        }
    }
}

/// One node: one organisation's data file for one kind of channel.
#[derive(Debug, Clone)]
pub struct NodeDef {
    /// ASCII slug: the node's name and its directory.
    pub name: &'static str,
    pub organisation: &'static str,
    /// Who runs it: HQ (the brand's own channels) or an independent franchisee, which
    /// owns its customers' data.
    pub kind: OrgKind,
    pub channel_type: ChannelType,
    /// The `channel` column's values: store names, or the shop's name.
    pub channels: &'static [&'static str],
    /// Prefix of the node's member numbers (every channel keys its customers its own way).
    pub key_prefix: &'static str,
    /// Share of the population whose home channel this is (relative weight).
    pub home_weight: f64,
    /// Price level against the list price (marketplace promotions are cheaper).
    pub price_level: f64,
}

/// The brand's organisation, owner of its own stores and online shops.
pub const HQ: &str = "Jinyu Jewellery HQ";

/// Every node, HQ's channels first. Five franchisees (at least four are needed so the
/// privacy rules admit rounds that include HQ's channels).
pub const NODES: &[NodeDef] = &[
    NodeDef {
        name: "hq-stores",
        organisation: HQ,
        kind: OrgKind::Hq,
        channel_type: ChannelType::OwnStore,
        channels: &["上海南京路旗舰店", "北京王府井店"],
        key_prefix: "JY",
        home_weight: 0.16,
        price_level: 1.0,
    },
    NodeDef {
        name: "hq-tmall",
        organisation: HQ,
        kind: OrgKind::Hq,
        channel_type: ChannelType::Marketplace,
        channels: &["天猫旗舰店"],
        key_prefix: "tb",
        home_weight: 0.20,
        price_level: 0.9,
    },
    NodeDef {
        name: "hq-miniprogram",
        organisation: HQ,
        kind: OrgKind::Hq,
        channel_type: ChannelType::MiniProgram,
        channels: &["微信小程序"],
        key_prefix: "wx",
        home_weight: 0.09,
        price_level: 0.95,
    },
    NodeDef {
        name: "fr-hangzhou",
        organisation: "杭州金悦珠宝有限公司",
        kind: OrgKind::Franchisee,
        channel_type: ChannelType::FranchiseStore,
        channels: &["杭州西湖店", "杭州滨江店"],
        key_prefix: "HZ",
        home_weight: 0.13,
        price_level: 1.0,
    },
    NodeDef {
        name: "fr-suzhou",
        organisation: "苏州瑞福珠宝有限公司",
        kind: OrgKind::Franchisee,
        channel_type: ChannelType::FranchiseStore,
        channels: &["苏州观前街店"],
        key_prefix: "SZ",
        home_weight: 0.08,
        price_level: 1.0,
    },
    NodeDef {
        name: "fr-chengdu",
        organisation: "成都锦华珠宝有限公司",
        kind: OrgKind::Franchisee,
        channel_type: ChannelType::FranchiseStore,
        channels: &["成都春熙路店", "成都太古里店"],
        key_prefix: "CD",
        home_weight: 0.13,
        price_level: 1.0,
    },
    NodeDef {
        name: "fr-wuhan",
        organisation: "武汉楚韵珠宝有限公司",
        kind: OrgKind::Franchisee,
        channel_type: ChannelType::FranchiseStore,
        channels: &["武汉江汉路店"],
        key_prefix: "WH",
        home_weight: 0.10,
        price_level: 1.0,
    },
    NodeDef {
        name: "fr-shenzhen",
        organisation: "深圳鹏金珠宝有限公司",
        kind: OrgKind::Franchisee,
        channel_type: ChannelType::FranchiseStore,
        channels: &["深圳华强北店", "深圳万象城店"],
        key_prefix: "SZN",
        home_weight: 0.11,
        price_level: 1.0,
    },
];

fn ymd(y: i32, m: u8, d: u8) -> Date {
    // Unwrap safety: only called with the constant dates of the tables below.
    Date::from_calendar_date(y, Month::try_from(m).unwrap(), d).unwrap()
}

/// (month, day).
type MonthDay = (u8, u8);

/// Spring Festival (Chinese New Year's day) and Qixi, by the lunar calendar, 2020–2030.
/// Outside these years the two festivals are left out (the rest of the model holds).
const LUNAR: &[(i32, MonthDay, MonthDay)] = &[
    (2020, (1, 25), (8, 25)),
    (2021, (2, 12), (8, 14)),
    (2022, (2, 1), (8, 4)),
    (2023, (1, 22), (8, 22)),
    (2024, (2, 10), (8, 10)),
    (2025, (1, 29), (8, 29)),
    (2026, (2, 17), (8, 19)),
    (2027, (2, 6), (8, 8)),
    (2028, (1, 26), (8, 26)),
    (2029, (2, 13), (8, 16)),
    (2030, (2, 3), (8, 5)),
];

/// Days from `day` to the next `target` (0 on the day itself), or `None` when more than `window` days ahead.
fn days_before(day: Date, target: Date, window: i64) -> Option<i64> {
    let d = (target - day).whole_days();
    (0..=window).contains(&d).then_some(d)
}

/// A festival on this day, if any: how much more likely a purchase is (mild: the
/// reports describe festival peaks, not a festival business).
pub fn season(day: Date, channel: ChannelType) -> f64 {
    let y = day.year();
    let mut f = 1.0;
    // Next year's row covers a late-December day before an early Spring Festival.
    for &(ly, (sm, sd), (qm, qd)) in LUNAR.iter().filter(|(ly, _, _)| *ly == y || *ly == y + 1) {
        if days_before(day, ymd(ly, sm, sd), 21).is_some() {
            f *= 1.6; // the three weeks before Spring Festival: gold for the new year
        }
        if days_before(day, ymd(ly, qm, qd), 7).is_some() {
            f *= 1.6; // Qixi, the Chinese Valentine's Day
        }
    }
    if days_before(day, ymd(y, 5, 20), 6).is_some() {
        f *= 1.8; // 520 ("wo ai ni")
    }
    if (day.month(), (1..=7).contains(&day.day())) == (Month::October, true) && !channel.online() {
        f *= 1.3; // the National Day golden week fills the malls
    }
    if day.month() == Month::November && (1..=11).contains(&day.day()) {
        f *= match channel {
            ChannelType::Marketplace => 2.5, // Singles' Day
            ChannelType::MiniProgram => 1.8,
            _ => 1.0,
        };
    }
    f
}

/// Whether `day` is within the three weeks before this year's (or next) occurrence of
/// the month and day of `date` (a birthday or a wedding anniversary).
pub fn weeks_before_yearly(day: Date, date: Date) -> bool {
    let on = |y: i32| {
        // 29 February is celebrated on 28 February in other years.
        Date::from_calendar_date(y, date.month(), date.day())
            .or_else(|_| Date::from_calendar_date(y, date.month(), 28))
            .ok()
    };
    [day.year(), day.year() + 1].into_iter().flat_map(on).any(|t| days_before(day, t, 21).is_some())
}

#[cfg(test)]
mod tests {
    use time::macros::date;

    use super::*;

    /// The factor on `day` in `channel` is `want` (products of the constants, so exact to rounding).
    fn at(day: Date, channel: ChannelType, want: f64) {
        let got = season(day, channel);
        assert!((got - want).abs() < 1e-12, "{day} {channel:?}: {got}, expected {want}");
    }

    #[test]
    fn festivals_raise_purchases_mildly_on_their_days_only() {
        let store = ChannelType::FranchiseStore;
        at(date!(2024 - 03 - 12), store, 1.0);
        // Spring Festival 2024 was 10 February; 2025's was 29 January (so December 2024 counts).
        at(date!(2024 - 02 - 01), store, 1.6);
        at(date!(2024 - 02 - 11), store, 1.0);
        at(date!(2025 - 01 - 10), store, 1.6);
        at(date!(2024 - 05 - 20), store, 1.8);
        at(date!(2025 - 08 - 29), store, 1.6); // Qixi 2025
        at(date!(2024 - 10 - 03), store, 1.3);
        at(date!(2024 - 10 - 03), ChannelType::Marketplace, 1.0);
        at(date!(2024 - 11 - 11), ChannelType::Marketplace, 2.5);
        at(date!(2024 - 11 - 11), store, 1.0);
        // Outside the lunar table only the solar-calendar days remain.
        at(date!(2035 - 05 - 19), store, 1.8);
    }

    #[test]
    fn the_weeks_before_a_yearly_date_cross_new_year_and_leap_days() {
        let born = date!(1990 - 01 - 05);
        assert!(weeks_before_yearly(date!(2024 - 12 - 20), born));
        assert!(weeks_before_yearly(date!(2025 - 01 - 05), born));
        assert!(!weeks_before_yearly(date!(2025 - 01 - 06), born));
        let leap = date!(1992 - 02 - 29);
        assert!(weeks_before_yearly(date!(2023 - 02 - 20), leap));
        assert!(!weeks_before_yearly(date!(2023 - 03 - 01), leap));
    }

    #[test]
    fn nodes_have_unique_ascii_names_and_key_prefixes() {
        let names: std::collections::BTreeSet<_> = NODES.iter().map(|n| n.name).collect();
        let prefixes: std::collections::BTreeSet<_> = NODES.iter().map(|n| n.key_prefix).collect();
        assert_eq!((names.len(), prefixes.len()), (NODES.len(), NODES.len()));
        assert!(NODES.iter().all(|n| n.name.is_ascii() && !n.channels.is_empty()));
    }
}
