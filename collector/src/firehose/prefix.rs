//! Prefix templates: `!{timestamp:<pattern>}` expressions rendered with the
//! arrival time (UTC) of the oldest record of a batch; everything else is
//! literal.
//!
//! Pattern letters follow Java's `DateTimeFormatter`, as Firehose does:
//! `yyyy` year, `MM` month, `dd` day, `HH` hour, `mm` minute, `ss` second, all
//! zero-padded. Other characters of a pattern are copied, except letters,
//! which are refused.
//!
//! `!{partitionKeyFromQuery:<name>}` is the value of a dynamic partitioning
//! key (see [`partition`](super::partition)) of the records of the object;
//! `!{firehose:error-output-type}` is, in the error output prefix only, why
//! the records are there (`partitioning-failed`, `delivery-failed`,
//! `s3-failed`, `http-endpoint-failed`).

use std::collections::BTreeMap;

use time::{OffsetDateTime, PrimitiveDateTime};

use super::error::FirehoseError;

/// Most characters of a template.
pub const MAX_TEMPLATE_CHARS: usize = 1_024;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    PartitionKey(String),
    ErrorOutputType,
}

/// A parsed prefix template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixTemplate {
    parts: Vec<Part>,
}

impl PrefixTemplate {
    /// Parses a template.
    ///
    /// # Errors
    /// [`FirehoseError::InvalidPrefix`] naming what is wrong.
    pub fn parse(template: &str) -> Result<Self, FirehoseError> {
        let bad = |reason: &str| FirehoseError::InvalidPrefix {
            template: template.chars().take(80).collect(),
            reason: reason.to_owned(),
        };
        if template.chars().count() > MAX_TEMPLATE_CHARS {
            return Err(bad("longer than 1024 characters"));
        }
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(start) = rest.find("!{") {
            push_literal(&mut parts, &rest[..start]);
            let after = &rest[start + 2..];
            let end = after.find('}').ok_or_else(|| bad("unclosed `!{`"))?;
            let expr = &after[..end];
            let (kind, arg) =
                expr.split_once(':').ok_or_else(|| bad("expected `!{kind:argument}`"))?;
            match kind {
                "timestamp" => parse_pattern(arg, &mut parts).map_err(|r| bad(&r))?,
                "partitionKeyFromQuery" => {
                    if arg.is_empty() {
                        return Err(bad("`!{partitionKeyFromQuery:}` needs a key name"));
                    }
                    parts.push(Part::PartitionKey(arg.to_owned()));
                }
                "partitionKeyFromLambda" => {
                    return Err(bad(
                        "Lambda partitioning is not available; use partitionKeyFromQuery",
                    ));
                }
                "firehose" if arg == "error-output-type" => parts.push(Part::ErrorOutputType),
                _ => {
                    return Err(bad(
                        "unknown expression; expected `timestamp`, `partitionKeyFromQuery` or \
                         `firehose:error-output-type`",
                    ));
                }
            }
            rest = &after[end + 1..];
        }
        push_literal(&mut parts, rest);
        Ok(Self { parts })
    }

    /// Names of the `!{partitionKeyFromQuery:<name>}` it uses, in order.
    pub fn partition_keys(&self) -> Vec<&str> {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::PartitionKey(k) => Some(k.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Whether it uses `!{firehose:error-output-type}`.
    pub fn uses_error_output_type(&self) -> bool {
        self.parts.contains(&Part::ErrorOutputType)
    }

    /// Renders the template for a batch whose oldest record arrived at
    /// `timestamp_ms` (ms since the Unix epoch), without partition keys or
    /// error output type.
    pub fn render(&self, timestamp_ms: u64) -> String {
        self.render_with(timestamp_ms, &BTreeMap::new(), "")
    }

    /// Renders the template with the partition key values of the object's
    /// records (a missing one renders empty) and an error output type.
    pub fn render_with(
        &self,
        timestamp_ms: u64,
        partition: &BTreeMap<String, String>,
        error_output_type: &str,
    ) -> String {
        let t = Utc::from_ms(timestamp_ms);
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Literal(s) => out.push_str(s),
                Part::Year => out.push_str(&format!("{:04}", t.year)),
                Part::Month => out.push_str(&format!("{:02}", t.month)),
                Part::Day => out.push_str(&format!("{:02}", t.day)),
                Part::Hour => out.push_str(&format!("{:02}", t.hour)),
                Part::Minute => out.push_str(&format!("{:02}", t.minute)),
                Part::Second => out.push_str(&format!("{:02}", t.second)),
                Part::PartitionKey(k) => {
                    out.push_str(partition.get(k).map(String::as_str).unwrap_or_default());
                }
                Part::ErrorOutputType => out.push_str(error_output_type),
            }
        }
        out
    }
}

