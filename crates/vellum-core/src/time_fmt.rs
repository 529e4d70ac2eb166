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
///
/// Runs for every event without a client timestamp, so the usual years (0–9999) are written
/// digit by digit into a fixed buffer instead of through `format!`; other years take the
/// `format!` path, which defines the output.
pub fn format_server_time(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    let Ok(year) = u32::try_from(at.year()) else {
        return format_server_time_slow(at);
    };
    if year > 9999 {
        return format_server_time_slow(at);
    }
    let mut buf = *b"0000-00-00T00:00:00.000000Z";
    let mut put = |end: usize, width: usize, mut value: u32| {
        for slot in buf[end - width..end].iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(4, 4, year);
    put(7, 2, u32::from(u8::from(at.month())));
    put(10, 2, u32::from(at.day()));
    put(13, 2, u32::from(at.hour()));
    put(16, 2, u32::from(at.minute()));
    put(19, 2, u32::from(at.second()));
    put(26, 6, at.microsecond());
    buf.iter().map(|&b| char::from(b)).collect()
}

fn format_server_time_slow(at: OffsetDateTime) -> String {
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

    /// The digit-by-digit formatter writes what `format!` writes, across the year range,
    /// offsets and sub-second values.
    #[test]
    fn fast_format_matches_format_macro() {
        let mut checked = 0;
        for year in [0, 1, 9, 99, 999, 1970, 2026, 9999] {
            for (month, day) in [(1, 1), (2, 28), (12, 31)] {
                for micros in [0, 1, 999_999, 123_456] {
                    let Ok(date) = time::Date::from_calendar_date(
                        year,
                        time::Month::try_from(month).expect("month"),
                        day,
                    ) else {
                        continue;
                    };
                    let Ok(clock) = time::Time::from_hms_micro(23, 59, 58, micros) else {
                        continue;
                    };
                    let at = date.with_time(clock).assume_utc();
                    assert_eq!(format_server_time(at), format_server_time_slow(at));
                    if let Some(shifted) = at.checked_to_offset(time::macros::offset!(+05:30)) {
                        assert_eq!(format_server_time(shifted), format_server_time_slow(at));
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked > 50);
        let early = time::macros::datetime!(-0001-06-01 00:00 UTC);
        assert_eq!(format_server_time(early), "-001-06-01T00:00:00.000000Z");
    }

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
