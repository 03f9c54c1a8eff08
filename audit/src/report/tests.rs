use super::html::esc;
use super::*;
use crate::record::GENESIS;
use time::OffsetDateTime;
use time::macros::{date, datetime};

const HQ: &str = "Brand HQ";
const FRANCHISEE: &str = "Golden Phoenix Jewellery Ltd";

fn ms(t: OffsetDateTime) -> u64 {
    (t.unix_timestamp_nanos() / 1_000_000) as u64
}

/// One party's log, built record by record.
struct Log {
    records: Vec<Record>,
    party: &'static str,
}

impl Log {
    fn new(party: &'static str) -> Self {
        Log { records: Vec::new(), party }
    }
    fn at(&mut self, t: OffsetDateTime, event: Event) -> &mut Self {
        let seq = self.records.len() as u64;
        self.records.push(Record {
            seq,
            prev: GENESIS.to_string(),
            time_ms: ms(t),
            party: self.party.to_string(),
            event,
        });
        self
    }
}

fn opened(role: &str, organisation: &str) -> Event {
    Event::LogOpened {
        certificate_der_hex: "3082".to_string(),
        role: role.to_string(),
        organisation: organisation.to_string(),
        software: "fedcrm 0.1.0".to_string(),
    }
}

fn m(name: &str, organisation: &str, kind: &str) -> Member {
    Member { name: name.to_string(), organisation: organisation.to_string(), kind: kind.to_string() }
}

fn both() -> Vec<Member> {
    vec![m("store-sh-01", FRANCHISEE, "franchisee"), m("hq-node", HQ, "hq")]
}

fn requested(analysis: &str, kind: &str, purpose: &str) -> Event {
    Event::AnalysisRequested {
        analysis: analysis.to_string(),
        kind: kind.to_string(),
        analyst: "li.wei".to_string(),
        organisation: HQ.to_string(),
        purpose: purpose.to_string(),
        parameters: serde_json::json!({"reference_date": "2025-03-01"}),
    }
}

fn round(round: &str, analysis: &str, kind: &str) -> Event {
    Event::RoundStarted {
        round: round.to_string(),
        analysis: analysis.to_string(),
        kind: kind.to_string(),
        analysis_kind: String::new(),
        purpose: "p".to_string(),
        threshold: 2,
        length: 40,
        invited: both(),
    }
}

fn release(analysis: &str, kind: &str, rounds: &[&str], cells: u64, suppressed: u64) -> Event {
    Event::Release {
        analysis: analysis.to_string(),
        kind: kind.to_string(),
        rounds: rounds.iter().map(|r| r.to_string()).collect(),
        contributors: both(),
        min_participants: 2,
        min_cohort: 10,
        cells,
        suppressed,
    }
}

fn egress(round: Option<&str>, analysis: Option<&str>, message: &str, bytes: u64) -> Event {
    Event::Egress {
        round: round.map(str::to_string),
        analysis: analysis.map(str::to_string),
        message: message.to_string(),
        bytes,
        sha256: "ab".repeat(32),
    }
}

fn policy(round: Option<&str>, analysis: &str, admitted: bool, reason: &str) -> Event {
    Event::PolicyDecision {
        round: round.map(str::to_string),
        analysis: analysis.to_string(),
        admitted,
        reason: reason.to_string(),
    }
}

fn seal(upto_seq: u64) -> Event {
    Event::Seal { upto_seq, head: "cd".repeat(32), signature_hex: "ef".repeat(64) }
}

const PURPOSE: &str = "Spring campaign <script>alert('x')</script> & more";

/// store-sh-01's monthly budget, in ε; hq-node's, in ρ.
const EPSILON_BUDGET: &str = "ε = 4 at δ = 1e-6 per calendar month (UTC)";
const RHO_BUDGET: &str = "ρ = 0.07 (ξ ≤ 0e0) per calendar month (UTC)";

/// A node's own record of a privacy charge: `used` of `limit` after it, as the node composed them.
fn own_charge(round: &str, analysis: &str, month: &str, rho: f64, budget: &str, used: f64, limit: f64) -> Event {
    Event::PrivacyCharged {
        round: round.to_string(),
        analysis: analysis.to_string(),
        node: String::new(),
        month: month.to_string(),
        charged_ms: 0,
        rho,
        xi: 0.0,
        noise_variance: "16".to_string(),
        honest: 1,
        budget: budget.to_string(),
        used,
        limit,
    }
}

/// The coordinator's record of `node`'s charge.
fn seen_charge(round: &str, analysis: &str, node: &str, month: &str, rho: f64) -> Event {
    Event::PrivacyCharged {
        round: round.to_string(),
        analysis: analysis.to_string(),
        node: node.to_string(),
        month: month.to_string(),
        charged_ms: 0,
        rho,
        xi: 0.0,
        noise_variance: "16".to_string(),
        honest: 1,
        budget: String::new(),
        used: 0.0,
        limit: 0.0,
    }
}

