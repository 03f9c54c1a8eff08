//! The churn model's mathematics (issue 11): pure functions and types — no I/O, no
//! clock, no async, no logging. The node and the coordinator wire them into rounds.
//!
//! What crosses the wire is always a vector of `u64` words that secure aggregation adds
//! modulo 2^64 over nodes; every contribution here is such a vector, and every decoder
//! reads only the *sum* over nodes:
//!
//! - [`features`]: one customer's transactions → a versioned, named feature vector
//!   ([`features::FeatureSpec`]) and the churn label.
//! - [`standardise`]: per-feature moments (n, Σx, Σx²) as words; the global mean and
//!   standard deviation from their sum — never per node.
//! - [`fixed`]: the fixed-point encoding of reals as words, its scales, clipping bounds
//!   and decode error.
//! - [`linalg`]: the small Cholesky solver of the Newton step.
//! - [`logistic`]: the [`logistic::Model`] trait, L2-regularised logistic regression,
//!   a node's Newton sums and the coordinator's Newton step with its stopping rule.
//! - [`fedavg`]: local epochs of gradient descent and the server optimizers
//!   (averaging, server momentum, FedAdam).
//! - [`eval`]: log-loss, accuracy, ROC AUC from score histograms (with its binning error
//!   bound), the calibration table and churn per RFM segment, all from sums.
//! - [`split`]: the keyed-hash holdout split of customers.
//! - [`terms`]: each customer's own term of a round's sum as reals, and decoders of the
//!   noised real sums (issue 11 under differential privacy).
//! - [`artifact`]: the churn model as published, and scoring one customer with it.
//! - [`clv`] (issue 13): BG/NBD and Gamma-Gamma — per-customer summaries,
//!   log-likelihoods with analytic gradients, P(alive), expected purchases and spend.
//!
//! The sums federate exactly: the decoded sum over nodes equals the pooled sum up to
//! the rounding error [`fixed`] states, so the federated model equals the pooled one
//! (`model/tests/cdnow.rs`, `model/tests/fedavg.rs`).

#![forbid(unsafe_code)]

pub mod artifact;
pub mod clv;
pub mod eval;
pub mod features;
pub mod fedavg;
pub mod fixed;
pub mod linalg;
pub mod logistic;
pub mod split;
pub mod standardise;
pub mod terms;
