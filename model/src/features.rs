//! A customer's churn features and label, computed on the node from that customer's
//! own transactions. Pure: no I/O, no clock (the reference date is an argument).
//!
//! A [`FeatureSpec`] (versioned, serialisable, part of every model artifact) names the
//! features in order. Each [`Feature`] is a [`Quantity`] of the customer's history up to
//! and including the reference date, a [`Transform`], and a clipping bound `2^b` on the
//! transformed value (the bound also fixes the value's fixed-point scale in
//! [`crate::standardise`]). The quantities, for transactions with `day ≤ reference`:
//!
//! | quantity | definition |
//! | --- | --- |
//! | `recency_days` | reference − last purchase day |
//! | `frequency` | number of distinct purchase days |
//! | `monetary_total` | Σ cents / 100 (currency units: CNY for the brand's data, USD for CDNOW) |
//! | `monetary_mean` | monetary_total / frequency (spend per purchase day) |
//! | `tenure_days` | reference − first purchase day |
//! | `items` | Σ quantity |
//! | `share_gold`, `share_diamond`, `share_jade`, `share_platinum` | the category's part of the positive spend (0 without spend) |
//! | `days_to_birthday`, `days_to_anniversary` | days from the reference date to the next birthday / wedding anniversary (0 on the day; 29 February falls on 28 February in other years; 0 when absent) |
//! | `has_birthday`, `has_anniversary` | 1 when the date is known, else 0 |
//! | `occasion_share` | the part of the purchase days that fall within the 30 days up to the customer's birthday or wedding anniversary (0 when neither is known) |
//! | `age_years` | whole years from the birthday to the reference date (0 when the birthday is absent or after the reference) |
//!
//! `log1p` (of the value floored at 0) is applied to the skewed ones: recency,
//! frequency, monetary total and mean, and items. [`FeatureSpec::full`] has all
//! sixteen; [`FeatureSpec::reduced`] the six that need neither categories nor key dates
//! (CDNOW). A feature that is constant zero in a data source is dropped with
//! [`FeatureSpec::without`].
//!
//! A customer with no transaction on or before the reference date is **not an
//! example**. The label: **churned** ⇔ no purchase in `(reference, reference + horizon]`.

use std::collections::BTreeSet;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::{Date, Duration, Month};

/// The version of the feature definitions above; a model artifact records it.
pub const SPEC_VERSION: u32 = 1;

/// What can go wrong reading feature inputs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeatureError {
    #[error("category {0:?} is not one of gold, diamond, jade, platinum, other")]
    Category(String),
    #[error("feature spec version {got} is not the supported version {expected}")]
    Version { got: u32, expected: u32 },
}

/// A jewellery product category.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    Gold,
    Diamond,
    Jade,
    Platinum,
    Other,
}

impl Category {
    /// The lower-case label used in data files.
    pub fn label(self) -> &'static str {
        match self {
            Category::Gold => "gold",
            Category::Diamond => "diamond",
            Category::Jade => "jade",
            Category::Platinum => "platinum",
            Category::Other => "other",
        }
    }
}

impl FromStr for Category {
    type Err = FeatureError;
    fn from_str(s: &str) -> Result<Self, FeatureError> {
        match s {
            "gold" => Ok(Category::Gold),
            "diamond" => Ok(Category::Diamond),
            "jade" => Ok(Category::Jade),
            "platinum" => Ok(Category::Platinum),
            "other" => Ok(Category::Other),
            _ => Err(FeatureError::Category(s.to_string())),
        }
    }
}

/// One purchase (or refund, with negative cents).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Txn {
    pub day: Date,
    pub cents: i64,
    pub quantity: u32,
    /// `None` where the source has no categories (CDNOW).
    pub category: Option<Category>,
}

/// One customer's history as the node holds it.
#[derive(Debug, Clone, Copy)]
pub struct Customer<'a> {
    pub txns: &'a [Txn],
    pub birthday: Option<Date>,
    pub anniversary: Option<Date>,
}

/// What a feature measures (the table in the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quantity {
    RecencyDays,
    Frequency,
    MonetaryTotal,
    MonetaryMean,
    TenureDays,
    Items,
    Share(Category),
    DaysToBirthday,
    HasBirthday,
    AgeYears,
    DaysToAnniversary,
    HasAnniversary,
    OccasionShare,
}

