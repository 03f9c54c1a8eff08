//! What a round asks this node to compute, identified by the node itself from the
//! computation — never from the label the coordinator chose. Policies (allowed
//! analyses, monthly caps, manual approval) apply to the analysis as identified here.
//!
//! An analysis is a chain of rounds under one id: its first round decides its kind
//! ([`crate::analyses::NodeQuery::starts`]); a later round continues it only if the
//! analysis's own rule admits it as the next step after the previous round's
//! computation ([`crate::analyses::NodeQuery::continues`]), at the same reference
//! date. Every round respects the policy's limits for its computation
//! ([`crate::analyses::NodeQuery::check_limits`]). An id this node has seen cannot
//! start a new analysis, so a reused id never dodges a cap or an approval.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use fedcrm_analysis::date::format_date;
use fedcrm_protocol::wire::{Analysis, AnalysisKind};

use crate::analyses::node_query;
use crate::policy::Policy;

/// How a round relates to the analyses this node knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identified {
    /// The analysis kind policies apply to.
    pub kind: &'static str,
    /// The first round of a new analysis (policies, caps and approval apply now);
    /// `false` for a valid continuation of an analysis already admitted.
    pub new: bool,
    /// The computation in words, for people (`node pending`, refusals, the log).
    pub description: String,
}

#[derive(Debug, Clone)]
struct Open {
    kind: &'static str,
    reference: time::Date,
    /// The previous round's computation.
    last: AnalysisKind,
    /// Rounds admitted so far.
    rounds: u32,
    /// Whether this node signed the previous round's view (after which it may have been
    /// unmasked, whether or not this node is asked to reveal).
    signed: bool,
    /// Rounds of this analysis that repeated the previous one's computation because it
    /// was not unmasked ([`MAX_RETRIES`]).
    retries: usize,
}

/// Issue 11: how many times one analysis may repeat a round whose view this node did
/// not sign (a node of its population left before its masked vector arrived, and the
/// coordinator retries the round over the whole population once it is back).
pub const MAX_RETRIES: usize = 3;

/// Issue 11: the most key setups (AdvertiseKeys with no earlier setup named) one
/// analysis may have on this node, however each ended: its first, SecAgg+ restarts
/// without nodes that did not reveal their nonce
/// (`coordinator::round::MAX_GRAPH_RESTARTS` = 3), and a setup after a member of the
/// population reconnected or before a retry. Each is a fresh SecAgg+ graph the
/// coordinator could choose among; every one of them must keep the first's threshold
/// and degree.
pub const MAX_SETUPS: u32 = 8;

/// An analysis's key setups on this node.
#[derive(Debug, Clone, Copy)]
struct Setups {
    t: usize,
    degree: usize,
    count: u32,
}

/// The analyses this node is part of.
#[derive(Debug, Default)]
pub struct Tracker {
    open: Mutex<HashMap<String, Open>>,
    /// Every analysis id this node has admitted (from its audit log and this run).
    seen: Mutex<BTreeSet<String>>,
    /// Issue 11: each analysis's population — the contributors (U3) of the first round
    /// whose view this node signed; every later round must have exactly them.
    populations: Mutex<HashMap<String, Vec<String>>>,
    /// Issue 11: each analysis's key setups (never undone: a setup that ended is one
    /// graph more the coordinator saw).
    setups: Mutex<HashMap<String, Setups>>,
}

impl Tracker {
    /// A tracker that knows the analysis ids already admitted (from the audit log).
    pub fn with_seen(seen: BTreeSet<String>) -> Self {
        Self { seen: Mutex::new(seen), ..Self::default() }
    }

