//! Times for people: RFC 3339 in UTC, both ways, without a date library.

use anyhow::bail;

/// `2024-05-01T12:00:00.123Z` for ms since the Unix epoch.
pub fn format_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
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
    let days = days_from_civil(y, mo, da);
    Ok((days * 86_400 + h * 3600 + mi * 60) as f64 + sec)
}

// Howard Hinnant's civil calendar algorithms.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
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
}
