//! Text encodings of a franchisee's exports: UTF-8 (with or without a byte-order
//! mark), GB18030 (what Chinese POS systems and Excel on a Chinese Windows write; a
//! superset of GBK and GB2312) and, when a byte-order mark says so, UTF-16. Decoding
//! is the WHATWG Encoding Standard's, through `encoding_rs`. Pure: no I/O.
//!
//! Undecodable bytes are never dropped silently: each one becomes U+FFFD and its
//! line is recorded, so the loaders can refuse the file or skip exactly those rows,
//! naming the line.

use encoding_rs::{DecoderResult, Encoding};
use serde::{Deserialize, Serialize};

/// `data.encoding` in node.toml.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum TextEncoding {
    /// A byte-order mark decides; otherwise UTF-8 when the bytes are valid UTF-8
    /// (or when most lines with non-ASCII text are: a damaged row in a UTF-8 export),
    /// else GB18030.
    #[default]
    #[serde(rename = "auto")]
    Auto,
    #[serde(rename = "utf-8", alias = "utf8", alias = "UTF-8")]
    Utf8,
    /// GB18030 (also reads GBK and GB2312, its subsets).
    #[serde(rename = "gb18030", alias = "GB18030", alias = "gbk", alias = "GBK")]
    Gb18030,
}

/// The encoding a file was read in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Charset {
    #[serde(rename = "UTF-8")]
    Utf8,
    #[serde(rename = "GB18030")]
    Gb18030,
    #[serde(rename = "UTF-16LE")]
    Utf16Le,
    #[serde(rename = "UTF-16BE")]
    Utf16Be,
}

impl Charset {
    fn encoding(self) -> &'static Encoding {
        match self {
            Charset::Utf8 => encoding_rs::UTF_8,
            Charset::Gb18030 => encoding_rs::GB18030,
            Charset::Utf16Le => encoding_rs::UTF_16LE,
            Charset::Utf16Be => encoding_rs::UTF_16BE,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Charset::Utf8 => "UTF-8",
            Charset::Gb18030 => "GB18030",
            Charset::Utf16Le => "UTF-16LE",
            Charset::Utf16Be => "UTF-16BE",
        }
    }

    fn from_bom(bytes: &[u8]) -> Option<(Charset, usize)> {
        let (enc, len) = Encoding::for_bom(bytes)?;
        let c = if enc == encoding_rs::UTF_8 {
            Charset::Utf8
        } else if enc == encoding_rs::UTF_16LE {
            Charset::Utf16Le
        } else {
            Charset::Utf16Be
        };
        Some((c, len))
    }
}

impl std::fmt::Display for Charset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a file was read in the encoding it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "reason")]
pub enum Detection {
    /// `data.encoding` names it.
    Configured,
    /// The file starts with its byte-order mark (stripped before reading).
    ByteOrderMark,
    /// `auto`, no byte-order mark, and every byte is valid UTF-8.
    ValidUtf8,
    /// `auto`, no byte-order mark, and the bytes are not UTF-8 from this line on.
    NotUtf8 { first_line: u32 },
    /// `auto`, no byte-order mark, and more lines with non-ASCII text are valid UTF-8
    /// (`utf8_lines`) than not (`other_lines`, the first at `first_line`): a UTF-8
    /// file with damaged rows, which are marked undecodable rather than the whole file
    /// read as GB18030 (which would garble every Chinese name in it).
    MostlyUtf8 { utf8_lines: u32, other_lines: u32, first_line: u32 },
}

/// The encoding used for one file and why; `node check` and the start-up summary show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EncodingUsed {
    pub charset: Charset,
    #[serde(flatten)]
    pub detection: Detection,
}

impl std::fmt::Display for EncodingUsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.detection {
            Detection::Configured => write!(f, "{} (data.encoding)", self.charset),
            Detection::ByteOrderMark => write!(f, "{} (byte-order mark found and stripped)", self.charset),
            Detection::ValidUtf8 => write!(f, "{} (auto: every byte is valid UTF-8)", self.charset),
            Detection::NotUtf8 { first_line } => {
                write!(f, "{} (auto: not UTF-8 from line {first_line} on, so read as GB18030)", self.charset)
            }
            Detection::MostlyUtf8 { utf8_lines, other_lines, first_line } => write!(
                f,
                "{} (auto: {utf8_lines} lines with non-ASCII text are UTF-8; {other_lines}, the first on line {first_line}, are not)",
                self.charset
            ),
        }
    }
}