/// A coordinator, a franchisee node, HQ's node and the brand CA, covering every
/// section, with records just outside March 2025 on both sides.
fn logs() -> Vec<Vec<Record>> {
    let mut c = Log::new("coordinator");
    c.at(datetime!(2025-02-01 08:00 UTC), opened("fedcrm-coordinator", HQ))
        // February: outside the period.
        .at(datetime!(2025-02-10 09:00 UTC), requested("a0", "rfm-segments", "February review"))
        .at(datetime!(2025-02-10 09:01 UTC), round("r0", "a0", "rfm-segments"))
        .at(datetime!(2025-02-10 09:03 UTC), seen_charge("r0", "a0", "store-sh-01", "2025-02", 0.03125))
        .at(datetime!(2025-02-10 09:05 UTC), release("a0", "rfm-segments", &["r0"], 4, 1))
        .at(
            datetime!(2025-03-02 08:00 UTC),
            Event::SessionOpened {
                peer: "store-sh-01".to_string(),
                organisation: FRANCHISEE.to_string(),
                role: "fedcrm-node-franchisee".to_string(),
            },
        )
        .at(
            datetime!(2025-03-02 08:00 UTC),
            Event::SessionOpened {
                peer: "hq-node".to_string(),
                organisation: HQ.to_string(),
                role: "fedcrm-node-hq".to_string(),
            },
        )
        .at(datetime!(2025-03-03 10:00 UTC), requested("a1", "rfm-histograms", PURPOSE))
        .at(datetime!(2025-03-03 10:01 UTC), round("r1", "a1", "rfm-histograms"))
        // Issue 10: each node's charge as the coordinator saw its contribution arrive.
        .at(datetime!(2025-03-03 10:03:10 UTC), seen_charge("r1", "a1", "store-sh-01", "2025-03", 0.03125))
        .at(datetime!(2025-03-03 10:03:20 UTC), seen_charge("r1", "a1", "hq-node", "2025-03", 0.015625))
        .at(datetime!(2025-03-03 10:05 UTC), release("a1", "rfm-histograms", &["r1"], 40, 3))
        .at(datetime!(2025-03-05 11:00 UTC), requested("a2", "rfm-segments", "Churn review"))
        .at(datetime!(2025-03-05 11:01 UTC), round("r2", "a2", "rfm-segments"))
        .at(
            datetime!(2025-03-05 11:02 UTC),
            Event::NodeExit {
                round: "r2".to_string(),
                node: "store-sh-01".to_string(),
                reason: "refused: purpose not allowed".to_string(),
            },
        )
        // A ρ other than the one hq-node charged itself.
        .at(datetime!(2025-03-05 11:04:10 UTC), seen_charge("r2", "a2", "hq-node", "2025-03", 0.0234375))
        .at(datetime!(2025-03-05 11:10 UTC), round("r2b", "a2", "rfm-segments"))
        // A charge for a node that refused the round: its own log has none.
        .at(datetime!(2025-03-05 11:13 UTC), seen_charge("r2b", "a2", "store-sh-01", "2025-03", 0.03125))
        .at(
            datetime!(2025-03-05 11:20 UTC),
            Event::AnalysisFailed { analysis: "a2".to_string(), reason: "too few participants: 1 < 2".to_string() },
        )
        .at(
            datetime!(2025-03-06 08:00 UTC),
            Event::SessionClosed { peer: "store-sh-01".to_string(), reason: "node shut down".to_string() },
        )
        .at(datetime!(2025-03-06 09:00 UTC), seal(15))
        .at(
            datetime!(2025-03-20 12:00 UTC),
            Event::ModelPublished { model: "churn".to_string(), version: "3".to_string(), sha256: "12".repeat(32) },
        )
        // April: outside the period.
        .at(datetime!(2025-03-31 23:59 UTC), requested("a3", "rfm-segments", "Boundary"))
        .at(datetime!(2025-04-01 00:00 UTC), release("a3", "rfm-segments", &[], 8, 8));

    let mut n = Log::new("store-sh-01");
    n.at(datetime!(2025-02-01 08:00 UTC), opened("fedcrm-node-franchisee", FRANCHISEE))
        .at(datetime!(2025-02-10 09:02 UTC), own_charge("r0", "a0", "2025-02", 0.03125, EPSILON_BUDGET, 1.34541, 4.0))
        .at(datetime!(2025-02-28 23:59:59.999 UTC), egress(None, None, "hello", 5_000_000))
        .at(
            datetime!(2025-03-02 08:00 UTC),
            Event::SessionOpened {
                peer: "coordinator".to_string(),
                organisation: HQ.to_string(),
                role: "fedcrm-coordinator".to_string(),
            },
        )
        .at(
            datetime!(2025-03-03 10:01 UTC),
            Event::ApprovalRequested {
                id: "ap1".to_string(),
                analysis: "a1".to_string(),
                purpose: PURPOSE.to_string(),
                requested_by: "li.wei".to_string(),
                expires_ms: ms(datetime!(2025-03-04 10:01 UTC)),
            },
        )
        .at(
            datetime!(2025-03-03 10:02 UTC),
            Event::ApprovalGranted { id: "ap1".to_string(), by: "manager.zhang".to_string() },
        )
        .at(datetime!(2025-03-03 10:02 UTC), policy(Some("r1"), "a1", true, "allowed"))
        .at(
            datetime!(2025-03-03 10:02:30 UTC),
            own_charge("r1", "a1", "2025-03", 0.03125, EPSILON_BUDGET, 1.34541, 4.0),
        )
        .at(datetime!(2025-03-03 10:03 UTC), egress(Some("r1"), Some("a1"), "masked-input", 234_567))
        .at(datetime!(2025-03-03 10:03 UTC), egress(Some("r1"), Some("a1"), "share", 1_000))
        .at(
            datetime!(2025-03-03 10:04 UTC),
            Event::round_view(
                "r1",
                crate::record::ROUND_VIEW_UNMASKED,
                ["store-sh-01".to_string(), "hq-node".to_string()],
                ["store-sh-01".to_string(), "hq-node".to_string()],
                ["hq-node".to_string()],
            ),
        )
        .at(datetime!(2025-03-03 10:04 UTC), egress(None, None, "hello", 300))
        .at(datetime!(2025-03-05 11:02 UTC), policy(Some("r2"), "a2", false, "purpose not allowed"))
        .at(datetime!(2025-03-05 11:11 UTC), policy(Some("r2b"), "a2", false, "purpose not allowed"))
        .at(datetime!(2025-03-05 18:00 UTC), policy(None, "a2", false, "outside business hours"))
        .at(
            datetime!(2025-03-10 03:00 UTC),
            Event::TornTailRecovered { file: "audit-2025-03-10.log".to_string(), bytes: 77, sha256: "99".repeat(32) },
        )
        .at(datetime!(2025-03-10 03:00 UTC), seal(12))
        .at(
            datetime!(2025-03-21 09:00 UTC),
            Event::LocalScoring { model: "churn".to_string(), version: "3".to_string(), customers: 1_234 },
        )
        .at(datetime!(2025-03-31 23:59:59.999 UTC), egress(None, None, "hello", 10));

    let mut h = Log::new("hq-node");
    h.at(datetime!(2025-02-01 08:00 UTC), opened("fedcrm-node-hq", HQ))
        .at(
            datetime!(2025-03-01 00:00 UTC),
            Event::RetentionDeleted {
                files: vec!["audit-2022-02-01.log".to_string(), "audit-2022-02-02.log".to_string()],
                upto_seq: 100,
                last_head: "aa".repeat(32),
                retention_days: 1095,
                newest_deleted_ms: ms(datetime!(2022-02-02 23:00 UTC)),
            },
        )
        .at(datetime!(2025-03-03 10:02 UTC), policy(Some("r1"), "a1", true, "allowed"))
        .at(datetime!(2025-03-03 10:02:40 UTC), own_charge("r1", "a1", "2025-03", 0.015625, RHO_BUDGET, 0.015625, 0.07))
        // Round only: the report finds the analysis through the round.
        .at(datetime!(2025-03-03 10:03 UTC), egress(Some("r1"), None, "masked-input", 2_000_000))
        .at(
            datetime!(2025-03-05 11:01 UTC),
            Event::ApprovalRequested {
                id: "ap9".to_string(),
                analysis: "a2".to_string(),
                purpose: "Churn review".to_string(),
                requested_by: "li.wei".to_string(),
                expires_ms: ms(datetime!(2025-03-05 12:01 UTC)),
            },
        )
        .at(datetime!(2025-03-05 12:01 UTC), Event::ApprovalExpired { id: "ap9".to_string() })
        .at(datetime!(2025-03-05 11:03 UTC), policy(Some("r2"), "a2", true, "allowed"))
        .at(datetime!(2025-03-05 11:03:30 UTC), own_charge("r2", "a2", "2025-03", 0.015625, RHO_BUDGET, 0.03125, 0.07))
        .at(datetime!(2025-03-05 11:04 UTC), egress(Some("r2"), Some("a2"), "masked-input", 500))
        // Charged, but its contribution never reached the coordinator.
        .at(datetime!(2025-03-05 11:12 UTC), own_charge("r2b", "a2", "2025-03", 0.015625, RHO_BUDGET, 0.046875, 0.07))
        .at(datetime!(2025-04-01 00:00 UTC), egress(None, None, "hello", 7));

    let mut ca = Log::new("brand-ca");
    ca.at(datetime!(2025-01-01 08:00 UTC), opened("brand-ca", HQ))
        .at(
            datetime!(2025-01-02 08:00 UTC),
            Event::CertificateIssued {
                name: "coordinator".to_string(),
                organisation: HQ.to_string(),
                role: "fedcrm-coordinator".to_string(),
                serial_hex: "01".to_string(),
                not_after: "2026-01-02".to_string(),
                sha256: "34".repeat(32),
            },
        )
        .at(
            datetime!(2025-03-01 09:00 UTC),
            Event::CertificateIssued {
                name: "store-sh-01".to_string(),
                organisation: FRANCHISEE.to_string(),
                role: "fedcrm-node-franchisee".to_string(),
                serial_hex: "7f3a".to_string(),
                not_after: "2026-03-01".to_string(),
                sha256: "56".repeat(32),
            },
        );

    vec![c.records, n.records, h.records, ca.records]
}

