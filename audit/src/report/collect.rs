//! One collector per report section: each reads the records (in the period, and the
//! whole logs where a section needs context) and returns that section's model.

use super::*;

/// A row with the time it is listed by (ties broken by its own fields).
struct Dated<T> {
    time_ms: u64,
    row: T,
}

/// Messages and bytes sent, for one node or one part of its egress.
#[derive(Default)]
struct Sent {
    messages: u64,
    bytes: u64,
}

impl Sent {
    fn add(&mut self, bytes: u64) {
        self.messages += 1;
        self.bytes = self.bytes.saturating_add(bytes);
    }
}

/// One node's egress in the period: in total, per analysis kind and per message type.
#[derive(Default)]
struct NodeSent {
    total: Sent,
    by_kind: BTreeMap<String, Sent>,
    by_message: BTreeMap<String, Sent>,
}

/// What identifies a group of refusals: who recorded them, about which node, for
/// which analysis and why. The field order is the groups' order before sorting.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct RefusalKey {
    recorded_by: String,
    source: RefusalSource,
    node: String,
    analysis: Option<String>,
    reason: String,
}

/// The records of one approval request at one node.
#[derive(Default)]
struct ApprovalRecords<'a> {
    request: Option<&'a Record>,
    /// The grant or expiry (the first one logged).
    decision: Option<&'a Record>,
    /// Whether any of its records is in the period.
    in_period: bool,
}

pub(super) fn parties(all: &[&Record], in_period: &[&Record], names: &NameIndex) -> Vec<PartyLog> {
    let parties: BTreeSet<&str> = all.iter().map(|r| r.party.as_str()).collect();
    let mut out: Vec<PartyLog> = parties
        .into_iter()
        .map(|party| {
            let times: Vec<u64> = in_period.iter().filter(|r| r.party == party).map(|r| r.time_ms).collect();
            PartyLog {
                party: party.to_string(),
                role: names.role(party),
                organisation: names.org(party),
                software: names.software.get(party).cloned().unwrap_or_default(),
                records_in_period: times.len() as u64,
                first_record: times.iter().min().copied().map(fmt_time),
                last_record: times.iter().max().copied().map(fmt_time),
            }
        })
        .collect();
    out.sort_by(|a, b| (role_rank(&a.role), &a.party).cmp(&(role_rank(&b.role), &b.party)));
    out
}

pub(super) fn member(m: &Member, names: &NameIndex) -> Participant {
    let organisation = if m.organisation.is_empty() { names.org(&m.name) } else { m.organisation.clone() };
    Participant { name: m.name.clone(), organisation, kind: m.kind.clone() }
}

