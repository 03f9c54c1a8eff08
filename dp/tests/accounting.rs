//! The accountant against reference values computed independently (issue 10): ρ and
//! (ε, δ = 10⁻⁶) after composition equal them to 10⁻⁶ relative.
//!
//! The references come from `dp/reference/accounting.py` with Google's `dp-accounting`
//! 0.6.0 (`python3 -m venv /tmp/dpvenv && /tmp/dpvenv/bin/pip install dp-accounting==0.6.0
//! && /tmp/dpvenv/bin/python dp/reference/accounting.py`, run 2026-11-30): settings
//! without the τ term through its RDP accountant on a Gaussian event; settings with it
//! through the first term of Proposition 14 of Kairouz, Liu & Steinke (as in
//! google-research/federated `distributed_dp/accounting_utils.py`) and `dp-accounting`'s
//! `compute_epsilon`, at the orders 2..128 and 256.

use fedcrm_dp::accounting::{Charge, Sensitivity};

const DELTA: f64 = 1e-6;

fn close(got: f64, want: f64, what: &str) {
    assert!((got - want).abs() <= 1e-6 * want.abs().max(1e-300), "{what}: {got} vs reference {want}");
}

/// Three count histograms (R, F, M): one customer moves one count in each.
fn rfm() -> Sensitivity {
    Sensitivity::counts(3)
}

#[test]
fn a_single_release_by_one_node() {
    let c = Charge::distributed(rfm(), 195, 1, 50.0);
    assert!(c.xi.abs() < f64::MIN_POSITIVE, "one node's noise has no τ term");
    close(c.rho, 0.03, "ρ");
    close(c.epsilon(DELTA).0, 1.1181687205814117, "ε");
}

#[test]
fn a_four_pass_rfm_analysis() {
    let c = Charge::distributed(rfm(), 195, 1, 50.0).times(4);
    close(c.rho, 0.12, "ρ");
    close(c.epsilon(DELTA).0, 2.3664513487122654, "ε");
}

#[test]
fn twelve_analyses_in_a_month() {
    let analysis = Charge::distributed(rfm(), 195, 1, 50.0).times(4);
    let month = (0..12).fold(Charge::default(), |m, _| m.compose(analysis));
    close(month.rho, 1.44, "ρ");
    close(month.epsilon(DELTA).0, 9.615389993163014, "ε");
}

/// Twelve nodes of σ² = 4 give the total variance 48 of one Gaussian; their τ·d is
/// below 10⁻¹³, so ε equals the Gaussian's.
#[test]
fn twelve_nodes_with_negligible_tau() {
    let c = Charge::distributed(rfm(), 195, 12, 4.0);
    assert!(c.xi > 0.0 && c.xi < 1e-13, "{}", c.xi);
    close(c.rho, 0.03125, "ρ");
    close(c.epsilon(DELTA).0, 1.1431687205814116, "ε");
}

#[test]
fn distributed_noise_over_five_nodes_with_the_tau_term() {
    let c = Charge::distributed(rfm(), 200, 5, 1.0).times(4);
    close(c.rho, 1.2, "ρ");
    close(c.xi, 0.43328766191636453, "ξ = 4·τ·d");
    close(c.epsilon(DELTA).0, 9.088677655079378, "ε");
}

#[test]
fn distributed_noise_over_fifty_nodes_with_the_tau_term() {
    let c = Charge::distributed(rfm(), 100, 50, 0.5);
    close(c.rho, 0.06, "ρ");
    close(c.xi, 13.61640184433884, "ξ = τ·d");
    close(c.epsilon(DELTA).0, 15.240798998342036, "ε");
    // σ ≥ 2 per node makes τ negligible again (12 releases of 10,000 words).
    let c = Charge::distributed(rfm(), 10_000, 50, 4.0).times(12);
    close(c.rho, 0.09, "ρ");
    close(c.xi, 8.588615577131335e-12, "ξ");
    close(c.epsilon(DELTA).0, 2.023043523762256, "ε");
}
