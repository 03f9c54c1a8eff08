//! Issue 11: the churn model's driver. One `churn-model` analysis over one fixed
//! population: a moments round (the global standardisation constants from the summed
//! count, Σx and Σx² — never per-node statistics; features constant over every node's
//! data are dropped), training rounds — federated Newton (each node's gradient and
//! Hessian sums; a few rounds for a few dozen features) or FedAvg (local epochs, a
//! server optimizer) — and one evaluation round on the held-out customers (log-loss,
//! accuracy, ROC AUC from summed score histograms with its binning bound,
//! calibration). The trained model is released through the release door and
//! registered, unpublished, in the model registry.
//!
//! Under differential privacy (Newton only; FedAvg is refused up front, saying to use
//! Newton) every round carries the customer-level distributed discrete Gaussian
//! (`fedcrm_dp::vector::CustomerSum`): the analyst's ε for the whole training (at δ)
//! becomes a total ρ ([`fedcrm_dp::accounting::rho_for_epsilon`]), split evenly over the
//! plan's most rounds T = 1 moments + the most Newton rounds + 1 evaluation +
//! [`DP_RETRIES`] retries. One noise variance σ² for the analysis, large enough that
//! every round's grid leaves the rounding a share of at most about 1 % of its
//! sensitivity (Δ₂ = s + √d' with s ≥ 100·√d'); each round's grid γ = c/s then makes it
//! cost exactly its share ([`CustomerSum::grid_for`]). Decoding: the sum's words as i64
//! × γ, the inverse rotation, the padding dropped; noised moments get a floor on the
//! variance, a noised Hessian has its eigenvalues raised to at least 10⁻²·n
//! ([`fedcrm_model::terms::positive_definite`]), noised counts are clamped at 0. The
//! artifact's provenance records what the training cost each node.

use fedcrm_dp::accounting::{Charge, rho_for_epsilon, tau};
use fedcrm_dp::sampler::Variance;
use fedcrm_dp::vector::{CustomerSum, MAX_CUSTOMERS};
use fedcrm_model::artifact::{ChurnModel, DpCharge, Metrics};
use fedcrm_model::eval::decode_eval;
use fedcrm_model::features::FeatureSpec;
use fedcrm_model::fedavg::{LocalTraining, Server, ServerOptimizer, decode_update};
use fedcrm_model::logistic::{Logistic, NewtonNext, NewtonTraining, RoundReport, StopReason, Stopping};
use fedcrm_model::standardise::{Standardiser, decode_moments, without_constant};
use fedcrm_model::terms::{
    eval_clip, eval_from_sum, moments_clip, moments_from_sum, newton_clip, newton_from_sum, positive_definite,
};
use fedcrm_protocol::wire::churn::{ChurnRound, ChurnSetup, ChurnStep, ModelDp};
use fedcrm_protocol::wire::{AnalysisKind, Noise};

use super::{AnalysisError, AnalysisRequest, Context, Driver, Finished, MAX_ROUND_RETRIES, Step};
use crate::Coordinator;
use crate::release;
use crate::round::RoundOutput;

/// How the model is trained.
#[derive(Debug, Clone, PartialEq)]
pub enum Training {
    /// Federated Newton: each round sums gradients and Hessians; stops by `stopping`.
    Newton { lambda: f64, stopping: Stopping },
    /// FedAvg: `rounds` rounds of local training, averaged by example count, applied by
    /// the server optimizer.
    FedAvg { local: LocalTraining, rounds: u32, optimizer: ServerOptimizer },
}

/// What the analyst asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct ChurnRequest {
    pub spec: FeatureSpec,
    pub horizon_days: u32,
    pub training: Training,
    /// The holdout split's key: the same key gives the same split on every run.
    pub holdout_key: [u8; 32],
    pub test_fraction_bp: u32,
    /// Score bins of the evaluation's histograms (the AUC's resolution).
    pub bins: u32,
    /// Under differential privacy: the whole training's target (ε, δ) per node.
    pub privacy: DpTarget,
}

/// An analyst's privacy target for a whole training: (ε, δ)-DP per node, one customer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpTarget {
    pub epsilon: f64,
    pub delta: f64,
}

