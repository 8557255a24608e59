//! The agent configuration reference in `docs/agent.md` (the block marked
//! `<!-- checked: agent config -->`) parses and validates, so the
//! documentation cannot drift from the keys the agent accepts.

use std::path::Path;

#[test]
fn the_documented_configuration_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/agent.md");
    let text = std::fs::read_to_string(&path).expect("read docs/agent.md");
    let mut lines = text.lines().skip_while(|l| l.trim() != "<!-- checked: agent config -->");
    assert!(lines.next().is_some(), "docs/agent.md has the marked block");
    assert_eq!(lines.next().map(str::trim), Some("```toml"));
    let block: Vec<&str> = lines.take_while(|l| l.trim() != "```").collect();
    let block = block.join("\n");
    let config = match weir_agent::config::Config::parse(&block, &path) {
        Ok(config) => config,
        Err(e) => panic!("docs/agent.md: the reference does not parse: {e}"),
    };
    assert_eq!(config.inputs.len(), 3, "file, metrics and serial inputs");
}