impl Quantity {
    fn name(self) -> String {
        match self {
            Quantity::RecencyDays => "recency_days".into(),
            Quantity::Frequency => "frequency".into(),
            Quantity::MonetaryTotal => "monetary_total".into(),
            Quantity::MonetaryMean => "monetary_mean".into(),
            Quantity::TenureDays => "tenure_days".into(),
            Quantity::Items => "items".into(),
            Quantity::Share(c) => format!("share_{}", c.label()),
            Quantity::DaysToBirthday => "days_to_birthday".into(),
            Quantity::HasBirthday => "has_birthday".into(),
            Quantity::AgeYears => "age_years".into(),
            Quantity::DaysToAnniversary => "days_to_anniversary".into(),
            Quantity::HasAnniversary => "has_anniversary".into(),
            Quantity::OccasionShare => "occasion_share".into(),
        }
    }
}

/// The transform applied before clipping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    Identity,
    /// `ln(1 + max(x, 0))`.
    Log1p,
}

/// One named feature: quantity, transform, and the clipping bound `2^bound_log2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feature {
    pub quantity: Quantity,
    pub transform: Transform,
    /// The transformed value is clipped to `[−2^bound_log2, 2^bound_log2]`.
    pub bound_log2: u32,
}

impl Feature {
    const fn new(quantity: Quantity, transform: Transform, bound_log2: u32) -> Self {
        Self { quantity, transform, bound_log2 }
    }

    /// `log1p_recency_days`, `tenure_days`, `share_gold`, …
    pub fn name(&self) -> String {
        match self.transform {
            Transform::Identity => self.quantity.name(),
            Transform::Log1p => format!("log1p_{}", self.quantity.name()),
        }
    }

    /// The clipping bound `2^bound_log2`.
    pub fn bound(&self) -> f64 {
        crate::fixed::pow2(self.bound_log2 as i32)
    }

    fn apply(&self, raw: f64) -> f64 {
        let t = match self.transform {
            Transform::Identity => raw,
            Transform::Log1p => raw.max(0.0).ln_1p(),
        };
        t.clamp(-self.bound(), self.bound())
    }
}

// Bounds: log values ≤ 2^5 (a raw value up to e^32 ≈ 8·10^13), days ≤ 2^16 (179
// years), days to a key date ≤ 2^9, age ≤ 2^7 years, shares and indicators ≤ 1.
const LOG: u32 = 5;
const DAYS: u32 = 16;
const KEY_DATE: u32 = 9;
const AGE: u32 = 7;

/// A purchase day at most this many days before a birthday or anniversary is an
/// occasion purchase (`occasion_share`).
pub const OCCASION_DAYS: i64 = 30;
const UNIT: u32 = 0;

/// The ordered, versioned list of features a model uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    pub version: u32,
    pub features: Vec<Feature>,
}

impl FeatureSpec {
    /// All sixteen features, for the brand's own data.
    pub fn full() -> Self {
        let mut features = Self::reduced().features;
        for c in [Category::Gold, Category::Diamond, Category::Jade, Category::Platinum] {
            features.push(Feature::new(Quantity::Share(c), Transform::Identity, UNIT));
        }
        features.extend([
            Feature::new(Quantity::DaysToBirthday, Transform::Identity, KEY_DATE),
            Feature::new(Quantity::HasBirthday, Transform::Identity, UNIT),
            Feature::new(Quantity::AgeYears, Transform::Identity, AGE),
            Feature::new(Quantity::DaysToAnniversary, Transform::Identity, KEY_DATE),
            Feature::new(Quantity::HasAnniversary, Transform::Identity, UNIT),
            Feature::new(Quantity::OccasionShare, Transform::Identity, UNIT),
        ]);
        Self { version: SPEC_VERSION, features }
    }

    /// The six features a source without categories and key dates supports (CDNOW).
    pub fn reduced() -> Self {
        Self {
            version: SPEC_VERSION,
            features: vec![
                Feature::new(Quantity::RecencyDays, Transform::Log1p, LOG),
                Feature::new(Quantity::Frequency, Transform::Log1p, LOG),
                Feature::new(Quantity::MonetaryTotal, Transform::Log1p, LOG),
                Feature::new(Quantity::MonetaryMean, Transform::Log1p, LOG),
                Feature::new(Quantity::TenureDays, Transform::Identity, DAYS),
                Feature::new(Quantity::Items, Transform::Log1p, LOG),
            ],
        }
    }

