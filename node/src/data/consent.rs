//! Consent-withdrawal lists (PIPL Art. 15): one customer key per line, as a
//! franchisee's staff write them — in Notepad or Excel, so possibly with a byte-order
//! mark, in GB18030, with `#` comments, blank lines and stray spaces.
//!
//! Never lenient about bytes: a withdrawal that cannot be read is an error naming its
//! line, never a key silently lost. Never prints a key: reports count entries and
//! name line numbers only.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::decode::{Decoded, EncodingUsed, TextEncoding, decode};

/// At most this many line numbers are kept per kind of problem, for `node check`.
const EXAMPLES: usize = 5;

/// A consent-withdrawal file that cannot be used. The node does not start: ignoring
/// a withdrawal would process a customer's data without consent.
#[derive(Debug, thiserror::Error)]
pub enum ConsentError {
    #[error(
        "the consent-withdrawal file {path} (data.consent_withdrawals in node.toml) does not exist; create it (one customer key per line; an empty file means nobody withdrew) or remove the setting"
    )]
    Missing { path: PathBuf },
    #[error("cannot read the consent-withdrawal file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("consent-withdrawal file {path}: {source}")]
    Decode { path: PathBuf, source: super::decode::DecodeError },
    #[error(
        "{path}:{line}: bytes that are not valid {charset}, so this withdrawal cannot be read; save the file as UTF-8, or set data.encoding in node.toml to the file's encoding (\"gb18030\" for GBK/GB2312/GB18030, or \"auto\")"
    )]
    Undecodable { path: PathBuf, line: u64, charset: &'static str },
}

/// A parsed consent-withdrawal list.
#[derive(Debug)]
pub struct Withdrawals {
    keys: HashSet<String>,
    /// For each distinct key, the line it first appears on.
    first_line: Vec<(u64, String)>,
    /// Lines that are not one key: the whole line and its fields.
    junk: Vec<String>,
    pub report: ConsentReport,
}

/// What a consent file held; shown by `node check` and the start-up summary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ConsentReport {
    pub path: String,
    pub encoding: Option<EncodingUsed>,
    /// Lines holding a key (duplicates included).
    pub entries: u64,
    /// Distinct keys.
    pub distinct: u64,
    /// Distinct keys that match a customer in the data (filled by [`Withdrawals::matched_against`]).
    pub matched: u64,
    /// Distinct keys that match no customer in the data: a typo, or a customer of another store.
    pub unmatched: u64,
    /// Line numbers of the first few unmatched keys (never the keys).
    pub unmatched_lines: Vec<u64>,
    /// Lines that are neither blank, a comment, nor one key: e.g. two fields
    /// (`c1,2024-01-01`) or several keys on one line.
    pub junk_lines: u64,
    pub junk_examples: Vec<u64>,
    /// Customers excluded as a precaution because such a line, or one of its fields
    /// (split at spaces, commas, semicolons), is their key: a withdrawal written
    /// badly is still a withdrawal.
    pub junk_matched: u64,
    /// Blank and comment-only lines.
    pub comment_or_blank_lines: u64,
}

impl Withdrawals {
    /// Nobody withdrew (no file configured).
    pub fn none() -> Self {
        Withdrawals { keys: HashSet::new(), first_line: Vec::new(), junk: Vec::new(), report: ConsentReport::default() }
    }

