//! The files of a log directory: its lock, file names and numbering, reading lines and
//! a crash-torn tail, and durable creation (file and directory `fsync`). No record
//! format here (that is [`crate::record`]) and no chain or signature (that is
//! [`super::writer`]).

use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};

use super::{AuditError, io_error};
use crate::line_hash;
use crate::record::Record;

/// The lock file that makes a log directory one process's: an exclusive OS lock
/// (released by the OS when the process ends, however it ends), and the holder's pid
/// written inside for the error another process reports.
pub(crate) const LOCK_FILE: &str = ".lock";

pub(super) fn lock_dir(dir: &Path) -> Result<File, AuditError> {
    use std::io::{Read, Seek, Write};
    let path = dir.join(LOCK_FILE);
    let mut file =
        OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io_error(&path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let holder = text.lines().next().map(str::trim).filter(|t| !t.is_empty()).map(str::to_string);
            return Err(AuditError::InUse { dir: dir.to_path_buf(), holder });
        }
        Err(fs::TryLockError::Error(e)) => return Err(io_error(&path)(e)),
    }
    file.set_len(0).map_err(io_error(&path))?;
    file.rewind().map_err(io_error(&path))?;
    writeln!(file, "pid {}", std::process::id()).map_err(io_error(&path))?;
    Ok(file)
}

/// The name of log file number `n`.
pub(crate) fn file_name(n: u64) -> String {
    format!("audit-{n:06}.log")
}

/// The number in a log file name, if it is one.
pub(crate) fn file_number(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("audit-")?.strip_suffix(".log")?;
    if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The log files in `dir`, ordered by number.
pub(crate) fn list_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, AuditError> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        if let Some(n) = entry.file_name().to_str().and_then(file_number) {
            files.push((n, entry.path()));
        }
    }
    files.sort();
    Ok(files)
}

/// The log files named by `path`: a directory's `audit-*.log` files in order, or the
/// single file given.
pub(crate) fn files_of(path: &Path) -> Result<Vec<PathBuf>, AuditError> {
    let meta = fs::metadata(path).map_err(io_error(path))?;
    if meta.is_dir() {
        Ok(list_files(path)?.into_iter().map(|(_, p)| p).collect())
    } else {
        Ok(vec![path.to_path_buf()])
    }
}

/// Splits a file's bytes into lines: `(line without '\n', ends with '\n')`. The only
/// line that can lack its newline is the last one.
pub(crate) fn lines(bytes: &[u8]) -> impl Iterator<Item = (&[u8], bool)> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                let line = &rest[..i];
                rest = &rest[i + 1..];
                Some((line, true))
            }
            None => {
                let line = rest;
                rest = &[];
                Some((line, false))
            }
        }
    })
}

/// Whether the bytes after a file's last newline look like what a crash leaves: a
/// prefix of a record line (possibly all of it but the newline), maybe followed by
/// zero bytes a power loss can leave in a file's last block. Anything else (a
/// complete record followed by stray bytes, a syntax error before the end) was not
/// written by an interrupted writer.
pub(crate) fn is_crash_tail(torn: &[u8]) -> bool {
    let end = torn.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let torn = &torn[..end];
    if torn.is_empty() {
        return true;
    }
    match serde_json::from_slice::<Record>(torn) {
        Ok(_) => true,
        Err(e) => e.is_eof(),
    }
}

/// Reads the end of a file: from `offset` to the end, holding at least the last three
/// newlines (or starting at the beginning of the file).
pub(super) fn read_tail(file: &mut File, path: &Path) -> Result<(u64, Vec<u8>), AuditError> {
    let len = file.metadata().map_err(io_error(path))?.len();
    let mut want = 64 * 1024u64;
    loop {
        let start = len.saturating_sub(want);
        file.seek(SeekFrom::Start(start)).map_err(io_error(path))?;
        let mut buf = Vec::new();
        std::io::Read::by_ref(file).take(len - start).read_to_end(&mut buf).map_err(io_error(path))?;
        if start == 0 || buf.iter().filter(|&&b| b == b'\n').count() >= 3 {
            return Ok((start, buf));
        }
        want = want.saturating_mul(4);
    }
}

/// The end of one log file, as found when opening or applying retention.
pub(super) struct Tail {
    /// Length of the file up to and including its last good line's newline.
    pub(super) keep: u64,
    /// The bytes after `keep` to set aside (a torn or unparseable last line).
    pub(super) torn: Vec<u8>,
    /// The last complete record and the hash of its line.
    pub(super) last: Option<(Record, [u8; 32])>,
}

/// Reads a file's last record. With `recover`, a last line without its newline, or a
/// complete last line that does not parse, is reported in `torn` instead of failing.
pub(super) fn scan_tail(path: &Path, recover: bool) -> Result<Tail, AuditError> {
    let mut file = File::open(path).map_err(io_error(path))?;
    let (start, buf) = read_tail(&mut file, path)?;
    let corrupt = |reason: String| AuditError::Corrupt { file: path.to_path_buf(), line: None, reason };
    // Ends of the lines in `buf` (index just past each '\n').
    let ends: Vec<usize> = buf.iter().enumerate().filter(|(_, b)| **b == b'\n').map(|(i, _)| i + 1).collect();
    let keep = ends.last().copied().unwrap_or(0);
    if keep < buf.len() && !recover {
        return Err(corrupt("the last line is incomplete, but this is not the newest log file".into()));
    }
    // Line i spans ends[i-1]..ends[i] (ends[-1] = 0, which is the file start or a cut).
    let line_at = |k: usize| -> &[u8] {
        let begin = if k == 0 { 0 } else { ends[k - 1] };
        &buf[begin..ends[k] - 1]
    };
    let complete = ends.len();
    if complete > 0 && (start == 0 || complete >= 2) {
        // A complete (newline-terminated) last line that does not parse is not a crash
        // (the writer never leaves one): it is not set aside, and opening fails below,
        // so the evidence stays for `fedcrm audit verify` to report.
    }
    let torn = buf[keep..].to_vec();
    let last = if complete > 0 && (start == 0 || complete >= 2) {
        let line = line_at(complete - 1);
        let record = serde_json::from_slice::<Record>(line)
            .map_err(|e| corrupt(format!("the last complete record does not parse ({e})")))?;
        Some((record, line_hash(line)))
    } else {
        None
    };
    Ok(Tail { keep: start + keep as u64, torn, last })
}

pub(super) fn open_append(path: &Path, create_new: bool) -> Result<File, AuditError> {
    let mut options = OpenOptions::new();
    options.append(true);
    if create_new {
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path).map_err(io_error(path))
}

/// Makes a file creation or deletion in `dir` durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    #[cfg(unix)]
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}