    /// The same spec without the named features (e.g. those constant zero in a source).
    pub fn without(&self, names: &[&str]) -> Self {
        let drop: BTreeSet<&str> = names.iter().copied().collect();
        Self {
            version: self.version,
            features: self.features.iter().filter(|f| !drop.contains(f.name().as_str())).copied().collect(),
        }
    }

    /// Refuses a spec of another version (e.g. read from an older artifact).
    pub fn check_version(&self) -> Result<(), FeatureError> {
        if self.version != SPEC_VERSION {
            return Err(FeatureError::Version { got: self.version, expected: SPEC_VERSION });
        }
        Ok(())
    }

    /// Whether this spec is `previous` with some features dropped (in order, none
    /// repeated), of the same version: every spec a node accepts narrows
    /// [`FeatureSpec::full`], so its features, transforms and bounds are this version's.
    pub fn narrows(&self, previous: &FeatureSpec) -> bool {
        let mut rest = previous.features.iter();
        self.version == previous.version && self.features.iter().all(|f| rest.any(|p| p == f))
    }

    /// The number of features `d` (the model has `d + 1` parameters with the intercept).
    pub fn dim(&self) -> usize {
        self.features.len()
    }

    /// The features' names, in order.
    pub fn names(&self) -> Vec<String> {
        self.features.iter().map(Feature::name).collect()
    }

    /// The customer's transformed, clipped feature values as of `reference`, or `None`
    /// when the customer bought nothing on or before it (not an example).
    pub fn extract(&self, customer: &Customer<'_>, reference: Date) -> Option<Vec<f64>> {
        let summary = Summary::of(customer.txns, reference)?;
        Some(self.features.iter().map(|f| f.apply(summary.raw(f.quantity, customer, reference))).collect())
    }
}

/// The labelling window: reference date and churn horizon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    pub reference: Date,
    pub horizon_days: u32,
}

impl Window {
    /// Churned ⇔ no purchase on a day in `(reference, reference + horizon_days]`.
    pub fn churned(&self, txns: &[Txn]) -> bool {
        let end = self.reference + Duration::days(i64::from(self.horizon_days));
        !txns.iter().any(|t| t.day > self.reference && t.day <= end)
    }
}

/// One training or evaluation example: features (as the spec orders them) and label.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub features: Vec<f64>,
    pub churned: bool,
}

/// The customer's example for `window`, or `None` when the customer is not one.
pub fn example(spec: &FeatureSpec, customer: &Customer<'_>, window: &Window) -> Option<Example> {
    let features = spec.extract(customer, window.reference)?;
    Some(Example { features, churned: window.churned(customer.txns) })
}

/// The history up to the reference date, reduced once for all features.
struct Summary {
    first: Date,
    last: Date,
    days: usize,
    cents: i64,
    items: u64,
    positive_cents: i64,
    category_cents: [i64; 4],
}

impl Summary {
    fn of(txns: &[Txn], reference: Date) -> Option<Self> {
        let past: Vec<&Txn> = txns.iter().filter(|t| t.day <= reference).collect();
        let first = past.iter().map(|t| t.day).min()?;
        let last = past.iter().map(|t| t.day).max()?;
        let mut category_cents = [0i64; 4];
        let mut positive_cents = 0i64;
        for t in &past {
            let c = t.cents.max(0);
            positive_cents = positive_cents.saturating_add(c);
            let slot = match t.category {
                Some(Category::Gold) => Some(0),
                Some(Category::Diamond) => Some(1),
                Some(Category::Jade) => Some(2),
                Some(Category::Platinum) => Some(3),
                Some(Category::Other) | None => None,
            };
            if let Some(i) = slot {
                category_cents[i] = category_cents[i].saturating_add(c);
            }
        }
        Some(Self {
            first,
            last,
            days: past.iter().map(|t| t.day).collect::<BTreeSet<_>>().len(),
            cents: past.iter().fold(0i64, |s, t| s.saturating_add(t.cents)),
            items: past.iter().map(|t| u64::from(t.quantity)).sum(),
            positive_cents,
            category_cents,
        })
    }