impl Default for DpTarget {
    /// ε = 4 at δ = 10⁻⁶, a node's default monthly budget.
    fn default() -> Self {
        Self { epsilon: 4.0, delta: 1e-6 }
    }
}

/// Retries a DP plan allows beyond its rounds: a retried round is charged again.
pub const DP_RETRIES: u32 = 2;

/// Newton rounds under DP unless the analyst asks otherwise: noise keeps the gradient
/// from the exact tolerance, so training runs its rounds, and fewer rounds leave each
/// more of the budget.
pub const DP_NEWTON_ROUNDS: u32 = 5;

/// Score bins of a DP evaluation: fewer bins, more customers per noised count.
pub const DP_BINS: u32 = 20;

/// Under DP the Hessian's eigenvalues are raised to at least this × n: it keeps a noised
/// step bounded (about 100·‖g‖/n) and acts as a ridge only in directions where H/n is
/// flatter than this — nearly collinear features, whose weights matter little to a
/// prediction.
pub const HESSIAN_FLOOR: f64 = 0.01;

/// The noise level makes each round's clip at least this many times √d' on the grid.
const GRID_HEADROOM: f64 = 100.0;

/// A DP model analysis's plan (churn, CLV), fixed before its first round.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpPlan {
    target: DpTarget,
    rounds: u32,
    round_rho: f64,
    round_xi: f64,
    variance: f64,
    honest: usize,
}

impl DpPlan {
    /// The analyst's ε for the whole analysis → ρ in total, its share per round over
    /// `rounds`, and the σ² that leaves each round's grid fine (s ≥ 100·√d' for the
    /// longest padded vector `longest_padded`), at least the invitees' `floor`. Each of
    /// `rounds_terms` (term length, clip) must build a grid at it. `Err` refuses the
    /// analysis, saying why.
    pub fn new(
        target: DpTarget,
        rounds: u32,
        longest_padded: usize,
        honest: usize,
        floor: Variance,
        round_terms: &[(usize, f64)],
    ) -> Result<(Self, Variance), String> {
        let total = rho_for_epsilon(target.epsilon, target.delta).ok_or_else(|| {
            format!("--epsilon {} at δ = {:e}: need a finite ε > 0 and 0 < δ < 1", target.epsilon, target.delta)
        })?;
        let round_rho = total / f64::from(rounds);
        let root_d = (longest_padded as f64).sqrt();
        let k = honest.max(1);
        let needed = ((GRID_HEADROOM + 1.0) * root_d).powi(2) / (2.0 * k as f64 * round_rho);
        if !(needed.is_finite() && needed < 2f64.powi(53)) {
            return Err(format!("ε = {} is too small for {rounds} rounds: the noise would not fit", target.epsilon));
        }
        let variance = Variance::integer(needed.ceil() as u64).map_err(|e| e.to_string())?.max(floor);
        let v = variance.as_f64();
        // ξ = τ·d' per round, τ for up to 10,000 nodes' noise counted (τ grows with k, and
        // a later round over fewer invitees can count on more of them); 0 at this σ².
        let round_xi = tau(10_000, v) * longest_padded as f64;
        // Every round type's grid must build (so no round can fail on it later).
        for &(len, clip) in round_terms {
            CustomerSum::grid_for(len, clip, v, k, round_rho)
                .and_then(|gamma| CustomerSum::new(len, clip, gamma, MAX_CUSTOMERS))
                .map_err(|e| format!("ε = {} over {rounds} rounds: {e}", target.epsilon))?;
        }
        Ok((Self { target, rounds, round_rho, round_xi, variance: v, honest: k }, variance))
    }

