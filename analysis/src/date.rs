//! Dates as fedcrm writes them (`YYYY-MM-DD`, UTC), on the wire, in audit records and
//! in messages to people.

const DATE_FMT: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]");

/// A text that is not a `YYYY-MM-DD` date.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{text:?} is not YYYY-MM-DD: {why}")]
pub struct DateError {
    text: String,
    why: String,
}

/// Parse YYYY-MM-DD.
pub fn parse_date(s: &str) -> Result<time::Date, DateError> {
    time::Date::parse(s, DATE_FMT).map_err(|e| DateError { text: s.to_string(), why: e.to_string() })
}

/// Format as YYYY-MM-DD.
pub fn format_date(d: time::Date) -> String {
    // Unwrap safety: formatting a valid Date with a static description cannot fail.
    d.format(DATE_FMT).unwrap()
}

/// A unix-millisecond instant as `YYYY-MM-DD HH:MM UTC`, for messages to people.
pub fn format_time_ms(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64)
        .map(|t| format!("{} {:02}:{:02} UTC", format_date(t.date()), t.hour(), t.minute()))
        .unwrap_or_else(|_| format!("{ms} ms"))
}
