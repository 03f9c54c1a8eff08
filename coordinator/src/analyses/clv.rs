//! Issue 13: the customer-lifetime-value fit as a [`Driver`]. The BG/NBD model, then the
//! Gamma-Gamma model, each fitted by BFGS over its log-parameters
//! (`fedcrm_model::clv::fit`) where every evaluation of the likelihood and its gradient
//! is one secure round over the analysis's one population (a node that drops after its
//! masked vector left makes the round be retried, as for churn). The optimiser reads
//! only the summed words, through the release door ([`release::model_sums`]); the
//! fitted model is released ([`release::model`]) and registered, unpublished.
//!
//! Under differential privacy every round carries the customer-level mechanism of
//! churn's Newton rounds (`DpPlan`): the analyst's ε for the whole fit becomes a total
//! ρ split evenly over the plan's T = [`DP_BG_NBD_ROUNDS`] + [`DP_GAMMA_GAMMA_ROUNDS`] +
//! [`DP_RETRIES`] rounds, the whole checked against every node's budget before the first
//! (each round is charged as it runs). Each customer's terms are clamped to the stated
//! bounds (`fedcrm_model::clv::sums::TermClips::default_for`) on the node; the optimiser
//! treats the objective as noised — its line search follows the slope along the
//! direction, not the noised value — and each model's fit ends when its rounds are used,
//! reported as such.
//! The spend model is then fitted over (ln p, ln(q − 1), ln γ), so that q > 1 and the
//! mean spend pγ/(q − 1) exists however the noise falls (a noised fit over ln q ended at
//! q < 1 in about one run in seven on CDNOW, a model that values no spend); the nodes
//! still evaluate at the round's (ln p, ln q, ln γ) and the gradient follows by the
//! chain rule.

use fedcrm_dp::accounting::Charge;
use fedcrm_dp::sampler::Variance;
use fedcrm_model::clv::artifact::{ClvModel, Fit};
use fedcrm_model::clv::fit::Reason;
use fedcrm_model::clv::fit::{Bfgs, Next, Optimum, Stopping};
use fedcrm_model::clv::summary::TimeUnit;
use fedcrm_model::clv::sums::{Evaluation, Likelihood, TermClips};
use fedcrm_model::clv::{bgnbd, gamma_gamma};
use fedcrm_protocol::wire::AnalysisKind;
use fedcrm_protocol::wire::Noise;
use fedcrm_protocol::wire::churn::MAX_DP_ROUNDS;
use fedcrm_protocol::wire::clv::{ClvDp, ClvRound, ClvSetup};
use time::Date;

use super::churn::{DP_RETRIES, DpPlan, DpTarget, most_retries};
use super::{AnalysisError, AnalysisRequest, Context, Driver, Finished, Step};
use crate::Coordinator;
use crate::release;
use crate::round::RoundOutput;

/// What the analyst asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClvRequest {
    pub unit: TimeUnit,
    pub first_purchase: Option<(Date, Date)>,
    /// Each model's optimiser's stopping rule (its `max_evaluations` are rounds).
    pub stopping: Stopping,
    /// Under differential privacy: the whole fit's target (ε, δ) per node.
    pub privacy: DpTarget,
    /// Under differential privacy: the rounds of the BG/NBD and the Gamma-Gamma fit,
    /// the whole plan checked against each budget before the first.
    pub dp_rounds: [u32; 2],
}

/// BG/NBD rounds under DP unless the analyst asks otherwise. From a start at θ = 0, 20
/// noised evaluations bring CDNOW's fit to the accuracy the noise allows; more rounds
/// leave each less of the budget (README, "CLV under differential privacy").
pub const DP_BG_NBD_ROUNDS: u32 = 20;

/// Gamma-Gamma rounds under DP unless the analyst asks otherwise.
pub const DP_GAMMA_GAMMA_ROUNDS: u32 = 12;

/// Under DP the optimiser treats objective changes within this many standard deviations
/// of its noise as noise.
const NOISE_SIGMAS: f64 = 3.0;

impl ClvRequest {
    pub fn new(unit: TimeUnit) -> Self {
        let stopping =
            Stopping { max_evaluations: 90, bound: fedcrm_model::clv::fit::FIT_BOUND, ..Stopping::default() };
        Self {
            unit,
            first_purchase: None,
            stopping,
            privacy: DpTarget::default(),
            dp_rounds: [DP_BG_NBD_ROUNDS, DP_GAMMA_GAMMA_ROUNDS],
        }
    }
}

/// One evaluation round's figures, for the progress line.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Progress {
    pub round: u32,
    /// `bg-nbd` or `gamma-gamma`.
    pub model: &'static str,
    pub customers: u64,
    pub log_likelihood: f64,
    /// The largest gradient component of the mean log-likelihood.
    pub gradient_max: f64,
    /// The parameters the round evaluated.
    pub params: Vec<f64>,
}