    /// One round's mechanism for terms of `len` reals clipped to ℓ2 ≤ `clip`: the grid
    /// that makes it cost exactly its share at the plan's σ², and a fresh rotation seed.
    pub fn round(&self, len: usize, clip: f64) -> Result<ModelDp, String> {
        let gamma =
            CustomerSum::grid_for(len, clip, self.variance, self.honest, self.round_rho).map_err(|e| e.to_string())?;
        // The nodes build the same mechanism from the signed numbers; it must build here.
        CustomerSum::new(len, clip, gamma, MAX_CUSTOMERS).map_err(|e| e.to_string())?;
        let mut seed = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
            .map_err(|_| "the system random number generator failed".to_string())?;
        Ok(ModelDp {
            clip,
            gamma,
            rotation_seed: seed,
            max_rounds: self.rounds,
            max_customers: MAX_CUSTOMERS,
            round_rho: self.round_rho,
            round_xi: self.round_xi,
        })
    }

    /// Every round at its share of ρ, T rounds: what the whole plan may charge each node,
    /// checked against every budget before the first round (each round is charged as it
    /// runs).
    pub fn charge(&self) -> (Charge, usize) {
        (Charge { rho: self.round_rho, xi: self.round_xi }.times(self.rounds as usize), self.rounds as usize)
    }

    /// What the rounds run cost each contributor (`charges`), for the artifact.
    pub fn spent(&self, charges: &[Charge]) -> DpCharge {
        let spent = charges.iter().fold(Charge::default(), |a, c| a.compose(*c));
        DpCharge { rho: spent.rho, xi: spent.xi, epsilon: spent.epsilon(self.target.delta).0, delta: self.target.delta }
    }

    /// The per-node noise variance σ² on the grid.
    pub fn variance(&self) -> f64 {
        self.variance
    }
}

/// How many rounds a model analysis may retry: under DP (`plan`) its [`DP_RETRIES`]
/// spare rounds — each node checked them against its budget with the plan and refuses
/// any round beyond the plan's T, so the coordinator stops at the same count with a message rather than
/// asking for a round every node refuses; exact, the analysis-wide most.
pub(super) fn most_retries(plan: Option<&DpPlan>) -> (usize, &'static str) {
    match plan {
        Some(_) => (DP_RETRIES as usize, "the DP plan's spare rounds, within the budget checked before the first"),
        None => (MAX_ROUND_RETRIES, "the most an analysis retries"),
    }
}

/// The default holdout key: SHA-256 of a fixed label, so the split is the same on every
/// run (a public key: it decides which customers are held out, nothing about them).
pub fn default_holdout_key() -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, b"fedcrm churn holdout v1");
    let mut k = [0u8; 32];
    k.copy_from_slice(d.as_ref());
    k
}

impl ChurnRequest {
    /// Newton with λ = 10⁻⁴ over the full feature spec, 30 % held out, 1,000 bins.
    pub fn newton(horizon_days: u32) -> Self {
        Self {
            spec: FeatureSpec::full(),
            horizon_days,
            training: Training::Newton { lambda: 1e-4, stopping: Stopping::default() },
            holdout_key: default_holdout_key(),
            test_fraction_bp: 3000,
            bins: 1000,
            privacy: DpTarget::default(),
        }
    }

    /// Newton under differential privacy at `epsilon` for the whole training (δ = 10⁻⁶):
    /// [`DP_NEWTON_ROUNDS`] Newton rounds, [`DP_BINS`] score bins.
    pub fn newton_dp(horizon_days: u32, epsilon: f64) -> Self {
        let mut r = Self::newton(horizon_days);
        r.training = Training::Newton {
            lambda: 1e-4,
            stopping: Stopping { max_rounds: DP_NEWTON_ROUNDS, ..Stopping::default() },
        };
        r.bins = DP_BINS;
        r.privacy = DpTarget { epsilon, ..DpTarget::default() };
        r
    }

    fn most_rounds(&self) -> u32 {
        2 + match &self.training {
            Training::Newton { stopping, .. } => stopping.max_rounds,
            Training::FedAvg { rounds, .. } => *rounds,
        }
    }
}

/// One training round's figures (for the progress line and the artifact).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Progress {
    pub round: u32,
    pub phase: &'static str,
    pub examples: u64,
    pub objective: Option<f64>,
    pub gradient_norm: Option<f64>,
}

#[derive(Debug)]
enum Phase {
    Moments,
    Newton(NewtonTraining),
    FedAvg { server: Server, weights: Vec<f64>, round: u32 },
    Evaluating { model: Logistic, reason: StopReason, history: Vec<RoundReport> },
}

