//! The node's faces of each analysis (issue 11's seam): how the node's policy
//! classifies a round by its computation ([`NodeQuery::starts`],
//! [`NodeQuery::continues`], [`NodeQuery::check_limits`]), and the node's contribution
//! — query plus local data to the vector it masks ([`NodeQuery::contribute`]). The
//! query itself (vector length, range, sensitivity, coverage) is the wire's
//! [`fedcrm_protocol::wire::Query`]; the generic per-round checks (width, bound,
//! noise) are in [`crate::analysis`], the bookkeeping of open analyses in
//! [`crate::computation`].
//!
//! One module per analysis: [`rfm`], [`churn`], [`clv`]. Adding an analysis: see ARCHITECTURE.md,
//! "Adding an analysis".

pub mod churn;
pub mod clv;
pub mod rfm;

use fedcrm_analysis::rfm::CustomerRfm;
use fedcrm_dp::accounting::Charge;
use fedcrm_protocol::wire::churn::ModelDp;
use fedcrm_protocol::wire::{Analysis, AnalysisKind, Query};
use time::Date;
use zeroize::Zeroizing;

use crate::data::Source;
use crate::policy::Policy;

/// The node's face of one round's query.
pub trait NodeQuery: Query {
    /// The analysis (policy kind) a first round with this computation starts.
    fn starts(&self) -> &'static str;

    /// Limits of the node's policy every round of this computation must respect,
    /// whether it starts an analysis or continues one. `Err` is the refusal reason.
    fn check_limits(&self, policy: &Policy) -> Result<(), String>;

    /// Whether this computation may open an analysis (its first round). `Err` says
    /// why not.
    fn first_round(&self) -> Result<(), String> {
        Ok(())
    }

    /// Whether this round is the next step of an open analysis of kind `kind` whose
    /// previous round computed `previous`, after `rounds` admitted rounds (same
    /// reference date, already checked). `Err` says why not.
    fn continues(
        &self,
        kind: &'static str,
        previous: &AnalysisKind,
        rounds: u32,
        policy: &Policy,
    ) -> Result<(), String>;

    /// Issue 11: whether one more round of an open analysis of this computation is
    /// within the limits on its number (a policy's most rounds, a signed DP plan's T),
    /// after `rounds` admitted rounds. Checked by [`NodeQuery::continues`] and for a
    /// retry, which repeats the previous computation and so skips `continues`. Default:
    /// no limit of its own.
    fn within_rounds(&self, _rounds: u32, _policy: &Policy) -> Result<(), String> {
        Ok(())
    }

    /// The computation in words at reference date `at`, for people (`node pending`,
    /// refusals, the log).
    fn describe(&self, at: &str) -> String;