fn march() -> Report {
    build(&logs(), date!(2025 - 03 - 01), date!(2025 - 03 - 31), Some("4 logs verified".to_string()))
}

#[test]
fn header_and_parties() {
    let r = march();
    assert_eq!((r.from.as_str(), r.to.as_str()), ("2025-03-01", "2025-03-31"));
    assert_eq!(r.generated_at.as_deref(), Some("2025-04-01 00:00:00"));
    assert_eq!(r.verification.as_deref(), Some("4 logs verified"));
    let parties: Vec<(&str, &str, &str)> =
        r.parties.iter().map(|p| (p.party.as_str(), p.role.as_str(), p.organisation.as_str())).collect();
    assert_eq!(
        parties,
        [
            ("coordinator", "fedcrm-coordinator", HQ),
            ("brand-ca", "brand-ca", HQ),
            ("hq-node", "fedcrm-node-hq", HQ),
            ("store-sh-01", "fedcrm-node-franchisee", FRANCHISEE),
        ]
    );
    let ca = &r.parties[1];
    assert_eq!(ca.records_in_period, 1);
    assert_eq!(ca.first_record.as_deref(), Some("2025-03-01 09:00:00"));
}

#[test]
fn analyses_with_outcomes_participants_and_rounds() {
    let r = march();
    let ids: Vec<&str> = r.analyses.iter().map(|a| a.analysis.as_str()).collect();
    // a0 (February) and a3 (requested 31 March, released 1 April) — a3's request is in the period.
    assert_eq!(ids, ["a1", "a2", "a3"]);
    let a1 = &r.analyses[0];
    assert_eq!(a1.kind, "rfm-histograms");
    assert_eq!(a1.requested_at.as_deref(), Some("2025-03-03 10:00:00"));
    assert_eq!((a1.analyst.as_str(), a1.analyst_organisation.as_str()), ("li.wei", HQ));
    assert_eq!(a1.purpose, PURPOSE);
    assert_eq!(a1.outcome, Outcome::Released);
    assert_eq!(a1.outcome_at.as_deref(), Some("2025-03-03 10:05:00"));
    assert_eq!(a1.participants_from, ParticipantSource::Contributors);
    let names: Vec<(&str, &str)> = a1.participants.iter().map(|p| (p.name.as_str(), p.organisation.as_str())).collect();
    assert_eq!(names, [("store-sh-01", FRANCHISEE), ("hq-node", HQ)]);
    assert_eq!(a1.rounds, 1);
    assert!(a1.declined.is_empty());

    let a2 = &r.analyses[1];
    assert_eq!(a2.outcome, Outcome::Failed);
    assert_eq!(a2.failure_reasons, ["too few participants: 1 < 2"]);
    assert_eq!(a2.participants_from, ParticipantSource::Invited);
    assert_eq!(a2.participants.len(), 2);
    assert_eq!(a2.rounds, 2);
    assert_eq!(a2.declined, ["store-sh-01"]);

    // a3's release is after the period but the analysis is described completely.
    assert_eq!(r.analyses[2].outcome, Outcome::Released);
    assert_eq!(r.analyses[2].outcome_at.as_deref(), Some("2025-04-01 00:00:00"));

    // The consistency round as the node saw it, with the analysis found through the round.
    let [view] = &r.round_views[..] else { panic!("{:?}", r.round_views) };
    assert_eq!((view.node.as_str(), view.round.as_str(), view.stage.as_str()), ("store-sh-01", "r1", "unmasked"));
    assert_eq!(view.analysis.as_deref(), Some("a1"));
    assert_eq!(view.survivors, ["hq-node", "store-sh-01"], "sorted");
    let text = markdown(&r);
    assert!(text.contains("Who took part in each round, as each node saw it"), "{text}");
    assert!(text.contains("revealed its shares"), "{text}");
}