/// The churn analysis as a [`Driver`].
#[derive(Debug)]
pub struct ChurnDriver {
    request: ChurnRequest,
    analysis: AnalysisRequest,
    setup: ChurnSetup,
    standardiser: Option<Standardiser>,
    phase: Phase,
    train_examples: u64,
    /// Under DP: the plan, once the noise level is known.
    dp: Option<DpPlan>,
    /// The query of the round in flight (under DP its grid and rotation seed decode it).
    sent: Option<ChurnRound>,
    /// Called after every round with its figures.
    progress: Option<tokio::sync::mpsc::UnboundedSender<Progress>>,
}

impl ChurnDriver {
    pub fn new(request: ChurnRequest, analysis: AnalysisRequest) -> Self {
        let setup = ChurnSetup {
            spec: request.spec.clone(),
            horizon_days: request.horizon_days,
            holdout_key: request.holdout_key,
            test_fraction_bp: request.test_fraction_bp,
        };
        Self {
            request,
            analysis,
            setup,
            standardiser: None,
            phase: Phase::Moments,
            train_examples: 0,
            dp: None,
            sent: None,
            progress: None,
        }
    }

    /// Report each round's figures on `tx` (the CLI's progress bar).
    pub fn with_progress(mut self, tx: tokio::sync::mpsc::UnboundedSender<Progress>) -> Self {
        self.progress = Some(tx);
        self
    }

    /// The next round's query, remembered to decode its sum. Under DP with its own grid
    /// (the round's ρ share at the analysis's σ²) and a fresh rotation seed.
    fn round(&mut self, step: ChurnStep) -> Result<AnalysisKind, AnalysisError> {
        let mut round = ChurnRound { setup: self.setup.clone(), step, dp: None };
        if let Some(plan) = self.dp {
            let d = round.setup.spec.dim();
            let (len, clip) = match &round.step {
                ChurnStep::Moments => (round.term_len(), moments_clip(d)),
                ChurnStep::Newton { .. } => (round.term_len(), newton_clip(d)),
                ChurnStep::Evaluate { .. } => (round.term_len(), eval_clip()),
                ChurnStep::FedAvg { .. } => return Err(Self::bad(FEDAVG_DP)),
            };
            round.dp = Some(plan.round(len, clip).map_err(Self::bad)?);
        }
        self.sent = Some(round.clone());
        Ok(AnalysisKind::Churn(Box::new(round)))
    }

    /// The round just run's sum: exact words, or under DP the decoded reals.
    fn reals(&self, out: &RoundOutput, cx: &Context<'_>) -> Result<Sum, AnalysisError> {
        let sent = self.sent.as_ref().ok_or_else(|| Self::bad("no round in flight (our bug)"))?;
        let query = AnalysisKind::Churn(Box::new(sent.clone()));
        let words = release::model_sums(out, &cx.rules, query.vector_len())?;
        match (&sent.dp, sent.mechanism()) {
            (Some(dp), Some(m)) => Ok(Sum::Noised(m.decode(&dp.seed(), &words).map_err(Self::bad)?)),
            _ => Ok(Sum::Exact(words)),
        }
    }

    fn report(&self, p: Progress) {
        if let Some(tx) = &self.progress {
            let _ = tx.send(p);
        }
    }

    fn report_newton(&self, round: u32, r: Option<&RoundReport>) {
        if let Some(r) = r {
            self.report(Progress {
                round,
                phase: "newton",
                examples: r.examples,
                objective: Some(r.objective),
                gradient_norm: Some(r.gradient_norm),
            });
        }
    }

    fn training_step(&self, weights: &[f64], round: u32) -> ChurnStep {
        let standardiser = self.standardiser.clone().unwrap_or(Standardiser { mean: vec![], sd: vec![] });
        match &self.request.training {
            Training::Newton { .. } => ChurnStep::Newton { standardiser, weights: weights.to_vec() },
            Training::FedAvg { local, .. } => {
                ChurnStep::FedAvg { standardiser, weights: weights.to_vec(), local: *local, round: u64::from(round) }
            }
        }
    }