    /// Identify the round's computation. `Err` is the refusal reason.
    pub fn identify(&self, a: &Analysis, policy: &Policy) -> Result<Identified, String> {
        let query = node_query(&a.kind);
        query.check_limits(policy)?;
        let description = describe(a);
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(o) = open.get(&a.analysis_id) {
            let pinned = self.populations.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&a.analysis_id);
            if !pinned {
                return Err(format!(
                    "policy: this round ({description}) continues analysis {}, but this node signed no view of its \
                     first round, so it holds no population to keep later rounds to; it takes no further part",
                    a.analysis_id
                ));
            }
            retries_or_continues(o, a, policy).map_err(|why| {
                format!("policy: this round ({description}) does not continue analysis {}: {why}", a.analysis_id)
            })?;
            return Ok(Identified { kind: o.kind, new: false, description });
        }
        if self.seen.lock().unwrap_or_else(|p| p.into_inner()).contains(&a.analysis_id) {
            return Err(format!(
                "policy: analysis id {} was already used on this node; a new computation needs a new analysis",
                a.analysis_id
            ));
        }
        query
            .first_round()
            .map_err(|why| format!("policy: this round ({description}) cannot start an analysis: {why}"))?;
        Ok(Identified { kind: query.starts(), new: true, description })
    }

    /// Record an admitted round: the analysis is open, and its id is used. Returns what
    /// [`Tracker::withdraw`] needs to forget the round again.
    pub fn admitted(&self, a: &Analysis, id: &Identified) -> Admission {
        let newly_seen = self.seen.lock().unwrap_or_else(|p| p.into_inner()).insert(a.analysis_id.clone());
        let previous = self.open.lock().unwrap_or_else(|p| p.into_inner()).get(&a.analysis_id).cloned();
        self.record_open(a, id);
        Admission { analysis: a.analysis_id.clone(), previous, newly_seen }
    }

    /// Issue 11: a round of `analysis` over `members` — U2 before this node masks, U3
    /// before it signs the view that lets the sum be unmasked — must have exactly the
    /// analysis's population, once this node signed a view of it. A sum over any other
    /// set (a node dropped after its masked vector left, or one added) could be
    /// subtracted from the others; such a round is not unmasked, and the coordinator
    /// retries it over the population.
    pub fn same_population(&self, analysis: &str, survivors: &[String]) -> Result<(), String> {
        let populations = self.populations.lock().unwrap_or_else(|p| p.into_inner());
        let Some(population) = populations.get(analysis) else { return Ok(()) };
        let mut u3 = survivors.to_vec();
        u3.sort();
        if u3 == *population {
            return Ok(());
        }
        let missing: Vec<&str> = population.iter().filter(|p| !u3.contains(p)).map(String::as_str).collect();
        let added: Vec<&str> = u3.iter().filter(|n| !population.contains(n)).map(String::as_str).collect();
        Err(format!(
            "policy: a later round of analysis {analysis} must sum exactly its population (the contributors of its \
             first round); this one {}{}{} — refusing to sign it (it must not be unmasked; retry it over the population)",
            if missing.is_empty() { String::new() } else { format!("lacks {}", missing.join(", ")) },
            if !missing.is_empty() && !added.is_empty() { " and " } else { "" },
            if added.is_empty() { String::new() } else { format!("adds {}", added.join(", ")) },
        ))
    }

    /// Issue 11: this node signs the view (U3 = `survivors`) of the current round of
    /// `analysis`: from now on the round may be unmasked, so it is no longer retried;
    /// the first signed view's U3 is the analysis's population. Called before the
    /// signature leaves.
    pub fn signed(&self, analysis: &str, survivors: &[String]) {
        if let Some(o) = self.open.lock().unwrap_or_else(|p| p.into_inner()).get_mut(analysis) {
            o.signed = true;
        }
        let mut u3 = survivors.to_vec();
        u3.sort();
        self.populations.lock().unwrap_or_else(|p| p.into_inner()).entry(analysis.to_string()).or_insert(u3);
    }

    /// Issue 11: a key setup for `analysis` with threshold `t` and SecAgg+ degree
    /// `degree` (0: full SecAgg). The first fixes both; later ones (after a member of
    /// the population reconnected, or for a retry) must repeat them, at most
    /// [`MAX_SETUPS`] in all. `Err` is the refusal's reason.
    pub fn setup(&self, analysis: &str, t: usize, degree: usize) -> Result<(), String> {
        let mut setups = self.setups.lock().unwrap_or_else(|p| p.into_inner());
        let s = setups.entry(analysis.to_string()).or_insert(Setups { t, degree, count: 0 });
        if (s.t, s.degree) != (t, degree) {
            return Err(format!(
                "policy: a new key setup of analysis {analysis} must keep its first setup's threshold and degree \
                 (t = {}, k = {}), not t = {t}, k = {degree}",
                s.t, s.degree
            ));
        }
        if s.count >= MAX_SETUPS {
            return Err(format!(
                "policy: analysis {analysis} already had {MAX_SETUPS} key setups on this node (each a fresh graph \
                 the coordinator saw); it takes no further part"
            ));
        }
        s.count += 1;
        Ok(())
    }

    /// Forget an admitted round that ended before any of this node's data left it (no
    /// masked input sent): the coordinator stopped it, e.g. to restart a SecAgg+ round
    /// without a node that did not reveal its nonce, and the same pass may run again.
    pub fn withdraw(&self, admission: Admission) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        match admission.previous {
            Some(p) => {
                open.insert(admission.analysis, p);
            }
            None => {
                open.remove(&admission.analysis);
                if admission.newly_seen {
                    self.seen.lock().unwrap_or_else(|p| p.into_inner()).remove(&admission.analysis);
                }
            }
        }
    }

    fn record_open(&self, a: &Analysis, id: &Identified) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let previous = open.get(&a.analysis_id);
        let rounds = previous.map_or(0, |o| o.rounds) + 1;
        let retries = previous.map_or(0, |o| o.retries + usize::from(is_retry(o, a)));
        open.insert(
            a.analysis_id.clone(),
            Open { kind: id.kind, reference: a.reference_date, last: a.kind.clone(), rounds, signed: false, retries },
        );
    }
}