#[derive(Debug)]
enum Phase {
    BgNbd(Bfgs),
    GammaGamma { bg_nbd: Fit<bgnbd::Params>, optimiser: Bfgs },
}

/// The CLV analysis as a [`Driver`].
#[derive(Debug)]
pub struct ClvDriver {
    request: ClvRequest,
    analysis: AnalysisRequest,
    phase: Phase,
    /// Under DP: the plan, once the noise level is known.
    dp: Option<DpPlan>,
    /// The round in flight (under DP its grid, seed and bounds decode it).
    sent: Option<ClvRound>,
    progress: Option<tokio::sync::mpsc::UnboundedSender<Progress>>,
}

fn model_name(l: Likelihood) -> &'static str {
    match l {
        Likelihood::BgNbd => "bg-nbd",
        Likelihood::GammaGamma => "gamma-gamma",
    }
}

impl ClvDriver {
    pub fn new(request: ClvRequest, analysis: AnalysisRequest) -> Self {
        Self {
            phase: Phase::BgNbd(Bfgs::new(vec![0.0; 4], request.stopping)),
            request,
            analysis,
            dp: None,
            sent: None,
            progress: None,
        }
    }

    /// Whether `l`'s optimiser works over ln(q − 1) instead of ln q (module doc).
    fn q_above_one(&self, l: Likelihood) -> bool {
        self.dp.is_some() && l == Likelihood::GammaGamma
    }

    /// The round's log-parameters for the optimiser's point `theta`.
    fn round_params(&self, l: Likelihood, theta: &[f64]) -> Vec<f64> {
        if self.q_above_one(l) {
            return gamma_gamma::log_params_q_above_one(theta).to_vec();
        }
        theta.to_vec()
    }

    /// The optimiser's gradient at `theta` from the round's (over its log-parameters).
    fn optimiser_gradient(&self, l: Likelihood, theta: &[f64], gradient: Vec<f64>) -> Vec<f64> {
        if self.q_above_one(l) {
            return gamma_gamma::gradient_q_above_one(theta, gradient);
        }
        gradient
    }

    /// A model's optimiser's stopping rule: under DP its rounds are the plan's.
    fn stopping(&self, which: Likelihood) -> Stopping {
        match self.dp {
            None => self.request.stopping,
            Some(_) => {
                let k = usize::from(which == Likelihood::GammaGamma);
                Stopping { max_evaluations: self.request.dp_rounds[k], noised: true, ..self.request.stopping }
            }
        }
    }

    pub fn with_progress(mut self, tx: tokio::sync::mpsc::UnboundedSender<Progress>) -> Self {
        self.progress = Some(tx);
        self
    }

    /// The next round's query, remembered to decode its sum. Under DP with the stated
    /// bounds, its own grid and a fresh rotation seed.
    fn round(&mut self, likelihood: Likelihood, theta: Vec<f64>) -> Result<AnalysisKind, AnalysisError> {
        let setup = ClvSetup { unit: self.request.unit, first_purchase: self.request.first_purchase };
        let log_params = self.round_params(likelihood, &theta);
        let mut round = ClvRound { setup, likelihood, log_params, dp: None };
        if let Some(plan) = &self.dp {
            let clips = TermClips::default_for(likelihood, self.request.unit);
            let mechanism = plan.round(likelihood.words(), clips.term_norm()).map_err(Self::bad)?;
            round.dp = Some(ClvDp { mechanism, clips });
        }
        self.sent = Some(round.clone());
        Ok(AnalysisKind::Clv(Box::new(round)))
    }

    /// The round just run's evaluation: exact words decoded, or under DP the noised reals
    /// scaled back by the round's bounds; and how far its objective may be off (rounding,
    /// or [`NOISE_SIGMAS`] of the noise).
    fn evaluation(
        &self,
        sent: &ClvRound,
        words: &[u64],
        contributors: u64,
    ) -> Result<(Evaluation, f64), AnalysisError> {
        let (Some(dp), Some(m), Some(plan)) = (&sent.dp, sent.mechanism(), &self.dp) else {
            let e = Evaluation::decode(sent.likelihood, words).map_err(Self::bad)?;
            let rounding = e.rounding(contributors);
            return Ok((e, rounding));
        };
        let reals = m.decode(&dp.mechanism.seed(), words).map_err(Self::bad)?;
        let e = Evaluation::from_noised(sent.likelihood, &reals, &dp.clips).map_err(Self::bad)?;
        // Each decoded coordinate carries the contributors' noise, variance n·σ²·γ².
        let sd = m.gamma() * (contributors as f64 * plan.variance()).sqrt() * dp.clips.log_likelihood;
        Ok((e.clone(), NOISE_SIGMAS * sd / e.customers.max(1) as f64))
    }

