//! Issue 13: the HQ side of a CLV fit (`fedcrm hq train clv`): the progress line of each
//! round, and the fitted model as a table with what each parameter means, or JSON.
//! Pure presentation, no networking.

use fedcrm_model::clv::artifact::ClvModel;
use fedcrm_protocol::pb;
use serde::Serialize;

/// One round's progress, as the analyst sees it.
#[derive(Debug, Clone, Serialize)]
pub struct ClvRoundRow {
    pub round: u32,
    pub model: String,
    pub customers: u64,
    pub log_likelihood: f64,
    pub gradient_max: f64,
    pub params: Vec<f64>,
}

impl ClvRoundRow {
    pub fn new(p: &pb::ClvRoundProgress) -> Self {
        Self {
            round: p.round,
            model: p.model.clone(),
            customers: p.customers,
            log_likelihood: p.log_likelihood,
            gradient_max: p.gradient_max,
            params: p.params.clone(),
        }
    }

    /// `round 12 bg-nbd: 23,570 customers, ln L −95368.4439, max |gradient| 3.1e-6`.
    pub fn line(&self) -> String {
        format!(
            "round {} {}: {} customers, ln L {:.4}, max |gradient| {:.1e}",
            self.round, self.model, self.customers, self.log_likelihood, self.gradient_max
        )
    }
}

/// `hq train clv --json`: the fitted parameters at the top level, then the rest.
#[derive(Debug, Clone, Serialize)]
pub struct ClvTrainView {
    pub model_id: String,
    pub sha256: String,
    /// BG/NBD: the purchase rate λ ~ Gamma(r, α) while alive.
    pub r: f64,
    pub alpha: f64,
    /// BG/NBD: the dropout probability after each purchase ~ Beta(a, b).
    pub a: f64,
    pub b: f64,
    /// BG/NBD's Σ ln L over its customers.
    pub log_likelihood: f64,
    /// Gamma-Gamma: a transaction's value ~ Gamma(p, ν), ν ~ Gamma(q, γ).
    pub p: f64,
    pub q: f64,
    pub gamma: f64,
    pub gamma_gamma_log_likelihood: f64,
    pub customers: u64,
    pub repeat_customers: u64,
    pub time_unit: String,
    pub calibration_end: String,
    pub rounds: u32,
    pub nodes: Vec<String>,
    pub exits: Vec<String>,
    pub history: Vec<ClvRoundRow>,
    /// The model as registered.
    pub model: ClvModel,
}

impl ClvTrainView {
    /// The view of a fit; `Err` when the coordinator's model does not parse.
    pub fn new(t: &pb::ClvTrained, rounds: &[pb::ClvRoundProgress]) -> anyhow::Result<Self> {
        let model: ClvModel = serde_json::from_str(&t.model_json)
            .map_err(|e| anyhow::anyhow!("the coordinator's CLV model does not parse: {e}"))?;
        let (b, g) = (&model.bg_nbd, &model.gamma_gamma);
        Ok(Self {
            model_id: t.model_id.clone(),
            sha256: t.sha256.clone(),
            r: b.params.r,
            alpha: b.params.alpha,
            a: b.params.a,
            b: b.params.b,
            log_likelihood: b.log_likelihood,
            p: g.params.p,
            q: g.params.q,
            gamma: g.params.gamma,
            gamma_gamma_log_likelihood: g.log_likelihood,
            customers: b.customers,
            repeat_customers: g.customers,
            time_unit: model.time_unit.as_str().into(),
            calibration_end: fedcrm_analysis::date::format_date(model.calibration_end),
            rounds: t.rounds,
            nodes: t.nodes.clone(),
            exits: t.exits.clone(),
            history: rounds.iter().map(ClvRoundRow::new).collect(),
            model,
        })
    }
}

/// `hq train clv`: the fit, each parameter with its meaning.
pub fn clv_train_text(v: &ClvTrainView) -> String {
    let unit = v.time_unit.trim_end_matches('s');
    let mut s = format!(
        "fitted {} over {} nodes in {} secure rounds (registered, not published); calibration to {}, time in {}\n",
        v.model_id,
        v.nodes.len(),
        v.rounds,
        v.calibration_end,
        v.time_unit
    );
    s.push_str(&format!(
        "  BG/NBD over {} customers: ln L = {:.4} ({} rounds)\n",
        v.customers, v.log_likelihood, v.model.bg_nbd.evaluations
    ));
    let rows = [
        ("r", v.r, "shape of the purchase rate across customers".to_string()),
        ("alpha", v.alpha, format!("its scale: the mean rate is r/alpha = {:.4} purchases a {unit}", v.r / v.alpha)),
        ("a", v.a, "dropout after a purchase ~ Beta(a, b)".to_string()),
        ("b", v.b, format!("the mean dropout probability is a/(a+b) = {:.3}", v.a / (v.a + v.b))),
    ];
    for (name, value, meaning) in rows {
        s.push_str(&format!("    {name:<6} {value:>12.6}   {meaning}\n"));
    }
    s.push_str(&format!(
        "  Gamma-Gamma over {} customers with a repeat purchase: ln L = {:.4} ({} rounds)\n",
        v.repeat_customers, v.gamma_gamma_log_likelihood, v.model.gamma_gamma.evaluations
    ));
    let mean = if v.q > 1.0 { format!("{:.2}", v.p * v.gamma / (v.q - 1.0)) } else { "undefined (q ≤ 1)".into() };
    let rows = [
        ("p", v.p, "shape of one transaction's value".to_string()),
        ("q", v.q, "shape of the customers' spend scale".to_string()),
        ("gamma", v.gamma, format!("its scale: the mean transaction value is p·gamma/(q−1) = {mean}")),
    ];
    for (name, value, meaning) in rows {
        s.push_str(&format!("    {name:<6} {value:>12.6}   {meaning}\n"));
    }
    for (model, reason) in [("BG/NBD", v.model.bg_nbd.stop_reason), ("Gamma-Gamma", v.model.gamma_gamma.stop_reason)] {
        if reason == fedcrm_model::clv::fit::Reason::Bound {
            s.push_str(&format!(
                "  warning: the {model} likelihood still rises at the edge of the parameters' range (e^±{}): the data \
                 do not pin a parameter down (e.g. spend that hardly varies between customers); its values are that \
                 edge, and its forecasts the limit they tend to\n",
                fedcrm_model::clv::fit::FIT_BOUND
            ));
        }
    }
    if let Some(dp) = &v.model.provenance.dp {
        s.push_str(&format!(
            "  differential privacy: every round noised, each customer's terms clamped to the stated bounds; the \
             customer counts and ln L are noised too, and each model's fit ends when its planned rounds are used. \
             It cost each node ε = {:.3} at δ = {:.0e} (ρ = {:.4})\n",
            dp.epsilon, dp.delta, dp.rho
        ));
    }
    for e in &v.exits {
        s.push_str(&format!("  left: {e}\n"));
    }
    s.push_str(&format!("publish it for the nodes with: fedcrm hq publish {}\n", v.model_id));
    s
}