#[test]
fn egress_per_node_is_the_sum_of_in_period_records() {
    let r = march();
    let store = r.egress.iter().find(|e| e.node == "store-sh-01").unwrap();
    // 5,000,000 bytes on 28 February are excluded; 10 bytes at 23:59:59.999 on 31 March are included.
    assert_eq!(store.bytes, 234_567 + 1_000 + 300 + 10);
    assert_eq!(store.messages, 4);
    assert_eq!(store.organisation, FRANCHISEE);
    let kinds: Vec<(&str, u64, u64)> = store.by_kind.iter().map(|p| (p.name.as_str(), p.messages, p.bytes)).collect();
    assert_eq!(kinds, [(NOT_AN_ANALYSIS, 2, 310), ("rfm-histograms", 2, 235_567)]);
    let messages: Vec<(&str, u64)> = store.by_message.iter().map(|p| (p.name.as_str(), p.bytes)).collect();
    assert_eq!(messages, [("hello", 310), ("masked-input", 234_567), ("share", 1_000)]);

    let hq = r.egress.iter().find(|e| e.node == "hq-node").unwrap();
    // 7 bytes at 00:00 on 1 April are excluded.
    assert_eq!(hq.bytes, 2_000_500);
    let kinds: Vec<(&str, u64)> = hq.by_kind.iter().map(|p| (p.name.as_str(), p.bytes)).collect();
    assert_eq!(kinds, [("rfm-histograms", 2_000_000), ("rfm-segments", 500)]);

    assert_eq!(r.egress.len(), 2, "only nodes appear");
    assert_eq!(r.egress_total, EgressTotal { nodes: 2, messages: 6, bytes: store.bytes + hq.bytes });
}