/// What [`Tracker::admitted`] changed, to undo it ([`Tracker::withdraw`]).
#[derive(Debug)]
pub struct Admission {
    analysis: String,
    previous: Option<Open>,
    newly_seen: bool,
}

/// Issue 11: round `a` repeats the computation of `o`'s previous round, whose view
/// this node did not sign (its masked vector may have left, but this node never agreed
/// to a sum over it). Only a later round is ever retried: the caller checks that the
/// analysis has a population.
fn is_retry(o: &Open, a: &Analysis) -> bool {
    !o.signed && o.last == a.kind
}

/// Is round `a` a retry of `o`'s previous round ([`is_retry`], at most [`MAX_RETRIES`]
/// times), or its next step ([`continues`])? A retry computes exactly what the
/// previous round did over the same population (`Tracker::same_population`), so its
/// sum, if released, is the one the previous round would have released; under
/// differential privacy it is charged again.
fn retries_or_continues(o: &Open, a: &Analysis, policy: &Policy) -> Result<(), String> {
    if !is_retry(o, a) {
        return continues(o, a, policy);
    }
    if a.reference_date != o.reference {
        return Err(format!("its reference date differs from {}", format_date(o.reference)));
    }
    if o.retries >= MAX_RETRIES {
        return Err(format!(
            "it would be retry {} of a round that was not unmasked; this node allows {MAX_RETRIES}",
            o.retries + 1
        ));
    }
    // A retry is a round like any other for the limits on their number (a policy's
    // most rounds, a DP plan's T: each retry is charged again).
    node_query(&a.kind).within_rounds(o.rounds, policy)
}

/// Is round `a` the next step of `o`?
fn continues(o: &Open, a: &Analysis, policy: &Policy) -> Result<(), String> {
    if a.reference_date != o.reference {
        return Err(format!(
            "its reference date {} differs from {}",
            format_date(a.reference_date),
            format_date(o.reference)
        ));
    }
    node_query(&a.kind).continues(o.kind, &o.last, o.rounds, policy)
}

