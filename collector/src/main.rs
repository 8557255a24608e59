//! `weir-collector`: command-line entry point.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use weir_collector::store::FsyncPolicy;

/// Weir's collector: durable sharded telemetry streams.
#[derive(Parser)]
#[command(name = "weir-collector", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (also what no subcommand does).
    Serve(ServeArgs),
}

#[derive(clap::Args, Clone)]
struct ServeArgs {
    /// Data directory of the embedded store.
    #[arg(long, default_value = "weir-data")]
    data_dir: PathBuf,
    /// When appends are forced to disk: always, interval:<ms> or never.
    #[arg(long, default_value = "always")]
    fsync: FsyncPolicy,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Serve(args)) => args,
        None => cli.serve,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = weir_collector::Config {
        data_dir: args.data_dir.clone(),
        store: weir_collector::store::StoreConfig { fsync: args.fsync, ..Default::default() },
    };
    weir_collector::run(
        config,
        |store| {
            tracing::info!(data_dir = %store.root().display(), fsync = %args.fsync, "ready");
        },
        shutdown_signal(),
    )
    .await
    .with_context(|| format!("running the collector on {}", args.data_dir.display()))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the collector");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
