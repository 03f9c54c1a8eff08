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
//! Exact rounds only in this version: the driver refuses differential privacy up front
//! (and every node refuses noise on model words itself).

use fedcrm_dp::accounting::Charge;
use fedcrm_model::artifact::{ChurnModel, Metrics, Provenance};
use fedcrm_model::eval::decode_eval;
use fedcrm_model::features::FeatureSpec;
use fedcrm_model::fedavg::{LocalTraining, Server, ServerOptimizer, decode_update};
use fedcrm_model::logistic::{Logistic, NewtonNext, NewtonTraining, RoundReport, StopReason, Stopping};
use fedcrm_model::standardise::{Standardiser, decode_moments, without_constant};
use fedcrm_protocol::wire::churn::{ChurnRound, ChurnSetup, ChurnStep};
use fedcrm_protocol::wire::{AnalysisKind, Noise};

use super::{AnalysisError, AnalysisRequest, Context, Driver, Finished, Step};
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
        }
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
        Self { request, analysis, setup, standardiser: None, phase: Phase::Moments, train_examples: 0, progress: None }
    }

    /// Report each round's figures on `tx` (the CLI's progress bar).
    pub fn with_progress(mut self, tx: tokio::sync::mpsc::UnboundedSender<Progress>) -> Self {
        self.progress = Some(tx);
        self
    }

    fn round(&self, step: ChurnStep) -> AnalysisKind {
        AnalysisKind::Churn(Box::new(ChurnRound { setup: self.setup.clone(), step }))
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

    fn sums(&self, out: &RoundOutput, cx: &Context<'_>, query: &AnalysisKind) -> Result<Vec<u64>, AnalysisError> {
        Ok(release::model_sums(out, &cx.rules, query.query().vector_len())?)
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

    fn evaluate(&self, model: &Logistic) -> AnalysisKind {
        let standardiser = self.standardiser.clone().unwrap_or(Standardiser { mean: vec![], sd: vec![] });
        self.round(ChurnStep::Evaluate { standardiser, weights: model.weights.clone(), bins: self.request.bins })
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
        self.round(ChurnStep::Moments)
    }

    fn plan_charge(&self, _noise: &Noise) -> Option<(Charge, usize)> {
        None
    }

    fn supports_dp(&self) -> bool {
        false
    }

    fn next(&mut self, out: &RoundOutput, cx: &Context<'_>) -> Result<Step<ChurnModel>, AnalysisError> {
        let round = cx.rounds.len() as u32;
        match std::mem::replace(&mut self.phase, Phase::Moments) {
            Phase::Moments => {
                let query = self.round(ChurnStep::Moments);
                let words = self.sums(out, cx, &query)?;
                let moments = decode_moments(&self.setup.spec, &words).map_err(Self::bad)?;
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
                Ok(Step::Round(self.round(self.training_step(&weights, 1))))
            }
            Phase::Newton(training) => {
                let query = self.round(self.training_step(training.weights(), round));
                let words = self.sums(out, cx, &query)?;
                match training.consume(&words).map_err(Self::bad)? {
                    NewtonNext::Round(next) => {
                        self.report_newton(round, next.history().last());
                        let step = self.round(self.training_step(next.weights(), round + 1));
                        self.phase = Phase::Newton(next);
                        Ok(Step::Round(step))
                    }
                    NewtonNext::Done(trained) => {
                        self.report_newton(round, trained.history.last());
                        let step = self.evaluate(&trained.model);
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
                let query = self.round(self.training_step(&weights, r));
                let words = self.sums(out, cx, &query)?;
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
                    let step = self.evaluate(&model);
                    self.phase = Phase::Evaluating { model, reason: StopReason::MaxRounds, history: Vec::new() };
                    Ok(Step::Round(step))
                } else {
                    let step = self.round(self.training_step(&next, r + 1));
                    self.phase = Phase::FedAvg { server, weights: next, round: r + 1 };
                    Ok(Step::Round(step))
                }
            }
            Phase::Evaluating { model, reason, history } => {
                let layout = ChurnRound::eval_layout(self.request.bins);
                let words = release::model_sums(out, &cx.rules, layout.len())?;
                let eval = decode_eval(layout, &words).map_err(Self::bad)?;
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
                release::model(out, &cx.rules, cx.audit, cx.analysis, cx.rounds.to_vec(), figures)?;
                let organisations: std::collections::BTreeSet<&String> = out.organisations.iter().collect();
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
                    provenance: Provenance {
                        analysis_id: cx.analysis.to_string(),
                        rounds: cx.rounds.to_vec(),
                        nodes: out.contributors.clone(),
                        organisations: organisations.len(),
                        trained_by: self.analysis.requested_by.clone(),
                        purpose: self.analysis.purpose.clone(),
                        dp: None,
                    },
                }))
            }
        }
    }
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
        let id = self.models.next_id(fedcrm_model::artifact::NAME).map_err(|e| AnalysisError::Model(e.to_string()))?;
        let body = serde_json::to_value(&done.release).map_err(|e| AnalysisError::Model(e.to_string()))?;
        let header = fedcrm_protocol::model::ModelHeader {
            format: fedcrm_protocol::model::FORMAT.into(),
            id: id.clone(),
            kind: fedcrm_model::artifact::KIND.into(),
            created_ms: self.now_ms(),
            body,
        };
        let sha256 = self.models.register(&header).map_err(|e| AnalysisError::Model(e.to_string()))?;
        Ok(Finished {
            release: ChurnRelease { model_id: id, sha256, model: done.release },
            rounds: done.rounds,
            exits: done.exits,
        })
    }
}
