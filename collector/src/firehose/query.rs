//! Queries into JSON records, shared by dynamic partitioning
//! ([`partition`](super::partition)) and Parquet columns
//! ([`parquet`](super::parquet)):
//!
//! - a JSON pointer (RFC 6901), starting with `/`: `/device/id`, `/tags/0`;
//! - or a dotted path, optionally starting with `.` as in jq: `device.id`,
//!   `.device.id` (array elements by number: `tags.0`).
//!
//! A query is parsed once, into a JSON pointer, and looked up per record.

/// A parsed query: a JSON pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonQuery {
    pointer: String,
}

impl JsonQuery {
    /// Parses a JSON pointer (`/a/b`) or a dotted path (`a.b`, `.a.b`).
    ///
    /// # Errors
    /// An empty query or an empty path segment.
    pub fn parse(query: &str) -> Result<Self, String> {
        if query.starts_with('/') {
            return Ok(Self { pointer: query.to_owned() });
        }
        let path = query.strip_prefix('.').unwrap_or(query);
        if path.is_empty() {
            return Err("empty query".into());
        }
        let mut pointer = String::new();
        for segment in path.split('.') {
            if segment.is_empty() {
                return Err(format!("empty segment in {query:?}"));
            }
            push_segment(&mut pointer, segment);
        }
        Ok(Self { pointer })
    }

    /// The top-level field `name` (which may contain dots).
    pub fn field(name: &str) -> Self {
        let mut pointer = String::new();
        push_segment(&mut pointer, name);
        Self { pointer }
    }

    /// The JSON pointer.
    pub fn pointer(&self) -> &str {
        &self.pointer
    }

    /// The value at the query in `value`, if any.
    pub fn get<'v>(&self, value: &'v serde_json::Value) -> Option<&'v serde_json::Value> {
        value.pointer(&self.pointer)
    }
}

/// Appends `/segment` to a pointer, escaped (`~` → `~0`, `/` → `~1`).
fn push_segment(pointer: &mut String, segment: &str) {
    pointer.push('/');
    pointer.push_str(&segment.replace('~', "~0").replace('/', "~1"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries() {
        assert_eq!(JsonQuery::parse("/a/b").map(|q| q.pointer).as_deref(), Ok("/a/b"));
        assert_eq!(JsonQuery::parse("a.b").map(|q| q.pointer).as_deref(), Ok("/a/b"));
        assert_eq!(JsonQuery::parse(".a.0").map(|q| q.pointer).as_deref(), Ok("/a/0"));
        assert!(JsonQuery::parse("a..b").is_err());
        assert!(JsonQuery::parse(".").is_err());
        assert_eq!(JsonQuery::field("a.b/c").pointer(), "/a.b~1c");
    }
}