#[test]
fn refusals_grouped_with_every_reason() {
    let r = march();
    type Row<'a> = (&'a str, RefusalSource, Option<&'a str>, &'a str, u64, Vec<&'a str>);
    let rows: Vec<Row> = r
        .refusals
        .iter()
        .map(|x| {
            (
                x.node.as_str(),
                x.source,
                x.analysis.as_deref(),
                x.reason.as_str(),
                x.count,
                x.rounds.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("store-sh-01", RefusalSource::Node, Some("a2"), "purpose not allowed", 2, vec!["r2", "r2b"]),
            ("store-sh-01", RefusalSource::Coordinator, Some("a2"), "refused: purpose not allowed", 1, vec!["r2"]),
            ("store-sh-01", RefusalSource::Node, Some("a2"), "outside business hours", 1, vec![]),
        ]
    );
    assert_eq!(r.refusals[0].first_at, "2025-03-05 11:02:00");
    assert_eq!(r.refusals[0].last_at, "2025-03-05 11:11:00");
    assert_eq!(r.refusals[0].kind.as_deref(), Some("rfm-segments"));
    assert_eq!(r.refusals[1].recorded_by, "coordinator");
    assert_eq!(r.refusals[0].organisation, FRANCHISEE);
}

#[test]
fn thresholds_suppression_approvals_models_certificates_integrity() {
    let r = march();
    assert_eq!(r.thresholds.len(), 1, "February and April releases are excluded");
    let t = &r.thresholds[0];
    assert_eq!((t.analysis.as_str(), t.min_participants, t.min_cohort, t.contributors), ("a1", 2, 10, 2));
    assert!(t.meets_min_participants);
    assert_eq!((t.cells, t.suppressed), (40, 3));
    let policy: Vec<(&str, u64, u64)> =
        r.policy_decisions.iter().map(|p| (p.node.as_str(), p.admitted, p.refused)).collect();
    assert_eq!(policy, [("hq-node", 2, 0), ("store-sh-01", 1, 3)]);

    assert_eq!((r.suppressed.total_cells, r.suppressed.total_suppressed), (40, 3));
    assert_eq!(r.suppressed.per_analysis.len(), 1);
    assert_eq!(r.suppressed.per_analysis[0].suppressed, 3);

    let approvals: Vec<(&str, &str, ApprovalOutcome, Option<&str>)> =
        r.approvals.iter().map(|a| (a.node.as_str(), a.id.as_str(), a.outcome, a.decided_by.as_deref())).collect();
    assert_eq!(
        approvals,
        [
            ("store-sh-01", "ap1", ApprovalOutcome::Granted, Some("manager.zhang")),
            ("hq-node", "ap9", ApprovalOutcome::Expired, None),
        ]
    );
    let counts: Vec<(&str, u64, u64, u64)> =
        r.approval_counts.iter().map(|c| (c.node.as_str(), c.requested, c.granted, c.expired)).collect();
    assert_eq!(counts, [("hq-node", 1, 0, 1), ("store-sh-01", 1, 1, 0)]);

    assert_eq!(r.models.len(), 1);
    assert_eq!((r.models[0].model.as_str(), r.models[0].version.as_str()), ("churn", "3"));
    assert_eq!(r.scoring.len(), 1);
    assert_eq!((r.scoring[0].node.as_str(), r.scoring[0].customers), ("store-sh-01", 1_234));

    assert_eq!(r.certificates.len(), 1, "the January certificate is excluded");
    let c = &r.certificates[0];
    assert_eq!((c.name.as_str(), c.serial_hex.as_str(), c.not_after.as_str()), ("store-sh-01", "7f3a", "2026-03-01"));
    let sessions: Vec<(&str, &str, u64, u64)> =
        r.sessions.iter().map(|s| (s.recorded_by.as_str(), s.peer.as_str(), s.opened, s.closed)).collect();
    assert_eq!(
        sessions,
        [("coordinator", "hq-node", 1, 0), ("coordinator", "store-sh-01", 1, 1), ("store-sh-01", "coordinator", 1, 0)]
    );
    assert_eq!(r.sessions[1].close_reasons, ["node shut down"]);

    let notes: Vec<(&str, IntegrityKind, Vec<&str>)> =
        r.integrity.iter().map(|n| (n.party.as_str(), n.kind, n.files.iter().map(String::as_str).collect())).collect();
    assert_eq!(
        notes,
        [
            ("hq-node", IntegrityKind::RetentionDeleted, vec!["audit-2022-02-01.log", "audit-2022-02-02.log"]),
            ("store-sh-01", IntegrityKind::TornTailRecovered, vec!["audit-2025-03-10.log"]),
        ]
    );
    let seals: Vec<(&str, u64)> = r.seals.iter().map(|s| (s.party.as_str(), s.seals)).collect();
    assert_eq!(seals, [("coordinator", 1), ("brand-ca", 0), ("hq-node", 0), ("store-sh-01", 1)]);
}

#[test]
fn a_period_without_records_says_none() {
    let r = build(&logs(), date!(2024 - 06 - 01), date!(2024 - 06 - 30), None);
    assert!(r.analyses.is_empty() && r.refusals.is_empty() && r.certificates.is_empty());
    assert_eq!(r.egress_total.bytes, 0);
    assert!(r.egress.iter().all(|e| e.messages == 0), "nodes are listed with nothing sent");
    let md = markdown(&r);
    assert!(md.matches(NONE).count() >= 11, "{md}");
    assert_eq!(r.privacy.months, [], "no charges in the period");
    assert!(r.privacy.mismatches.is_empty(), "the February charge matches");
    assert!(md.contains("without a verification result"));
    let empty = build(&[], date!(2024 - 06 - 01), date!(2024 - 06 - 30), None);
    assert_eq!(empty.generated_at, None);
    assert!(html(&empty).contains(NONE));
}

#[test]
fn markdown_contains_the_key_values() {
    let md = markdown(&march());
    for needle in [
        "2025-03-01 to 2025-03-31",
        "4 logs verified",
        "Analysis a1",
        "li.wei (Brand HQ)",
        "store-sh-01 (Golden Phoenix Jewellery Ltd)",
        "too few participants: 1 \\< 2",
        "230.3 KiB (235,877 bytes)",
        "1.9 MiB (2,000,500 bytes)",
        "purpose not allowed",
        "outside business hours",
        "3 of 40 cells (7.5%)",
        "granted by manager.zhang",
        "7f3a",
        "audit-2025-03-10.log",
        "audit-2022-02-01.log",
        "franchisee data node",
        "Spring campaign \\<script\\>",
    ] {
        assert!(md.contains(needle), "missing {needle:?} in\n{md}");
    }
    assert!(!md.contains("<script>"));
    // A pipe in logged text cannot break a table.
    let mut logs = logs();
    logs[1].push(Record {
        seq: 99,
        prev: GENESIS.to_string(),
        time_ms: ms(datetime!(2025-03-30 10:00 UTC)),
        party: "store-sh-01".to_string(),
        event: policy(None, "a9", false, "a | b\nc"),
    });
    let md = markdown(&build(&logs, date!(2025 - 03 - 01), date!(2025 - 03 - 31), None));
    assert!(md.contains("a \\| b c"), "{md}");
}

#[test]
fn html_is_self_contained_and_escaped() {
    let page = html(&march());
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert!(page.contains("<style>"));
    assert!(!page.contains("<script"), "no script, and the purpose's <script> is escaped");
    assert!(!page.contains("src=") && !page.contains("href="), "no external assets");
    assert!(page.contains("Spring campaign &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; more"));
    for needle in ["230.3 KiB (235,877 bytes)", "Golden Phoenix Jewellery Ltd", "purpose not allowed", "7f3a"] {
        assert!(page.contains(needle), "missing {needle:?}");
    }
    assert_eq!(page.matches("<section>").count(), 11);
    assert!(page.contains("<h2>7. Privacy budget</h2>"));
    assert!(page.contains("DIFFERENT ρ: 0.015625 in the node&#39;s log, 0.0234375 in the coordinator&#39;s log"));
}

#[test]
fn json_has_every_section() {
    let v = serde_json::to_value(march()).unwrap();
    for key in [
        "parties",
        "analyses",
        "egress",
        "egress_total",
        "refusals",
        "thresholds",
        "suppressed",
        "privacy",
        "approvals",
        "models",
        "certificates",
        "sessions",
        "integrity",
        "seals",
    ] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    assert_eq!(v["analyses"][0]["outcome"], "released");
    assert_eq!(v["refusals"][1]["source"], "coordinator");
    assert_eq!(v["egress_total"]["bytes"], 2_236_377);
    assert_eq!(v["privacy"]["mismatches"][0]["kind"], "rho-differs");
    assert_eq!(v["privacy"]["months"][0]["node_log"]["used"], 0.046875);
}

/// (node, month, own charges, own Σρ, own used, own limit, coordinator's charges, coordinator's Σρ).
type MonthRow<'a> = (&'a str, &'a str, Option<(u64, f64, Option<f64>, Option<f64>)>, Option<(u64, f64)>);

fn month_rows(p: &PrivacyBudget) -> Vec<MonthRow<'_>> {
    p.months
        .iter()
        .map(|m| {
            (
                m.node.as_str(),
                m.month.as_str(),
                m.node_log.as_ref().map(|o| (o.charges, o.rho, o.used, o.limit)),
                m.coordinator_log.as_ref().map(|c| (c.charges, c.rho)),
            )
        })
        .collect()
}

