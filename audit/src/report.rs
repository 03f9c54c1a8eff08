//! The auditor's report (`fedcrm audit report --from DATE --to DATE`): what the audit
//! logs of the coordinator, the nodes and the brand CA say happened in a period,
//! written for an auditor who is not an engineer — PIPL Art. 54 compliance audits,
//! kept with the Art. 55–56 impact assessments, and a franchisee's proof of what left
//! its premises.
//!
//! [`build`] turns already-read (and, separately, verified) records into a [`Report`],
//! which is also the `--json` output; [`markdown`] and [`html`] render it. Everything
//! is deterministic: the report depends only on the records, the period and the
//! verification line (its "logs read up to" time is the latest record's, not the clock).
//!
//! Each section counts only records whose time falls in the period, with one
//! exception: an analysis requested, released or failed in the period is described
//! completely (who asked, why, its outcome, its rounds), even when part of it was
//! recorded just outside the period.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use time::{Date, OffsetDateTime};

use crate::record::{Event, Member, Record};

/// Everything the report says, serialisable as the `--json` output. All times are UTC,
/// formatted `YYYY-MM-DD HH:MM:SS`; byte counts are exact.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    /// First day of the period (UTC), `YYYY-MM-DD`.
    pub from: String,
    /// Last day of the period (UTC, inclusive), `YYYY-MM-DD`.
    pub to: String,
    /// Time of the latest record in the logs read: the report's "as of" time.
    pub generated_at: Option<String>,
    /// One-line summary of the verification, when the logs were verified.
    pub verification: Option<String>,
    /// 1. The parties whose logs were included.
    pub parties: Vec<PartyLog>,
    /// 2. Analyses requested, released or failed in the period.
    pub analyses: Vec<AnalysisRun>,
    /// 2. Who took part in each round, as each node saw it in the consistency round.
    pub round_views: Vec<RoundViewNote>,
    /// 3. What left each node, as the node recorded it.
    pub egress: Vec<NodeEgress>,
    /// 3. The sum over all nodes.
    pub egress_total: EgressTotal,
    /// 4. Refusals and exits, grouped by node, analysis and reason.
    pub refusals: Vec<Refusal>,
    /// 5. The thresholds applied at each release.
    pub thresholds: Vec<ReleaseThresholds>,
    /// 5. Policy decisions per node.
    pub policy_decisions: Vec<PolicyCounts>,
    /// 6. Cells withheld from released results.
    pub suppressed: SuppressedCells,
    /// 7. Manual approvals, one per request.
    pub approvals: Vec<Approval>,
    /// 7. Manual approval events per node.
    pub approval_counts: Vec<ApprovalCounts>,
    /// 8. Models published.
    pub models: Vec<ModelPublication>,
    /// 8. Models applied locally at a node.
    pub scoring: Vec<ScoringRun>,
    /// 9. Certificates issued by the brand CA.
    pub certificates: Vec<CertificateIssuance>,
    /// 9. Certificates revoked by the brand CA.
    pub revocations: Vec<CertificateRevocation>,
    /// 9. Authenticated sessions, per log and peer.
    pub sessions: Vec<SessionCounts>,
    /// 9. The nodes the coordinator accepted (its latest enrolment record in the period).
    pub enrolment: Vec<Participant>,
    /// 9. Connections the coordinator refused, and why.
    pub refused_sessions: Vec<RefusedSession>,
    /// 10. Retention deletions and crash recoveries.
    pub integrity: Vec<IntegrityNote>,
    /// 10. Seals (signed log heads) per party.
    pub seals: Vec<SealCount>,
}

/// One party's log.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PartyLog {
    pub party: String,
    /// Role string from the party's certificate (e.g. `fedcrm-node-franchisee`); empty if unknown.
    pub role: String,
    pub organisation: String,
    /// Software that wrote the log (latest `log-opened`).
    pub software: String,
    pub records_in_period: u64,
    pub first_record: Option<String>,
    pub last_record: Option<String>,
}

/// A connection refused by the coordinator, or a burst of a node's messages it dropped unread.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RefusedSession {
    pub at: String,
    pub recorded_by: String,
    pub peer: String,
    pub organisation: String,
    pub reason: String,
}

/// A (name, organisation) pair taking part in an analysis.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Participant {
    pub name: String,
    pub organisation: String,
    /// `hq` or `franchisee`, empty when unknown.
    pub kind: String,
}

/// How an analysis ended.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// A result was released.
    Released,
    /// The analysis failed or its release was refused.
    Failed,
    /// Neither a release nor a failure is in the logs read.
    NoOutcomeRecorded,
}

/// Where an analysis's participant list comes from.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ParticipantSource {
    /// The nodes whose data is in the released result.
    Contributors,
    /// The nodes invited to its rounds (no result was released).
    Invited,
    /// No round or release is in the logs read.
    Unknown,
}

/// One analysis (coordinator log).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AnalysisRun {
    pub analysis: String,
    pub kind: String,
    /// `None` when the request is not in the logs read (e.g. before the retention period).
    pub requested_at: Option<String>,
    pub analyst: String,
    pub analyst_organisation: String,
    pub purpose: String,
    pub parameters: serde_json::Value,
    pub outcome: Outcome,
    pub outcome_at: Option<String>,
    /// Every distinct failure reason recorded (also kept when a later attempt was released).
    pub failure_reasons: Vec<String>,
    pub participants: Vec<Participant>,
    pub participants_from: ParticipantSource,
    /// Rounds run for this analysis (coordinator `round-started`, and any named by its release).
    pub rounds: u64,
    /// Nodes that refused or left one of its rounds (coordinator log).
    pub declined: Vec<String>,
}

/// A node's view of who took part in a round (`round-view`): when it signed the list
/// of participants, or when it revealed its shares.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RoundViewNote {
    pub at: String,
    pub node: String,
    pub organisation: String,
    pub round: String,
    pub analysis: Option<String>,
    /// `signed` or `unmasked`.
    pub stage: String,
    /// Nodes whose shares were delivered (U2).
    pub delivered: Vec<String>,
    /// Nodes whose masked inputs are in the sum (U3).
    pub survivors: Vec<String>,
    /// Nodes whose signatures on this view the node checked.
    pub signers: Vec<String>,
}

/// Bytes sent by one node for one analysis kind or message type.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EgressPart {
    /// Analysis kind, or message type.
    pub name: String,
    pub messages: u64,
    pub bytes: u64,
}

/// Everything that left one node in the period.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NodeEgress {
    pub node: String,
    pub organisation: String,
    pub messages: u64,
    pub bytes: u64,
    /// Per analysis kind ([`NOT_AN_ANALYSIS`] for messages outside any analysis).
    pub by_kind: Vec<EgressPart>,
    /// Per message type.
    pub by_message: Vec<EgressPart>,
}