    /// The optimiser of the model being fitted.
    fn optimiser(&self) -> &Bfgs {
        match &self.phase {
            Phase::BgNbd(o) => o,
            Phase::GammaGamma { optimiser, .. } => optimiser,
        }
    }

    fn bad(why: impl std::fmt::Display) -> AnalysisError {
        AnalysisError::Model(why.to_string())
    }

    /// An optimiser's result as a fit; `Err` when it ran out of rounds — except under DP,
    /// where each model's fit ends when its planned rounds are used.
    fn fit<P>(o: &Optimum, customers: u64, params: P, model: &str, dp: bool) -> Result<Fit<P>, AnalysisError> {
        let planned_rounds_used = dp && o.reason == Reason::MaxEvaluations;
        if !(o.reason.converged() || planned_rounds_used) {
            return Err(Self::bad(format!(
                "the {model} fit did not converge in {} rounds (largest gradient component {:.2e}); nothing is \
                 released — raise --max-rounds, or fit one cohort (--first-purchase)",
                o.evaluations,
                o.gradient.iter().fold(0.0f64, |m, g| m.max(g.abs()))
            )));
        }
        Ok(Fit {
            params,
            log_likelihood: -o.value * customers as f64,
            customers,
            evaluations: o.evaluations,
            stop_reason: o.reason,
            gradient_max: o.gradient.iter().fold(0.0f64, |m, g| m.max(g.abs())),
        })
    }
}

impl Driver for ClvDriver {
    type Outcome = ClvModel;