    /// This node's contribution: the un-noised, unmasked local vector of
    /// [`Query::vector_len`] words, and how many of the node's customers it covers
    /// (for the per-node bound, [`crate::analysis::fit_to_bound`]). `Err` is a refusal.
    fn contribute(&self, data: &mut LocalData<'_>, reference: Date) -> Result<Contribution, String>;

    /// Under differential privacy, the most the whole analysis this round belongs to can
    /// charge (its signed plan), checked against the budget at its first round before
    /// anything leaves; `None` when each round is checked on its own.
    fn plan_charge(&self) -> Option<Charge> {
        None
    }

    /// Under differential privacy, whether this round's charge is one its plan allows.
    fn check_charge(&self, _charge: &Charge) -> Result<(), String> {
        Ok(())
    }

    /// Rules of the node's policy on the contribution itself (e.g. the fewest examples
    /// a model round needs); `Err` is a refusal, before anything leaves.
    fn check_contribution(&self, _c: &Contribution, _policy: &Policy) -> Result<(), String> {
        Ok(())
    }

    /// Whether the policy keeps this contribution to the node although the node takes
    /// part (a later round of a fixed population, which a refusal would stop for all):
    /// zeros of the same length leave instead, and none of its data enters the sum.
    fn withheld(&self, _c: &Contribution, _policy: &Policy) -> bool {
        false
    }
}

/// A model analysis's policy limit on its rounds: `Err` once `rounds` reached `max`,
/// naming the analysis and the policy key.
pub(crate) fn within_max_rounds(rounds: u32, max: u32, analysis: &str, key: &str) -> Result<(), String> {
    if rounds >= max {
        return Err(format!("this node takes part in at most {max} rounds of one {analysis} analysis ({key})"));
    }
    Ok(())
}

/// A model analysis's round against its previous one: under DP the plan signed in the
/// first round holds for every round — the same cap per round and the same number of
/// rounds, which bounds what the analysis can charge in all (checked against the budget
/// before the first round); exact rounds stay exact. `Err` when either differs.
pub(crate) fn same_dp_plan(previous: Option<&ModelDp>, this: Option<&ModelDp>) -> Result<(), String> {
    match (previous, this) {
        (None, None) => Ok(()),
        (Some(a), Some(b)) if a.same_plan(b) => Ok(()),
        _ => Err("its differential-privacy plan differs from the analysis's first round".into()),
    }
}

/// Under a model analysis's DP plan: `Err` once its `max_rounds` charged rounds
/// (retries included) were all taken.
pub(crate) fn within_dp_plan(dp: &ModelDp, rounds: u32) -> Result<(), String> {
    if rounds >= dp.max_rounds {
        return Err(format!(
            "its differential-privacy plan allows {} charged rounds (retries included), all taken",
            dp.max_rounds
        ));
    }
    Ok(())
}

/// Under a model analysis's DP plan: `Err` when the round costs more than the plan's
/// per-round cap.
pub(crate) fn within_round_cap(dp: &ModelDp, charge: &Charge) -> Result<(), String> {
    // A relative hair of slack: the coordinator's ρ and the node's are computed by the
    // same function from the same signed numbers, but on different machines.
    if charge.rho > dp.round_rho * (1.0 + 1e-9) || charge.xi > dp.round_xi * (1.0 + 1e-9) + 1e-300 {
        return Err(format!(
            "the round costs ρ = {:.6} (ξ = {:.3e}), more than its plan's per-round cap ρ = {:.6} (ξ = {:.3e}); \
             refusing (the coordinator's fault: its round is inconsistent with its plan)",
            charge.rho, charge.xi, dp.round_rho, dp.round_xi
        ));
    }
    Ok(())
}

/// The node face of a wire query.
pub fn node_query(kind: &AnalysisKind) -> &dyn NodeQuery {
    match kind {
        AnalysisKind::RfmHistograms(specs) => specs,
        AnalysisKind::RfmSegments(cuts) => cuts,
        AnalysisKind::Churn(c) => c.as_ref(),
        AnalysisKind::Clv(c) => c.as_ref(),
    }
}

/// A node's contribution to one round, before the per-node bound and noise.
#[derive(Debug)]
pub struct Contribution {
    /// Zeroized when dropped: it is this node's un-noised data.
    pub vector: Zeroizing<Vec<u64>>,
    /// The node's customers the vector covers.
    pub customers: usize,
    /// The node's customers the analysis could read at its reference date (for the
    /// policy's minimums; for RFM the same as `customers`).
    pub eligible: usize,
    /// Issue 13, a CLV cohort fit: the fewest of this node's first purchases in a
    /// calendar month that has any, up to the calibration end (`None` otherwise).
    pub fewest_in_a_month: Option<u64>,
}

/// The node's own data as the analyses read it, with what is computed once per
/// reference date kept between rounds of a session.
#[derive(Debug)]
pub struct LocalData<'a> {
    source: &'a Source,
    cache: &'a mut Cache,
}

/// Per-session cache of local features (never leaves the node).
#[derive(Debug, Default)]
pub struct Cache {
    rfm: Option<(Date, Vec<CustomerRfm>)>,
    histories: Option<Vec<crate::features::History>>,
    /// Issue 14: the CLV summaries of one calibration (from a database, computed there).
    clv: Option<(fedcrm_model::clv::summary::Calibration, ClvData)>,
    /// Issue 14, a database source: the analysis the cached features were read for
    /// (each analysis reads the database afresh, all its rounds the same features).
    read_for: Option<String>,
}

impl<'a> LocalData<'a> {
    pub fn new(source: &'a Source, cache: &'a mut Cache) -> Self {
        Self { source, cache }
    }

    /// This node's customers' RFM values at `reference`, computed once per date (a
    /// database source's, by [`prepare`] for the round's analysis).
    pub fn rfm_at(&mut self, reference: Date) -> &[CustomerRfm] {
        if let Source::Rows(ds) = self.source
            && self.cache.rfm.as_ref().is_none_or(|c| c.0 != reference)
        {
            let rfm = crate::features::rfm(&ds.purchases, reference).into_iter().map(|(_, r)| r).collect();
            self.cache.rfm = Some((reference, rfm));
        }
        self.cache.rfm.as_ref().filter(|c| c.0 == reference).map_or(&[], |c| &c.1)
    }

    /// Every customer's purchase history (for the model analyses), computed once (a
    /// database source's, by [`prepare`] for the round's analysis).
    pub fn histories(&mut self) -> &[crate::features::History] {
        if let Source::Rows(ds) = self.source
            && self.cache.histories.is_none()
        {
            self.cache.histories = Some(crate::features::histories(&ds.purchases));
        }
        self.cache.histories.as_deref().unwrap_or(&[])
    }

    /// The CLV summaries at `cal`: from the histories for a file source, computed in the
    /// database (by [`prepare`]) for a database source.
    pub fn clv(&mut self, cal: fedcrm_model::clv::summary::Calibration) -> &ClvData {
        if self.cache.clv.as_ref().is_none_or(|c| c.0 != cal) {
            // A database source's are read by `prepare`; none read means none.
            let data = match self.source {
                Source::Rows(_) => ClvData::from_histories(self.histories(), &cal),
                Source::Database(_) => ClvData::default(),
            };
            self.cache.clv = Some((cal, data));
        }
        // Unwrap safety: set just above when absent.
        &self.cache.clv.as_ref().unwrap().1
    }
}