/// Label for egress not tied to an analysis.
pub const NOT_AN_ANALYSIS: &str = "(not part of an analysis)";
/// Label for egress of an analysis whose kind is not in the logs read.
pub const UNKNOWN_KIND: &str = "(unknown kind)";

/// Egress over all nodes.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EgressTotal {
    pub nodes: u64,
    pub messages: u64,
    pub bytes: u64,
}

/// Which log recorded a refusal.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum RefusalSource {
    /// The node's own policy refused (node log, `policy-decision`).
    Node,
    /// The coordinator recorded the node refusing or leaving a round (`node-exit`).
    Coordinator,
}

/// Refusals with the same node, source, analysis and reason.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Refusal {
    pub node: String,
    pub organisation: String,
    pub source: RefusalSource,
    /// The party whose log recorded it.
    pub recorded_by: String,
    pub analysis: Option<String>,
    pub kind: Option<String>,
    pub rounds: Vec<String>,
    pub reason: String,
    pub count: u64,
    pub first_at: String,
    pub last_at: String,
}

/// The thresholds applied to one release.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReleaseThresholds {
    pub released_at: String,
    pub analysis: String,
    pub kind: String,
    pub rounds: Vec<String>,
    pub min_participants: u64,
    pub min_cohort: u64,
    pub contributors: u64,
    pub meets_min_participants: bool,
    pub cells: u64,
    pub suppressed: u64,
}

/// Policy decisions of one node.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PolicyCounts {
    pub node: String,
    pub organisation: String,
    pub admitted: u64,
    pub refused: u64,
}

/// Suppressed cells per analysis.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AnalysisSuppressed {
    pub analysis: String,
    pub kind: String,
    pub releases: u64,
    pub cells: u64,
    pub suppressed: u64,
}

/// Suppressed cells over all releases in the period.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SuppressedCells {
    pub total_cells: u64,
    pub total_suppressed: u64,
    pub per_analysis: Vec<AnalysisSuppressed>,
}

/// How a manual approval request ended.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ApprovalOutcome {
    Granted,
    Expired,
    /// Neither granted nor expired in the logs read.
    Pending,
}

/// One manual approval request at a node.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Approval {
    pub node: String,
    pub organisation: String,
    pub id: String,
    pub analysis: String,
    pub purpose: String,
    pub requested_by: String,
    /// `None` when the request is not in the logs read.
    pub requested_at: Option<String>,
    pub expires_at: Option<String>,
    pub outcome: ApprovalOutcome,
    pub decided_by: Option<String>,
    pub decided_at: Option<String>,
}

/// Manual approval events of one node in the period.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ApprovalCounts {
    pub node: String,
    pub organisation: String,
    pub requested: u64,
    pub granted: u64,
    pub expired: u64,
}

/// A model version published.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelPublication {
    pub published_at: String,
    pub published_by: String,
    pub model: String,
    pub version: String,
    pub sha256: String,
}

/// A model applied locally at a node.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ScoringRun {
    pub at: String,
    pub node: String,
    pub organisation: String,
    pub model: String,
    pub version: String,
    pub customers: u64,
}

/// A certificate issued by the brand CA.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CertificateIssuance {
    pub issued_at: String,
    pub issued_by: String,
    pub name: String,
    pub organisation: String,
    pub role: String,
    pub serial_hex: String,
    pub not_after: String,
    pub sha256: String,
}

/// A certificate revoked by the brand CA.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CertificateRevocation {
    pub revoked_at: String,
    pub name: String,
    pub organisation: String,
    pub serial_hex: String,
    pub reason: String,
    pub crl_number: u64,
}

/// Sessions with one peer, as one party's log recorded them.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SessionCounts {
    pub recorded_by: String,
    pub peer: String,
    pub organisation: String,
    pub role: String,
    pub opened: u64,
    pub closed: u64,
    pub close_reasons: Vec<String>,
}

/// What kind of integrity event.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum IntegrityKind {
    /// Log files past the retention period were deleted.
    RetentionDeleted,
    /// A torn last line was set aside after a crash.
    TornTailRecovered,
}

/// A retention deletion or crash recovery.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct IntegrityNote {
    pub at: String,
    pub party: String,
    pub kind: IntegrityKind,
    pub files: Vec<String>,
    /// Retention: the last record deleted; the chain continues from its head.
    pub upto_seq: Option<u64>,
    pub retention_days: Option<u32>,
    /// Torn tail: its length and SHA-256.
    pub bytes: Option<u64>,
    pub sha256: Option<String>,
}

/// Seals (signed log heads) written by one party in the period.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SealCount {
    pub party: String,
    pub seals: u64,
    /// Highest record number covered by a seal in the period.
    pub last_sealed_seq: Option<u64>,
}

// ---------------------------------------------------------------------------
// Building
// ---------------------------------------------------------------------------

