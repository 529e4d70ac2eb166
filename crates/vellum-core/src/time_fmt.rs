//! Timestamps: parsing what clients send (RFC 3339) and formatting what the server writes.
//!
//! The server always writes UTC with exactly six fractional digits and a `Z`
//! (`2026-11-23T09:01:02.123456Z`), so that stored server timestamps sort as text and every
//! implementation formats them the same way.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Parses an RFC 3339 timestamp, e.g. `2026-11-23T09:01:02Z` or `2026-11-23T10:01:02.5+01:00`.
pub fn parse_rfc3339(text: &str) -> Result<OffsetDateTime, time::error::Parse> {
    OffsetDateTime::parse(text, &Rfc3339)
}

/// Formats a server timestamp: UTC, microsecond precision, `Z` suffix.
pub fn format_server_time(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.microsecond()
    )
}

/// Microseconds since the Unix epoch, the unit the store indexes timestamps in.
pub fn unix_micros(at: OffsetDateTime) -> i64 {
    let nanos = at.unix_timestamp_nanos();
    i64::try_from(nanos / 1000).unwrap_or(if nanos < 0 { i64::MIN } else { i64::MAX })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_time_has_six_digits_and_z() {
        let at = parse_rfc3339("2026-11-23T10:01:02.5+01:00").expect("valid");
        assert_eq!(format_server_time(at), "2026-11-23T09:01:02.500000Z");
        assert_eq!(unix_micros(at), 1_795_424_462_500_000);
    }

    #[test]
    fn rejects_non_rfc3339() {
        assert!(parse_rfc3339("23/11/2026").is_err());
        assert!(parse_rfc3339("2026-11-23").is_err());
    }
}
