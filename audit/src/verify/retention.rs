//! Retention deletions found ahead of the main pass, so a log may start after record 0
//! only where a sealed deletion in the same log accounts for the missing start.

use super::*;

/// A retention-deleted record found ahead of the main pass.
#[derive(Clone)]
pub(super) struct Retention {
    pub(super) file: PathBuf,
    pub(super) line: u64,
    pub(super) seq: u64,
    pub(super) upto_seq: u64,
    pub(super) last_head: String,
    /// When the deletion was recorded, the retention period it claims, and the time
    /// of the newest record it deleted.
    pub(super) time_ms: u64,
    pub(super) retention_days: u32,
    pub(super) newest_deleted_ms: u64,
    /// A later seal covers the retention record itself.
    pub(super) sealed: bool,
}

/// Every retention-deleted record in the log's files (not yet verified: the main pass
/// checks them where they stand).
pub(super) fn find_retentions(files: &[PathBuf]) -> Vec<Retention> {
    // Cheap pre-filter: only lines naming the event are parsed.
    const NEEDLE: &[u8] = b"\"retention-deleted\"";
    let mut found = Vec::new();
    for file in files {
        let Ok(bytes) = fs::read(file) else { continue };
        for (n, (line, _)) in lines(&bytes).enumerate() {
            if !line.windows(NEEDLE.len()).any(|w| w == NEEDLE) {
                continue;
            }
            if let Ok(Record {
                seq,
                time_ms,
                event: Event::RetentionDeleted { upto_seq, last_head, retention_days, newest_deleted_ms, .. },
                ..
            }) = serde_json::from_slice(line)
            {
                found.push(Retention {
                    file: file.clone(),
                    line: n as u64 + 1,
                    seq,
                    upto_seq,
                    last_head,
                    time_ms,
                    retention_days,
                    newest_deleted_ms,
                    sealed: seal_covers(files, seq),
                });
            }
        }
    }
    found
}

/// Does a seal in these files sign a head at or after record `seq`?
pub(super) fn seal_covers(files: &[PathBuf], seq: u64) -> bool {
    const NEEDLE: &[u8] = b"\"seal\"";
    files.iter().any(|file| {
        let Ok(bytes) = fs::read(file) else { return false };
        lines(&bytes).any(|(line, _)| {
            line.windows(NEEDLE.len()).any(|w| w == NEEDLE)
                && matches!(serde_json::from_slice(line), Ok(Record { event: Event::Seal { upto_seq, .. }, .. }) if upto_seq >= seq)
        })
    })
}