/// Build from the records of one or more parties' logs (each `Vec` is one party's
/// log in order), limited to records with time in `[from 00:00 UTC, to 23:59:59.999
/// UTC]`. `verification` is an optional one-line summary of the verification result
/// to print at the top (e.g. "3 logs verified: chains, signatures and 41 cross-party
/// receipts").
pub fn build(logs: &[Vec<Record>], from: Date, to: Date, verification: Option<String>) -> Report {
    let period = Period::new(from, to);
    let all: Vec<&Record> = logs.iter().flatten().collect();
    let dir = Directory::new(&all);
    let mut inp: Vec<&Record> = all.iter().copied().filter(|r| period.contains(r.time_ms)).collect();
    // Lists read in time order across logs (stable: a log's own order breaks ties).
    inp.sort_by_key(|r| r.time_ms);
    let parties = parties(&all, &inp, &dir);
    let seals = seals(&parties, &inp);
    let thresholds = thresholds(&inp);
    let suppressed = suppressed(&inp, &dir);
    let (egress, egress_total) = egress(&all, &inp, &dir);
    let (approvals, approval_counts) = approvals(&all, &inp, &dir, &period);
    Report {
        from: fmt_date(from),
        to: fmt_date(to),
        generated_at: all.iter().map(|r| r.time_ms).max().map(fmt_time),
        verification,
        analyses: analyses(&all, &dir, &period),
        round_views: inp
            .iter()
            .filter_map(|r| match &r.event {
                Event::RoundView { round, stage, delivered, survivors, signers } => Some(RoundViewNote {
                    at: fmt_time(r.time_ms),
                    node: r.party.clone(),
                    organisation: dir.org(&r.party),
                    round: round.clone(),
                    analysis: dir.analysis_of(None, Some(round)),
                    stage: stage.clone(),
                    delivered: delivered.clone(),
                    survivors: survivors.clone(),
                    signers: signers.clone(),
                }),
                _ => None,
            })
            .collect(),
        egress,
        egress_total,
        refusals: refusals(&inp, &dir),
        thresholds,
        policy_decisions: policy_decisions(&inp, &dir),
        suppressed,
        approvals,
        approval_counts,
        models: inp
            .iter()
            .filter_map(|r| match &r.event {
                Event::ModelPublished { model, version, sha256 } => Some(ModelPublication {
                    published_at: fmt_time(r.time_ms),
                    published_by: r.party.clone(),
                    model: model.clone(),
                    version: version.clone(),
                    sha256: sha256.clone(),
                }),
                _ => None,
            })
            .collect(),
        scoring: inp
            .iter()
            .filter_map(|r| match &r.event {
                Event::LocalScoring { model, version, customers } => Some(ScoringRun {
                    at: fmt_time(r.time_ms),
                    node: r.party.clone(),
                    organisation: dir.org(&r.party),
                    model: model.clone(),
                    version: version.clone(),
                    customers: *customers,
                }),
                _ => None,
            })
            .collect(),
        certificates: inp
            .iter()
            .filter_map(|r| match &r.event {
                Event::CertificateIssued { name, organisation, role, serial_hex, not_after, sha256 } => {
                    Some(CertificateIssuance {
                        issued_at: fmt_time(r.time_ms),
                        issued_by: r.party.clone(),
                        name: name.clone(),
                        organisation: organisation.clone(),
                        role: role.clone(),
                        serial_hex: serial_hex.clone(),
                        not_after: not_after.clone(),
                        sha256: sha256.clone(),
                    })
                }
                _ => None,
            })
            .collect(),
        revocations: inp
            .iter()
            .filter_map(|r| match &r.event {
                Event::CertificateRevoked { name, organisation, serial_hex, reason, crl_number } => {
                    Some(CertificateRevocation {
                        revoked_at: fmt_time(r.time_ms),
                        name: name.clone(),
                        organisation: organisation.clone(),
                        serial_hex: serial_hex.clone(),
                        reason: reason.clone(),
                        crl_number: *crl_number,
                    })
                }
                _ => None,
            })
            .collect(),
        sessions: sessions(&inp, &dir),
        enrolment: inp
            .iter()
            .rev()
            .find_map(|r| match &r.event {
                Event::Enrolment { nodes } => Some(
                    nodes
                        .iter()
                        .map(|m| Participant {
                            name: m.name.clone(),
                            organisation: m.organisation.clone(),
                            kind: m.kind.clone(),
                        })
                        .collect(),
                ),
                _ => None,
            })
            .unwrap_or_default(),
        refused_sessions: inp
            .iter()
            .filter_map(|r| match &r.event {
                Event::SessionRefused { peer, organisation, reason } => Some(RefusedSession {
                    at: fmt_time(r.time_ms),
                    recorded_by: r.party.clone(),
                    peer: peer.clone(),
                    organisation: organisation.clone(),
                    reason: reason.clone(),
                }),
                // A connected node's messages for no round it was in, dropped unread.
                Event::MessagesDropped { peer, messages, bytes, reason } => Some(RefusedSession {
                    at: fmt_time(r.time_ms),
                    recorded_by: r.party.clone(),
                    peer: peer.clone(),
                    organisation: String::new(),
                    reason: format!("{messages} message(s), {bytes} bytes dropped unread: {reason}"),
                }),
                _ => None,
            })
            .collect(),
        integrity: integrity(&inp),
        seals,
        parties,
    }
}

const MS_PER_DAY: i128 = 86_400_000;

/// `[from 00:00:00.000, to 23:59:59.999]` UTC in Unix milliseconds.
struct Period {
    lo: i128,
    hi: i128,
}

impl Period {
    fn new(from: Date, to: Date) -> Self {
        let start = |d: Date| i128::from(d.midnight().assume_utc().unix_timestamp()) * 1000;
        Period { lo: start(from), hi: start(to) + MS_PER_DAY - 1 }
    }

    fn contains(&self, t: u64) -> bool {
        let t = i128::from(t);
        self.lo <= t && t <= self.hi
    }
}

/// What the whole logs say about names, roles and analyses (independent of the period).
#[derive(Default)]
struct Directory {
    /// Party or member name → organisation (`log-opened` first, then certificates,
    /// sessions, round members).
    orgs: BTreeMap<String, String>,
    roles: BTreeMap<String, String>,
    software: BTreeMap<String, String>,
    /// Analysis id → kind.
    kinds: BTreeMap<String, String>,
    /// Round id → analysis id.
    round_analysis: BTreeMap<String, String>,
    /// Parties that act as coordinator.
    coordinators: BTreeSet<String>,
}

fn put(map: &mut BTreeMap<String, String>, key: &str, value: &str) {
    if !value.is_empty() {
        map.insert(key.to_string(), value.to_string());
    }
}

fn put_new(map: &mut BTreeMap<String, String>, key: &str, value: &str) {
    if !value.is_empty() && !map.contains_key(key) {
        map.insert(key.to_string(), value.to_string());
    }
}

impl Directory {
    fn new(all: &[&Record]) -> Self {
        let mut d = Directory::default();
        // Organisations, lowest priority first: later passes overwrite.
        for r in all {
            let members: &[Member] = match &r.event {
                Event::RoundStarted { invited, .. } => invited,
                Event::RosterSigned { members, .. } => members,
                Event::Release { contributors, .. } => contributors,
                _ => &[],
            };
            for m in members {
                put(&mut d.orgs, &m.name, &m.organisation);
            }
        }
        for r in all {
            if let Event::SessionOpened { peer, organisation, role } = &r.event {
                put(&mut d.orgs, peer, organisation);
                put(&mut d.roles, peer, role);
            }
        }
        for r in all {
            if let Event::CertificateIssued { name, organisation, role, .. } = &r.event {
                put(&mut d.orgs, name, organisation);
                put(&mut d.roles, name, role);
            }
        }
        for r in all {
            if let Event::LogOpened { role, organisation, software, .. } = &r.event {
                put(&mut d.orgs, &r.party, organisation);
                put(&mut d.roles, &r.party, role);
                put(&mut d.software, &r.party, software);
            }
        }
        // Analyses and rounds: the request names the kind authoritatively.
        for r in all {
            if let Event::AnalysisRequested { analysis, kind, .. } = &r.event {
                put_new(&mut d.kinds, analysis, kind);
            }
        }
        for r in all {
            match &r.event {
                Event::Release { analysis, kind, rounds, .. } => {
                    put_new(&mut d.kinds, analysis, kind);
                    for round in rounds {
                        put_new(&mut d.round_analysis, round, analysis);
                    }
                }
                Event::RoundStarted { round, analysis, kind, .. } => {
                    put_new(&mut d.kinds, analysis, kind);
                    put_new(&mut d.round_analysis, round, analysis);
                }
                Event::Egress { round: Some(round), analysis: Some(analysis), .. }
                | Event::PolicyDecision { round: Some(round), analysis, .. } => {
                    put_new(&mut d.round_analysis, round, analysis);
                }
                _ => {}
            }
        }
        // Coordinators: by certificate role, or by recording coordinator-only events.
        for r in all {
            let coordinator_event = matches!(
                r.event,
                Event::AnalysisRequested { .. }
                    | Event::Release { .. }
                    | Event::AnalysisFailed { .. }
                    | Event::NodeExit { .. }
                    | Event::ShareReported { .. }
            );
            if coordinator_event || d.roles.get(&r.party).is_some_and(|role| role.contains("coordinator")) {
                d.coordinators.insert(r.party.clone());
            }
        }
        d
    }