    fn raw(&self, q: Quantity, customer: &Customer<'_>, reference: Date) -> f64 {
        let total = self.cents as f64 / 100.0;
        let share = |i: usize| {
            if self.positive_cents > 0 { self.category_cents[i] as f64 / self.positive_cents as f64 } else { 0.0 }
        };
        match q {
            Quantity::RecencyDays => (reference - self.last).whole_days() as f64,
            Quantity::Frequency => self.days as f64,
            Quantity::MonetaryTotal => total,
            Quantity::MonetaryMean => total / self.days as f64,
            Quantity::TenureDays => (reference - self.first).whole_days() as f64,
            Quantity::Items => self.items as f64,
            Quantity::Share(Category::Gold) => share(0),
            Quantity::Share(Category::Diamond) => share(1),
            Quantity::Share(Category::Jade) => share(2),
            Quantity::Share(Category::Platinum) => share(3),
            Quantity::Share(Category::Other) => {
                let known: i64 = self.category_cents.iter().sum();
                if self.positive_cents > 0 {
                    (self.positive_cents - known) as f64 / self.positive_cents as f64
                } else {
                    0.0
                }
            }
            Quantity::DaysToBirthday => customer.birthday.map_or(0.0, |d| days_to_next(d, reference) as f64),
            Quantity::HasBirthday => f64::from(u8::from(customer.birthday.is_some())),
            Quantity::AgeYears => customer.birthday.map_or(0.0, |b| whole_years(b, reference) as f64),
            Quantity::DaysToAnniversary => customer.anniversary.map_or(0.0, |d| days_to_next(d, reference) as f64),
            Quantity::HasAnniversary => f64::from(u8::from(customer.anniversary.is_some())),
            Quantity::OccasionShare => {
                let days: BTreeSet<Date> = customer.txns.iter().map(|t| t.day).filter(|d| *d <= reference).collect();
                let near = |key: Option<Date>, day: Date| key.is_some_and(|k| days_to_next(k, day) <= OCCASION_DAYS);
                let occasion = days.iter().filter(|d| near(customer.birthday, **d) || near(customer.anniversary, **d));
                occasion.count() as f64 / self.days as f64
            }
        }
    }
}

/// Whole years from `birthday` to `reference` (the birthday's recurrence counts on the
/// day; 29 February recurs on 28 February in common years); 0 when `birthday` is after
/// `reference`.
pub fn whole_years(birthday: Date, reference: Date) -> i64 {
    if birthday > reference {
        return 0;
    }
    let years = i64::from(reference.year() - birthday.year());
    // Not yet this year's birthday: one year less.
    if days_to_next(birthday, reference) > 0
        && (reference.month(), reference.day()) < (birthday.month(), birthday.day())
    {
        years - 1
    } else {
        years
    }
}

