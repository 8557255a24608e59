//! `weir-agent`: command-line entry point (a placeholder until the agent issue).

use clap::Parser;

/// Weir's device agent. Not implemented yet: this build only reports its version.
#[derive(Parser)]
#[command(name = "weir-agent", version = weir_agent::VERSION)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    anyhow::bail!("weir-agent {} has no inputs yet: see the agent issue", weir_agent::VERSION)
}
