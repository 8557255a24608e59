//! The configuration examples in `docs/` that are marked
//! `<!-- checked: collector config -->` parse and validate as a collector
//! configuration, so the documentation cannot drift from the keys the code
//! accepts.

use std::path::{Path, PathBuf};

/// The TOML blocks of a Markdown file that follow the marker line.
fn checked_blocks(markdown: &str, marker: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut lines = markdown.lines();
    while let Some(line) = lines.next() {
        if line.trim() != marker {
            continue;
        }
        assert_eq!(
            lines.next().map(str::trim),
            Some("```toml"),
            "a ```toml block follows {marker}"
        );
        let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        blocks.push(block.join("\n"));
    }
    blocks
}

fn docs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs")
}

#[test]
fn marked_examples_are_valid_collector_configurations() {
    let marker = "<!-- checked: collector config -->";
    let mut checked = 0;
    for page in ["collector.md", "mqtt.md", "firehose.md"] {
        let path = docs().join(page);
        let text = std::fs::read_to_string(&path).expect("read the page");
        let blocks = checked_blocks(&text, marker);
        assert!(!blocks.is_empty(), "{page} has a checked example");
        for block in blocks {
            if let Err(e) = weir_collector::Config::parse(&block, &path) {
                panic!("{page}: example does not parse: {e}\n{block}");
            }
            checked += 1;
        }
    }
    // The README's "Running several collectors" guide.
    let readme = docs().join("../README.md");
    let text = std::fs::read_to_string(&readme).expect("read the README");
    let blocks = checked_blocks(&text, marker);
    assert_eq!(blocks.len(), 1, "the README has one checked example");
    for block in blocks {
        match weir_collector::Config::parse(&block, &readme) {
            Ok(c) => assert!(!c.store.servers.is_empty(), "the guide's example uses JetStream"),
            Err(e) => panic!("README: example does not parse: {e}\n{block}"),
        }
        checked += 1;
    }
    assert_eq!(checked, 4);
}

#[test]
fn a_wrong_key_in_an_example_would_be_caught() {
    // The check above means something only if a typo fails it.
    let text = "<!-- checked: collector config -->\n```toml\n[store]\nfsnyc = \"never\"\n```\n";
    let blocks = checked_blocks(text, "<!-- checked: collector config -->");
    assert_eq!(blocks.len(), 1);
    let err = weir_collector::Config::parse(&blocks[0], Path::new("x.toml")).expect_err("typo");
    assert!(err.to_string().contains("fsnyc"), "{err}");
}
