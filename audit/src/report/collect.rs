//! One collector per report section: each reads the records (in the period, and the
//! whole logs where a section needs context) and returns that section's model.

use super::*;

pub(super) fn parties(all: &[&Record], inp: &[&Record], dir: &Directory) -> Vec<PartyLog> {
    let mut names = BTreeSet::new();
    for r in all {
        names.insert(r.party.as_str());
    }
    let mut out: Vec<PartyLog> = names
        .into_iter()
        .map(|party| {
            let times: Vec<u64> = inp.iter().filter(|r| r.party == party).map(|r| r.time_ms).collect();
            PartyLog {
                party: party.to_string(),
                role: dir.role(party),
                organisation: dir.org(party),
                software: dir.software.get(party).cloned().unwrap_or_default(),
                records_in_period: times.len() as u64,
                first_record: times.iter().min().copied().map(fmt_time),
                last_record: times.iter().max().copied().map(fmt_time),
            }
        })
        .collect();
    out.sort_by(|a, b| (role_rank(&a.role), &a.party).cmp(&(role_rank(&b.role), &b.party)));
    out
}

pub(super) fn member(m: &Member, dir: &Directory) -> Participant {
    let organisation = if m.organisation.is_empty() { dir.org(&m.name) } else { m.organisation.clone() };
    Participant { name: m.name.clone(), organisation, kind: m.kind.clone() }
}