/// Issue 13/14: what a CLV round reads of a node's customers at one calibration.
#[derive(Debug, Clone, Default)]
pub struct ClvData {
    /// The summaries of the customers in the calibration data, in customer-key order.
    pub summaries: Vec<fedcrm_model::clv::summary::Summary>,
    /// Every customer's first purchase day up to the calibration end.
    pub firsts: Vec<Date>,
}

impl ClvData {
    /// From the customers' histories (a file source).
    pub fn from_histories(
        histories: &[crate::features::History],
        cal: &fedcrm_model::clv::summary::Calibration,
    ) -> Self {
        ClvData {
            summaries: histories.iter().filter_map(|h| cal.summary(&h.txns)).collect(),
            firsts: histories
                .iter()
                .filter_map(|h| h.txns.iter().map(|t| t.day).min())
                .filter(|d| *d <= cal.end)
                .collect(),
        }
    }
}

/// Issue 14: the refusal a node sends when its database cannot be read — no detail of
/// the data or the database (those are in the node's log).
pub const DATABASE_UNREADABLE: &str = "this node could not read its database, so it refuses this round and reconnects for the next; the reason is in this node's log";

/// Issue 14: read from a database source what `analysis` needs, before its round
/// computes anything — RFM values at the reference date (computed in the database) or
/// the customers' histories — once per analysis. A file source needs nothing here.
/// `Err` is the refusal reason (the database unreachable, a query timed out, bad rows).
pub async fn prepare(source: &Source, analysis: &Analysis, cache: &mut Cache) -> Result<(), String> {
    let Source::Database(db) = source else { return Ok(()) };
    let fresh = cache.read_for.as_deref() != Some(analysis.analysis_id.as_str());
    // The refusal goes to HQ: it says only that the read failed. The details (row keys,
    // counts, the server's messages) stay in this node's log.
    let reason = |e: crate::data::DataError| {
        tracing::warn!(analysis = %analysis.analysis_id, error = %e, "reading the database failed");
        DATABASE_UNREADABLE.to_string()
    };
    match &analysis.kind {
        AnalysisKind::RfmHistograms(_) | AnalysisKind::RfmSegments(_) => {
            let reference = analysis.reference_date;
            if fresh || cache.rfm.as_ref().is_none_or(|c| c.0 != reference) {
                cache.rfm = None;
                cache.read_for = None;
                let rfm = db.rfm(reference).await.map_err(reason)?;
                cache.rfm = Some((reference, rfm.into_iter().map(|(_, r)| r).collect()));
            }
        }
        AnalysisKind::Clv(round) => {
            // The customers' summaries are computed in the database (GROUP BY).
            let cal = clv::calibration(round, analysis.reference_date);
            if fresh || cache.clv.as_ref().is_none_or(|c| c.0 != cal) {
                cache.clv = None;
                cache.read_for = None;
                cache.clv = Some((cal, db.clv(&cal).await.map_err(reason)?));
            }
        }
        AnalysisKind::Churn(_) => {
            if fresh || cache.histories.is_none() {
                cache.histories = None;
                cache.read_for = None;
                cache.histories = Some(db.histories().await.map_err(reason)?);
            }
        }
    }
    cache.read_for = Some(analysis.analysis_id.clone());
    Ok(())
}

/// Issue 11: the round's charge against its analysis's plan — within the per-round cap,
/// and at the analysis's first round (`first`) the whole plan within the node's remaining
/// budget (`within`, the ledger's check), before anything of the analysis leaves. A
/// retried round is charged again as it comes; the plan's round count includes the
/// retries the coordinator allows, and a node refuses rounds beyond it. `Err` is the
/// refusal reason.
pub fn check_plan(
    analysis: &Analysis,
    charge: Option<Charge>,
    first: bool,
    within: impl FnOnce(Charge) -> Result<(), String>,
) -> Result<Option<Charge>, String> {
    let Some(c) = charge else { return Ok(None) };
    let q = node_query(&analysis.kind);
    q.check_charge(&c)?;
    if first && let Some(plan) = q.plan_charge() {
        within(plan).map_err(|e| {
            format!(
                "the whole {} analysis under differential privacy may charge ρ = {:.6} (ξ = {:.3e}) in all, which \
                 this node's remaining budget cannot cover, so it refuses before the analysis starts: {e}",
                analysis.analysis_kind, plan.rho, plan.xi
            )
        })?;
    }
    Ok(Some(c))
}

/// The local contribution for `analysis` ([`NodeQuery::contribute`]), checked against
/// the policy ([`NodeQuery::check_contribution`]). `Err` is a refusal.
pub fn contribute(analysis: &Analysis, data: &mut LocalData<'_>, policy: &Policy) -> Result<Contribution, String> {
    let q = node_query(&analysis.kind);
    let c = q.contribute(data, analysis.reference_date)?;
    q.check_contribution(&c, policy)?;
    if q.withheld(&c, policy) {
        let zeros = Zeroizing::new(vec![0; c.vector.len()]);
        return Ok(Contribution { vector: zeros, customers: 0, eligible: 0, fewest_in_a_month: None });
    }
    Ok(c)
}
