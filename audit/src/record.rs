//! The audit record format (version 1). One JSON object per line, UTF-8, `\n`
//! terminated. Each record names the SHA-256 of the previous line's bytes (`prev`;
//! 64 zeros for the very first record of a party), so the lines form a hash chain;
//! the *head* after a record is the SHA-256 of that record's line bytes (without the
//! newline). Heads are signed in [`Event::Seal`] records and in cross-party receipts.
//!
//! Records hold sizes, hashes, names, parameters and reasons — never customer data,
//! message content or secrets.

use fedcrm_analysis::date::parse_date;
use fedcrm_analysis::rules::{Coverage, Invitee, Unmasked};
use fedcrm_pki::OrgKind;
use serde::{Deserialize, Serialize};

/// Format version, bound into every signature.
/// v2: signed heads bind the head record's time ([`crate::head_payload`]).
pub const FORMAT: &str = "fedcrm-audit/v2";

/// The `prev` of a party's first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One line of an audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// 0, 1, 2, … per party, continuing across files and restarts.
    pub seq: u64,
    /// Lower-case hex SHA-256 of the previous record's line ([`GENESIS`] for seq 0).
    pub prev: String,
    /// Unix time in milliseconds when the record was written. Never earlier than the
    /// previous record's (the writer takes the later of its clock and that time).
    pub time_ms: u64,
    /// The party whose log this is (certificate CN).
    pub party: String,
    #[serde(flatten)]
    pub event: Event,
}

/// A (name, organisation) pair as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub name: String,
    pub organisation: String,
    /// `hq` or `franchisee` for nodes, empty when unknown.
    #[serde(default)]
    pub kind: String,
}

impl From<&Invitee> for Member {
    /// A round's invitee as the audit log records it.
    fn from(i: &Invitee) -> Self {
        Member { name: i.name.clone(), organisation: i.organisation.clone(), kind: i.kind.as_str().to_string() }
    }
}