pub(super) fn analyses(all: &[&Record], dir: &Directory, period: &Period) -> Vec<AnalysisRun> {
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
    let coordinator_records: Vec<&Record> = all.iter().copied().filter(|r| dir.is_coordinator(&r.party)).collect();
    let mut out: Vec<(u64, AnalysisRun)> = Vec::new();
    for (id, first_in_period) in ids {
        let mut request = None;
        let mut release = None;
        let mut failures: Vec<(u64, &str)> = Vec::new();
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
                Event::AnalysisFailed { analysis, reason } if analysis == id => failures.push((r.time_ms, reason)),
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
        let kind = requested_kind.or_else(|| dir.kind(id)).unwrap_or_default();
        let mut failure_reasons: Vec<String> = Vec::new();
        for (_, reason) in &failures {
            if !failure_reasons.iter().any(|f| f == reason) {
                failure_reasons.push(reason.to_string());
            }
        }
        let (outcome, outcome_at) = match (release, failures.last()) {
            (Some(r), _) => (Outcome::Released, Some(fmt_time(r.time_ms))),
            (None, Some((t, _))) => (Outcome::Failed, Some(fmt_time(*t))),
            (None, None) => (Outcome::NoOutcomeRecorded, None),
        };
        let (participants, participants_from) = match release.map(|r| &r.event) {
            Some(Event::Release { contributors, .. }) => {
                (contributors.iter().map(|m| member(m, dir)).collect(), ParticipantSource::Contributors)
            }
            _ if !invited.is_empty() => {
                let mut seen = BTreeSet::new();
                let list = invited.iter().filter(|m| seen.insert(m.name.as_str())).map(|m| member(m, dir)).collect();
                (list, ParticipantSource::Invited)
            }
            _ => (Vec::new(), ParticipantSource::Unknown),
        };
        let mut declined: Vec<String> = Vec::new();
        for r in &coordinator_records {
            if let Event::NodeExit { round, node, .. } = &r.event {
                let ours = rounds.contains(round.as_str()) || dir.round_analysis.get(round).is_some_and(|a| a == id);
                if ours && !declined.contains(node) {
                    declined.push(node.clone());
                }
            }
        }
        let sort_time = request.map_or(first_in_period, |r| r.time_ms);
        out.push((
            sort_time,
            AnalysisRun {
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
        ));
    }
    out.sort_by(|a, b| (a.0, &a.1.analysis).cmp(&(b.0, &b.1.analysis)));
    out.into_iter().map(|(_, a)| a).collect()
}

pub(super) fn add_part(parts: &mut BTreeMap<String, (u64, u64)>, name: String, bytes: u64) {
    let e = parts.entry(name).or_default();
    e.0 += 1;
    e.1 = e.1.saturating_add(bytes);
}

pub(super) fn parts(map: BTreeMap<String, (u64, u64)>) -> Vec<EgressPart> {
    map.into_iter().map(|(name, (messages, bytes))| EgressPart { name, messages, bytes }).collect()
}

pub(super) fn egress(all: &[&Record], inp: &[&Record], dir: &Directory) -> (Vec<NodeEgress>, EgressTotal) {
    type Acc = (u64, u64, BTreeMap<String, (u64, u64)>, BTreeMap<String, (u64, u64)>);
    let mut nodes: BTreeMap<String, Acc> = BTreeMap::new();
    // Every node whose log was read appears, even with nothing sent.
    for r in all {
        if dir.is_node(&r.party) {
            nodes.entry(r.party.clone()).or_default();
        }
    }
    for r in inp {
        if let Event::Egress { round, analysis, message, bytes, .. } = &r.event {
            let acc = nodes.entry(r.party.clone()).or_default();
            acc.0 += 1;
            acc.1 = acc.1.saturating_add(*bytes);
            let kind = match dir.analysis_of(analysis.as_ref(), round.as_ref()) {
                Some(a) => dir.kind(&a).unwrap_or_else(|| UNKNOWN_KIND.to_string()),
                None => NOT_AN_ANALYSIS.to_string(),
            };
            add_part(&mut acc.2, kind, *bytes);
            add_part(&mut acc.3, message.clone(), *bytes);
        }
    }
    let mut total = EgressTotal { nodes: 0, messages: 0, bytes: 0 };
    let out = nodes
        .into_iter()
        .map(|(node, (messages, bytes, by_kind, by_message))| {
            total.nodes += 1;
            total.messages += messages;
            total.bytes = total.bytes.saturating_add(bytes);
            NodeEgress {
                organisation: dir.org(&node),
                node,
                messages,
                bytes,
                by_kind: parts(by_kind),
                by_message: parts(by_message),
            }
        })
        .collect();
    (out, total)
}

pub(super) fn refusals(inp: &[&Record], dir: &Directory) -> Vec<Refusal> {
    type Key = (String, RefusalSource, String, Option<String>, String);
    let mut groups: BTreeMap<Key, Refusal> = BTreeMap::new();
    let mut order: BTreeMap<Key, u64> = BTreeMap::new();
    for r in inp {
        let (node, source, analysis, round, reason) = match &r.event {
            Event::PolicyDecision { round, analysis, admitted: false, reason } => {
                (r.party.clone(), RefusalSource::Node, Some(analysis.clone()), round.clone(), reason.clone())
            }
            Event::NodeExit { round, node, reason } => (
                node.clone(),
                RefusalSource::Coordinator,
                dir.analysis_of(None, Some(round)),
                Some(round.clone()),
                reason.clone(),
            ),
            _ => continue,
        };
        let key: Key = (r.party.clone(), source, node.clone(), analysis.clone(), reason.clone());
        let t = fmt_time(r.time_ms);
        let g = groups.entry(key.clone()).or_insert_with(|| Refusal {
            organisation: dir.org(&node),
            node,
            source,
            recorded_by: r.party.clone(),
            kind: analysis.as_deref().and_then(|a| dir.kind(a)),
            analysis,
            rounds: Vec::new(),
            reason,
            count: 0,
            first_at: t.clone(),
            last_at: t.clone(),
        });
        g.count += 1;
        g.first_at = g.first_at.clone().min(t.clone());
        g.last_at = g.last_at.clone().max(t);
        if let Some(round) = round
            && !g.rounds.contains(&round)
        {
            g.rounds.push(round);
        }
        let o = order.entry(key).or_insert(r.time_ms);
        *o = (*o).min(r.time_ms);
    }
    let mut out: Vec<(u64, Refusal)> = groups.into_iter().map(|(k, g)| (order[&k], g)).collect();
    out.sort_by(|a, b| (a.0, &a.1.node, a.1.source, &a.1.reason).cmp(&(b.0, &b.1.node, b.1.source, &b.1.reason)));
    out.into_iter().map(|(_, g)| g).collect()
}

pub(super) fn thresholds(inp: &[&Record]) -> Vec<ReleaseThresholds> {
    inp.iter()
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

pub(super) fn policy_decisions(inp: &[&Record], dir: &Directory) -> Vec<PolicyCounts> {
    let mut counts: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for r in inp {
        if let Event::PolicyDecision { admitted, .. } = &r.event {
            let c = counts.entry(&r.party).or_default();
            if *admitted {
                c.0 += 1;
            } else {
                c.1 += 1;
            }
        }
    }
    counts
        .into_iter()
        .map(|(node, (admitted, refused))| PolicyCounts {
            node: node.to_string(),
            organisation: dir.org(node),
            admitted,
            refused,
        })
        .collect()
}

pub(super) fn suppressed(inp: &[&Record], dir: &Directory) -> SuppressedCells {
    let mut per: BTreeMap<&str, AnalysisSuppressed> = BTreeMap::new();
    let (mut total_cells, mut total_suppressed) = (0u64, 0u64);
    for r in inp {
        if let Event::Release { analysis, kind, cells, suppressed, .. } = &r.event {
            total_cells = total_cells.saturating_add(*cells);
            total_suppressed = total_suppressed.saturating_add(*suppressed);
            let e = per.entry(analysis).or_insert_with(|| AnalysisSuppressed {
                analysis: analysis.clone(),
                kind: if kind.is_empty() { dir.kind(analysis).unwrap_or_default() } else { kind.clone() },
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
    inp: &[&Record],
    dir: &Directory,
    period: &Period,
) -> (Vec<Approval>, Vec<ApprovalCounts>) {
    // (node, id) → (requested record, decision record, touched in period)
    type Entry<'a> = (Option<&'a Record>, Option<&'a Record>, bool);
    let mut map: BTreeMap<(&str, &str), Entry> = BTreeMap::new();
    for r in all {
        let (id, is_request) = match &r.event {
            Event::ApprovalRequested { id, .. } => (id.as_str(), true),
            Event::ApprovalGranted { id, .. } | Event::ApprovalExpired { id } => (id.as_str(), false),
            _ => continue,
        };
        let e = map.entry((r.party.as_str(), id)).or_default();
        if is_request {
            e.0 = e.0.or(Some(*r));
        } else if e.1.is_none() {
            e.1 = Some(*r);
        }
        e.2 |= period.contains(r.time_ms);
    }
    let mut rows: Vec<(u64, Approval)> = Vec::new();
    for ((node, id), (request, decision, in_period)) in map {
        if !in_period {
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
        let sort = request.or(decision).map_or(0, |r| r.time_ms);
        rows.push((
            sort,
            Approval {
                node: node.to_string(),
                organisation: dir.org(node),
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
        ));
    }
    rows.sort_by(|a, b| (a.0, &a.1.node, &a.1.id).cmp(&(b.0, &b.1.node, &b.1.id)));
    let mut counts: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
    for r in inp {
        let c = match &r.event {
            Event::ApprovalRequested { .. } | Event::ApprovalGranted { .. } | Event::ApprovalExpired { .. } => {
                counts.entry(&r.party).or_default()
            }
            _ => continue,
        };
        match &r.event {
            Event::ApprovalRequested { .. } => c.0 += 1,
            Event::ApprovalGranted { .. } => c.1 += 1,
            _ => c.2 += 1,
        }
    }
    let counts = counts
        .into_iter()
        .map(|(node, (requested, granted, expired))| ApprovalCounts {
            node: node.to_string(),
            organisation: dir.org(node),
            requested,
            granted,
            expired,
        })
        .collect();
    (rows.into_iter().map(|(_, a)| a).collect(), counts)
}

pub(super) fn sessions(inp: &[&Record], dir: &Directory) -> Vec<SessionCounts> {
    let mut map: BTreeMap<(&str, &str), SessionCounts> = BTreeMap::new();
    for r in inp {
        let peer = match &r.event {
            Event::SessionOpened { peer, .. } | Event::SessionClosed { peer, .. } => peer,
            _ => continue,
        };
        let s = map.entry((&r.party, peer)).or_insert_with(|| SessionCounts {
            recorded_by: r.party.clone(),
            peer: peer.clone(),
            organisation: dir.org(peer),
            role: dir.role(peer),
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

pub(super) fn integrity(inp: &[&Record]) -> Vec<IntegrityNote> {
    inp.iter()
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

pub(super) fn seals(parties: &[PartyLog], inp: &[&Record]) -> Vec<SealCount> {
    parties
        .iter()
        .map(|p| {
            let ups: Vec<u64> = inp
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