pub(super) fn analyses(all: &[&Record], names: &NameIndex, period: &Period) -> Vec<AnalysisRun> {
    // The analyses with a request, release or failure in the period, with their first such time.
    let mut ids: BTreeMap<&str, u64> = BTreeMap::new();
    for r in all.iter().filter(|r| period.contains(r.time_ms)) {
        if let Event::AnalysisRequested { analysis, .. }
        | Event::Release { analysis, .. }
        | Event::AnalysisFailed { analysis, .. } = &r.event
        {
            let t = ids.entry(analysis).or_insert(r.time_ms);
            *t = (*t).min(r.time_ms);
        }
    }
    let coordinator_records: Vec<&Record> = all.iter().copied().filter(|r| names.is_coordinator(&r.party)).collect();
    let mut out: Vec<Dated<AnalysisRun>> = Vec::new();
    for (id, first_in_period) in ids {
        let mut request = None;
        let mut release = None;
        let mut last_failure_ms = None;
        // Every distinct failure reason, in the order first recorded.
        let mut failure_reasons: Vec<String> = Vec::new();
        let mut rounds = BTreeSet::new();
        let mut invited: Vec<&Member> = Vec::new();
        for r in &coordinator_records {
            match &r.event {
                Event::AnalysisRequested { analysis, .. } if analysis == id => {
                    request = request.or(Some(*r));
                }
                Event::Release { analysis, rounds: released, .. } if analysis == id => {
                    release = Some(*r);
                    // Normally already started; counts rounds whose start was deleted by retention.
                    rounds.extend(released.iter().map(String::as_str));
                }
                Event::AnalysisFailed { analysis, reason } if analysis == id => {
                    last_failure_ms = Some(r.time_ms);
                    if !failure_reasons.contains(reason) {
                        failure_reasons.push(reason.clone());
                    }
                }
                Event::RoundStarted { round, analysis, invited: inv, .. } if analysis == id => {
                    rounds.insert(round.as_str());
                    invited.extend(inv);
                }
                _ => {}
            }
        }
        if invited.is_empty() {
            // No coordinator round in the logs read: fall back to what the nodes were offered.
            for r in all {
                if let Event::RoundStarted { analysis, invited: inv, .. } = &r.event
                    && analysis == id
                {
                    invited.extend(inv);
                }
            }
        }
        let (analyst, analyst_organisation, purpose, parameters, requested_kind) = match request.map(|r| &r.event) {
            Some(Event::AnalysisRequested { kind, analyst, organisation, purpose, parameters, .. }) => {
                (analyst.clone(), organisation.clone(), purpose.clone(), parameters.clone(), Some(kind.clone()))
            }
            _ => (String::new(), String::new(), String::new(), serde_json::Value::Null, None),
        };
        let kind = requested_kind.or_else(|| names.kind(id)).unwrap_or_default();
        let (outcome, outcome_at) = match (release, last_failure_ms) {
            (Some(r), _) => (Outcome::Released, Some(fmt_time(r.time_ms))),
            (None, Some(t)) => (Outcome::Failed, Some(fmt_time(t))),
            (None, None) => (Outcome::NoOutcomeRecorded, None),
        };
        let (participants, participants_from) = match release.map(|r| &r.event) {
            Some(Event::Release { contributors, .. }) => {
                (contributors.iter().map(|m| member(m, names)).collect(), ParticipantSource::Contributors)
            }
            _ if !invited.is_empty() => {
                let mut seen = BTreeSet::new();
                let list = invited.iter().filter(|m| seen.insert(m.name.as_str())).map(|m| member(m, names)).collect();
                (list, ParticipantSource::Invited)
            }
            _ => (Vec::new(), ParticipantSource::Unknown),
        };
        let mut declined: Vec<String> = Vec::new();
        for r in &coordinator_records {
            if let Event::NodeExit { round, node, .. } = &r.event {
                let ours = rounds.contains(round.as_str()) || names.round_analysis.get(round).is_some_and(|a| a == id);
                if ours && !declined.contains(node) {
                    declined.push(node.clone());
                }
            }
        }
        out.push(Dated {
            time_ms: request.map_or(first_in_period, |r| r.time_ms),
            row: AnalysisRun {
                analysis: id.to_string(),
                kind,
                requested_at: request.map(|r| fmt_time(r.time_ms)),
                analyst,
                analyst_organisation,
                purpose,
                parameters,
                outcome,
                outcome_at,
                failure_reasons,
                participants,
                participants_from,
                rounds: rounds.len() as u64,
                declined,
            },
        });
    }
    out.sort_by(|a, b| (a.time_ms, &a.row.analysis).cmp(&(b.time_ms, &b.row.analysis)));
    out.into_iter().map(|a| a.row).collect()
}

fn parts(map: BTreeMap<String, Sent>) -> Vec<EgressPart> {
    map.into_iter().map(|(name, Sent { messages, bytes })| EgressPart { name, messages, bytes }).collect()
}

pub(super) fn egress(all: &[&Record], in_period: &[&Record], names: &NameIndex) -> (Vec<NodeEgress>, EgressTotal) {
    let mut nodes: BTreeMap<String, NodeSent> = BTreeMap::new();
    // Every node whose log was read appears, even with nothing sent.
    for r in all {
        if names.is_node(&r.party) {
            nodes.entry(r.party.clone()).or_default();
        }
    }
    for r in in_period {
        if let Event::Egress { round, analysis, message, bytes, .. } = &r.event {
            let sent = nodes.entry(r.party.clone()).or_default();
            sent.total.add(*bytes);
            let kind = match names.analysis_of(analysis.as_ref(), round.as_ref()) {
                Some(a) => names.kind(&a).unwrap_or_else(|| UNKNOWN_KIND.to_string()),
                None => NOT_AN_ANALYSIS.to_string(),
            };
            sent.by_kind.entry(kind).or_default().add(*bytes);
            sent.by_message.entry(message.clone()).or_default().add(*bytes);
        }
    }
    let mut total = EgressTotal { nodes: 0, messages: 0, bytes: 0 };
    let out = nodes
        .into_iter()
        .map(|(node, NodeSent { total: sent, by_kind, by_message })| {
            total.nodes += 1;
            total.messages += sent.messages;
            total.bytes = total.bytes.saturating_add(sent.bytes);
            NodeEgress {
                organisation: names.org(&node),
                node,
                messages: sent.messages,
                bytes: sent.bytes,
                by_kind: parts(by_kind),
                by_message: parts(by_message),
            }
        })
        .collect();
    (out, total)
}