/// Days from `reference` to the next recurrence of `date`'s month and day (0 on the
/// day itself); 29 February recurs on 28 February in common years.
pub fn days_to_next(date: Date, reference: Date) -> i64 {
    let on = |year: i32| {
        Date::from_calendar_date(year, date.month(), date.day())
            .or_else(|_| Date::from_calendar_date(year, Month::February, 28))
    };
    for year in [reference.year(), reference.year() + 1] {
        if let Ok(d) = on(year)
            && d >= reference
        {
            return (d - reference).whole_days();
        }
    }
    // Only past the calendar's last year (9999-12-31) is there no next recurrence.
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    fn txn(day: Date, cents: i64, quantity: u32, category: Option<Category>) -> Txn {
        Txn { day, cents, quantity, category }
    }

    #[test]
    fn age_counts_whole_years_and_a_leap_day_birthday_on_28_february() {
        assert_eq!(whole_years(date!(1990 - 04 - 02), date!(2024 - 04 - 01)), 33);
        assert_eq!(whole_years(date!(1990 - 04 - 02), date!(2024 - 04 - 02)), 34);
        assert_eq!(whole_years(date!(1990 - 12 - 31), date!(2025 - 01 - 01)), 34);
        // Born 29 February: a year older on 28 February of a common year, not before.
        assert_eq!(whole_years(date!(2000 - 02 - 29), date!(2023 - 02 - 27)), 22);
        assert_eq!(whole_years(date!(2000 - 02 - 29), date!(2023 - 02 - 28)), 23);
        assert_eq!(whole_years(date!(2000 - 02 - 29), date!(2024 - 02 - 28)), 23);
        assert_eq!(whole_years(date!(2000 - 02 - 29), date!(2024 - 02 - 29)), 24);
        // A birthday after the reference date (a data-entry error): 0, never negative.
        assert_eq!(whole_years(date!(2030 - 01 - 01), date!(2024 - 01 - 01)), 0);
    }

    #[test]
    fn categories_parse_from_lower_case_labels() {
        for c in [Category::Gold, Category::Diamond, Category::Jade, Category::Platinum, Category::Other] {
            assert_eq!(c.label().parse::<Category>().unwrap(), c);
        }
        assert!("Gold".parse::<Category>().is_err());
    }

    #[test]
    fn the_full_spec_on_one_customer() {
        let txns = [
            txn(date!(2024 - 01 - 10), 100_000, 1, Some(Category::Gold)),
            txn(date!(2024 - 01 - 10), 50_000, 2, Some(Category::Jade)),
            txn(date!(2024 - 03 - 01), 250_000, 1, Some(Category::Diamond)),
            txn(date!(2024 - 05 - 01), 999_999, 1, Some(Category::Platinum)), // after the reference
        ];
        let c = Customer { txns: &txns, birthday: Some(date!(1990 - 04 - 02)), anniversary: None };
        let spec = FeatureSpec::full();
        let window = Window { reference: date!(2024 - 03 - 31), horizon_days: 30 };
        let e = example(&spec, &c, &window).unwrap();
        let by_name: std::collections::BTreeMap<String, f64> = spec.names().into_iter().zip(e.features).collect();
        let close = |name: &str, v: f64| assert!((by_name[name] - v).abs() < 1e-12, "{name}: {} ≠ {v}", by_name[name]);
        close("log1p_recency_days", 30f64.ln_1p());
        close("log1p_frequency", 2f64.ln_1p());
        close("log1p_monetary_total", 4000f64.ln_1p());
        close("log1p_monetary_mean", 2000f64.ln_1p());
        close("tenure_days", 81.0);
        close("log1p_items", 4f64.ln_1p());
        close("share_gold", 0.25);
        close("share_diamond", 0.625);
        close("share_jade", 0.125);
        close("share_platinum", 0.0);
        close("days_to_birthday", 2.0);
        close("has_birthday", 1.0);
        close("age_years", 33.0);
        close("days_to_anniversary", 0.0);
        close("has_anniversary", 0.0);
        // 2024-03-01 is 32 days before the birthday, 2024-01-10 further: neither counts.
        close("occasion_share", 0.0);
        let near = Customer { birthday: Some(date!(1990 - 03 - 31)), ..c };
        let e = example(&spec, &near, &window).unwrap();
        let by_name: std::collections::BTreeMap<String, f64> = spec.names().into_iter().zip(e.features).collect();
        let close = |name: &str, v: f64| assert!((by_name[name] - v).abs() < 1e-12, "{name}: {} ≠ {v}", by_name[name]);
        close("occasion_share", 0.5); // 03-01 is 30 days before 03-31
        close("age_years", 34.0); // 34 on the day
        // 2024-05-01 is within (03-31, 04-30]? No: the horizon ends 04-30.
        assert!(e.churned);
        assert!(!Window { reference: date!(2024 - 03 - 31), horizon_days: 31 }.churned(&txns));
    }

    #[test]
    fn no_purchase_up_to_the_reference_is_not_an_example() {
        let txns = [txn(date!(2024 - 05 - 01), 100, 1, None)];
        let c = Customer { txns: &txns, birthday: None, anniversary: None };
        assert!(FeatureSpec::reduced().extract(&c, date!(2024 - 04 - 30)).is_none());
        assert!(FeatureSpec::reduced().extract(&c, date!(2024 - 05 - 01)).is_some());
    }

    #[test]
    fn key_dates_recur() {
        assert_eq!(days_to_next(date!(1990 - 03 - 31), date!(2024 - 03 - 31)), 0);
        assert_eq!(days_to_next(date!(1990 - 03 - 30), date!(2024 - 03 - 31)), 364);
        assert_eq!(days_to_next(date!(1992 - 02 - 29), date!(2023 - 02 - 01)), 27);
        assert_eq!(days_to_next(date!(1992 - 02 - 29), date!(2024 - 02 - 01)), 28);
    }

    #[test]
    fn specs_name_their_features_and_serialise() {
        assert_eq!(FeatureSpec::full().dim(), 16);
        let reduced = FeatureSpec::full().without(&["share_jade", "has_anniversary", "days_to_anniversary"]);
        assert_eq!(reduced.dim(), 13);
        assert!(!reduced.names().contains(&"share_jade".to_string()));
        let json = serde_json::to_string(&FeatureSpec::reduced()).unwrap();
        let back: FeatureSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, FeatureSpec::reduced());
        assert!(back.check_version().is_ok());
    }
}