/// (node, analysis, the node's charges, the coordinator's charges) per analysis.
fn analysis_rows(p: &PrivacyBudget) -> Vec<(&str, &str, Option<u64>, Option<u64>)> {
    p.months
        .iter()
        .flat_map(|m| {
            m.per_analysis.iter().map(|a| {
                (
                    m.node.as_str(),
                    a.analysis.as_str(),
                    a.node_log.as_ref().map(|t| t.charges),
                    a.coordinator_log.as_ref().map(|t| t.charges),
                )
            })
        })
        .collect()
}

/// (kind, node, round, analysis, at, node's ρ, coordinator's ρ) per mismatch.
type MismatchRow<'a> = (MismatchKind, &'a str, &'a str, &'a str, &'a str, Option<f64>, Option<f64>);

fn mismatch_rows(p: &PrivacyBudget) -> Vec<MismatchRow<'_>> {
    p.mismatches
        .iter()
        .map(|x| {
            (
                x.kind,
                x.node.as_str(),
                x.round.as_str(),
                x.analysis.as_str(),
                x.at.as_str(),
                x.node_rho,
                x.coordinator_rho,
            )
        })
        .collect()
}

#[test]
fn privacy_budget_per_node_month_and_analysis() {
    let r = march();
    let p = &r.privacy;
    assert!(p.coordinator_log_read);
    // February's charge (r0) is outside the period. `used` is the node's own figure
    // after its last charge in the month (store-sh-01's in ε, not its Σρ).
    assert_eq!(
        month_rows(p),
        [
            ("hq-node", "2025-03", Some((3, 0.046875, Some(0.046875), Some(0.07))), Some((2, 0.0390625))),
            ("store-sh-01", "2025-03", Some((1, 0.03125, Some(1.34541), Some(4.0))), Some((2, 0.0625))),
        ]
    );
    let hq = &p.months[0];
    assert_eq!((hq.organisation.as_str(), hq.node_log.as_ref().unwrap().budget.as_str()), (HQ, RHO_BUDGET));
    assert_eq!(hq.node_log.as_ref().unwrap().last_charge_at.as_deref(), Some("2025-03-05 11:12:00"));
    assert_eq!(p.months[1].node_log.as_ref().unwrap().budget, EPSILON_BUDGET);
    assert_eq!(
        analysis_rows(p),
        [
            ("hq-node", "a1", Some(1), Some(1)),
            ("hq-node", "a2", Some(2), Some(1)),
            ("store-sh-01", "a1", Some(1), Some(1)),
            ("store-sh-01", "a2", Some(0), Some(1)),
        ]
    );
    assert_eq!(hq.per_analysis[1].kind, "rfm-segments");

    // Two months: February's charge is in both logs, so it is no mismatch.
    let r = build(&logs(), date!(2025 - 02 - 01), date!(2025 - 03 - 31), None);
    let months: Vec<(&str, &str)> = r.privacy.months.iter().map(|m| (m.node.as_str(), m.month.as_str())).collect();
    assert_eq!(months, [("hq-node", "2025-03"), ("store-sh-01", "2025-02"), ("store-sh-01", "2025-03")]);
    assert_eq!(r.privacy.mismatches.len(), 3);

    // From 4 March: hq-node's r1 charge (3 March) is outside the period, but the month's
    // spending the node recorded still includes it.
    let r = build(&logs(), date!(2025 - 03 - 04), date!(2025 - 03 - 31), None);
    assert_eq!(
        month_rows(&r.privacy)[0],
        ("hq-node", "2025-03", Some((2, 0.03125, Some(0.046875), Some(0.07))), Some((1, 0.0234375)))
    );

    let md = markdown(&march());
    for needle in [
        "## 7. Privacy budget",
        "## 11. Log integrity notes",
        "ε (epsilon)",
        "calendar month (UTC)",
        "Each franchisee's node enforces its own budget",
        "| hq-node (Brand HQ) | 2025-03 | 3 | 0.046875 | 0 | 2025-03-05 11:12:00 | 0.046875 of 0.07 (ρ) | ρ = 0.07 (ξ ≤ 0e0) per \
         calendar month (UTC) | 2 charges (Σρ 0.0390625) |",
        "| store-sh-01 (Golden Phoenix Jewellery Ltd) | 2025-03 | 1 | 0.03125 | 0 | 2025-03-03 10:02:30 | 1.34541 of 4 (ε) \
         |",
        "| store-sh-01 | 2025-03 | a2 | rfm-segments | 0 charges (Σρ 0) | 1 charge (Σρ 0.03125) |",
        "4 charges of a node's privacy budget in the nodes' logs; 3 mismatches between a node's log and the coordinator's.",
    ] {
        assert!(md.contains(needle), "missing {needle:?} in\n{md}");
    }
}

