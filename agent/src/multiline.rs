//! Multi-line grouping: lines of one file joined into one record, a record
//! starting at each line that matches a start pattern (a log line's
//! timestamp), so a stack trace travels with the line that introduced it.
//!
//! It sits between the tailer and the batcher, per file (device, inode). A
//! group is complete when the next start line arrives, when adding a line
//! would take it past `max_bytes` (the rest starts a new group: nothing is
//! dropped), when its file gave no line for `timeout`, when the file is
//! truncated, or when the file is let go. A complete group is handed on as
//! one [`Line`]: the lines joined by `\n`, the `end_offset` of its last line
//! (the checkpoint only covers whole groups, so lines held in an open group
//! are read again after a crash), `split` if any of its lines was.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::checkpoint::FileKey;
use crate::config::Multiline;
use crate::tail::Line;

#[derive(Debug)]
struct Group {
    line: Line,
    last_at: Instant,
}

/// Groups lines per file.
#[derive(Debug)]
pub struct Grouper {
    config: Multiline,
    groups: HashMap<FileKey, Group>,
}

impl Grouper {
    /// A grouper with these settings.
    pub fn new(config: Multiline) -> Self {
        Self { config, groups: HashMap::new() }
    }

    /// Takes the next line of its file; complete groups go to `out`.
    pub fn push(&mut self, line: Line, now: Instant, out: &mut Vec<Line>) {
        let key = (line.id.dev, line.id.ino);
        let starts = self.config.start.is_match(&line.data);
        if let Some(g) = self.groups.get_mut(&key) {
            // A new file at the same inode (truncated) never continues a group.
            let same_file = line.end_offset > g.line.end_offset;
            let fits = g.line.data.len() + 1 + line.data.len() <= self.config.max_bytes;
            if !starts && same_file && fits {
                g.line.data.push(b'\n');
                g.line.data.extend_from_slice(&line.data);
                g.line.end_offset = line.end_offset;
                g.line.id = line.id;
                g.line.split |= line.split;
                g.last_at = now;
                return;
            }
            if let Some(done) = self.groups.remove(&key) {
                out.push(done.line);
            }
        }
        self.groups.insert(key, Group { line, last_at: now });
    }

    /// Hands out the groups whose file has been quiet for the timeout.
    pub fn flush_idle(&mut self, now: Instant, out: &mut Vec<Line>) {
        let timeout = self.config.timeout;
        let idle: Vec<FileKey> = self
            .groups
            .iter()
            .filter(|(_, g)| now.duration_since(g.last_at) >= timeout)
            .map(|(k, _)| *k)
            .collect();
        for k in idle {
            self.flush_file(k, out);
        }
    }

    /// Hands out the open group of one file.
    pub fn flush_file(&mut self, key: FileKey, out: &mut Vec<Line>) {
        if let Some(g) = self.groups.remove(&key) {
            out.push(g.line);
        }
    }

    /// How long until the oldest open group times out; `None` without one.
    pub fn next_timeout(&self, now: Instant) -> Option<Duration> {
        self.groups
            .values()
            .map(|g| (g.last_at + self.config.timeout).saturating_duration_since(now))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tail::FileId;

    fn grouper(max_bytes: usize) -> Grouper {
        Grouper::new(Multiline {
            start: regex::bytes::Regex::new(r"^\d{4}-").expect("regex"),
            max_bytes,
            timeout: Duration::from_secs(1),
        })
    }

    fn line(ino: u64, text: &str, end: u64) -> Line {
        Line {
            id: FileId { dev: 1, ino, fingerprint: 0, fingerprint_len: 0 },
            path: "/l".into(),
            logical: "/l".into(),
            data: text.as_bytes().to_vec(),
            end_offset: end,
            split: false,
        }
    }

    fn texts(out: &[Line]) -> Vec<(String, u64)> {
        out.iter().map(|l| (String::from_utf8_lossy(&l.data).into_owned(), l.end_offset)).collect()
    }

    #[test]
    fn continuation_lines_join_the_line_that_started_them() {
        let mut g = grouper(1024);
        let t0 = Instant::now();
        let mut out = Vec::new();
        g.push(line(1, "2024-01-01 error", 10), t0, &mut out);
        g.push(line(1, "  at a()", 20), t0, &mut out);
        g.push(line(2, "2024-01-01 other file", 5), t0, &mut out);
        g.push(line(1, "  at b()", 30), t0, &mut out);
        g.push(line(1, "2024-01-02 next", 40), t0, &mut out);
        assert_eq!(texts(&out), vec![("2024-01-01 error\n  at a()\n  at b()".into(), 30)]);
        assert_eq!(g.next_timeout(t0), Some(Duration::from_secs(1)));
        g.flush_idle(t0 + Duration::from_millis(999), &mut out);
        assert_eq!(out.len(), 1);
        g.flush_idle(t0 + Duration::from_secs(1), &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(g.next_timeout(t0), None);
    }

    #[test]
    fn a_group_past_its_limit_is_cut_not_dropped() {
        let mut g = grouper(20);
        let t0 = Instant::now();
        let mut out = Vec::new();
        g.push(line(1, "2024-01-01 abcdef", 18), t0, &mut out);
        g.push(line(1, "  more text", 30), t0, &mut out);
        g.flush_file((1, 1), &mut out);
        assert_eq!(texts(&out), vec![("2024-01-01 abcdef".into(), 18), ("  more text".into(), 30)]);
    }

    #[test]
    fn truncation_ends_a_group() {
        let mut g = grouper(1024);
        let t0 = Instant::now();
        let mut out = Vec::new();
        g.push(line(1, "2024-01-01 a", 100), t0, &mut out);
        g.push(line(1, "  b", 4), t0, &mut out);
        assert_eq!(texts(&out), vec![("2024-01-01 a".into(), 100)]);
    }
}