/// A file's text with every undecodable byte sequence replaced by U+FFFD.
#[derive(Debug)]
pub struct Decoded {
    pub text: String,
    pub used: EncodingUsed,
    /// 1-based lines holding undecodable bytes, ascending, each once.
    pub malformed_lines: Vec<u64>,
}

impl Decoded {
    /// Does any line in `first..=last` hold undecodable bytes?
    pub fn malformed_within(&self, first: u64, last: u64) -> bool {
        let i = self.malformed_lines.partition_point(|&l| l < first);
        self.malformed_lines.get(i).is_some_and(|&l| l <= last)
    }
}

/// Why bytes could not be read as text at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error(
        "starts with a {bom} byte-order mark, but data.encoding = {configured:?}; set data.encoding = \"auto\" in node.toml"
    )]
    ConflictingBom { bom: Charset, configured: &'static str },
}

/// Decode `bytes` as `setting` says. Never fails on undecodable bytes (see
/// [`Decoded::malformed_lines`]); fails only when a byte-order mark contradicts an
/// explicitly configured encoding.
pub fn decode(bytes: &[u8], setting: TextEncoding) -> Result<Decoded, DecodeError> {
    let bom = Charset::from_bom(bytes);
    let (charset, detection, body) = match (setting, bom) {
        (TextEncoding::Auto, Some((c, len))) => (c, Detection::ByteOrderMark, &bytes[len..]),
        (TextEncoding::Utf8, Some((Charset::Utf8, len))) => (Charset::Utf8, Detection::ByteOrderMark, &bytes[len..]),
        (TextEncoding::Utf8 | TextEncoding::Gb18030, Some((c, _))) => {
            let configured = if setting == TextEncoding::Utf8 { "utf-8" } else { "gb18030" };
            return Err(DecodeError::ConflictingBom { bom: c, configured });
        }
        (TextEncoding::Utf8, None) => (Charset::Utf8, Detection::Configured, bytes),
        (TextEncoding::Gb18030, None) => (Charset::Gb18030, Detection::Configured, bytes),
        (TextEncoding::Auto, None) => match std::str::from_utf8(bytes) {
            Ok(_) => (Charset::Utf8, Detection::ValidUtf8, bytes),
            Err(e) => {
                let first_line = saturate(1 + bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count());
                let (utf8_lines, other_lines) = utf8_lines(bytes);
                if utf8_lines > other_lines {
                    (Charset::Utf8, Detection::MostlyUtf8 { utf8_lines, other_lines, first_line }, bytes)
                } else {
                    (Charset::Gb18030, Detection::NotUtf8 { first_line }, bytes)
                }
            }
        },
    };
    let used = EncodingUsed { charset, detection };
    if charset == Charset::Utf8
        && let Ok(text) = std::str::from_utf8(body)
    {
        return Ok(Decoded { text: text.to_owned(), used, malformed_lines: Vec::new() });
    }
    let (text, malformed_lines) = decode_marking(charset.encoding(), body);
    Ok(Decoded { text, used, malformed_lines })
}

/// Lines holding non-ASCII bytes: (valid UTF-8, not valid UTF-8). GB18030 text with
/// Chinese characters is almost never valid UTF-8 (its trail bytes rarely follow
/// UTF-8's lead-byte rules), so a majority of valid lines means a UTF-8 file.
fn utf8_lines(bytes: &[u8]) -> (u32, u32) {
    let (mut valid, mut invalid) = (0usize, 0usize);
    for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_ascii()) {
        if std::str::from_utf8(line).is_ok() {
            valid += 1;
        } else {
            invalid += 1;
        }
    }
    (saturate(valid), saturate(invalid))
}