    fn evaluate(&mut self, model: &Logistic) -> Result<AnalysisKind, AnalysisError> {
        let standardiser = self.standardiser.clone().unwrap_or(Standardiser { mean: vec![], sd: vec![] });
        self.round(ChurnStep::Evaluate { standardiser, weights: model.weights.clone(), bins: self.request.bins })
    }

    /// The plan's most rounds: moments, training, evaluation, and the retries.
    fn dp_rounds(&self) -> u32 {
        self.request.most_rounds() + DP_RETRIES
    }

    /// The longest padded vector of the training's rounds.
    fn longest_padded(&self) -> usize {
        let d = self.setup.spec.dim();
        [1 + 2 * d, fedcrm_model::logistic::newton_len(d), ChurnRound::eval_layout(self.request.bins).len()]
            .into_iter()
            .map(usize::next_power_of_two)
            .max()
            .unwrap_or(1)
    }

    fn bad(why: impl std::fmt::Display) -> AnalysisError {
        AnalysisError::Model(why.to_string())
    }
}

impl Driver for ChurnDriver {
    type Outcome = ChurnModel;

    fn kind(&self) -> &'static str {
        "churn-model"
    }

    fn first(&mut self) -> AnalysisKind {
        // Not an unwrap, but the same reason: every round type's grid was checked to build
        // in `noise_variance` (which refuses the analysis otherwise); an exact round needs
        // none. The fallback is never taken.
        self.round(ChurnStep::Moments).unwrap_or_else(|_| {
            AnalysisKind::Churn(Box::new(ChurnRound { setup: self.setup.clone(), step: ChurnStep::Moments, dp: None }))
        })
    }

    /// Every round at its share of ρ, T rounds: moments, training, evaluation and
    /// [`DP_RETRIES`] retries.
    fn plan_charge(&self, _noise: &Noise) -> Option<(Charge, usize)> {
        self.dp.map(|p| p.charge())
    }

    /// Under DP, the plan's [`DP_RETRIES`] spare rounds: each node checked them against its
    /// budget with the plan and refuses any round beyond the plan's T, so the coordinator
    /// stops at the same count with a message rather than asking for a round every node
    /// refuses.
    fn most_retries(&self) -> (usize, &'static str) {
        most_retries(self.dp.as_ref())
    }

    /// The analyst's ε for the whole training → ρ in total, its share per round, and the
    /// σ² that leaves each round's grid fine (s ≥ 100·√d' for the longest vector).
    fn noise_variance(&mut self, floor: Variance, honest: usize) -> Result<Variance, String> {
        if matches!(self.request.training, Training::FedAvg { .. }) {
            return Err(FEDAVG_DP.into());
        }
        let d = self.setup.spec.dim();
        let terms = [
            (1 + 2 * d, moments_clip(d)),
            (fedcrm_model::logistic::newton_len(d), newton_clip(d)),
            (ChurnRound::eval_layout(self.request.bins).len(), eval_clip()),
        ];
        let (plan, variance) =
            DpPlan::new(self.request.privacy, self.dp_rounds(), self.longest_padded(), honest, floor, &terms)?;
        self.dp = Some(plan);
        Ok(variance)
    }

    fn next(&mut self, out: &RoundOutput, cx: &Context<'_>) -> Result<Step<ChurnModel>, AnalysisError> {
        let round = cx.rounds.len() as u32;
        match std::mem::replace(&mut self.phase, Phase::Moments) {
            Phase::Moments => {
                let moments = match self.reals(out, cx)? {
                    Sum::Exact(words) => decode_moments(&self.setup.spec, &words).map_err(Self::bad)?,
                    Sum::Noised(reals) => moments_from_sum(&self.setup.spec, &reals),
                };
                let standardiser = Standardiser::from_moments(&moments).map_err(Self::bad)?;
                // Features constant over every node's data (e.g. categories in a source
                // without them) are dropped for the rest of the analysis.
                let (spec, standardiser) = without_constant(&self.setup.spec, &standardiser);
                if spec.dim() == 0 {
                    return Err(Self::bad("every feature is constant over the nodes' data; nothing to learn"));
                }
                self.train_examples = moments.n;
                self.report(Progress {
                    round,
                    phase: "moments",
                    examples: moments.n,
                    objective: None,
                    gradient_norm: None,
                });
                self.setup.spec = spec;
                self.standardiser = Some(standardiser);
                let d = self.setup.spec.dim();
                let weights = vec![0.0; d + 1];
                self.phase = match &self.request.training {
                    Training::Newton { lambda, stopping } => Phase::Newton(NewtonTraining::new(d, *lambda, *stopping)),
                    Training::FedAvg { optimizer, .. } => {
                        Phase::FedAvg { server: Server::new(*optimizer, d + 1), weights: weights.clone(), round: 1 }
                    }
                };
                let step = self.training_step(&weights, 1);
                Ok(Step::Round(self.round(step)?))
            }
            Phase::Newton(training) => {
                let next = match self.reals(out, cx)? {
                    Sum::Exact(words) => training.consume(&words),
                    Sum::Noised(reals) => {
                        let mut sums = newton_from_sum(self.setup.spec.dim(), &reals);
                        sums.hessian = positive_definite(&sums.hessian, HESSIAN_FLOOR * sums.n as f64);
                        training.consume_sums(sums)
                    }
                };
                match next.map_err(Self::bad)? {
                    NewtonNext::Round(next) => {
                        self.report_newton(round, next.history().last());
                        let step = self.training_step(next.weights(), round + 1);
                        let step = self.round(step)?;
                        self.phase = Phase::Newton(next);
                        Ok(Step::Round(step))
                    }
                    NewtonNext::Done(trained) => {
                        self.report_newton(round, trained.history.last());
                        let step = self.evaluate(&trained.model)?;
                        self.phase = Phase::Evaluating {
                            model: trained.model,
                            reason: trained.reason,
                            history: trained.history,
                        };
                        Ok(Step::Round(step))
                    }
                }
            }
            Phase::FedAvg { mut server, weights, round: r } => {
                let Sum::Exact(words) = self.reals(out, cx)? else { return Err(Self::bad(FEDAVG_DP)) };
                let d = self.setup.spec.dim();
                let sums = decode_update(d, &words).map_err(Self::bad)?;
                let next = server.apply(&weights, &sums).map_err(Self::bad)?;
                self.report(Progress {
                    round,
                    phase: "fedavg",
                    examples: sums.n,
                    objective: None,
                    gradient_norm: None,
                });
                let Training::FedAvg { rounds, .. } = &self.request.training else {
                    return Err(Self::bad("training mode changed"));
                };
                if r >= *rounds {
                    let model = Logistic { weights: next };
                    let step = self.evaluate(&model)?;
                    self.phase = Phase::Evaluating { model, reason: StopReason::MaxRounds, history: Vec::new() };
                    Ok(Step::Round(step))
                } else {
                    let step = self.training_step(&next, r + 1);
                    let step = self.round(step)?;
                    self.phase = Phase::FedAvg { server, weights: next, round: r + 1 };
                    Ok(Step::Round(step))
                }
            }
            Phase::Evaluating { model, reason, history } => {
                let layout = ChurnRound::eval_layout(self.request.bins);
                let eval = match self.reals(out, cx)? {
                    Sum::Exact(words) => decode_eval(layout, &words).map_err(Self::bad)?,
                    Sum::Noised(reals) => eval_from_sum(layout, &reals),
                };
                let auc = eval.auc().ok_or_else(|| {
                    Self::bad("the held-out customers are all churned or all active; the AUC is undefined")
                })?;
                let positives: u64 = eval.pos.iter().sum();
                let metrics = Metrics {
                    test_auc: auc.auc,
                    test_auc_bound: auc.bin_error_bound,
                    test_log_loss: eval.log_loss().unwrap_or(f64::NAN),
                    test_accuracy: eval.accuracy().unwrap_or(f64::NAN),
                    train_examples: self.train_examples,
                    test_examples: eval.n,
                    test_churn_rate: positives as f64 / eval.n.max(1) as f64,
                    // Small calibration rows are withheld, as small cells of any release.
                    calibration: eval.calibration.into_iter().map(|r| r.released(cx.rules.min_cohort)).collect(),
                };
                self.report(Progress {
                    round,
                    phase: "evaluate",
                    examples: eval.n,
                    objective: None,
                    gradient_norm: None,
                });
                let figures = model.weights.len() + 8 + metrics.calibration.len() * 3;
                release::model(out, &cx.rules, cx.audit, (cx.analysis, "churn-model"), cx.rounds.to_vec(), figures)?;
                let lambda = match &self.request.training {
                    Training::Newton { lambda, .. } => *lambda,
                    Training::FedAvg { local, .. } => local.lambda,
                };
                Ok(Step::Done(ChurnModel {
                    spec: self.setup.spec.clone(),
                    standardiser: self.standardiser.clone().unwrap_or(Standardiser { mean: vec![], sd: vec![] }),
                    model,
                    reference_date: self.analysis.reference_date,
                    horizon_days: self.request.horizon_days,
                    lambda,
                    stop_reason: reason,
                    history,
                    metrics,
                    provenance: cx.provenance(out, &self.analysis, self.dp.map(|plan| plan.spent(cx.charges))),
                }))
            }
        }
    }
}

