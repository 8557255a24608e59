//! The agent configuration reference in `docs/agent.md` (the block marked
//! `<!-- checked: agent config -->`) parses and validates, and is the same
//! text as the example in `agent/src/config/mod.rs`'s header, so neither copy
//! can drift from the keys the agent accepts or from the other.

use std::path::Path;

/// The lines of the marked ```toml block of docs/agent.md.
fn docs_block(text: &str) -> Vec<&str> {
    let mut lines = text.lines().skip_while(|l| l.trim() != "<!-- checked: agent config -->");
    assert!(lines.next().is_some(), "docs/agent.md has the marked block");
    assert_eq!(lines.next().map(str::trim), Some("```toml"));
    lines.take_while(|l| l.trim() != "```").collect()
}

/// The lines of the ```toml example in the module header, without `//! `.
fn header_block(source: &str) -> Vec<&str> {
    let lines =
        source.lines().map(|l| l.strip_prefix("//! ").unwrap_or(l.trim_start_matches("//!")));
    lines.skip_while(|l| *l != "```toml").skip(1).take_while(|l| *l != "```").collect()
}

#[test]
fn the_documented_configuration_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/agent.md");
    let text = std::fs::read_to_string(&path).expect("read docs/agent.md");
    let block = docs_block(&text).join("\n");
    let config = match weir_agent::config::Config::parse(&block, &path) {
        Ok(config) => config,
        Err(e) => panic!("docs/agent.md: the reference does not parse: {e}"),
    };
    assert_eq!(config.inputs.len(), 3, "file, metrics and serial inputs");
}

#[test]
fn the_docs_and_the_module_header_show_the_same_reference() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let docs = std::fs::read_to_string(root.join("../docs/agent.md")).expect("read docs/agent.md");
    let source = std::fs::read_to_string(root.join("src/config/mod.rs")).expect("read mod.rs");
    assert_eq!(docs_block(&docs), header_block(&source), "docs/agent.md and config/mod.rs differ");
}