    fn org(&self, name: &str) -> String {
        self.orgs.get(name).cloned().unwrap_or_default()
    }

    fn role(&self, name: &str) -> String {
        self.roles.get(name).cloned().unwrap_or_default()
    }

    fn is_coordinator(&self, party: &str) -> bool {
        self.coordinators.contains(party)
    }

    fn is_node(&self, party: &str) -> bool {
        self.roles.get(party).is_some_and(|role| role.contains("node"))
    }

    /// Kind of an analysis, if known.
    fn kind(&self, analysis: &str) -> Option<String> {
        self.kinds.get(analysis).cloned()
    }

    /// The analysis of a message: named directly or through its round.
    fn analysis_of(&self, analysis: Option<&String>, round: Option<&String>) -> Option<String> {
        analysis.cloned().or_else(|| round.and_then(|r| self.round_analysis.get(r).cloned()))
    }
}

/// Sort order for parties: coordinator, CA, HQ nodes, franchisee nodes, others.
fn role_rank(role: &str) -> u8 {
    if role.contains("coordinator") {
        0
    } else if is_ca_role(role) {
        1
    } else if role.contains("node-hq") {
        2
    } else if role.contains("node") {
        3
    } else {
        4
    }
}

fn is_ca_role(role: &str) -> bool {
    role == "ca" || role.ends_with("-ca") || role.contains("-ca-") || role.contains("authority")
}