/// Line counts in a [`Detection`] are `u32` (kept small: it travels in every error);
/// a file of more than 4 billion lines shows `u32::MAX`.
fn saturate(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Decode without BOM handling, replacing each malformed sequence by U+FFFD and
/// recording its line (counted in the decoded text, so right for UTF-16 too).
fn decode_marking(encoding: &'static Encoding, input: &[u8]) -> (String, Vec<u64>) {
    let mut decoder = encoding.new_decoder_without_bom_handling();
    let mut out = String::with_capacity(input.len() + input.len() / 2 + 16);
    let mut malformed = Vec::new();
    let (mut pos, mut line, mut counted) = (0usize, 1u64, 0usize);
    loop {
        let (result, read) = decoder.decode_to_string_without_replacement(&input[pos..], &mut out, true);
        pos += read;
        match result {
            DecoderResult::InputEmpty => break,
            DecoderResult::OutputFull => {
                out.reserve(decoder.max_utf8_buffer_length_without_replacement(input.len() - pos).unwrap_or(4096));
            }
            DecoderResult::Malformed(..) => {
                // The malformed bytes were not written: `out` ends where they began.
                line += out.as_bytes()[counted..].iter().filter(|&&b| b == b'\n').count() as u64;
                counted = out.len();
                if malformed.last() != Some(&line) {
                    malformed.push(line);
                }
                out.push(char::REPLACEMENT_CHARACTER);
            }
        }
    }
    (out, malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_detects_bom_utf8_and_gb18030() {
        let text = "会员编号,渠道\nc1,门店\n";
        let d = decode(text.as_bytes(), TextEncoding::Auto).unwrap();
        assert_eq!((d.text.as_str(), d.used.detection), (text, Detection::ValidUtf8));

        let bom = [b"\xEF\xBB\xBF".as_slice(), text.as_bytes()].concat();
        let d = decode(&bom, TextEncoding::Auto).unwrap();
        assert_eq!(
            (d.text.as_str(), d.used.charset, d.used.detection),
            (text, Charset::Utf8, Detection::ByteOrderMark)
        );
        let d = decode(&bom, TextEncoding::Utf8).unwrap();
        assert_eq!(d.text, text, "an explicit utf-8 strips its BOM too");

        let (gb, _, _) = encoding_rs::GB18030.encode(text);
        let d = decode(&gb, TextEncoding::Auto).unwrap();
        assert_eq!(d.text, text);
        assert_eq!(d.used.charset, Charset::Gb18030);
        assert_eq!(d.used.detection, Detection::NotUtf8 { first_line: 1 });
        assert!(d.malformed_lines.is_empty());
        assert_eq!(decode(&gb, TextEncoding::Gb18030).unwrap().text, text);
    }

    #[test]
    fn a_utf8_file_with_a_damaged_row_stays_utf8() {
        let mut bytes = "h\n门店\n天猫\n黄金\n".as_bytes().to_vec();
        bytes[9] = 0xFF; // inside 天猫, line 3
        let d = decode(&bytes, TextEncoding::Auto).unwrap();
        assert_eq!(d.used.charset, Charset::Utf8);
        assert_eq!(d.used.detection, Detection::MostlyUtf8 { utf8_lines: 2, other_lines: 1, first_line: 3 });
        assert_eq!(d.malformed_lines, vec![3]);
        assert!(d.text.starts_with("h\n门店\n") && d.text.ends_with("\n黄金\n"), "the other rows read right");
    }

    #[test]
    fn utf16_with_bom_is_read() {
        let text = "customer_key\nc1\n";
        let mut le = vec![0xFF, 0xFE];
        le.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
        let d = decode(&le, TextEncoding::Auto).unwrap();
        assert_eq!((d.text.as_str(), d.used.charset), (text, Charset::Utf16Le));
        let mut be = vec![0xFE, 0xFF];
        be.extend(text.encode_utf16().flat_map(u16::to_be_bytes));
        assert_eq!(decode(&be, TextEncoding::Auto).unwrap().text, text);
        let err = decode(&le, TextEncoding::Utf8).unwrap_err().to_string();
        assert!(err.contains("UTF-16LE byte-order mark") && err.contains("data.encoding = \"auto\""), "{err}");
    }

    #[test]
    fn malformed_bytes_are_marked_on_their_line() {
        let (gb, _, _) = encoding_rs::GB18030.encode("a\nb\n门店\nc\n黄金\n");
        let d = decode(&gb, TextEncoding::Utf8).unwrap();
        assert_eq!(d.malformed_lines, vec![3, 5]);
        assert!(d.text.starts_with("a\nb\n\u{FFFD}"));
        assert!(d.malformed_within(2, 3) && d.malformed_within(5, 9) && !d.malformed_within(4, 4));
        // 0xFF is not GB18030 either (0x80 is: the euro sign, in WHATWG's GB18030).
        let d = decode(b"x\n\xFF\n\n\xFFy\n", TextEncoding::Gb18030).unwrap();
        assert_eq!(d.malformed_lines, vec![2, 4]);
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes: Vec<u8>) {
            for setting in [TextEncoding::Auto, TextEncoding::Utf8, TextEncoding::Gb18030] {
                if let Ok(d) = decode(&bytes, setting) {
                    let lines = d.text.split('\n').count() as u64;
                    proptest::prop_assert!(d.malformed_lines.iter().all(|&l| l >= 1 && l <= lines));
                    proptest::prop_assert!(d.malformed_lines.windows(2).all(|w| w[0] < w[1]));
                }
            }
        }
    }
}