    fn kind(&self) -> &'static str {
        "clv-model"
    }

    fn first(&mut self) -> AnalysisKind {
        // Not an unwrap, but the same reason: both models' grids were checked to build in
        // `noise_variance` (which refuses the analysis otherwise); an exact round needs
        // none. The fallback is never taken.
        self.round(Likelihood::BgNbd, vec![0.0; 4]).unwrap_or_else(|_| {
            let setup = ClvSetup { unit: self.request.unit, first_purchase: self.request.first_purchase };
            AnalysisKind::Clv(Box::new(ClvRound {
                setup,
                likelihood: Likelihood::BgNbd,
                log_params: vec![0.0; 4],
                dp: None,
            }))
        })
    }

    /// Every round at its share of ρ, T rounds: both models' and [`DP_RETRIES`] retries.
    fn plan_charge(&self, _noise: &Noise) -> Option<(Charge, usize)> {
        self.dp.map(|p| p.charge())
    }

    /// Under DP, the plan's [`DP_RETRIES`] spare rounds (each node refuses any round
    /// beyond the plan's T).
    fn most_retries(&self) -> (usize, &'static str) {
        most_retries(self.dp.as_ref())
    }

    /// The analyst's ε for the whole fit → ρ in total, its share per round over both
    /// models' rounds and the retries, and the σ² that leaves each round's grid fine.
    fn noise_variance(&mut self, floor: Variance, honest: usize) -> Result<Variance, String> {
        let [bg, gg] = self.request.dp_rounds;
        let terms: Vec<(usize, f64)> = [Likelihood::BgNbd, Likelihood::GammaGamma]
            .iter()
            .map(|&l| (l.words(), TermClips::default_for(l, self.request.unit).term_norm()))
            .collect();
        let longest = terms.iter().map(|t| t.0.next_power_of_two()).max().unwrap_or(1);
        let rounds = bg.saturating_add(gg).saturating_add(DP_RETRIES);
        if rounds > MAX_DP_ROUNDS {
            return Err(format!(
                "a CLV fit under differential privacy may plan at most {MAX_DP_ROUNDS} rounds; {bg} BG/NBD + {gg} \
                 Gamma-Gamma + {DP_RETRIES} spare is {rounds}: lower --max-rounds"
            ));
        }
        let (plan, variance) = DpPlan::new(self.request.privacy, rounds, longest, honest, floor, &terms)?;
        self.dp = Some(plan);
        // The BG/NBD optimiser runs the plan's rounds, and its first round is re-made with
        // the mechanism (`first` is called after this).
        self.phase = Phase::BgNbd(Bfgs::new(vec![0.0; 4], self.stopping(Likelihood::BgNbd)));
        Ok(variance)
    }

    fn next(&mut self, out: &RoundOutput, cx: &Context<'_>) -> Result<Step<ClvModel>, AnalysisError> {
        let sent = self.sent.clone().ok_or_else(|| Self::bad("no round in flight (our bug)"))?;
        let query = AnalysisKind::Clv(Box::new(sent.clone()));
        let words = release::model_sums(out, &cx.rules, query.vector_len())?;
        let contributors = out.contributors.len() as u64;
        let (e, noise) = self.evaluation(&sent, &words, contributors)?;
        if e.customers == 0 {
            return Err(Self::bad(format!(
                "no customer of any node is in the {} likelihood (no purchase by the calibration end in the cohort{})",
                model_name(sent.likelihood),
                if sent.likelihood == Likelihood::GammaGamma { ", or no repeat purchase" } else { "" }
            )));
        }
        // The release door's minimum cohort holds for the customers a likelihood sums,
        // as for any count it shows (attack review of issue 13, H1).
        if e.customers < cx.rules.min_cohort {
            return Err(Self::bad(format!(
                "only {} customers of all nodes are in the {} likelihood, fewer than the minimum cohort {}; nothing \
                 is released",
                e.customers,
                model_name(sent.likelihood),
                cx.rules.min_cohort
            )));
        }
        let (value, round_gradient) = e.objective();
        if let Some(tx) = &self.progress {
            let _ = tx.send(Progress {
                round: cx.rounds.len() as u32,
                model: model_name(sent.likelihood),
                customers: e.customers,
                log_likelihood: e.log_likelihood,
                gradient_max: round_gradient.iter().fold(0.0f64, |m, g| m.max(g.abs())),
                params: sent.log_params.iter().map(|t| t.exp()).collect(),
            });
        }
        let Next::Evaluate(theta) = self.optimiser().next() else {
            return Err(Self::bad("the optimiser asked for no round (our bug)"));
        };
        let gradient = self.optimiser_gradient(sent.likelihood, &theta, round_gradient);
        let optimiser = match &mut self.phase {
            Phase::BgNbd(o) => o,
            Phase::GammaGamma { optimiser, .. } => optimiser,
        };
        optimiser.set_noise(noise);
        optimiser.tell(value, gradient).map_err(Self::bad)?;
        let next = optimiser.next();
        match (next, &self.phase) {
            (Next::Evaluate(theta), _) => Ok(Step::Round(self.round(sent.likelihood, theta)?)),
            (Next::Done(o), Phase::BgNbd(_)) => {
                let t = &o.theta;
                let params = bgnbd::Params::from_log(&[t[0], t[1], t[2], t[3]]);
                let bg_nbd = Self::fit(&o, e.customers, params, "BG/NBD", self.dp.is_some())?;
                let optimiser = Bfgs::new(vec![0.0; 3], self.stopping(Likelihood::GammaGamma));
                self.phase = Phase::GammaGamma { bg_nbd, optimiser };
                Ok(Step::Round(self.round(Likelihood::GammaGamma, vec![0.0; 3])?))
            }
            (Next::Done(o), Phase::GammaGamma { bg_nbd, .. }) => {
                let t = self.round_params(Likelihood::GammaGamma, &o.theta);
                let params = gamma_gamma::Params::from_log(&[t[0], t[1], t[2]]);
                let gamma_gamma = Self::fit(&o, e.customers, params, "Gamma-Gamma", self.dp.is_some())?;
                let model = ClvModel {
                    bg_nbd: bg_nbd.clone(),
                    gamma_gamma,
                    calibration_end: self.analysis.reference_date,
                    time_unit: self.request.unit,
                    first_purchase: self.request.first_purchase,
                    provenance: cx.provenance(out, &self.analysis, self.dp.map(|plan| plan.spent(cx.charges))),
                };
                // The nodes check a model before they score with it; a model they would
                // refuse is not registered.
                model.check().map_err(Self::bad)?;
                // Published figures: 7 parameters, 2 log-likelihoods, 2 customer counts.
                release::model(out, &cx.rules, cx.audit, (cx.analysis, "clv-model"), cx.rounds.to_vec(), 11)?;
                Ok(Step::Done(model))
            }
        }
    }
}

/// A fitted CLV model, registered (unpublished) under `model_id`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClvRelease {
    pub model_id: String,
    pub sha256: String,
    pub model: ClvModel,
}

impl Coordinator {
    /// Fit the CLV model over all connected nodes and register it, unpublished.
    pub async fn run_clv(
        &self,
        analysis: &AnalysisRequest,
        request: ClvRequest,
        progress: Option<tokio::sync::mpsc::UnboundedSender<Progress>>,
    ) -> Result<Finished<ClvRelease>, AnalysisError> {
        let mut driver = ClvDriver::new(request, analysis.clone());
        if let Some(tx) = progress {
            driver = driver.with_progress(tx);
        }
        tracing::info!(unit = request.unit.as_str(), "clv fit requested");
        let done = self.run_analysis(analysis, driver).await?;
        let (id, sha256) =
            self.register_model(fedcrm_model::clv::artifact::NAME, fedcrm_model::clv::artifact::KIND, &done.release)?;
        Ok(Finished {
            release: ClvRelease { model_id: id, sha256, model: done.release },
            rounds: done.rounds,
            exits: done.exits,
        })
    }
}