fn parties(all: &[&Record], inp: &[&Record], dir: &Directory) -> Vec<PartyLog> {
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

fn member(m: &Member, dir: &Directory) -> Participant {
    let organisation = if m.organisation.is_empty() { dir.org(&m.name) } else { m.organisation.clone() };
    Participant { name: m.name.clone(), organisation, kind: m.kind.clone() }
}

fn analyses(all: &[&Record], dir: &Directory, period: &Period) -> Vec<AnalysisRun> {
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

fn add_part(parts: &mut BTreeMap<String, (u64, u64)>, name: String, bytes: u64) {
    let e = parts.entry(name).or_default();
    e.0 += 1;
    e.1 = e.1.saturating_add(bytes);
}

fn parts(map: BTreeMap<String, (u64, u64)>) -> Vec<EgressPart> {
    map.into_iter().map(|(name, (messages, bytes))| EgressPart { name, messages, bytes }).collect()
}

fn egress(all: &[&Record], inp: &[&Record], dir: &Directory) -> (Vec<NodeEgress>, EgressTotal) {
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

fn refusals(inp: &[&Record], dir: &Directory) -> Vec<Refusal> {
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

fn thresholds(inp: &[&Record]) -> Vec<ReleaseThresholds> {
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

fn policy_decisions(inp: &[&Record], dir: &Directory) -> Vec<PolicyCounts> {
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

fn suppressed(inp: &[&Record], dir: &Directory) -> SuppressedCells {
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

fn approvals(
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

fn sessions(inp: &[&Record], dir: &Directory) -> Vec<SessionCounts> {
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

fn integrity(inp: &[&Record]) -> Vec<IntegrityNote> {
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

fn seals(parties: &[PartyLog], inp: &[&Record]) -> Vec<SealCount> {
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

// ---------------------------------------------------------------------------
// Formatting helpers
// ---------------------------------------------------------------------------

fn fmt_date(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// Unix milliseconds as UTC `YYYY-MM-DD HH:MM:SS`.
fn fmt_time(ms: u64) -> String {
    match i64::try_from(ms / 1000).ok().and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok()) {
        Some(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        None => format!("{ms} ms after 1970-01-01"),
    }
}

/// `1234567` → `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Human-readable size: `1.2 MiB (1,234,567 bytes)`, or `512 bytes` below 1 KiB.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n == 1 {
        return "1 byte".to_string();
    }
    if n < 1024 {
        return format!("{} bytes", thousands(n));
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1023.95 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {} ({} bytes)", UNITS[unit], thousands(n))
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 { "–".to_string() } else { format!("{:.1}%", part as f64 * 100.0 / whole as f64) }
}

/// A plain-language name for a certificate role string.
fn role_label(role: &str) -> String {
    let label = match role {
        "fedcrm-coordinator" => "coordinator",
        "fedcrm-analyst" => "analyst",
        "fedcrm-node-hq" => "HQ data node",
        "fedcrm-node-franchisee" => "franchisee data node",
        "" => return "unknown".to_string(),
        r if is_ca_role(r) => "brand certificate authority",
        r => return r.to_string(),
    };
    format!("{label} ({role})")
}

/// `1 analysis`, `2 analyses`, `1,000 messages`.
fn count(n: u64, one: &str, many: &str) -> String {
    format!("{} {}", thousands(n), if n == 1 { one } else { many })
}

fn or_unknown(s: &str) -> String {
    if s.is_empty() { "unknown".to_string() } else { s.to_string() }
}

/// `name (organisation)`.
fn who(name: &str, organisation: &str) -> String {
    if organisation.is_empty() { or_unknown(name) } else { format!("{} ({organisation})", or_unknown(name)) }
}

fn list_or(items: &[String], empty: &str) -> String {
    if items.is_empty() { empty.to_string() } else { items.join(", ") }
}

// ---------------------------------------------------------------------------
// Document model shared by the Markdown and HTML renderers
// ---------------------------------------------------------------------------

const NONE: &str = "None in this period.";

enum Block {
    Para(String),
    Sub(String),
    Table { head: Vec<&'static str>, rows: Vec<Vec<String>> },
    Item { title: String, fields: Vec<(&'static str, String)> },
}

struct Section {
    title: &'static str,
    explain: &'static str,
    blocks: Vec<Block>,
}

struct Doc {
    title: String,
    meta: Vec<(&'static str, String)>,
    glance: Vec<String>,
    sections: Vec<Section>,
}

/// A table, or "None in this period." when it has no rows.
fn table(head: Vec<&'static str>, rows: Vec<Vec<String>>) -> Block {
    if rows.is_empty() { Block::Para(NONE.to_string()) } else { Block::Table { head, rows } }
}

fn doc(r: &Report) -> Doc {
    let released = r.analyses.iter().filter(|a| a.outcome == Outcome::Released).count();
    let failed = r.analyses.iter().filter(|a| a.outcome == Outcome::Failed).count();
    let open = r.analyses.len() - released - failed;
    let refusals: u64 = r.refusals.iter().map(|x| x.count).sum();
    let glance = vec![
        format!(
            "{}: {released} released, {failed} failed, {open} without a recorded outcome.",
            count(r.analyses.len() as u64, "analysis", "analyses")
        ),
        format!(
            "{} left {} in {}.",
            human_bytes(r.egress_total.bytes),
            count(r.egress_total.nodes, "node", "nodes"),
            count(r.egress_total.messages, "message", "messages")
        ),
        format!("{} of a node refusing or leaving an analysis.", count(refusals, "record", "records")),
        format!(
            "{} of {} result cells suppressed because they described too few customers.",
            thousands(r.suppressed.total_suppressed),
            thousands(r.suppressed.total_cells)
        ),
        format!("{} issued.", count(r.certificates.len() as u64, "certificate", "certificates")),
    ];
    let meta = vec![
        ("Period", format!("{} to {} (whole days, UTC; all times in this report are UTC)", r.from, r.to)),
        (
            "Logs read up to",
            match &r.generated_at {
                Some(t) => format!("{t} (the latest record in the logs read)"),
                None => "the logs read contain no records".to_string(),
            },
        ),
        (
            "Verification",
            r.verification.clone().unwrap_or_else(|| {
                "not stated — this report was built without a verification result; run `fedcrm audit verify`"
                    .to_string()
            }),
        ),
    ];
    let sections = vec![
        section_parties(r),
        section_analyses(r),
        section_egress(r),
        section_refusals(r),
        section_thresholds(r),
        section_suppressed(r),
        section_approvals(r),
        section_models(r),
        section_certificates(r),
        section_integrity(r),
    ];
    Doc { title: format!("Audit report: federated analytics, {} to {}", r.from, r.to), meta, glance, sections }
}

fn section_parties(r: &Report) -> Section {
    let rows = r
        .parties
        .iter()
        .map(|p| {
            vec![
                p.party.clone(),
                role_label(&p.role),
                or_unknown(&p.organisation),
                or_unknown(&p.software),
                thousands(p.records_in_period),
                match (&p.first_record, &p.last_record) {
                    (Some(a), Some(b)) => format!("{a} to {b}"),
                    _ => "no records in this period".to_string(),
                },
            ]
        })
        .collect();
    Section {
        title: "1. Logs included",
        explain: "Every party in the federation keeps its own tamper-evident log of what it did. This report was \
                  built from these logs.",
        blocks: vec![table(
            vec!["Party", "Role", "Organisation", "Software", "Records in period", "First and last record"],
            rows,
        )],
    }
}

fn section_analyses(r: &Report) -> Section {
    let mut blocks = Vec::new();
    for a in &r.analyses {
        let outcome = match a.outcome {
            Outcome::Released => format!("released {}", a.outcome_at.clone().unwrap_or_default()),
            Outcome::Failed => {
                format!("failed {}: {}", a.outcome_at.clone().unwrap_or_default(), a.failure_reasons.join("; "))
            }
            Outcome::NoOutcomeRecorded => "no release or failure recorded in the logs read".to_string(),
        };
        let mut fields = vec![
            ("Requested", a.requested_at.clone().unwrap_or_else(|| "the request is not in the logs read".to_string())),
            ("Kind of analysis", or_unknown(&a.kind)),
            ("Requested by", who(&a.analyst, &a.analyst_organisation)),
            ("Purpose", or_unknown(&a.purpose)),
            ("Outcome", outcome),
        ];
        if a.outcome == Outcome::Released && !a.failure_reasons.is_empty() {
            fields.push(("Earlier failures", a.failure_reasons.join("; ")));
        }
        let names: Vec<String> = a.participants.iter().map(|p| who(&p.name, &p.organisation)).collect();
        let label = match a.participants_from {
            ParticipantSource::Contributors => "Nodes whose data is in the result",
            ParticipantSource::Invited => "Nodes invited (no result was released)",
            ParticipantSource::Unknown => "Participating nodes",
        };
        fields.push((label, list_or(&names, "not recorded")));
        fields.push(("Rounds run", a.rounds.to_string()));
        fields.push(("Nodes that declined or left", list_or(&a.declined, "none")));
        if !a.parameters.is_null() {
            fields.push(("Parameters (technical)", a.parameters.to_string()));
        }
        blocks.push(Block::Item { title: format!("Analysis {}", a.analysis), fields });
    }
    if blocks.is_empty() {
        blocks.push(Block::Para(NONE.to_string()));
    }
    if !r.round_views.is_empty() {
        let rows = r
            .round_views
            .iter()
            .map(|v| {
                vec![
                    v.at.clone(),
                    who(&v.node, &v.organisation),
                    v.analysis.clone().unwrap_or_else(|| "unknown".to_string()),
                    v.round.clone(),
                    match v.stage.as_str() {
                        crate::record::ROUND_VIEW_SIGNED => "signed the list of participants".to_string(),
                        crate::record::ROUND_VIEW_UNMASKED => "revealed its shares".to_string(),
                        other => or_unknown(other),
                    },
                    list_or(&v.delivered, "none"),
                    list_or(&v.survivors, "none"),
                    list_or(&v.signers, "–"),
                ]
            })
            .collect();
        blocks.push(Block::Sub("Who took part in each round, as each node saw it".to_string()));
        blocks.push(table(
            vec![
                "When",
                "Node",
                "Analysis",
                "Round",
                "Step",
                "Shares delivered (U2)",
                "Inputs in the sum (U3)",
                "Signatures checked",
            ],
            rows,
        ));
    }
    Section {
        title: "2. Analyses run",
        explain: "Each analysis is a question HQ's analysts asked of all stores' data together, with the purpose \
                  they gave. Only combined totals leave the coordinator; no customer records are shared.",
        blocks,
    }
}

fn section_egress(r: &Report) -> Section {
    let mut rows: Vec<Vec<String>> = r
        .egress
        .iter()
        .map(|e| vec![e.node.clone(), or_unknown(&e.organisation), thousands(e.messages), human_bytes(e.bytes)])
        .collect();
    if !rows.is_empty() {
        rows.push(vec![
            format!("All {} nodes", r.egress_total.nodes),
            String::new(),
            thousands(r.egress_total.messages),
            human_bytes(r.egress_total.bytes),
        ]);
    }
    let by = |pick: fn(&NodeEgress) -> &Vec<EgressPart>| -> Vec<Vec<String>> {
        r.egress
            .iter()
            .flat_map(|e| {
                pick(e)
                    .iter()
                    .map(|p| vec![e.node.clone(), p.name.clone(), thousands(p.messages), human_bytes(p.bytes)])
            })
            .collect()
    };
    let mut blocks = vec![table(vec!["Node", "Organisation", "Messages sent", "Total sent"], rows)];
    if !r.egress.iter().all(|e| e.by_kind.is_empty()) {
        blocks.push(Block::Sub("By kind of analysis".to_string()));
        blocks.push(table(vec!["Node", "Kind of analysis", "Messages", "Sent"], by(|e| &e.by_kind)));
        blocks.push(Block::Sub("By message type".to_string()));
        blocks.push(table(vec!["Node", "Message type", "Messages", "Sent"], by(|e| &e.by_message)));
    }
    Section {
        title: "3. Data sent by each node",
        explain: "Everything that left each node (the data server at HQ or at a franchisee) in this period, as the \
                  node recorded it before sending: number of messages and exact sizes. Only sizes and fingerprints \
                  are logged, never contents.",
        blocks,
    }
}

fn section_refusals(r: &Report) -> Section {
    let rows = r
        .refusals
        .iter()
        .map(|x| {
            vec![
                if x.first_at == x.last_at { x.first_at.clone() } else { format!("{} to {}", x.first_at, x.last_at) },
                who(&x.node, &x.organisation),
                match x.source {
                    RefusalSource::Node => format!("the node's own policy ({} log)", x.recorded_by),
                    RefusalSource::Coordinator => format!("the coordinator ({} log)", x.recorded_by),
                },
                match (&x.analysis, &x.kind) {
                    (Some(a), Some(k)) => format!("{a} ({k})"),
                    (Some(a), None) => a.clone(),
                    _ => "unknown".to_string(),
                },
                list_or(&x.rounds, "–"),
                x.reason.clone(),
                x.count.to_string(),
            ]
        })
        .collect();
    Section {
        title: "4. Refusals and why",
        explain: "Times a node declined to take part in an analysis, or left one, and the reason given. Nodes refuse \
                  automatically when a request does not meet their privacy policy.",
        blocks: vec![table(vec!["When", "Node", "Recorded by", "Analysis", "Rounds", "Reason", "Times"], rows)],
    }
}

fn section_thresholds(r: &Report) -> Section {
    let rows = r
        .thresholds
        .iter()
        .map(|t| {
            vec![
                t.released_at.clone(),
                t.analysis.clone(),
                or_unknown(&t.kind),
                t.min_participants.to_string(),
                format!("{}{}", t.contributors, if t.meets_min_participants { "" } else { " (BELOW MINIMUM)" }),
                t.min_cohort.to_string(),
                thousands(t.cells),
                thousands(t.suppressed),
            ]
        })
        .collect();
    let policy = r
        .policy_decisions
        .iter()
        .map(|p| vec![who(&p.node, &p.organisation), thousands(p.admitted), thousands(p.refused)])
        .collect();
    Section {
        title: "5. Thresholds enforced",
        explain: "Before a result is released the coordinator checks that enough nodes contributed and that every \
                  number in it describes enough customers that no one can be singled out. Each node also checks \
                  every request against its own policy.",
        blocks: vec![
            table(
                vec![
                    "Released",
                    "Analysis",
                    "Kind",
                    "Minimum nodes",
                    "Nodes contributing",
                    "Minimum customers per cell",
                    "Cells",
                    "Cells suppressed",
                ],
                rows,
            ),
            Block::Sub("Node policy decisions".to_string()),
            table(vec!["Node", "Requests admitted", "Requests refused"], policy),
        ],
    }
}

fn section_suppressed(r: &Report) -> Section {
    let s = &r.suppressed;
    let mut blocks = Vec::new();
    if s.per_analysis.is_empty() {
        blocks.push(Block::Para(NONE.to_string()));
    } else {
        blocks.push(Block::Para(format!(
            "In total {} of {} cells ({}) were suppressed.",
            thousands(s.total_suppressed),
            thousands(s.total_cells),
            percent(s.total_suppressed, s.total_cells)
        )));
        let rows = s
            .per_analysis
            .iter()
            .map(|a| {
                vec![
                    a.analysis.clone(),
                    or_unknown(&a.kind),
                    a.releases.to_string(),
                    thousands(a.cells),
                    thousands(a.suppressed),
                    percent(a.suppressed, a.cells),
                ]
            })
            .collect();
        blocks.push(table(vec!["Analysis", "Kind", "Releases", "Cells", "Suppressed", "Share suppressed"], rows));
    }
    Section {
        title: "6. Suppressed cells",
        explain: "Cells (numbers in a result table) that described too few customers were withheld rather than \
                  released, so that no individual can be recognised.",
        blocks,
    }
}

fn section_approvals(r: &Report) -> Section {
    let counts = r
        .approval_counts
        .iter()
        .map(|c| {
            vec![who(&c.node, &c.organisation), c.requested.to_string(), c.granted.to_string(), c.expired.to_string()]
        })
        .collect();
    let rows = r
        .approvals
        .iter()
        .map(|a| {
            vec![
                a.requested_at.clone().unwrap_or_else(|| "not in the logs read".to_string()),
                who(&a.node, &a.organisation),
                a.id.clone(),
                a.analysis.clone(),
                or_unknown(&a.purpose),
                or_unknown(&a.requested_by),
                match a.outcome {
                    ApprovalOutcome::Granted => format!(
                        "granted by {} at {}",
                        a.decided_by.clone().unwrap_or_default(),
                        a.decided_at.clone().unwrap_or_default()
                    ),
                    ApprovalOutcome::Expired => {
                        format!("expired at {} without approval", a.decided_at.clone().unwrap_or_default())
                    }
                    ApprovalOutcome::Pending => {
                        format!("waiting (expires {})", a.expires_at.clone().unwrap_or_else(|| "unknown".to_string()))
                    }
                },
            ]
        })
        .collect();
    let mut blocks = vec![table(vec!["Node", "Requests", "Granted", "Expired"], counts)];
    if !r.approvals.is_empty() {
        blocks.push(Block::Sub("Each request".to_string()));
        blocks.push(table(vec!["Requested", "Node", "Request", "Analysis", "Purpose", "Asked by", "Outcome"], rows));
    }
    Section {
        title: "7. Manual approvals",
        explain: "Some franchisees require a person to approve each request before their data takes part. A request \
                  not approved in time expires and the node does not take part.",
        blocks,
    }
}

fn section_models(r: &Report) -> Section {
    let published = r
        .models
        .iter()
        .map(|m| {
            vec![m.published_at.clone(), m.model.clone(), m.version.clone(), m.published_by.clone(), m.sha256.clone()]
        })
        .collect();
    let scoring = r
        .scoring
        .iter()
        .map(|s| {
            vec![
                s.at.clone(),
                who(&s.node, &s.organisation),
                s.model.clone(),
                s.version.clone(),
                thousands(s.customers),
            ]
        })
        .collect();
    Section {
        title: "8. Models",
        explain: "Trained models published for use, and each time a model was applied inside a node to that store's \
                  own customers (the customer data stays there).",
        blocks: vec![
            Block::Sub("Model versions published".to_string()),
            table(vec!["Published", "Model", "Version", "Published by", "Fingerprint (SHA-256)"], published),
            Block::Sub("Local scoring runs".to_string()),
            table(vec!["When", "Node", "Model", "Version", "Customers scored"], scoring),
        ],
    }
}

fn section_certificates(r: &Report) -> Section {
    let certs = r
        .certificates
        .iter()
        .map(|c| {
            vec![
                c.issued_at.clone(),
                c.name.clone(),
                or_unknown(&c.organisation),
                role_label(&c.role),
                c.serial_hex.clone(),
                c.not_after.clone(),
                c.sha256.clone(),
            ]
        })
        .collect();
    let sessions = r
        .sessions
        .iter()
        .map(|s| {
            vec![
                s.recorded_by.clone(),
                who(&s.peer, &s.organisation),
                role_label(&s.role),
                s.opened.to_string(),
                s.closed.to_string(),
                list_or(&s.close_reasons, "–"),
            ]
        })
        .collect();
    Section {
        title: "9. Certificates and connections",
        explain: "The brand's certificate authority gives every party a digital identity (a certificate). Parties \
                  connect only over sessions authenticated with these identities.",
        blocks: vec![
            Block::Sub("Certificates issued".to_string()),
            table(
                vec!["Issued", "Name", "Organisation", "Role", "Serial", "Valid until", "Fingerprint (SHA-256)"],
                certs,
            ),
            Block::Sub("Certificates revoked".to_string()),
            table(
                vec!["Revoked", "Name", "Organisation", "Serial", "Reason", "CRL number"],
                r.revocations
                    .iter()
                    .map(|x| {
                        vec![
                            x.revoked_at.clone(),
                            x.name.clone(),
                            or_unknown(&x.organisation),
                            x.serial_hex.clone(),
                            x.reason.clone(),
                            x.crl_number.to_string(),
                        ]
                    })
                    .collect(),
            ),
            Block::Sub("Sessions".to_string()),
            table(vec!["Log", "Peer", "Peer's role", "Opened", "Closed", "Reasons for closing"], sessions),
            Block::Sub("Nodes the coordinator accepts (enrolment)".to_string()),
            table(
                vec!["Node", "Organisation"],
                r.enrolment.iter().map(|p| vec![p.name.clone(), or_unknown(&p.organisation)]).collect(),
            ),
            Block::Sub("Connections refused, and messages dropped unread".to_string()),
            table(
                vec!["When", "Recorded by", "Who tried", "Organisation", "Why refused"],
                r.refused_sessions
                    .iter()
                    .map(|x| {
                        vec![
                            x.at.clone(),
                            x.recorded_by.clone(),
                            x.peer.clone(),
                            or_unknown(&x.organisation),
                            x.reason.clone(),
                        ]
                    })
                    .collect(),
            ),
        ],
    }
}

fn section_integrity(r: &Report) -> Section {
    let notes = r
        .integrity
        .iter()
        .map(|n| {
            let what = match n.kind {
                IntegrityKind::RetentionDeleted => format!(
                    "{} log file(s) older than the {}-day retention period deleted; the log continues from record {}",
                    n.files.len(),
                    n.retention_days.unwrap_or_default(),
                    n.upto_seq.unwrap_or_default()
                ),
                IntegrityKind::TornTailRecovered => format!(
                    "after a crash, an incomplete last line ({}, SHA-256 {}) was set aside; it had never been \
                     acknowledged",
                    human_bytes(n.bytes.unwrap_or_default()),
                    n.sha256.clone().unwrap_or_default()
                ),
            };
            vec![n.at.clone(), n.party.clone(), what, n.files.join(", ")]
        })
        .collect();
    let seals = r
        .seals
        .iter()
        .map(|s| {
            vec![
                s.party.clone(),
                thousands(s.seals),
                s.last_sealed_seq.map_or_else(|| "–".to_string(), |q| q.to_string()),
            ]
        })
        .collect();
    Section {
        title: "10. Log integrity notes",
        explain: "Events affecting the logs themselves: old files deleted at the end of the retention period, and \
                  recovery from an incomplete line after a crash. Seals are regular digital signatures over a log \
                  that make any later change detectable.",
        blocks: vec![
            Block::Sub("Retention and recovery".to_string()),
            table(vec!["When", "Party", "What happened", "Files"], notes),
            Block::Sub("Seals".to_string()),
            table(vec!["Party", "Seals in period", "Last record sealed"], seals),
        ],
    }
}

// ---------------------------------------------------------------------------
// Markdown
// ---------------------------------------------------------------------------

/// Escapes text for a Markdown line or table cell: no line breaks, no table pipes,
/// no emphasis, code, links or raw HTML.
fn md(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' | '|' | '*' | '`' | '<' | '>' | '[' | ']' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' | '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The report as Markdown.
pub fn markdown(r: &Report) -> String {
    let d = doc(r);
    let mut out = format!("# {}\n\n", md(&d.title));
    for (k, v) in &d.meta {
        out.push_str(&format!("- **{k}:** {}\n", md(v)));
    }
    out.push_str("\n**At a glance**\n\n");
    for g in &d.glance {
        out.push_str(&format!("- {}\n", md(g)));
    }
    for s in &d.sections {
        out.push_str(&format!("\n## {}\n\n*{}*\n\n", s.title, md(s.explain)));
        for b in &s.blocks {
            match b {
                Block::Para(p) => out.push_str(&format!("{}\n\n", md(p))),
                Block::Sub(t) => out.push_str(&format!("### {}\n\n", md(t))),
                Block::Table { head, rows } => {
                    out.push_str(&format!("| {} |\n", head.join(" | ")));
                    out.push_str(&format!("|{}\n", "---|".repeat(head.len())));
                    for row in rows {
                        let cells: Vec<String> = row.iter().map(|c| md(c)).collect();
                        out.push_str(&format!("| {} |\n", cells.join(" | ")));
                    }
                    out.push('\n');
                }
                Block::Item { title, fields } => {
                    out.push_str(&format!("### {}\n\n", md(title)));
                    for (k, v) in fields {
                        out.push_str(&format!("- **{k}:** {}\n", md(v)));
                    }
                    out.push('\n');
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// HTML
// ---------------------------------------------------------------------------

/// Escapes text for HTML element content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const CSS: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,'Noto Sans SC',sans-serif;\
max-width:72rem;margin:2rem auto;padding:0 1rem;color:#1c1c1c;line-height:1.45}\
h1{font-size:1.6rem;border-bottom:2px solid #8a6d3b;padding-bottom:.3rem}\
h2{font-size:1.25rem;margin-top:2.2rem;color:#5a4420}h3{font-size:1.05rem;margin:1.2rem 0 .4rem}\
p.explain{color:#555;font-style:italic;margin-top:0}\
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem}dl.meta dt{font-weight:600}\
dl.meta dd{margin:0}ul.glance{background:#f7f3ea;padding:.8rem 2rem;border-radius:4px}\
table{border-collapse:collapse;width:100%;margin:.4rem 0 1rem;font-size:.9rem}\
th,td{border:1px solid #ccc;padding:.3rem .5rem;text-align:left;vertical-align:top;overflow-wrap:anywhere}\
th{background:#efe9dc}tr:nth-child(even) td{background:#fafafa}\
dl.item{display:grid;grid-template-columns:16rem 1fr;gap:.15rem 1rem;margin:0 0 1rem}\
dl.item dt{font-weight:600}dl.item dd{margin:0;overflow-wrap:anywhere}\
@media print{body{margin:0;max-width:none}h2{break-after:avoid}tr{break-inside:avoid}}";

/// The report as one self-contained HTML page: inline CSS, no scripts, no external assets.
pub fn html(r: &Report) -> String {
    let d = doc(r);
    let mut out = String::new();
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str(
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n",
    );
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    out.push_str(&format!("<title>{}</title>\n<style>{CSS}</style>\n</head>\n<body>\n", esc(&d.title)));
    out.push_str(&format!("<h1>{}</h1>\n<dl class=\"meta\">\n", esc(&d.title)));
    for (k, v) in &d.meta {
        out.push_str(&format!("<dt>{}</dt><dd>{}</dd>\n", esc(k), esc(v)));
    }
    out.push_str("</dl>\n<ul class=\"glance\">\n");
    for g in &d.glance {
        out.push_str(&format!("<li>{}</li>\n", esc(g)));
    }
    out.push_str("</ul>\n");
    for s in &d.sections {
        out.push_str(&format!("<section>\n<h2>{}</h2>\n<p class=\"explain\">{}</p>\n", esc(s.title), esc(s.explain)));
        for b in &s.blocks {
            match b {
                Block::Para(p) => out.push_str(&format!("<p>{}</p>\n", esc(p))),
                Block::Sub(t) => out.push_str(&format!("<h3>{}</h3>\n", esc(t))),
                Block::Table { head, rows } => {
                    out.push_str("<table>\n<thead><tr>");
                    for h in head {
                        out.push_str(&format!("<th>{}</th>", esc(h)));
                    }
                    out.push_str("</tr></thead>\n<tbody>\n");
                    for row in rows {
                        out.push_str("<tr>");
                        for c in row {
                            out.push_str(&format!("<td>{}</td>", esc(c)));
                        }
                        out.push_str("</tr>\n");
                    }
                    out.push_str("</tbody>\n</table>\n");
                }
                Block::Item { title, fields } => {
                    out.push_str(&format!("<h3>{}</h3>\n<dl class=\"item\">\n", esc(title)));
                    for (k, v) in fields {
                        out.push_str(&format!("<dt>{}</dt><dd>{}</dd>\n", esc(k), esc(v)));
                    }
                    out.push_str("</dl>\n");
                }
            }
        }
        out.push_str("</section>\n");
    }
    out.push_str("</body>\n</html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::GENESIS;
    use time::OffsetDateTime;
    use time::macros::{date, datetime};

    const HQ: &str = "Brand HQ";
    const FRANCHISEE: &str = "Golden Phoenix Jewellery Ltd";

    fn ms(t: OffsetDateTime) -> u64 {
        (t.unix_timestamp_nanos() / 1_000_000) as u64
    }

    struct Log(Vec<Record>, &'static str);

    impl Log {
        fn new(party: &'static str) -> Self {
            Log(Vec::new(), party)
        }
        fn at(&mut self, t: OffsetDateTime, event: Event) -> &mut Self {
            let seq = self.0.len() as u64;
            self.0.push(Record { seq, prev: GENESIS.to_string(), time_ms: ms(t), party: self.1.to_string(), event });
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

    /// A coordinator, a franchisee node, HQ's node and the brand CA, covering every
    /// section, with records just outside March 2025 on both sides.
    fn logs() -> Vec<Vec<Record>> {
        let mut c = Log::new("coordinator");
        c.at(datetime!(2025-02-01 08:00 UTC), opened("fedcrm-coordinator", HQ))
            // February: outside the period.
            .at(datetime!(2025-02-10 09:00 UTC), requested("a0", "rfm-segments", "February review"))
            .at(datetime!(2025-02-10 09:01 UTC), round("r0", "a0", "rfm-segments"))
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
            .at(datetime!(2025-03-05 11:10 UTC), round("r2b", "a2", "rfm-segments"))
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
                Event::TornTailRecovered {
                    file: "audit-2025-03-10.log".to_string(),
                    bytes: 77,
                    sha256: "99".repeat(32),
                },
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
            .at(datetime!(2025-03-05 11:04 UTC), egress(Some("r2"), Some("a2"), "masked-input", 500))
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

        vec![c.0, n.0, h.0, ca.0]
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
        let names: Vec<(&str, &str)> =
            a1.participants.iter().map(|p| (p.name.as_str(), p.organisation.as_str())).collect();
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
        let kinds: Vec<(&str, u64, u64)> =
            store.by_kind.iter().map(|p| (p.name.as_str(), p.messages, p.bytes)).collect();
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
        assert_eq!(
            (c.name.as_str(), c.serial_hex.as_str(), c.not_after.as_str()),
            ("store-sh-01", "7f3a", "2026-03-01")
        );
        let sessions: Vec<(&str, &str, u64, u64)> =
            r.sessions.iter().map(|s| (s.recorded_by.as_str(), s.peer.as_str(), s.opened, s.closed)).collect();
        assert_eq!(
            sessions,
            [
                ("coordinator", "hq-node", 1, 0),
                ("coordinator", "store-sh-01", 1, 1),
                ("store-sh-01", "coordinator", 1, 0)
            ]
        );
        assert_eq!(r.sessions[1].close_reasons, ["node shut down"]);

        let notes: Vec<(&str, IntegrityKind, Vec<&str>)> = r
            .integrity
            .iter()
            .map(|n| (n.party.as_str(), n.kind, n.files.iter().map(String::as_str).collect()))
            .collect();
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
        assert!(md.matches(NONE).count() >= 10, "{md}");
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
        assert_eq!(page.matches("<section>").count(), 10);
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
    }
}