#[test]
fn privacy_charges_the_logs_disagree_on_are_flagged() {
    let r = march();
    assert_eq!(
        mismatch_rows(&r.privacy),
        [
            (MismatchKind::RhoDiffers, "hq-node", "r2", "a2", "2025-03-05 11:03:30", Some(0.015625), Some(0.0234375)),
            (
                MismatchKind::MissingFromCoordinatorLog,
                "hq-node",
                "r2b",
                "a2",
                "2025-03-05 11:12:00",
                Some(0.015625),
                None
            ),
            (MismatchKind::MissingFromNodeLog, "store-sh-01", "r2b", "a2", "2025-03-05 11:13:00", None, Some(0.03125)),
        ]
    );
    assert_eq!(r.privacy.mismatches[2].organisation, FRANCHISEE);
    let md = markdown(&r);
    for needle in [
        "| 2025-03-05 11:03:30 | hq-node (Brand HQ) | a2 | r2 | DIFFERENT ρ: 0.015625 in the node's log, 0.0234375 in \
         the coordinator's log |",
        "| 2025-03-05 11:12:00 | hq-node (Brand HQ) | a2 | r2b | MISSING FROM THE COORDINATOR'S LOG: the node charged ρ \
         = 0.015625 but the coordinator did not record its contribution arriving |",
        "| 2025-03-05 11:13:00 | store-sh-01 (Golden Phoenix Jewellery Ltd) | a2 | r2b | MISSING FROM THE NODE'S LOG: \
         the coordinator recorded a charge of ρ = 0.03125 that the node's own log does not have |",
        "its contribution never arrived",
        "should never happen with an honest node",
    ] {
        assert!(md.contains(needle), "missing {needle:?} in\n{md}");
    }

    // Within 1e-9 relative the two ρ agree; a charge recorded just before the period's
    // end by the node and just after it by the coordinator is no mismatch either.
    let mut logs = logs();
    let push = |log: &mut Vec<Record>, t: OffsetDateTime, event: Event| {
        let seq = log.len() as u64;
        let party = log[0].party.clone();
        log.push(Record { seq, prev: GENESIS.to_string(), time_ms: ms(t), party, event });
    };
    let rho = 0.015625;
    push(
        &mut logs[2],
        datetime!(2025-03-31 23:59:59.900 UTC),
        own_charge("r5", "a5", "2025-03", rho, RHO_BUDGET, 0.0625, 0.07),
    );
    push(
        &mut logs[0],
        datetime!(2025-04-01 00:00:00.100 UTC),
        seen_charge("r5", "a5", "hq-node", "2025-03", rho * (1.0 + 1e-12)),
    );
    let r = build(&logs, date!(2025 - 03 - 01), date!(2025 - 03 - 31), None);
    assert_eq!(r.privacy.mismatches.len(), 3, "{:?}", r.privacy.mismatches);
    // Beyond 1e-9 relative they do not.
    logs[0].pop();
    push(
        &mut logs[0],
        datetime!(2025-04-01 00:00:00.100 UTC),
        seen_charge("r5", "a5", "hq-node", "2025-03", rho * (1.0 + 1e-8)),
    );
    let r = build(&logs, date!(2025 - 03 - 01), date!(2025 - 03 - 31), None);
    let last = r.privacy.mismatches.last().unwrap();
    assert_eq!(
        (last.kind, last.round.as_str(), last.at.as_str()),
        (MismatchKind::RhoDiffers, "r5", "2025-03-31 23:59:59")
    );
}