/// Why FedAvg does not run under DP in this version.
const FEDAVG_DP: &str = "FedAvg under differential privacy is not available in this version (its local updates \
                         are not per-customer sums); train with --mode newton, or --dp off where every node's policy \
                         allows exact rounds";

/// A round's sum as the driver reads it.
enum Sum {
    /// Fixed-point words (an exact round).
    Exact(Vec<u64>),
    /// The decoded real sum of the customers' clipped terms plus noise (a DP round).
    Noised(Vec<f64>),
}

/// A trained churn model, registered (unpublished) under `model_id`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChurnRelease {
    pub model_id: String,
    pub sha256: String,
    pub model: ChurnModel,
}

impl Coordinator {
    /// Train a churn model over all connected nodes and register it, unpublished.
    pub async fn run_churn(
        &self,
        analysis: &AnalysisRequest,
        request: ChurnRequest,
        progress: Option<tokio::sync::mpsc::UnboundedSender<Progress>>,
    ) -> Result<Finished<ChurnRelease>, AnalysisError> {
        let most = request.most_rounds();
        let mut driver = ChurnDriver::new(request, analysis.clone());
        if let Some(tx) = progress {
            driver = driver.with_progress(tx);
        }
        tracing::info!(most_rounds = most, "churn training requested");
        let done = self.run_analysis(analysis, driver).await?;
        let (id, sha256) =
            self.register_model(fedcrm_model::artifact::NAME, fedcrm_model::artifact::KIND, &done.release)?;
        Ok(Finished {
            release: ChurnRelease { model_id: id, sha256, model: done.release },
            rounds: done.rounds,
            exits: done.exits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 11: under DP the driver retries at most the plan's spare rounds (each node
    /// refuses a round beyond the plan's T); exact, the analysis-wide most.
    #[test]
    fn under_dp_retries_stop_at_the_plans_spare_rounds() {
        let analysis = AnalysisRequest {
            reference_date: time::macros::date!(1997 - 09 - 30),
            purpose: "retention review".into(),
            requested_by: "analyst".into(),
            requested_by_organisation: "HQ".into(),
            dp: true,
        };
        let exact = ChurnDriver::new(ChurnRequest::newton(273), AnalysisRequest { dp: false, ..analysis.clone() });
        assert_eq!(exact.most_retries().0, MAX_ROUND_RETRIES);
        let mut dp = ChurnDriver::new(ChurnRequest::newton_dp(273, 4.0), analysis);
        dp.noise_variance(Variance::integer(4).unwrap(), 2).unwrap();
        let (most, why) = dp.most_retries();
        assert_eq!(most, DP_RETRIES as usize);
        assert!(why.contains("DP plan"), "{why}");
        assert!(DP_RETRIES as usize <= MAX_ROUND_RETRIES);
    }
}
