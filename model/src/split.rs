//! The holdout split of customers into training and test sets by a keyed hash.
//! Pure: no I/O.
//!
//! A customer is in the **test** set when
//!
//! ```text
//! u64_be(HMAC-SHA256(key, customer_key)[0..8]) mod 10000 < ⌊test_fraction · 10000⌉
//! ```
//!
//! The same key gives the same split on every run and every node, with no state to
//! keep; without the key nobody can tell which customers were held out. The key is a
//! secret of the analysis (nodes derive or receive it; it is never logged), so
//! [`HoldoutSplit`] prints as `HoldoutSplit(..)`.

use ring::hmac;

/// What can go wrong configuring a split.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SplitError {
    #[error("holdout split: test fraction {0} is not within [0, 1]")]
    Fraction(f64),
}

/// A keyed holdout split.
pub struct HoldoutSplit {
    key: hmac::Key,
    /// Test customers per 10,000.
    per_10000: u64,
}

impl std::fmt::Debug for HoldoutSplit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HoldoutSplit(..)")
    }
}

impl HoldoutSplit {
    /// A split holding out `test_fraction` of customers (to 1/10,000) under `key`.
    pub fn new(key: &[u8], test_fraction: f64) -> Result<Self, SplitError> {
        if !(0.0..=1.0).contains(&test_fraction) {
            return Err(SplitError::Fraction(test_fraction));
        }
        Ok(Self { key: hmac::Key::new(hmac::HMAC_SHA256, key), per_10000: (test_fraction * 10_000.0).round() as u64 })
    }

    /// Whether the customer is held out for testing.
    pub fn is_test(&self, customer_key: &[u8]) -> bool {
        let tag = hmac::sign(&self.key, customer_key);
        let mut first = [0u8; 8];
        first.copy_from_slice(&tag.as_ref()[..8]);
        u64::from_be_bytes(first) % 10_000 < self.per_10000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_set(split: &HoldoutSplit) -> Vec<bool> {
        (0..5000).map(|i| split.is_test(format!("customer-{i:05}").as_bytes())).collect()
    }

    #[test]
    fn same_key_same_split_other_key_other_split() {
        let a = test_set(&HoldoutSplit::new(b"analysis key one", 0.2).unwrap());
        let again = test_set(&HoldoutSplit::new(b"analysis key one", 0.2).unwrap());
        let b = test_set(&HoldoutSplit::new(b"analysis key two", 0.2).unwrap());
        assert_eq!(a, again);
        let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        // Independent 20 % splits differ on 2·0.2·0.8 = 32 % of customers.
        assert!((1300..1900).contains(&differ), "{differ} of 5000 differ");
        let share = a.iter().filter(|t| **t).count() as f64 / 5000.0;
        assert!((share - 0.2).abs() < 0.02, "{share}");
    }

    #[test]
    fn edges_and_printing() {
        assert!(HoldoutSplit::new(b"k", 1.5).is_err());
        assert!(test_set(&HoldoutSplit::new(b"k", 0.0).unwrap()).iter().all(|t| !t));
        assert!(test_set(&HoldoutSplit::new(b"k", 1.0).unwrap()).iter().all(|t| *t));
        assert_eq!(format!("{:?}", HoldoutSplit::new(b"k", 0.5).unwrap()), "HoldoutSplit(..)");
    }
}