pub(super) fn refusals(in_period: &[&Record], names: &NameIndex) -> Vec<Refusal> {
    // Each group with the time of its first refusal, by which the groups are listed.
    let mut groups: BTreeMap<RefusalKey, Dated<Refusal>> = BTreeMap::new();
    for r in in_period {
        let (node, source, analysis, round, reason) = match &r.event {
            Event::PolicyDecision { round, analysis, admitted: false, reason } => {
                (r.party.clone(), RefusalSource::Node, Some(analysis.clone()), round.clone(), reason.clone())
            }
            Event::NodeExit { round, node, reason } => (
                node.clone(),
                RefusalSource::Coordinator,
                names.analysis_of(None, Some(round)),
                Some(round.clone()),
                reason.clone(),
            ),
            _ => continue,
        };
        let key = RefusalKey {
            recorded_by: r.party.clone(),
            source,
            node: node.clone(),
            analysis: analysis.clone(),
            reason: reason.clone(),
        };
        let t = fmt_time(r.time_ms);
        let group = groups.entry(key).or_insert_with(|| Dated {
            time_ms: r.time_ms,
            row: Refusal {
                organisation: names.org(&node),
                node,
                source,
                recorded_by: r.party.clone(),
                kind: analysis.as_deref().and_then(|a| names.kind(a)),
                analysis,
                rounds: Vec::new(),
                reason,
                count: 0,
                first_at: t.clone(),
                last_at: t.clone(),
            },
        });
        group.time_ms = group.time_ms.min(r.time_ms);
        let g = &mut group.row;
        g.count += 1;
        g.first_at = g.first_at.clone().min(t.clone());
        g.last_at = g.last_at.clone().max(t);
        if let Some(round) = round
            && !g.rounds.contains(&round)
        {
            g.rounds.push(round);
        }
    }
    let mut out: Vec<Dated<Refusal>> = groups.into_values().collect();
    out.sort_by(|a, b| {
        let (x, y) = (&a.row, &b.row);
        (a.time_ms, &x.node, x.source, &x.reason).cmp(&(b.time_ms, &y.node, y.source, &y.reason))
    });
    out.into_iter().map(|g| g.row).collect()
}

pub(super) fn thresholds(in_period: &[&Record]) -> Vec<ReleaseThresholds> {
    in_period
        .iter()
        .filter_map(|r| match &r.event {
            Event::Release {
                analysis,
                kind,
                rounds,
                contributors,
                min_participants,
                min_cohort,
                cells,
                suppressed,
            } => Some(ReleaseThresholds {
                released_at: fmt_time(r.time_ms),
                analysis: analysis.clone(),
                kind: kind.clone(),
                rounds: rounds.clone(),
                min_participants: *min_participants,
                min_cohort: *min_cohort,
                contributors: contributors.len() as u64,
                meets_min_participants: contributors.len() as u64 >= *min_participants,
                cells: *cells,
                suppressed: *suppressed,
            }),
            _ => None,
        })
        .collect()
}

pub(super) fn policy_decisions(in_period: &[&Record], names: &NameIndex) -> Vec<PolicyCounts> {
    let mut counts: BTreeMap<&str, PolicyCounts> = BTreeMap::new();
    for r in in_period {
        if let Event::PolicyDecision { admitted, .. } = &r.event {
            let c = counts.entry(&r.party).or_insert_with(|| PolicyCounts {
                node: r.party.clone(),
                organisation: names.org(&r.party),
                admitted: 0,
                refused: 0,
            });
            if *admitted {
                c.admitted += 1;
            } else {
                c.refused += 1;
            }
        }
    }
    counts.into_values().collect()
}

pub(super) fn suppressed(in_period: &[&Record], names: &NameIndex) -> SuppressedCells {
    let mut per: BTreeMap<&str, AnalysisSuppressed> = BTreeMap::new();
    let (mut total_cells, mut total_suppressed) = (0u64, 0u64);
    for r in in_period {
        if let Event::Release { analysis, kind, cells, suppressed, .. } = &r.event {
            total_cells = total_cells.saturating_add(*cells);
            total_suppressed = total_suppressed.saturating_add(*suppressed);
            let e = per.entry(analysis).or_insert_with(|| AnalysisSuppressed {
                analysis: analysis.clone(),
                kind: if kind.is_empty() { names.kind(analysis).unwrap_or_default() } else { kind.clone() },
                releases: 0,
                cells: 0,
                suppressed: 0,
            });
            e.releases += 1;
            e.cells = e.cells.saturating_add(*cells);
            e.suppressed = e.suppressed.saturating_add(*suppressed);
        }
    }
    SuppressedCells { total_cells, total_suppressed, per_analysis: per.into_values().collect() }
}