/// The computation in words: "3 histograms at 2026-10-31: recency 65 power-of-two
/// bins; …" or "4 segment counts at …" ([`crate::analyses::NodeQuery::describe`]).
pub fn describe(a: &Analysis) -> String {
    node_query(&a.kind).describe(&format_date(a.reference_date))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyses::rfm::{RFM_HISTOGRAMS, RFM_SEGMENTS};
    use crate::policy::HistogramLimits;
    use fedcrm_analysis::rfm::{Cuts, HistogramSpec, Layout, Metric, QuantileSearch};

    fn analysis(id: &str, kind: AnalysisKind) -> Analysis {
        Analysis {
            reference_date: fedcrm_analysis::date::parse_date("2026-10-31").unwrap(),
            purpose: "p".into(),
            requested_by: "a".into(),
            requested_by_organisation: "HQ".into(),
            analysis_id: id.into(),
            analysis_kind: RFM_SEGMENTS.into(),
            kind,
        }
    }

    fn coarse() -> AnalysisKind {
        AnalysisKind::RfmHistograms(Metric::ALL.iter().map(|m| QuantileSearch::coarse_spec(*m)).collect())
    }

    fn linear(metric: Metric, lo: u64, width: u64, bins: u32) -> HistogramSpec {
        HistogramSpec { metric, layout: Layout::Linear { lo, width, bins } }
    }

    /// Issue 11: once a round of an analysis was unmasked, a later round must sum
    /// exactly its population — neither a node fewer (one that dropped after its masked
    /// vector left) nor one more; the order of the names does not matter.
    #[test]
    fn a_later_round_must_sum_exactly_the_population() {
        let t = Tracker::default();
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(t.same_population("a", &names(&["x", "y"])).is_ok(), "no population before the first unmask");
        t.signed("a", &names(&["c", "a", "b"]));
        t.signed("a", &names(&["a", "b"]));
        assert!(t.same_population("a", &names(&["b", "c", "a"])).is_ok());
        let e = t.same_population("a", &names(&["a", "b"])).unwrap_err();
        assert!(e.contains("lacks c") && e.contains("must not be unmasked"), "{e}");
        let e = t.same_population("a", &names(&["a", "b", "c", "d"])).unwrap_err();
        assert!(e.contains("adds d"), "{e}");
        assert!(t.same_population("other", &names(&["a"])).is_ok(), "per analysis");
    }

    /// Issue 11: a round that was not unmasked may be repeated (the coordinator's retry
    /// over the population), the same computation only and at most `MAX_RETRIES` times;
    /// once a round was unmasked, repeating it is no retry.
    #[test]
    fn a_round_not_unmasked_may_be_retried_a_bounded_number_of_times() {
        let t = Tracker::default();
        let limits = Policy::default();
        let first = analysis("r", coarse());
        let id = t.identify(&first, &limits).unwrap();
        t.admitted(&first, &id);
        t.signed("r", &["a".to_string()]);
        let refine = analysis("r", AnalysisKind::RfmHistograms(vec![linear(Metric::Monetary, 1024, 1, 1024)]));
        let id = t.identify(&refine, &limits).unwrap();
        t.admitted(&refine, &id);
        // Not unmasked: the same computation again is a retry, MAX_RETRIES times.
        for _ in 0..MAX_RETRIES {
            let id = t.identify(&refine, &limits).unwrap();
            assert!(!id.new);
            t.admitted(&refine, &id);
        }
        let e = t.identify(&refine, &limits).unwrap_err();
        assert!(e.contains("retry 4") && e.contains("allows 3"), "{e}");
        // A different computation is never a retry: the analysis's own rule applies.
        let stray = analysis("r", AnalysisKind::RfmHistograms(vec![linear(Metric::Monetary, 0, 1, 1024)]));
        assert!(t.identify(&stray, &limits).unwrap_err().contains("does not continue"));
        // Once signed, the same computation again is refused by the rule (no narrower).
        t.signed("r", &["a".to_string()]);
        assert!(t.identify(&refine, &limits).is_err());
    }

    /// Issue 11: every key setup of one analysis keeps the first's threshold and degree,
    /// and there are at most `MAX_SETUPS` of them (each a fresh graph HQ saw).
    #[test]
    fn key_setups_of_one_analysis_keep_t_and_k_and_are_bounded() {
        let t = Tracker::default();
        t.setup("x", 5, 0).unwrap();
        assert!(t.setup("x", 4, 0).unwrap_err().contains("t = 5, k = 0"));
        assert!(t.setup("x", 5, 3).is_err());
        for _ in 1..MAX_SETUPS {
            t.setup("x", 5, 0).unwrap();
        }
        assert!(t.setup("x", 5, 0).unwrap_err().contains("already had 8 key setups"));
        t.setup("y", 4, 0).unwrap();
    }

    #[test]
    fn the_label_does_not_decide_the_kind_and_refinements_must_nest() {
        let t = Tracker::default();
        let limits = Policy::default();
        // A4: labelled rfm-segments, but a 2^20-bin one-cent spend histogram.
        let wide = analysis("x", AnalysisKind::RfmHistograms(vec![linear(Metric::Monetary, 0, 1, 1 << 20)]));
        assert!(t.identify(&wide, &limits).unwrap_err().contains("max_bins"));
        // A fine histogram under the segments label is an rfm-histograms analysis.
        let fine = analysis("y", AnalysisKind::RfmHistograms(vec![linear(Metric::Monetary, 0, 1, 1000)]));
        // Split into adjacent pieces, a new analysis is refused too.
        let pieces: Vec<HistogramSpec> = (0..64u64).map(|i| linear(Metric::Monetary, 1024 * i, 1, 1024)).collect();
        assert!(
            t.identify(&analysis("z", AnalysisKind::RfmHistograms(pieces)), &limits).unwrap_err().contains("at most 4")
        );
        assert_eq!(t.identify(&fine, &limits).unwrap().kind, RFM_HISTOGRAMS);

        let first = analysis("s", coarse());
        let id = t.identify(&first, &limits).unwrap();
        assert_eq!((id.kind, id.new), (RFM_SEGMENTS, true));
        t.admitted(&first, &id);
        // Without a signed view of the first round there is no population: refused.
        let refine = analysis("s", AnalysisKind::RfmHistograms(vec![linear(Metric::Monetary, 1024, 1, 1024)]));
        assert!(t.identify(&refine, &limits).unwrap_err().contains("signed no view"));
        t.signed("s", &["a".to_string()]);
        // Refinement inside the power-of-two bin [1024, 2048): continues the analysis.
        let refine = analysis("s", AnalysisKind::RfmHistograms(vec![linear(Metric::Monetary, 1024, 1, 1024)]));
        let id = t.identify(&refine, &limits).unwrap();
        assert_eq!((id.kind, id.new), (RFM_SEGMENTS, false));
        t.admitted(&refine, &id);
        // Not nested in the previous pass: refused, whatever the label says.
        let stray = analysis("s", AnalysisKind::RfmHistograms(vec![linear(Metric::Monetary, 0, 1, 1024)]));
        assert!(t.identify(&stray, &limits).unwrap_err().contains("does not continue"));
        // The same bins again (no narrower), once this node signed the pass: refused.
        t.signed("s", &["a".to_string()]);
        assert!(t.identify(&refine, &limits).is_err());
        let seg =
            analysis("s", AnalysisKind::RfmSegments(Cuts { recency: [1; 4], frequency: [1; 4], monetary: [1; 4] }));
        let id = t.identify(&seg, &limits).unwrap();
        assert!(!id.new);
        t.admitted(&seg, &id);
        // A reused id cannot start a new analysis (it would dodge caps and approvals).
        assert!(t.identify(&analysis("s", coarse()), &limits).unwrap_err().contains("already"));
        // R4: one "refinement" of 1,024 one-cent histograms is 2^20 bins: refused.
        let t = Tracker::default();
        let first = analysis("r4", coarse());
        let id = t.identify(&first, &limits).unwrap();
        t.admitted(&first, &id);
        t.signed("r4", &["a".to_string()]);
        let many: Vec<HistogramSpec> =
            (0..1024u64).map(|i| linear(Metric::Monetary, (1 << 20) + 1024 * i, 1, 1024)).collect();
        let err = t.identify(&analysis("r4", AnalysisKind::RfmHistograms(many)), &limits).unwrap_err();
        assert!(err.contains("at most 4"), "{err}");
        let strict = Policy {
            histograms: HistogramLimits { min_width_monetary_cents: 100, ..limits.histograms },
            ..Policy::default()
        };
        assert!(t.identify(&fine, &strict).unwrap_err().contains("finer than the minimum of 100"));
    }
}
