//! The audit record format (version 1). One JSON object per line, UTF-8, `\n`
//! terminated. Each record names the SHA-256 of the previous line's bytes (`prev`;
//! 64 zeros for the very first record of a party), so the lines form a hash chain;
//! the *head* after a record is the SHA-256 of that record's line bytes (without the
//! newline). Heads are signed in [`Event::Seal`] records and in cross-party receipts.
//!
//! Records hold sizes, hashes, names, parameters and reasons — never customer data,
//! message content or secrets.

use serde::{Deserialize, Serialize};

/// Format version, bound into every signature.
pub const FORMAT: &str = "fedcrm-audit/v1";

/// The `prev` of a party's first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One line of an audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// 0, 1, 2, … per party, continuing across files and restarts.
    pub seq: u64,
    /// Lower-case hex SHA-256 of the previous record's line ([`GENESIS`] for seq 0).
    pub prev: String,
    /// Unix time in milliseconds when the record was written.
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

/// What happened: `event` in the JSON. (Unknown fields are not rejected when
/// parsing — a changed byte already breaks the hash chain.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    RetentionDeleted {
        files: Vec<String>,
        upto_seq: u64,
        last_head: String,
        retention_days: u32,
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
    /// The nodes the coordinator accepts (its `[[enrolled]]` list), recorded at start.
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
    /// A peer's signed log head, received with one of its messages.
    Receipt {
        peer: String,
        peer_seq: u64,
        peer_head: String,
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
    },
    /// The view of a round a node signed (`stage` = "signed") or unmasked under
    /// (`stage` = "unmasked"): U2 and U3, and the signers whose signatures it verified.
    RoundView {
        round: String,
        stage: String,
        delivered: Vec<String>,
        survivors: Vec<String>,
        signers: Vec<String>,
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

impl Event {
    /// The `event` string.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::LogOpened { .. } => "log-opened",
            Event::Seal { .. } => "seal",
            Event::TornTailRecovered { .. } => "torn-tail-recovered",
            Event::RetentionDeleted { .. } => "retention-deleted",
            Event::CertificateIssued { .. } => "certificate-issued",
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
            Event::Receipt { .. } => "receipt",
            Event::Release { .. } => "release",
            Event::Contributed { .. } => "contributed",
            Event::RoundView { .. } => "round-view",
            Event::AnalysisFailed { .. } => "analysis-failed",
            Event::ApprovalRequested { .. } => "approval-requested",
            Event::ApprovalGranted { .. } => "approval-granted",
            Event::ApprovalExpired { .. } => "approval-expired",
            Event::ModelPublished { .. } => "model-published",
            Event::LocalScoring { .. } => "local-scoring",
        }
    }
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}
