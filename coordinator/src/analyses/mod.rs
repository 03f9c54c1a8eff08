//! The coordinator's face of each analysis (issue 11's seam): a [`Driver`] — a state
//! machine that emits one round's query at a time and consumes the released sum of
//! each — run by one generic loop ([`Coordinator::run_analysis`]) over **one fixed
//! contributor set**, with the analysis's release rules applied by the driver to its
//! last round. The loop owns everything analyses share: the request in the audit
//! log, the plan of whom to invite, the privacy checks before anything starts (the
//! driver's charge for its whole plan against every invitee's budget), one noise
//! level for all rounds, the population fixed by the first round, and the record of
//! how the analysis ended.
//!
//! Every round of one analysis must have the same contributors, or its results would
//! mix different populations. Re-running a query over the remaining nodes would hand
//! the coordinator two sums whose difference is a dropped node's contribution, so a
//! later round is never run, nor unmasked, over fewer: if a node of the population
//! leaves between rounds, or before its masked vector arrived (the round then stops
//! without unmasking), the analysis waits `[rounds] retry_wait_seconds` for it to come
//! back and runs (retries) the round over the whole population with fresh keys and
//! seeds, or stops without a result. Each node enforces the same rule itself
//! (`fedcrm_node::computation::Tracker::same_population`).
//!
//! One module per analysis: [`rfm`], [`churn`]; the PSI overlap ([`overlap`]) runs no
//! secure-aggregation round and has its own loop. Adding an analysis: ARCHITECTURE.md, "Adding an
//! analysis".

pub mod churn;
pub mod clv;
pub mod overlap;
pub mod rfm;

use std::collections::BTreeMap;

use fedcrm_dp::accounting::Charge;
use fedcrm_dp::sampler::Variance;
use fedcrm_protocol::wire::{Analysis, AnalysisKind, Noise};
use serde::Serialize;

use crate::Coordinator;
use crate::audit::SharedLog;
use crate::config::ReleaseRules;
use crate::registry::{ConnectedNode, SessionEvent};
use crate::release;
use crate::round::{Exit, RoundError, RoundOutput};

/// How many times one analysis retries a round that lost a member of its population
/// before its masked vector arrived ([`RoundError::NotPopulation`]), in all; each node
/// limits it too (`fedcrm_node::computation::MAX_RETRIES`), and a driver's plan may
/// allow fewer ([`Driver::most_retries`]).
pub const MAX_ROUND_RETRIES: usize = 3;

/// What a driver does after a round.
#[derive(Debug)]
pub enum Step<T> {
    /// Run another round with this query, over the analysis's population.
    Round(AnalysisKind),
    /// The analysis is finished with this released result.
    Done(T),
}

/// What a driver may use to release its result: the analysis's identity, its rounds
/// and what they cost (issue 10), and the release door's rules and log.
#[derive(Debug)]
pub struct Context<'a> {
    pub rules: ReleaseRules,
    pub audit: &'a SharedLog,
    pub analysis: &'a str,
    /// Round ids so far, in order (the last is the round just consumed).
    pub rounds: &'a [String],
    /// What each noised round so far cost each contributor.
    pub charges: &'a [Charge],
    /// Whether the analysis runs with differential privacy.
    pub dp: bool,
}

/// The coordinator-side driver of one analysis.
pub trait Driver {
    /// What the analysis releases.
    type Outcome;

    /// The analysis kind nodes' policies apply to (e.g. `rfm-segments`), as logged.
    fn kind(&self) -> &'static str;

    /// The first round's query (it also names the data the analysis reads, for the
    /// plan and the differencing rule).
    fn first(&mut self) -> AnalysisKind;

    /// Under differential privacy: the most the whole analysis can cost each node at
    /// this noise level, and its most rounds — checked against every invitee's budget
    /// before the first round. `None` for a single-round analysis, which the round
    /// itself checks.
    fn plan_charge(&self, noise: &Noise) -> Option<(Charge, usize)>;

    /// Under differential privacy: the per-node noise variance every round of the
    /// analysis carries, given the largest floor the invitees announced (`floor`) and
    /// the honest nodes k the plan counts on. The default is the floor; a driver whose
    /// rounds calibrate their own grid to a target ε (churn) raises it. `Err` refuses
    /// the analysis before it starts, saying why.
    fn noise_variance(&mut self, floor: Variance, _honest: usize) -> Result<Variance, String> {
        Ok(floor)
    }

    /// Whether the analysis can run with differential privacy; one that cannot is
    /// refused up front when the analyst asks for it.
    fn supports_dp(&self) -> bool {
        true
    }

