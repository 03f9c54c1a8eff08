//! Tamper-evident audit logs for every fedcrm party (coordinator, nodes, brand CA).
//!
//! - [`record`]: the line format and the events recorded.
//! - [`log`]: the writer — append-only, hash-chained, fsync before the recorded
//!   action is acknowledged, batch-signed seals, rotation, retention.
//! - [`verify`]: the auditor's verifier — chains, signatures (keys certified by the
//!   brand CA), record times, retention periods, cross-party receipts (heads and
//!   times), round views; the first problem, precisely.
//! - [`report`]: the auditor's report (Markdown, HTML, JSON).

#![forbid(unsafe_code)]

pub mod log;
pub mod record;
pub mod report;
pub mod verify;

pub use record::{Event, FORMAT, GENESIS, Member, Record};

/// The party name (and `LogOpened` role) of the brand CA's own log, whose seals are
/// made with the CA key and checked against the CA certificate itself.
pub const CA_PARTY: &str = "brand-ca";

/// The bytes signed for a log head (in seals and cross-party receipts): format ‖
/// `"head"` ‖ party ‖ seq ‖ time ‖ head, each length-prefixed, where `time_ms` is the
/// time of record `seq` (ms since the Unix epoch, big-endian). The time is bound so a
/// receipt alone attests when its signer says it wrote that record, even after the
/// signer's record was deleted.
pub fn head_payload(party: &str, seq: u64, time_ms: u64, head: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(112);
    for part in [FORMAT.as_bytes(), b"head", party.as_bytes(), &seq.to_be_bytes(), &time_ms.to_be_bytes(), head] {
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// SHA-256 of a line's bytes (without its newline): the head after that record.
pub fn line_hash(line: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, line);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}