pub(super) fn approvals(
    all: &[&Record],
    in_period: &[&Record],
    names: &NameIndex,
    period: &Period,
) -> (Vec<Approval>, Vec<ApprovalCounts>) {
    // (node, request id) → its records.
    let mut map: BTreeMap<(&str, &str), ApprovalRecords> = BTreeMap::new();
    for r in all {
        let (id, is_request) = match &r.event {
            Event::ApprovalRequested { id, .. } => (id.as_str(), true),
            Event::ApprovalGranted { id, .. } | Event::ApprovalExpired { id } => (id.as_str(), false),
            _ => continue,
        };
        let e = map.entry((r.party.as_str(), id)).or_default();
        if is_request {
            e.request = e.request.or(Some(*r));
        } else if e.decision.is_none() {
            e.decision = Some(*r);
        }
        e.in_period |= period.contains(r.time_ms);
    }
    let mut rows: Vec<Dated<Approval>> = Vec::new();
    for ((node, id), ApprovalRecords { request, decision, in_period: touched }) in map {
        if !touched {
            continue;
        }
        let (analysis, purpose, requested_by, expires_at) = match request.map(|r| &r.event) {
            Some(Event::ApprovalRequested { analysis, purpose, requested_by, expires_ms, .. }) => {
                (analysis.clone(), purpose.clone(), requested_by.clone(), Some(fmt_time(*expires_ms)))
            }
            _ => Default::default(),
        };
        let (outcome, decided_by) = match decision.map(|r| &r.event) {
            Some(Event::ApprovalGranted { by, .. }) => (ApprovalOutcome::Granted, Some(by.clone())),
            Some(_) => (ApprovalOutcome::Expired, None),
            None => (ApprovalOutcome::Pending, None),
        };
        rows.push(Dated {
            time_ms: request.or(decision).map_or(0, |r| r.time_ms),
            row: Approval {
                node: node.to_string(),
                organisation: names.org(node),
                id: id.to_string(),
                analysis,
                purpose,
                requested_by,
                requested_at: request.map(|r| fmt_time(r.time_ms)),
                expires_at,
                outcome,
                decided_by,
                decided_at: decision.map(|r| fmt_time(r.time_ms)),
            },
        });
    }
    rows.sort_by(|a, b| (a.time_ms, &a.row.node, &a.row.id).cmp(&(b.time_ms, &b.row.node, &b.row.id)));
    let mut counts: BTreeMap<&str, ApprovalCounts> = BTreeMap::new();
    for r in in_period {
        let c = match &r.event {
            Event::ApprovalRequested { .. } | Event::ApprovalGranted { .. } | Event::ApprovalExpired { .. } => {
                counts.entry(&r.party).or_insert_with(|| ApprovalCounts {
                    node: r.party.clone(),
                    organisation: names.org(&r.party),
                    requested: 0,
                    granted: 0,
                    expired: 0,
                })
            }
            _ => continue,
        };
        match &r.event {
            Event::ApprovalRequested { .. } => c.requested += 1,
            Event::ApprovalGranted { .. } => c.granted += 1,
            _ => c.expired += 1,
        }
    }
    (rows.into_iter().map(|a| a.row).collect(), counts.into_values().collect())
}

pub(super) fn sessions(in_period: &[&Record], names: &NameIndex) -> Vec<SessionCounts> {
    let mut map: BTreeMap<(&str, &str), SessionCounts> = BTreeMap::new();
    for r in in_period {
        let peer = match &r.event {
            Event::SessionOpened { peer, .. } | Event::SessionClosed { peer, .. } => peer,
            _ => continue,
        };
        let s = map.entry((&r.party, peer)).or_insert_with(|| SessionCounts {
            recorded_by: r.party.clone(),
            peer: peer.clone(),
            organisation: names.org(peer),
            role: names.role(peer),
            opened: 0,
            closed: 0,
            close_reasons: Vec::new(),
        });
        match &r.event {
            Event::SessionOpened { organisation, role, .. } => {
                s.opened += 1;
                if !organisation.is_empty() {
                    s.organisation.clone_from(organisation);
                }
                if !role.is_empty() {
                    s.role.clone_from(role);
                }
            }
            Event::SessionClosed { reason, .. } => {
                s.closed += 1;
                if !s.close_reasons.contains(reason) {
                    s.close_reasons.push(reason.clone());
                }
            }
            _ => {}
        }
    }
    map.into_values().collect()
}