    /// How many rounds this analysis may retry in all ([`RoundError::NotPopulation`]),
    /// and why that many: [`MAX_ROUND_RETRIES`] unless a plan (under DP, the rounds the
    /// nodes were charged for up front) allows fewer.
    fn most_retries(&self) -> (usize, &'static str) {
        (MAX_ROUND_RETRIES, "the most an analysis retries")
    }

    /// Consume the round just run (over the analysis's population) and say what comes
    /// next. The driver releases only through the release door ([`crate::release`]).
    fn next(&mut self, out: &RoundOutput, cx: &Context<'_>) -> Result<Step<Self::Outcome>, AnalysisError>;
}

impl Context<'_> {
    /// Where a model released by this analysis came from: its rounds, its population
    /// (`out`'s contributors and their organisations), who asked and why, and under DP
    /// what it cost.
    pub fn provenance(
        &self,
        out: &RoundOutput,
        request: &AnalysisRequest,
        dp: Option<fedcrm_model::artifact::DpCharge>,
    ) -> fedcrm_model::artifact::Provenance {
        let organisations: std::collections::BTreeSet<&String> = out.organisations.iter().collect();
        fedcrm_model::artifact::Provenance {
            analysis_id: self.analysis.to_string(),
            rounds: self.rounds.to_vec(),
            nodes: out.contributors.clone(),
            organisations: organisations.len(),
            trained_by: request.requested_by.clone(),
            purpose: request.purpose.clone(),
            dp,
        }
    }
}

/// What an analyst asked for, and who they are (from their certificate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnalysisRequest {
    pub reference_date: time::Date,
    pub purpose: String,
    pub requested_by: String,
    pub requested_by_organisation: String,
    /// Issue 10: with differential privacy (`--dp on`, the default for analysts); an
    /// exact analysis is refused unless every participant's policy is optional.
    pub dp: bool,
}