/// What happened: `event` in the JSON. (Unknown fields are not rejected when
/// parsing — a changed byte already breaks the hash chain.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// A process opened the log. Carries the certificate whose key signs the seals
    /// and receipts that follow, so a verifier needs only the brand CA.
    LogOpened {
        certificate_der_hex: String,
        role: String,
        organisation: String,
        software: String,
    },
    /// The previous record's head, signed: ECDSA P-256 over
    /// [`crate::head_payload`]`(party, upto_seq, head)`.
    Seal {
        upto_seq: u64,
        head: String,
        signature_hex: String,
    },
    /// The writer found a torn last line after a crash and set it aside (its length
    /// and hash are recorded; it was never acknowledged).
    TornTailRecovered {
        file: String,
        bytes: u64,
        sha256: String,
    },
    /// Files older than the retention period were deleted. The chain goes on from
    /// `last_head` (the head of record `upto_seq`, the last one deleted).
    /// `newest_deleted_ms` is the time of the newest record deleted: the verifier
    /// checks that this record's own time is at least `retention_days` after it (0,
    /// in a record that does not state it, never passes that check).
    RetentionDeleted {
        files: Vec<String>,
        upto_seq: u64,
        last_head: String,
        retention_days: u32,
        #[serde(default)]
        newest_deleted_ms: u64,
    },
    /// The brand CA issued a certificate (CA log).
    CertificateIssued {
        name: String,
        organisation: String,
        role: String,
        serial_hex: String,
        not_after: String,
        sha256: String,
    },
    /// The brand CA revoked a certificate and re-issued its CRL (CA log).
    CertificateRevoked {
        name: String,
        organisation: String,
        serial_hex: String,
        /// RFC 5280 reason, e.g. `keyCompromise`.
        reason: String,
        crl_number: u64,
    },
    /// The nodes the coordinator accepts (its `[[enrolled]]` list), recorded at
    /// start and at every reload (SIGHUP).
    Enrolment {
        nodes: Vec<Member>,
    },
    /// A connection the coordinator refused, and why (unenrolled, wrong role, bad hello).
    SessionRefused {
        peer: String,
        organisation: String,
        reason: String,
    },
    /// A peer's session opened (coordinator: a node; node: the coordinator).
    SessionOpened {
        peer: String,
        organisation: String,
        role: String,
    },
    SessionClosed {
        peer: String,
        reason: String,
    },
    /// An analyst asked for an analysis (coordinator log).
    AnalysisRequested {
        analysis: String,
        kind: String,
        analyst: String,
        organisation: String,
        purpose: String,
        parameters: serde_json::Value,
    },
    /// A round started (coordinator) or was offered to this node (node).
    RoundStarted {
        round: String,
        analysis: String,
        kind: String,
        /// The analysis the round belongs to (`rfm-segments` for all its rounds).
        #[serde(default)]
        analysis_kind: String,
        purpose: String,
        threshold: u64,
        length: u64,
        invited: Vec<Member>,
    },
    /// The coordinator-signed roster of a round, as the node received and checked it.
    RosterSigned {
        round: String,
        members: Vec<Member>,
        coordinator: String,
        signature_ok: bool,
        /// The coordinator's signature and the SHA-256 of the payload it signs
        /// (`roster_payload`), so an auditor can re-check it later.
        #[serde(default)]
        signature_hex: String,
        #[serde(default)]
        payload_sha256: String,
    },
    /// Something left this party (node egress): message kind, exact byte size and
    /// SHA-256 of the bytes — never the content.
    Egress {
        round: Option<String>,
        analysis: Option<String>,
        message: String,
        bytes: u64,
        sha256: String,
    },
    /// A policy decision on this node.
    PolicyDecision {
        round: Option<String>,
        analysis: String,
        admitted: bool,
        reason: String,
    },
    /// A node refused or left a round (coordinator log), with the reason it gave.
    NodeExit {
        round: String,
        node: String,
        reason: String,
    },
    /// A node reported a share delivered to it that carries its sender's signature
    /// but does not open (coordinator log): the share as relayed, with the sender's
    /// signature over (round, sender, receiver, ciphertext), so an auditor can check
    /// the sender signed it; and what the coordinator did (`outcome`).
    ShareReported {
        round: String,
        sender: String,
        receiver: String,
        reason: String,
        ciphertext_hex: String,
        signature_hex: String,
        outcome: String,
    },
    /// Messages a node sent for no round it takes part in (coordinator log), dropped
    /// unread and without a receipt: one record per node per burst, not one per
    /// message, so a flooding node cannot fill the log.
    MessagesDropped {
        peer: String,
        messages: u64,
        bytes: u64,
        reason: String,
    },
    /// A peer's signed log head, received with one of its messages.
    Receipt {
        peer: String,
        peer_seq: u64,
        peer_head: String,
        /// The time of the peer's record `peer_seq` (its signed head binds it), so an
        /// auditor can check the peer's clock against this party's.
        #[serde(default)]
        peer_time_ms: u64,
        signature_hex: String,
        /// The message the head came with (kind, size and SHA-256 of its bytes
        /// without the receipt), so what one side says it sent can be compared with
        /// what the other says it received.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        message: String,
        #[serde(default, skip_serializing_if = "is_zero")]
        bytes: u64,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        sha256: String,
    },
    /// A node's view of a round's participants (Bonawitz et al. CCS 2017, Fig. 4,
    /// Round 3 (ConsistencyCheck)): at stage [`ROUND_VIEW_SIGNED`] when it signs
    /// (round, U2, U3), at [`ROUND_VIEW_UNMASKED`] when it reveals shares (Round 4).
    /// `delivered` is U2 and `survivors` U3, both sorted; `signers` are the nodes whose
    /// signatures on that view it verified (empty when it signs). `audit verify` flags
    /// a round for which two records hold different (U2, U3).
    RoundView {
        round: String,
        stage: String,
        delivered: Vec<String>,
        survivors: Vec<String>,
        signers: Vec<String>,
    },
    /// A node's SecAgg+ graph (Bell et al. CCS 2020), as it drew it: the SHA-256 of the
    /// coordinator-signed commitment roster (with the view quorum q) and that
    /// signature, the graph seed, the degree and this node's neighbours. Two nodes of
    /// one round with different seeds were shown different commitments or nonces;
    /// rounds the coordinator stopped after the reveals show up as graphs without a
    /// later view.
    GraphDrawn {
        round: String,
        commitments_sha256: String,
        commitments_signature_hex: String,
        quorum: u64,
        seed: String,
        degree: u64,
        neighbours: Vec<String>,
    },
    /// A result released (coordinator): thresholds applied and cells suppressed.
    Release {
        analysis: String,
        kind: String,
        rounds: Vec<String>,
        contributors: Vec<Member>,
        min_participants: u64,
        min_cohort: u64,
        cells: u64,
        suppressed: u64,
    },
    /// A sum this party helped unmask (node: it revealed shares for it) or unmasked
    /// (coordinator), with what it covers and who contributed (U3). Nodes rebuild
    /// their differencing guard from these records at start-up.
    Contributed {
        round: String,
        analysis: String,
        /// Analysis family, e.g. `rfm`.
        family: String,
        /// First day of data read, YYYY-MM-DD; empty = from the first record.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        window_from: String,
        /// Last day of data read, YYYY-MM-DD.
        window_to: String,
        contributors: Vec<Member>,
        /// When it was recorded: `masked` (over U2, before the masked vector left),
        /// `shown` (a U3 shown in the consistency check), `unmasked` (the U3 that t
        /// signatures confirmed; replaces the round's earlier records).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        stage: String,
    },
    /// Issue 10: a differential-privacy charge. On a node: its own budget was charged,
    /// recorded (fsynced) just before its noised, masked vector left — whatever happens
    /// to the round afterwards, so a retried round costs again; the node rebuilds its
    /// budget ledger from these records. On the coordinator: the charge it computed for
    /// `node` when that node's masked vector arrived (`audit report` compares the two).
    PrivacyCharged {
        round: String,
        analysis: String,
        /// Coordinator: the node charged; empty in a node's own log.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        node: String,
        /// The charge's calendar month (UTC), YYYY-MM, and time (ms since the epoch, by
        /// the clock budgets are kept with).
        month: String,
        charged_ms: u64,
        /// zCDP: D_α ≤ xi + rho·α.
        rho: f64,
        xi: f64,
        /// The per-node noise variance σ² (num/den) and k, the nodes whose noise alone
        /// gives the guarantee, as signed in the round start.
        noise_variance: String,
        honest: u64,
        /// Node: its monthly budget in words, and how much of it the month's charges
        /// use after this one (in the budget's own unit: ε or ρ), against the limit.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        budget: String,
        #[serde(default)]
        used: f64,
        #[serde(default)]
        limit: f64,
    },
    /// An analysis failed or was refused release (coordinator).
    AnalysisFailed {
        analysis: String,
        reason: String,
    },
    /// A request waits for the franchisee's manual approval (node).
    ApprovalRequested {
        id: String,
        analysis: String,
        purpose: String,
        requested_by: String,
        expires_ms: u64,
    },
    ApprovalGranted {
        id: String,
        by: String,
    },
    ApprovalExpired {
        id: String,
    },
    /// A trained model was published (later analyses).
    ModelPublished {
        model: String,
        version: String,
        sha256: String,
    },
    /// A model was applied locally (later analyses).
    LocalScoring {
        model: String,
        version: String,
        customers: u64,
    },
}