pub(super) fn integrity(in_period: &[&Record]) -> Vec<IntegrityNote> {
    in_period
        .iter()
        .filter_map(|r| {
            let note = |kind, files| IntegrityNote {
                at: fmt_time(r.time_ms),
                party: r.party.clone(),
                kind,
                files,
                upto_seq: None,
                retention_days: None,
                bytes: None,
                sha256: None,
            };
            match &r.event {
                Event::RetentionDeleted { files, upto_seq, retention_days, .. } => Some(IntegrityNote {
                    upto_seq: Some(*upto_seq),
                    retention_days: Some(*retention_days),
                    ..note(IntegrityKind::RetentionDeleted, files.clone())
                }),
                Event::TornTailRecovered { file, bytes, sha256 } => Some(IntegrityNote {
                    bytes: Some(*bytes),
                    sha256: Some(sha256.clone()),
                    ..note(IntegrityKind::TornTailRecovered, vec![file.clone()])
                }),
                _ => None,
            }
        })
        .collect()
}

pub(super) fn seals(parties: &[PartyLog], in_period: &[&Record]) -> Vec<SealCount> {
    parties
        .iter()
        .map(|p| {
            let ups: Vec<u64> = in_period
                .iter()
                .filter(|r| r.party == p.party)
                .filter_map(|r| match r.event {
                    Event::Seal { upto_seq, .. } => Some(upto_seq),
                    _ => None,
                })
                .collect();
            SealCount { party: p.party.clone(), seals: ups.len() as u64, last_sealed_seq: ups.iter().max().copied() }
        })
        .collect()
}

/// One `privacy-charged` record: the node charged and what it says.
struct ChargeRecord<'a> {
    record: &'a Record,
    /// The coordinator's record of a node's charge (else the node's own).
    by_coordinator: bool,
    node: &'a str,
    round: &'a str,
    analysis: &'a str,
    month: &'a str,
    rho: f64,
    xi: f64,
    budget: &'a str,
    used: f64,
    limit: f64,
}

impl<'a> ChargeRecord<'a> {
    fn of(record: &'a Record) -> Option<Self> {
        let Event::PrivacyCharged { round, analysis, node, month, rho, xi, budget, used, limit, .. } = &record.event
        else {
            return None;
        };
        // A node's own record leaves `node` empty: the node is the log's owner.
        let by_coordinator = !node.is_empty();
        Some(ChargeRecord {
            record,
            by_coordinator,
            node: if by_coordinator { node } else { &record.party },
            round,
            analysis,
            month,
            rho: *rho,
            xi: *xi,
            budget,
            used: *used,
            limit: *limit,
        })
    }
}

impl ChargeTotals {
    fn add(&mut self, c: &ChargeRecord) {
        self.charges += 1;
        self.rho += c.rho;
        self.xi += c.xi;
    }
}

/// One node's charges in one month, as each log records them.
#[derive(Default)]
struct MonthCharges<'a> {
    own: ChargeTotals,
    /// The node's last charge of the month (in the period): its budget, used and limit.
    last_own: Option<ChargeRecord<'a>>,
    seen: ChargeTotals,
    /// Per analysis, in the order first charged: (analysis, node's log, coordinator's log).
    per_analysis: Vec<(&'a str, ChargeTotals, ChargeTotals)>,
}

/// Whether two logs' ρ for one charge differ by more than [`RHO_TOLERANCE`] (relative;
/// a value that is not a number always differs).
fn rho_differs(a: f64, b: f64) -> bool {
    let within = (a - b).abs() <= RHO_TOLERANCE * a.abs().max(b.abs());
    !within
}

