//! Partition key templates: `{device_id}`, `{device_id}/{file}`,
//! `{device_id}/{metric}`, `{key}` (a serial node's own key).
//!
//! A template is parsed once, at configuration time, into literal text and
//! placeholders; expanding it is a few string pushes. Which placeholders an
//! input may use depends on its kind (`{file}` only for files, `{metric}` only
//! for metrics, `{node}` and `{key}` only for serial inputs), so a template that can never expand is refused with the key
//! that holds it. An expanded key is cut to the wire's 256-character limit and
//! is never empty (the template is not).

use weir_wire::MAX_PARTITION_KEY_CHARS;

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    DeviceId,
    Input,
    File,
    Metric,
    Node,
    Key,
}

/// Which placeholders a template may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholders {
    /// `{device_id}`, `{input}`, `{file}`.
    File,
    /// `{device_id}`, `{input}`, `{metric}`.
    Metrics,
    /// `{device_id}`, `{input}`, `{node}` (the node's producer id), `{key}`
    /// (the record's own key, set by the node).
    Serial,
}

/// A parsed partition key template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTemplate {
    parts: Vec<Part>,
}

/// What a template expands with.
#[derive(Debug, Clone, Copy)]
pub struct KeyContext<'a> {
    /// The agent's device id.
    pub device_id: &'a str,
    /// The input's name.
    pub input: &'a str,
    /// The file's logical name: the path it had when first seen, stable
    /// across rotations and restarts (file inputs; see `tail`).
    pub file: &'a str,
    /// The metric's name (metrics inputs).
    pub metric: &'a str,
    /// The node's producer id (serial inputs).
    pub node: &'a str,
    /// The record's own partition key (serial inputs).
    pub key: &'a str,
}

impl KeyTemplate {
    /// Parses `text`, allowing the placeholders of `allowed`.
    ///
    /// # Errors
    /// A message for an empty template, an unclosed or unknown placeholder,
    /// or a placeholder the input kind does not have.
    pub fn parse(text: &str, allowed: Placeholders) -> Result<Self, String> {
        if text.is_empty() {
            return Err("is empty; a partition key needs 1 to 256 characters".into());
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match rest.find('{') {
                None => {
                    parts.push(Part::Literal(rest.to_owned()));
                    break;
                }
                Some(open) => {
                    if open > 0 {
                        parts.push(Part::Literal(rest[..open].to_owned()));
                    }
                    let after = &rest[open + 1..];
                    let close = after
                        .find('}')
                        .ok_or_else(|| format!("{text:?}: `{{` without a closing `}}`"))?;
                    let name = &after[..close];
                    let part = match (name, allowed) {
                        ("device_id", _) => Part::DeviceId,
                        ("input", _) => Part::Input,
                        ("file", Placeholders::File) => Part::File,
                        ("metric", Placeholders::Metrics) => Part::Metric,
                        ("node", Placeholders::Serial) => Part::Node,
                        ("key", Placeholders::Serial) => Part::Key,
                        ("file" | "metric" | "node" | "key", _) => {
                            return Err(format!(
                                "{text:?}: `{{{name}}}` is not available for this kind of input"
                            ));
                        }
                        _ => {
                            return Err(format!(
                                "{text:?}: unknown placeholder `{{{name}}}` (known: {{device_id}}, {{input}}, {})",
                                match allowed {
                                    Placeholders::File => "{file}",
                                    Placeholders::Metrics => "{metric}",
                                    Placeholders::Serial => "{node}, {key}",
                                }
                            ));
                        }
                    };
                    parts.push(part);
                    rest = &after[close + 1..];
                }
            }
        }
        Ok(Self { parts })
    }

    /// Whether the expansion depends on the file, metric, node or record
    /// (else it can be computed once per input).
    pub fn varies(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::File | Part::Metric | Part::Node | Part::Key))
    }

    /// The key for `ctx`: 1 to 256 characters.
    pub fn expand(&self, ctx: &KeyContext<'_>) -> String {
        let mut key = String::new();
        for p in &self.parts {
            key.push_str(match p {
                Part::Literal(s) => s,
                Part::DeviceId => ctx.device_id,
                Part::Input => ctx.input,
                Part::File => ctx.file,
                Part::Metric => ctx.metric,
                Part::Node => ctx.node,
                Part::Key => ctx.key,
            });
        }
        if key.len() > MAX_PARTITION_KEY_CHARS
            && let Some((cut, _)) = key.char_indices().nth(MAX_PARTITION_KEY_CHARS)
        {
            key.truncate(cut);
        }
        if key.is_empty() {
            // Only placeholders that expanded to nothing: keep the key valid.
            key.push('-');
        }
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> KeyContext<'static> {
        KeyContext {
            device_id: "gw-1",
            input: "app",
            file: "/var/log/a.log",
            metric: "cpu.usage",
            node: "n@1",
            key: "k",
        }
    }

    #[test]
    fn expands_placeholders_and_literals() {
        let t = KeyTemplate::parse("{device_id}/{file}", Placeholders::File).expect("parse");
        assert_eq!(t.expand(&ctx()), "gw-1//var/log/a.log");
        assert!(t.varies());
        let t = KeyTemplate::parse("site-a:{device_id}", Placeholders::Metrics).expect("parse");
        assert_eq!(t.expand(&ctx()), "site-a:gw-1");
        assert!(!t.varies());
        let t = KeyTemplate::parse("{input}-{metric}", Placeholders::Metrics).expect("parse");
        assert_eq!(t.expand(&ctx()), "app-cpu.usage");
    }

    #[test]
    fn serial_templates_take_the_node_and_the_record_key() {
        let t = KeyTemplate::parse("{device_id}/{node}/{key}-{input}", Placeholders::Serial)
            .expect("parse");
        assert_eq!(t.expand(&ctx()), "gw-1/n@1/k-app");
        let e = KeyTemplate::parse("{file}", Placeholders::Serial).expect_err("file for serial");
        assert!(e.contains("not available"), "{e}");
        let e = KeyTemplate::parse("{key}", Placeholders::File).expect_err("key for files");
        assert!(e.contains("not available"), "{e}");
        let e = KeyTemplate::parse("{host}", Placeholders::Serial).expect_err("unknown");
        assert!(e.contains("{node}, {key}"), "{e}");
    }

    #[test]
    fn refuses_bad_templates() {
        assert!(KeyTemplate::parse("", Placeholders::File).is_err());
        assert!(KeyTemplate::parse("{device_id", Placeholders::File).is_err());
        let e = KeyTemplate::parse("{metric}", Placeholders::File).expect_err("metric for files");
        assert!(e.contains("not available"), "{e}");
        let e = KeyTemplate::parse("{host}", Placeholders::Metrics).expect_err("unknown");
        assert!(e.contains("unknown placeholder `{host}`"), "{e}");
    }

    #[test]
    fn long_keys_are_cut_at_256_characters() {
        let t = KeyTemplate::parse("{file}", Placeholders::File).expect("parse");
        let long = "é".repeat(300);
        let key = t.expand(&KeyContext { file: &long, ..ctx() });
        assert_eq!(key.chars().count(), MAX_PARTITION_KEY_CHARS);
        let key = t.expand(&KeyContext { file: "", ..ctx() });
        assert_eq!(key, "-");
    }
}