impl AnalysisRequest {
    /// One round's [`Analysis`]: this request, the analysis id and kind, the query.
    pub fn analysis(&self, id: &str, analysis_kind: &str, kind: AnalysisKind) -> Analysis {
        Analysis {
            reference_date: self.reference_date,
            purpose: self.purpose.clone(),
            requested_by: self.requested_by.clone(),
            requested_by_organisation: self.requested_by_organisation.clone(),
            analysis_id: id.to_string(),
            analysis_kind: analysis_kind.to_string(),
            kind,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    #[error("the analysis waits for manual approval by {nodes}; it stops without a result and can run once approved")]
    AwaitingApproval { nodes: String },
    #[error("audit log: {0}; nothing was run")]
    Audit(String),
    #[error(transparent)]
    Round(#[from] RoundError),
    #[error(transparent)]
    Release(#[from] release::ReleaseError),
    #[error("quantile search: {0}")]
    Quantile(#[from] fedcrm_analysis::rfm::QuantileError),
    #[error(
        "a node left between rounds of the analysis, so it stops without a result (re-running it over the \
         remaining nodes would let the coordinator subtract one node's data); run it again later. Left:{exits}"
    )]
    ContributorsChanged { exits: String },
    #[error("another analysis is running; try again when it finishes")]
    Busy,
    /// Issue 10: refused up front by the participants' privacy policies.
    #[error("{0}")]
    Privacy(String),
    /// Issue 11: the model's mathematics failed on the released sums (or the registry).
    #[error("model: {0}")]
    Model(String),
}

/// A finished analysis: the driver's release, and how it ran.
#[derive(Debug, Clone, Serialize)]
pub struct Finished<T> {
    pub release: T,
    pub rounds: u32,
    /// Nodes that left or were not invited, and why (across all rounds).
    pub exits: BTreeMap<String, String>,
}

impl crate::Coordinator {
    /// Register a trained model's body under the next id of `name` (`churn-v2`, `clv-v1`),
    /// unpublished, as an artifact of `kind`: its id and the artifact's SHA-256.
    pub(crate) fn register_model<T: serde::Serialize>(
        &self,
        name: &str,
        kind: &str,
        body: &T,
    ) -> Result<(String, String), AnalysisError> {
        let bad = |e: &dyn std::fmt::Display| AnalysisError::Model(e.to_string());
        let id = self.models.next_id(name).map_err(|e| bad(&e))?;
        let body = serde_json::to_value(body).map_err(|e| bad(&e))?;
        let header = fedcrm_protocol::model::ModelHeader {
            format: fedcrm_protocol::model::FORMAT.into(),
            id: id.clone(),
            kind: kind.into(),
            created_ms: self.now_ms(),
            body,
        };
        let sha256 = self.models.register(&header).map_err(|e| bad(&e))?;
        Ok((id, sha256))
    }
}

/// A node whose franchisee has not approved the analysis stops it: running it now
/// without that node, and later again with it, would let the two results be
/// subtracted. The analysis runs once every node has approved.
fn stop_if_awaiting(out: &RoundOutput) -> Result<(), AnalysisError> {
    let waiting: Vec<String> = out
        .exits
        .iter()
        .filter(|(_, e)| matches!(e, Exit::AwaitingApproval(_)))
        .map(|(n, e)| format!("{n} ({e})"))
        .collect();
    if waiting.is_empty() { Ok(()) } else { Err(AnalysisError::AwaitingApproval { nodes: waiting.join("; ") }) }
}

impl Coordinator {
    /// Run one analysis over all connected nodes, driven by `driver`.
    pub async fn run_analysis<D: Driver>(
        &self,
        request: &AnalysisRequest,
        driver: D,
    ) -> Result<Finished<D::Outcome>, AnalysisError> {
        let mut events = self.events.try_lock().map_err(|_| AnalysisError::Busy)?;
        let id = self.requested(request, driver.kind())?;
        let out = self.drive(&mut events, request, &id, driver).await;
        self.concluded(&id, &out);
        out
    }

    async fn drive<D: Driver>(
        &self,
        events: &mut tokio::sync::mpsc::UnboundedReceiver<SessionEvent>,
        request: &AnalysisRequest,
        id: &str,
        mut driver: D,
    ) -> Result<Finished<D::Outcome>, AnalysisError> {
        let kind = driver.kind();
        let mut query = driver.first();
        let plan = self.plan(&request.analysis(id, kind, query.clone()).coverage())?;
        if request.dp && !driver.supports_dp() {
            return Err(AnalysisError::Privacy(format!(
                "differential privacy for the {kind} analysis is not available in this version; run it with --dp off \
                 (every participating node's policy must then allow exact rounds: [policy.privacy] dp = \"optional\")"
            )));
        }
        let mut variance = None;
        if request.dp {
            // Issue 10: the whole plan's cost, checked against every invitee's announced
            // budget before anything starts (each round checks again).
            let mut noise = self.noise_for(&plan.invited, plan.t).map_err(AnalysisError::Privacy)?;
            noise.variance = driver.noise_variance(noise.variance, noise.honest).map_err(AnalysisError::Privacy)?;
            variance = Some(noise.variance.clone());
            // The first query again: it may carry what the noise level decided (issue 11).
            query = driver.first();
            #[cfg(feature = "test-util")]
            let checks_budgets = !self.hooks().ignore_budgets;
            #[cfg(not(feature = "test-util"))]
            let checks_budgets = true;
            if let Some((planned, rounds)) = driver.plan_charge(&noise).filter(|_| checks_budgets) {
                self.within_budgets(&plan.invited, &planned).map_err(|e| {
                    AnalysisError::Privacy(format!(
                        "refused before it started: the {kind} analysis under differential privacy ({rounds} rounds \
                         at most, ρ = {:.4} per node) would exceed a budget: {e}",
                        planned.rho
                    ))
                })?;
            }
        } else {
            self.exact_allowed(&plan.invited).map_err(AnalysisError::Privacy)?;
        }
        let mut runner = self.runner(events, variance);
        let mut exits: BTreeMap<String, String> = plan.excluded.clone();
        let (mut invited, t, degree) = (plan.invited, plan.t, plan.degree);
        let (mut rounds, mut retries, mut round_ids, mut charges) = (0u32, 0usize, Vec::new(), Vec::new());
        loop {
            if let Some(population) = runner.population.clone() {
                invited = self.await_population(&population, &invited, &mut runner).await?;
            }
            rounds += 1;
            let out = match runner.run(&request.analysis(id, kind, query.clone()), &invited, t, degree).await {
                Ok(out) => out,
                // Issue 11: a member of the population left before its masked vector
                // arrived; the round was not unmasked. Retry the same query over the
                // whole population, with fresh keys and seeds, once it is back.
                Err(RoundError::NotPopulation { round, missing, .. }) if retries < driver.most_retries().0 => {
                    retries += 1;
                    charges.append(&mut runner.stopped_charges);
                    tracing::warn!(analysis = %id, %round, ?missing, retries, "round not unmasked: retrying it over the analysis's population");
                    runner.keyed = None;
                    continue;
                }
                Err(RoundError::NotPopulation { round, missing, exits: left }) => {
                    let (most, why) = driver.most_retries();
                    return Err(AnalysisError::ContributorsChanged {
                        exits: format!(
                            "{left}\n  (round {round} lacked {}; {retries} of {most} retries spent: {why})",
                            missing.join(", ")
                        ),
                    });
                }
                Err(e) => return Err(e.into()),
            };
            round_ids.push(out.round.to_hex());
            charges.extend(out.charge);
            exits.extend(out.exits.iter().map(|(n, e)| (n.clone(), e.to_string())));
            stop_if_awaiting(&out)?;
            if runner.population.is_none() {
                // The first round's contributors are the analysis's population; later
                // rounds invite only them and must have exactly them (the round stops
                // before unmasking otherwise: `RoundError::NotPopulation`).
                invited.retain(|p| out.contributors.contains(&p.name));
                let mut population = out.contributors.clone();
                population.sort();
                runner.population = Some(population);
            }
            let cx = Context {
                rules: self.config.release,
                audit: &self.audit,
                analysis: id,
                rounds: &round_ids,
                charges: &charges,
                dp: request.dp,
            };
            match driver.next(&out, &cx)? {
                Step::Round(next) => query = next,
                Step::Done(release) => return Ok(Finished { release, rounds, exits }),
            }
        }
    }

    /// Issue 11: before a later round, every member of the analysis's population must
    /// be connected. One that left may come back within `[rounds] retry_wait_seconds`
    /// (a new session: the analysis's keys are then set up afresh, since that node's
    /// went with its old session); otherwise the analysis stops (re-running it over the
    /// remaining nodes would let the coordinator subtract one node's data). Returns the
    /// population's current sessions.
    async fn await_population(
        &self,
        population: &[String],
        invited: &[ConnectedNode],
        runner: &mut crate::round::Runner<'_>,
    ) -> Result<Vec<ConnectedNode>, AnalysisError> {
        let wait = std::time::Duration::from_secs(self.config.rounds.retry_wait_seconds);
        let deadline = tokio::time::Instant::now() + wait;
        let mut waited = false;
        loop {
            let connected = self.registry.connected();
            let current: Vec<ConnectedNode> =
                population.iter().filter_map(|n| connected.iter().find(|c| &c.name == n).cloned()).collect();
            if current.len() == population.len() {
                if current.iter().any(|c| !invited.iter().any(|i| i.name == c.name && i.session == c.session)) {
                    tracing::info!(
                        ?population,
                        "a node of the population reconnected: the next round sets up fresh keys"
                    );
                    runner.keyed = None;
                }
                return Ok(current);
            }
            if !waited {
                tracing::warn!(
                    ?population,
                    seconds = wait.as_secs(),
                    "waiting for the analysis's population to reconnect"
                );
                waited = true;
            }
            if tokio::time::Instant::now() >= deadline {
                let gone: String = population
                    .iter()
                    .filter(|n| !current.iter().any(|c| &c.name == *n))
                    .map(|n| {
                        format!(
                            "\n  {n}: disconnected, and not back within {} s ([rounds] retry_wait_seconds)",
                            wait.as_secs()
                        )
                    })
                    .collect();
                return Err(AnalysisError::ContributorsChanged { exits: gone });
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// Record an analyst's request; returns the new analysis id.
    fn requested(&self, r: &AnalysisRequest, kind: &str) -> Result<String, AnalysisError> {
        let mut b = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
            .map_err(|_| AnalysisError::Audit("system random number generator failed".into()))?;
        let id = hex::encode(b);
        crate::audit::record(&self.audit, fedcrm_audit::Event::AnalysisRequested {
            analysis: id.clone(),
            kind: kind.to_string(),
            analyst: r.requested_by.clone(),
            organisation: r.requested_by_organisation.clone(),
            purpose: r.purpose.clone(),
            parameters: serde_json::json!({ "reference_date": fedcrm_analysis::date::format_date(r.reference_date) }),
        })
        .map_err(|e| AnalysisError::Audit(e.to_string()))?;
        Ok(id)
    }

    /// Record a failed analysis (a released one was recorded by the release door).
    fn concluded<T>(&self, id: &str, out: &Result<T, AnalysisError>) {
        if let Err(e) = out {
            let _ = crate::audit::record(
                &self.audit,
                fedcrm_audit::Event::AnalysisFailed { analysis: id.to_string(), reason: e.to_string() },
            );
        }
        let _ = crate::audit::lock(&self.audit).seal();
    }
}
