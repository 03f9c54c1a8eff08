//! Formatting helpers shared by the document sections: dates, times, counts, bytes.

use super::*;

pub(super) fn fmt_date(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// Unix milliseconds as UTC `YYYY-MM-DD HH:MM:SS`.
pub(super) fn fmt_time(ms: u64) -> String {
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
pub(super) fn thousands(n: u64) -> String {
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
pub(super) fn human_bytes(n: u64) -> String {
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

pub(super) fn percent(part: u64, whole: u64) -> String {
    if whole == 0 { "–".to_string() } else { format!("{:.1}%", part as f64 * 100.0 / whole as f64) }
}

/// A plain-language name for a certificate role string.
pub(super) fn role_label(role: &str) -> String {
    let label = match role {
        "fedcrm-coordinator" => "coordinator",
        "fedcrm-analyst" => "analyst",
        "fedcrm-node-hq" => "HQ data node",
        "fedcrm-node-franchisee" => "franchisee data node",
        "fedcrm-model-publisher" => "model publisher",
        "" => return "unknown".to_string(),
        r if is_ca_role(r) => "brand certificate authority",
        r => return r.to_string(),
    };
    format!("{label} ({role})")
}

/// `1 analysis`, `2 analyses`, `1,000 messages`.
pub(super) fn count(n: u64, one: &str, many: &str) -> String {
    format!("{} {}", thousands(n), if n == 1 { one } else { many })
}

pub(super) fn or_unknown(s: &str) -> String {
    if s.is_empty() { "unknown".to_string() } else { s.to_string() }
}

/// `name (organisation)`.
pub(super) fn who(name: &str, organisation: &str) -> String {
    if organisation.is_empty() { or_unknown(name) } else { format!("{} ({organisation})", or_unknown(name)) }
}

pub(super) fn list_or(items: &[String], empty: &str) -> String {
    if items.is_empty() { empty.to_string() } else { items.join(", ") }
}

/// A real number to six significant digits, without trailing zeros: `0.03125`,
/// `1.34541`, `4`, `1e-7`.
pub(super) fn real(x: f64) -> String {
    if x == 0.0 {
        return "0".to_string();
    }
    if !x.is_finite() {
        return x.to_string();
    }
    let trim = |s: String| -> String {
        if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
    };
    let magnitude = x.abs().log10().floor();
    if (-4.0..6.0).contains(&magnitude) {
        let decimals = (5.0 - magnitude).max(0.0) as usize;
        trim(format!("{x:.decimals$}"))
    } else {
        let s = format!("{x:.5e}");
        match s.split_once('e') {
            Some((mantissa, exponent)) => format!("{}e{exponent}", trim(mantissa.to_string())),
            None => s,
        }
    }
}
