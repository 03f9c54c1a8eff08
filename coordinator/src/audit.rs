//! The coordinator's audit log handle: every session, analysis request, round,
//! node exit, receipt and release is appended (and fsynced) here.

use fedcrm_audit::Event;
use fedcrm_audit::log::AuditError;

/// Shared by the services, the registry (for receipts) and the round runner.
pub use fedcrm_audit::log::{SharedLog, lock};

/// Append one record. A failure is logged loudly and returned.
pub fn record(log: &SharedLog, event: Event) -> Result<(), AuditError> {
    let kind = event.kind();
    lock(log).append(event).map(|_| ()).inspect_err(|e| tracing::error!(kind, error = %e, "audit log append failed"))
}

/// A Unix time in milliseconds as `2026-11-29T19:45:20Z` (UTC, whole seconds).
pub(crate) fn format_ms(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64).ok();
    t.map(|t| {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            t.year(),
            t.month() as u8,
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        )
    })
    .unwrap_or_else(|| format!("{ms} ms after the Unix epoch"))
}
