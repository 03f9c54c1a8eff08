//! Issue 13: the customer-lifetime-value fit as a [`Driver`]. The BG/NBD model, then the
//! Gamma-Gamma model, each fitted by BFGS over its log-parameters
//! (`fedcrm_model::clv::fit`) where every evaluation of the likelihood and its gradient
//! is one secure round over the analysis's one population (a node that drops after its
//! masked vector left makes the round be retried, as for churn). The optimiser reads
//! only the summed words, through the release door ([`release::model_sums`]); the
//! fitted model is released ([`release::model`]) and registered, unpublished.

use fedcrm_model::clv::artifact::{ClvModel, Fit};
use fedcrm_model::clv::fit::{Bfgs, Next, Optimum, Stopping};
use fedcrm_model::clv::summary::TimeUnit;
use fedcrm_model::clv::sums::{Evaluation, Likelihood};
use fedcrm_model::clv::{bgnbd, gamma_gamma};
use fedcrm_protocol::wire::AnalysisKind;
use fedcrm_protocol::wire::Noise;
use fedcrm_protocol::wire::clv::{ClvRound, ClvSetup};
use time::Date;

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
}

impl ClvRequest {
    pub fn new(unit: TimeUnit) -> Self {
        let stopping =
            Stopping { max_evaluations: 90, bound: fedcrm_model::clv::fit::FIT_BOUND, ..Stopping::default() };
        Self { unit, first_purchase: None, stopping }
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
    /// The round in flight.
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
            sent: None,
            progress: None,
        }
    }

    pub fn with_progress(mut self, tx: tokio::sync::mpsc::UnboundedSender<Progress>) -> Self {
        self.progress = Some(tx);
        self
    }

    fn round(&mut self, likelihood: Likelihood, log_params: Vec<f64>) -> AnalysisKind {
        let setup = ClvSetup { unit: self.request.unit, first_purchase: self.request.first_purchase };
        let round = ClvRound { setup, likelihood, log_params };
        self.sent = Some(round.clone());
        AnalysisKind::Clv(Box::new(round))
    }

    fn bad(why: impl std::fmt::Display) -> AnalysisError {
        AnalysisError::Model(why.to_string())
    }

    /// An optimiser's result as a fit; `Err` when it ran out of rounds.
    fn fit<P>(o: &Optimum, customers: u64, params: P, model: &str) -> Result<Fit<P>, AnalysisError> {
        if !o.reason.converged() {
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
        self.round(Likelihood::BgNbd, vec![0.0; 4])
    }

    fn plan_charge(&self, _noise: &Noise) -> Option<(fedcrm_dp::accounting::Charge, usize)> {
        None
    }

    /// Exact only in this version: a noised likelihood needs each customer's terms
    /// clipped and a budget for every round of the optimiser.
    fn supports_dp(&self) -> bool {
        false
    }

    fn next(&mut self, out: &RoundOutput, cx: &Context<'_>) -> Result<Step<ClvModel>, AnalysisError> {
        let sent = self.sent.clone().ok_or_else(|| Self::bad("no round in flight (our bug)"))?;
        let words = release::model_sums(out, &cx.rules, sent.likelihood.words())?;
        let e = Evaluation::decode(sent.likelihood, &words).map_err(Self::bad)?;
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
        let (value, gradient) = e.objective();
        if let Some(tx) = &self.progress {
            let _ = tx.send(Progress {
                round: cx.rounds.len() as u32,
                model: model_name(sent.likelihood),
                customers: e.customers,
                log_likelihood: e.log_likelihood,
                gradient_max: gradient.iter().fold(0.0f64, |m, g| m.max(g.abs())),
                params: sent.log_params.iter().map(|t| t.exp()).collect(),
            });
        }
        let contributors = out.contributors.len() as u64;
        let optimiser = match &mut self.phase {
            Phase::BgNbd(o) => o,
            Phase::GammaGamma { optimiser, .. } => optimiser,
        };
        optimiser.set_noise(e.rounding(contributors));
        optimiser.tell(value, gradient).map_err(Self::bad)?;
        let next = optimiser.next();
        match (next, &self.phase) {
            (Next::Evaluate(theta), _) => Ok(Step::Round(self.round(sent.likelihood, theta))),
            (Next::Done(o), Phase::BgNbd(_)) => {
                let t = &o.theta;
                let params = bgnbd::Params::from_log(&[t[0], t[1], t[2], t[3]]);
                let bg_nbd = Self::fit(&o, e.customers, params, "BG/NBD")?;
                self.phase = Phase::GammaGamma { bg_nbd, optimiser: Bfgs::new(vec![0.0; 3], self.request.stopping) };
                Ok(Step::Round(self.round(Likelihood::GammaGamma, vec![0.0; 3])))
            }
            (Next::Done(o), Phase::GammaGamma { bg_nbd, .. }) => {
                let t = &o.theta;
                let params = gamma_gamma::Params::from_log(&[t[0], t[1], t[2]]);
                let gamma_gamma = Self::fit(&o, e.customers, params, "Gamma-Gamma")?;
                // Published figures: 7 parameters, 2 log-likelihoods, 2 customer counts.
                release::model(out, &cx.rules, cx.audit, (cx.analysis, "clv-model"), cx.rounds.to_vec(), 11)?;
                Ok(Step::Done(ClvModel {
                    bg_nbd: bg_nbd.clone(),
                    gamma_gamma,
                    calibration_end: self.analysis.reference_date,
                    time_unit: self.request.unit,
                    first_purchase: self.request.first_purchase,
                    provenance: cx.provenance(out, &self.analysis, None),
                }))
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
