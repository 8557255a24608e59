//! Times for people: RFC 3339 in UTC, both ways; the calendar is the `time`
//! crate's. Times past its last year (9999) are shown as its last
//! millisecond and refused when parsed.

use anyhow::bail;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime};

/// `2024-05-01T12:00:00.123Z` for ms since the Unix epoch.
pub fn format_ms(ms: u64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or_else(|_| PrimitiveDateTime::MAX.assume_utc());
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Parses epoch seconds (`1714564800`, `1714564800.5`) or RFC 3339 in UTC
/// (`2024-05-01T12:00:00Z`, fractional seconds allowed) into epoch seconds.
pub fn parse_time(s: &str) -> anyhow::Result<f64> {
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(secs);
        }
        bail!("time {s:?} is before 1970");
    }
    let bad =
        || anyhow::anyhow!("time {s:?}: expected epoch seconds or YYYY-MM-DDTHH:MM:SS[.fff]Z");
    let s2 = s.strip_suffix('Z').or_else(|| s.strip_suffix("+00:00")).ok_or_else(bad)?;
    let (date, time) = s2.split_once('T').ok_or_else(bad)?;
    let num = |t: &str| t.parse::<i64>().map_err(|_| bad());
    let d: Vec<&str> = date.split('-').collect();
    let t: Vec<&str> = time.split(':').collect();
    let ([y, mo, da], [h, mi, se]) = (d.as_slice(), t.as_slice()) else { return Err(bad()) };
    let (y, mo, da, h, mi) = (num(y)?, num(mo)?, num(da)?, num(h)?, num(mi)?);
    let sec: f64 = se.parse().map_err(|_| bad())?;
    if !(1..=12).contains(&mo)
        || !(1..=31).contains(&da)
        || h > 23
        || mi > 59
        || !(0.0..61.0).contains(&sec)
    {
        return Err(bad());
    }
    // Days past the month's length run on into the next month, as they
    // always have here (`2024-02-30` is March 1st).
    let month = u8::try_from(mo).ok().and_then(|m| Month::try_from(m).ok()).ok_or_else(bad)?;
    let year = i32::try_from(y).map_err(|_| bad())?;
    let first = Date::from_calendar_date(year, month, 1).map_err(|_| bad())?;
    let days = first.midnight().assume_utc().unix_timestamp() / 86_400 + (da - 1);
    Ok((days * 86_400 + h * 3600 + mi * 60) as f64 + sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_ms(1_714_564_800_123), "2024-05-01T12:00:00.123Z");
        assert_eq!(parse_time("2024-05-01T12:00:00Z").ok(), Some(1_714_564_800.0));
        assert_eq!(parse_time("2024-02-29T00:00:00.5Z").ok(), Some(1_709_164_800.5));
        assert_eq!(parse_time("1714564800").ok(), Some(1_714_564_800.0));
        assert!(parse_time("yesterday").is_err() && parse_time("2024-13-01T00:00:00Z").is_err());
    }

    #[test]
    fn days_past_a_months_end_run_into_the_next_month() {
        assert_eq!(
            parse_time("2024-02-30T00:00:00Z").ok(),
            parse_time("2024-03-01T00:00:00Z").ok()
        );
        assert_eq!(
            parse_time("2023-04-31T06:00:00Z").ok(),
            parse_time("2023-05-01T06:00:00Z").ok()
        );
    }
}