impl Record {
    /// A `contributed` record as the sum it names, and whether it replaces the earlier
    /// records of its round (stage `unmasked`). `Err` when such a record does not
    /// parse: callers rebuilding a differencing guard fail closed on it.
    pub fn contributed_sum(&self) -> Option<Result<(Unmasked, bool), String>> {
        let Event::Contributed { round, family, window_from, window_to, contributors, stage, .. } = &self.event else {
            return None;
        };
        let parse = || -> Result<(Unmasked, bool), String> {
            let bad =
                |what: &str, e: &dyn std::fmt::Display| format!("record {} of {}: {what}: {e}", self.seq, self.party);
            let from = if window_from.is_empty() {
                None
            } else {
                Some(parse_date(window_from).map_err(|e| bad("window_from", &e))?)
            };
            let contributors = contributors
                .iter()
                .map(|m| {
                    let kind: OrgKind = m.kind.parse().map_err(|e| bad("contributor kind", &e))?;
                    Ok(Invitee { name: m.name.clone(), organisation: m.organisation.clone(), kind })
                })
                .collect::<Result<Vec<_>, String>>()?;
            let sum = Unmasked {
                round: round.clone(),
                time_ms: self.time_ms,
                coverage: Coverage {
                    family: family.clone(),
                    from,
                    to: parse_date(window_to).map_err(|e| bad("window_to", &e))?,
                },
                contributors,
            };
            Ok((sum, stage == "unmasked"))
        };
        Some(parse())
    }
}