pub(super) fn privacy(all: &[&Record], in_period: &[&Record], names: &NameIndex, period: &Period) -> PrivacyBudget {
    // Logs read: every party with a record; the coordinator's is one of them or not.
    let read: BTreeSet<&str> = all.iter().map(|r| r.party.as_str()).collect();
    let coordinator_log_read = all.iter().any(|r| names.is_coordinator(&r.party));

    let mut months: BTreeMap<(&str, &str), MonthCharges> = BTreeMap::new();
    for c in in_period.iter().filter_map(|r| ChargeRecord::of(r)) {
        let m = months.entry((c.node, c.month)).or_default();
        let i = match m.per_analysis.iter().position(|(a, ..)| *a == c.analysis) {
            Some(i) => i,
            None => {
                m.per_analysis.push((c.analysis, ChargeTotals::default(), ChargeTotals::default()));
                m.per_analysis.len() - 1
            }
        };
        if c.by_coordinator {
            m.seen.add(&c);
            m.per_analysis[i].2.add(&c);
        } else {
            m.own.add(&c);
            m.per_analysis[i].1.add(&c);
            m.last_own = Some(c);
        }
    }
    let months = months
        .into_iter()
        .map(|((node, month), m)| {
            let node_log_read = read.contains(node);
            NodeMonthCharges {
                node: node.to_string(),
                organisation: names.org(node),
                month: month.to_string(),
                node_log: node_log_read.then(|| OwnCharges {
                    charges: m.own.charges,
                    rho: m.own.rho,
                    xi: m.own.xi,
                    budget: m.last_own.as_ref().map(|c| c.budget.to_string()).unwrap_or_default(),
                    used: m.last_own.as_ref().map(|c| c.used),
                    limit: m.last_own.as_ref().map(|c| c.limit),
                    last_charge_at: m.last_own.as_ref().map(|c| fmt_time(c.record.time_ms)),
                }),
                coordinator_log: coordinator_log_read.then_some(m.seen),
                per_analysis: m
                    .per_analysis
                    .into_iter()
                    .map(|(analysis, own, seen)| AnalysisCharges {
                        analysis: analysis.to_string(),
                        kind: names.kind(analysis).unwrap_or_default(),
                        node_log: node_log_read.then_some(own),
                        coordinator_log: coordinator_log_read.then_some(seen),
                    })
                    .collect(),
            }
        })
        .collect();

    // Compared over the whole logs, so that a charge recorded just inside the period by
    // one side and just outside it by the other is not a mismatch; listed when the
    // charge (either side's record of it) is in the period.
    let mut mismatches: Vec<Dated<ChargeMismatch>> = Vec::new();
    if coordinator_log_read {
        // (node, round) → (the node's records, the coordinator's), for nodes whose log was read.
        type Sides<'a> = (Vec<ChargeRecord<'a>>, Vec<ChargeRecord<'a>>);
        let mut charges: BTreeMap<(&str, &str), Sides> = BTreeMap::new();
        for c in all.iter().filter_map(|r| ChargeRecord::of(r)) {
            if !read.contains(c.node) {
                continue;
            }
            let sides = charges.entry((c.node, c.round)).or_default();
            if c.by_coordinator { sides.1.push(c) } else { sides.0.push(c) }
        }
        for ((node, round), (own, seen)) in charges {
            // A round is charged once per node; a repeat on one side is paired in order.
            for i in 0..own.len().max(seen.len()) {
                let (o, s) = (own.get(i), seen.get(i));
                let kind = match (o, s) {
                    (Some(o), Some(s)) if rho_differs(o.rho, s.rho) => MismatchKind::RhoDiffers,
                    (Some(_), Some(_)) | (None, None) => continue,
                    (Some(_), None) => MismatchKind::MissingFromCoordinatorLog,
                    (None, Some(_)) => MismatchKind::MissingFromNodeLog,
                };
                if ![o, s].into_iter().flatten().any(|c| period.contains(c.record.time_ms)) {
                    continue;
                }
                let Some(first) = o.or(s) else { continue };
                mismatches.push(Dated {
                    time_ms: first.record.time_ms,
                    row: ChargeMismatch {
                        kind,
                        node: node.to_string(),
                        organisation: names.org(node),
                        round: round.to_string(),
                        analysis: first.analysis.to_string(),
                        at: fmt_time(first.record.time_ms),
                        node_rho: o.map(|c| c.rho),
                        coordinator_rho: s.map(|c| c.rho),
                    },
                });
            }
        }
    }
    mismatches.sort_by(|a, b| {
        let (x, y) = (&a.row, &b.row);
        (a.time_ms, &x.node, &x.round, x.kind).cmp(&(b.time_ms, &y.node, &y.round, y.kind))
    });
    PrivacyBudget { coordinator_log_read, months, mismatches: mismatches.into_iter().map(|m| m.row).collect() }
}
