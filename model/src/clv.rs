//! Customer lifetime value (issue 13): the buy-till-you-die models' mathematics, pure.
//!
//! - [`artifact`]: the published model (both fits, calibration, provenance).
//! - [`summary`]: a customer's purchases → (x, t_x, T) and the mean repeat value m̄ over
//!   a calibration window (same-day purchases merged), and the holdout count.
//! - [`bgnbd`]: the BG/NBD log-likelihood and its analytic gradient, P(alive) and the
//!   expected purchases in a future period.
//! - [`gamma_gamma`]: the Gamma-Gamma spend model's log-likelihood, gradient and
//!   expected spend.
//! - [`hyp2f1`]: the Gaussian hypergeometric function the expectations need.
//! - [`fit`]: the coordinator's optimiser, BFGS driven one evaluation (one secure
//!   round) at a time.
//! - [`sums`]: a node's contribution to one evaluation as words, and its decoding.
//!
//! Both likelihoods are sums over customers, so the sums of a node's customers' terms
//! added over nodes are the pooled sums: the federated fit is exact.

pub mod artifact;
pub mod bgnbd;
pub mod fit;
pub mod gamma_gamma;
pub mod hyp2f1;
pub mod summary;
pub mod sums;