#[test]
fn privacy_budget_from_the_coordinators_log_alone_when_a_node_log_is_absent() {
    // Without hq-node's log: its row is the coordinator's records, and nothing of it is compared.
    let mut logs = logs();
    logs.remove(2);
    let r = build(&logs, date!(2025 - 03 - 01), date!(2025 - 03 - 31), None);
    assert_eq!(
        month_rows(&r.privacy),
        [
            ("hq-node", "2025-03", None, Some((2, 0.0390625))),
            ("store-sh-01", "2025-03", Some((1, 0.03125, Some(1.34541), Some(4.0))), Some((2, 0.0625))),
        ]
    );
    assert_eq!(analysis_rows(&r.privacy)[..2], [("hq-node", "a1", None, Some(1)), ("hq-node", "a2", None, Some(1))]);
    assert_eq!(
        mismatch_rows(&r.privacy),
        [(MismatchKind::MissingFromNodeLog, "store-sh-01", "r2b", "a2", "2025-03-05 11:13:00", None, Some(0.03125))]
    );
    let md = markdown(&r);
    for needle in [
        "| hq-node (Brand HQ) | 2025-03 | 2 (coordinator's log; the node's own log was not read) | 0.0390625 | 0 | – | \
         not known without the node's own log |",
        "The own logs of hq-node were not read",
        "| hq-node | 2025-03 | a1 | rfm-histograms | log not read | 1 charge (Σρ 0.015625) |",
    ] {
        assert!(md.contains(needle), "missing {needle:?} in\n{md}");
    }

    // Without the coordinator's log: the nodes' own figures, and no comparison.
    let mut logs = self::logs();
    logs.remove(0);
    let r = build(&logs, date!(2025 - 03 - 01), date!(2025 - 03 - 31), None);
    assert!(!r.privacy.coordinator_log_read);
    assert_eq!(
        month_rows(&r.privacy),
        [
            ("hq-node", "2025-03", Some((3, 0.046875, Some(0.046875), Some(0.07))), None),
            ("store-sh-01", "2025-03", Some((1, 0.03125, Some(1.34541), Some(4.0))), None),
        ]
    );
    assert!(r.privacy.mismatches.is_empty());
    assert!(markdown(&r).contains("Not compared: the coordinator's log was not read."));
}

#[test]
fn formatting_helpers() {
    assert_eq!(human_bytes(0), "0 bytes");
    assert_eq!(human_bytes(1), "1 byte");
    assert_eq!(human_bytes(1023), "1,023 bytes");
    assert_eq!(human_bytes(1024), "1.0 KiB (1,024 bytes)");
    assert_eq!(human_bytes(1_234_567), "1.2 MiB (1,234,567 bytes)");
    assert_eq!(human_bytes(1_048_575), "1.0 MiB (1,048,575 bytes)");
    assert_eq!(thousands(999), "999");
    assert_eq!(thousands(1_000_000), "1,000,000");
    assert_eq!(fmt_time(ms(datetime!(2025-03-31 23:59:59.999 UTC))), "2025-03-31 23:59:59");
    assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    assert_eq!(real(0.0), "0");
    assert_eq!(real(0.03125), "0.03125");
    assert_eq!(real(4.0), "4");
    assert_eq!(real(1.345_414_9), "1.34541");
    assert_eq!(real(0.1 + 0.2), "0.3");
    assert_eq!(real(1e-7), "1e-7");
    assert_eq!(real(-2.5e7), "-2.5e7");
}

/// The whole report on the scenario above, JSON and Markdown, against the files in
/// `snapshots/`: a change to what auditors read shows up in review as a diff of
/// those files. The scenario is fixed records (no clock, no keys, no paths), so the
/// output is the same on every run and machine.
#[test]
fn report_matches_its_snapshots() {
    let report = march();
    let json = serde_json::to_string_pretty(&report).unwrap() + "\n";
    check_snapshot("report.json", &json);
    check_snapshot("report.md", &markdown(&report));
}

/// Compares `actual` with `snapshots/{name}`, or rewrites the file when
/// `UPDATE_SNAPSHOTS` is set.
#[track_caller]
fn check_snapshot(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/report/snapshots").join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    if expected == actual {
        return;
    }
    let line = expected
        .lines()
        .zip(actual.lines())
        .position(|(e, a)| e != a)
        .unwrap_or(expected.lines().count().min(actual.lines().count()));
    panic!(
        "the report differs from {} from line {}:\n  expected: {:?}\n  actual:   {:?}\n\
         If the change is intended, update the snapshot with\n  \
         UPDATE_SNAPSHOTS=1 cargo test -p fedcrm-audit --lib report::tests::report_matches_its_snapshots\n\
         and review the diff of the file.",
        path.display(),
        line + 1,
        expected.lines().nth(line).unwrap_or("(end of file)"),
        actual.lines().nth(line).unwrap_or("(end of output)"),
    );
}