fn push_literal(parts: &mut Vec<Part>, s: &str) {
    if s.is_empty() {
        return;
    }
    if let Some(Part::Literal(prev)) = parts.last_mut() {
        prev.push_str(s);
    } else {
        parts.push(Part::Literal(s.to_owned()));
    }
}

fn parse_pattern(pattern: &str, parts: &mut Vec<Part>) -> Result<(), String> {
    const TOKENS: [(&str, Part); 6] = [
        ("yyyy", Part::Year),
        ("MM", Part::Month),
        ("dd", Part::Day),
        ("HH", Part::Hour),
        ("mm", Part::Minute),
        ("ss", Part::Second),
    ];
    let mut rest = pattern;
    'outer: while let Some(c) = rest.chars().next() {
        for (token, part) in &TOKENS {
            if let Some(r) = rest.strip_prefix(token) {
                parts.push(part.clone());
                rest = r;
                continue 'outer;
            }
        }
        if c.is_ascii_alphabetic() {
            return Err(format!("unsupported pattern letter {c:?}; use yyyy, MM, dd, HH, mm, ss"));
        }
        push_literal(parts, &rest[..c.len_utf8()]);
        rest = &rest[c.len_utf8()..];
    }
    Ok(())
}

/// A UTC calendar time (the `time` crate's calendar; times past its last
/// year, 9999, render as its last second).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Utc {
    year: i32,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
}

impl Utc {
    fn from_ms(ms: u64) -> Self {
        let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .unwrap_or_else(|_| PrimitiveDateTime::MAX.assume_utc());
        Self {
            year: t.year(),
            month: t.month().into(),
            day: t.day(),
            hour: t.hour(),
            minute: t.minute(),
            second: t.second(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_utc() {
        // 2023-11-14T22:13:20Z
        let t = PrefixTemplate::parse("logs/!{timestamp:yyyy/MM/dd/HH}/m=!{timestamp:mm-ss}/")
            .expect("parse");
        assert_eq!(t.render(1_700_000_000_000), "logs/2023/11/14/22/m=13-20/");
        assert_eq!(t.render(0), "logs/1970/01/01/00/m=00-00/");
        // Leap day.
        assert_eq!(t.render(951_782_400_000), "logs/2000/02/29/00/m=00-00/");
        assert_eq!(PrefixTemplate::parse("plain/").expect("parse").render(5), "plain/");
    }

    #[test]
    fn renders_partition_keys_and_error_type() {
        let t = PrefixTemplate::parse(
            "!{firehose:error-output-type}/d=!{partitionKeyFromQuery:dev}/!{timestamp:yyyy}/",
        )
        .expect("parse");
        assert_eq!(t.partition_keys(), ["dev"]);
        assert!(t.uses_error_output_type());
        let values = BTreeMap::from([("dev".to_owned(), "a1".to_owned())]);
        assert_eq!(t.render_with(0, &values, "x-failed"), "x-failed/d=a1/1970/");
    }

    #[test]
    fn refuses() {
        for bad in [
            "!{timestamp:yyyy",
            "!{timestamp:YYYY}",
            "!{partitionKeyFromQuery:}",
            "!{partitionKeyFromLambda:id}",
            "!{firehose:random-string}",
            "!{other:x}",
            "!{nocolon}",
        ] {
            assert!(
                matches!(PrefixTemplate::parse(bad), Err(FirehoseError::InvalidPrefix { .. })),
                "{bad}"
            );
        }
    }
}