    /// Read a consent file in the configured encoding (`auto`: per this file's bytes).
    pub fn read(path: &Path, encoding: TextEncoding) -> Result<Self, ConsentError> {
        let bytes = std::fs::read(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => ConsentError::Missing { path: path.into() },
            _ => ConsentError::Io { path: path.into(), source },
        })?;
        let decoded = decode(&bytes, encoding).map_err(|source| ConsentError::Decode { path: path.into(), source })?;
        Self::parse(path, &decoded)
    }

    /// Parse decoded text: `#` starts a comment, whitespace around a key is trimmed.
    pub fn parse(path: &Path, decoded: &Decoded) -> Result<Self, ConsentError> {
        if let Some(&line) = decoded.malformed_lines.first() {
            return Err(ConsentError::Undecodable { path: path.into(), line, charset: decoded.used.charset.name() });
        }
        let mut w = Withdrawals::none();
        w.report.path = path.display().to_string();
        w.report.encoding = Some(decoded.used);
        for (i, raw) in decoded.text.lines().enumerate() {
            let line = i as u64 + 1;
            let key = raw.split('#').next().unwrap_or("").trim();
            if key.is_empty() {
                w.report.comment_or_blank_lines += 1;
            } else if key.contains(|c: char| c.is_whitespace() || c.is_control() || matches!(c, ',' | ';')) {
                w.report.junk_lines += 1;
                if w.report.junk_examples.len() < EXAMPLES {
                    w.report.junk_examples.push(line);
                }
                w.junk.push(key.to_owned());
            } else {
                w.report.entries += 1;
                if w.keys.insert(key.to_owned()) {
                    w.first_line.push((line, key.to_owned()));
                }
            }
        }
        w.report.distinct = w.keys.len() as u64;
        Ok(w)
    }

    pub fn contains(&self, customer: &str) -> bool {
        self.keys.contains(customer)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Issue 14: keys listed by a database (a consent table or query), counted as
    /// entries of the list.
    pub fn add_keys(&mut self, keys: impl IntoIterator<Item = String>) {
        for k in keys {
            let k = k.trim().to_owned();
            if k.is_empty() {
                continue;
            }
            self.report.entries += 1;
            if self.keys.insert(k.clone()) {
                self.first_line.push((0, k));
            }
        }
        self.report.distinct = self.keys.len() as u64;
    }

    /// Every key [`matched_against`](Self::matched_against) may ask about: the keys and
    /// the fields of lines that are not one key.
    pub fn candidates(&self) -> Vec<String> {
        let mut out: Vec<String> = self.keys.iter().cloned().collect();
        for line in &self.junk {
            out.push(line.clone());
            out.extend(
                line.split(|c: char| c.is_whitespace() || matches!(c, ',' | ';'))
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(str::to_owned),
            );
        }
        out.sort();
        out.dedup();
        out
    }

    /// The withdrawn keys (after [`matched_against`](Self::matched_against)).
    pub fn keys(&self) -> Vec<String> {
        let mut out: Vec<String> = self.keys.iter().cloned().collect();
        out.sort();
        out
    }

    /// Count which keys match a customer of the data (`is_customer`), and withdraw
    /// the customers that lines which are not one key name (see
    /// [`ConsentReport::junk_matched`]).
    pub fn matched_against(&mut self, is_customer: impl Fn(&str) -> bool) {
        let mut extra = HashSet::new();
        for line in &self.junk {
            let fields = line.split(|c: char| c.is_whitespace() || matches!(c, ',' | ';')).map(str::trim);
            for k in std::iter::once(line.as_str()).chain(fields) {
                if !k.is_empty() && !self.keys.contains(k) && is_customer(k) {
                    extra.insert(k.to_owned());
                }
            }
        }
        self.report.junk_matched = extra.len() as u64;
        self.keys.extend(extra);
        let (mut matched, mut unmatched, mut lines) = (0, 0, Vec::new());
        for (line, key) in &self.first_line {
            if is_customer(key) {
                matched += 1;
            } else {
                unmatched += 1;
                if lines.len() < EXAMPLES {
                    lines.push(*line);
                }
            }
        }
        self.report.matched = matched;
        self.report.unmatched = unmatched;
        self.report.unmatched_lines = lines;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8], enc: TextEncoding) -> Result<Withdrawals, ConsentError> {
        Withdrawals::parse(Path::new("w.txt"), &decode(bytes, enc).unwrap())
    }

    #[test]
    fn bom_comments_blanks_and_junk() {
        let text = "\u{FEFF}c1\r\n# withdrawn at the counter\n\n  c2  # by phone\nc3,2024-01-02\nc4 c5\nc1\n会员7\n";
        let w = parse(text.as_bytes(), TextEncoding::Auto).unwrap();
        assert!(w.contains("c1"), "the first key survives the byte-order mark");
        assert!(w.contains("c2") && w.contains("会员7"));
        assert!(!w.contains("c3") && !w.contains("c4"), "not keys until matched against the data");
        let r = &w.report;
        assert_eq!((r.entries, r.distinct, r.junk_lines, r.comment_or_blank_lines), (4, 3, 2, 2));
        assert_eq!(r.junk_examples, vec![5, 6]);
    }

    #[test]
    fn customers_named_on_a_badly_written_line_are_withdrawn_too() {
        let mut w = parse(b"c1\nc3,2024-01-02\nc4 c5\nVIP 7\nzz;yy\n", TextEncoding::Utf8).unwrap();
        w.matched_against(|k| ["c1", "c3", "c4", "c5", "VIP 7"].contains(&k));
        for k in ["c1", "c3", "c4", "c5", "VIP 7"] {
            assert!(w.contains(k), "{k}");
        }
        assert!(!w.contains("zz") && !w.contains("2024-01-02"));
        assert_eq!((w.report.matched, w.report.junk_lines, w.report.junk_matched), (1, 4, 4));
    }

    #[test]
    fn matched_and_unmatched_are_counted_by_line() {
        let mut w = parse(b"c1\nzz\nc2\nc1\nyy\n", TextEncoding::Utf8).unwrap();
        w.matched_against(|k| k.starts_with('c'));
        assert_eq!((w.report.matched, w.report.unmatched, w.report.unmatched_lines.clone()), (2, 2, vec![2, 5]));
    }

    #[test]
    fn a_non_utf8_byte_names_its_line() {
        let (gb, _, _) = encoding_rs::GB18030.encode("c1\nc2\n会员7\n");
        let err = parse(&gb, TextEncoding::Utf8).unwrap_err().to_string();
        assert!(err.starts_with("w.txt:3: bytes that are not valid UTF-8"), "{err}");
        assert!(err.contains("\"gb18030\"") && err.contains("save the file as UTF-8"), "{err}");
        // Under auto (or gb18030) the same bytes are read.
        assert!(parse(&gb, TextEncoding::Auto).unwrap().contains("会员7"));
        assert!(parse(&gb, TextEncoding::Gb18030).unwrap().contains("会员7"));
    }

    #[test]
    fn a_missing_file_is_an_error_that_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let err = Withdrawals::read(&dir.path().join("withdrawn.txt"), TextEncoding::Auto).unwrap_err().to_string();
        assert!(err.contains("withdrawn.txt") && err.contains("does not exist") && err.contains("create it"), "{err}");
    }
}