impl Event {
    /// The `event` string.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::LogOpened { .. } => "log-opened",
            Event::Seal { .. } => "seal",
            Event::TornTailRecovered { .. } => "torn-tail-recovered",
            Event::RetentionDeleted { .. } => "retention-deleted",
            Event::CertificateIssued { .. } => "certificate-issued",
            Event::CertificateRevoked { .. } => "certificate-revoked",
            Event::Enrolment { .. } => "enrolment",
            Event::SessionRefused { .. } => "session-refused",
            Event::SessionOpened { .. } => "session-opened",
            Event::SessionClosed { .. } => "session-closed",
            Event::AnalysisRequested { .. } => "analysis-requested",
            Event::RoundStarted { .. } => "round-started",
            Event::RosterSigned { .. } => "roster-signed",
            Event::Egress { .. } => "egress",
            Event::PolicyDecision { .. } => "policy-decision",
            Event::NodeExit { .. } => "node-exit",
            Event::ShareReported { .. } => "share-reported",
            Event::MessagesDropped { .. } => "messages-dropped",
            Event::Receipt { .. } => "receipt",
            Event::RoundView { .. } => "round-view",
            Event::GraphDrawn { .. } => "graph-drawn",
            Event::Release { .. } => "release",
            Event::Contributed { .. } => "contributed",
            Event::PrivacyCharged { .. } => "privacy-charged",
            Event::AnalysisFailed { .. } => "analysis-failed",
            Event::ApprovalRequested { .. } => "approval-requested",
            Event::ApprovalGranted { .. } => "approval-granted",
            Event::ApprovalExpired { .. } => "approval-expired",
            Event::ModelPublished { .. } => "model-published",
            Event::LocalScoring { .. } => "local-scoring",
        }
    }
}

/// [`Event::RoundView`] stage: the node signs (round, U2, U3).
pub const ROUND_VIEW_SIGNED: &str = "signed";
/// [`Event::RoundView`] stage: the node reveals its shares.
pub const ROUND_VIEW_UNMASKED: &str = "unmasked";

impl Event {
    /// An [`Event::RoundView`] with U2, U3 and the signers sorted and deduplicated, as
    /// the verifier compares them.
    pub fn round_view(
        round: impl Into<String>,
        stage: &str,
        delivered: impl IntoIterator<Item = String>,
        survivors: impl IntoIterator<Item = String>,
        signers: impl IntoIterator<Item = String>,
    ) -> Event {
        let sorted = |names: &mut dyn Iterator<Item = String>| {
            let set: std::collections::BTreeSet<String> = names.collect();
            set.into_iter().collect::<Vec<_>>()
        };
        Event::RoundView {
            round: round.into(),
            stage: stage.to_owned(),
            delivered: sorted(&mut delivered.into_iter()),
            survivors: sorted(&mut survivors.into_iter()),
            signers: sorted(&mut signers.into_iter()),
        }
    }
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}
