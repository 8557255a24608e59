//! `weir-collector`: command-line entry point. Parses flags, sets up logging,
//! runs [`weir_collector::run`] until SIGTERM or Ctrl-C.

mod cli;
mod mqtt_cli;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use weir_collector::Config;

/// Weir's collector: durable sharded telemetry streams.
#[derive(Parser)]
#[command(
    name = "weir-collector",
    version,
    args_conflicts_with_subcommands = true,
    args_override_self = true
)]
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
    /// Create, list, describe, reshard and delete streams through a running
    /// collector's Kinesis API.
    Streams(cli::StreamsArgs),
    /// Print a stream's records (key, sequence number, arrival time, data).
    Tail(cli::TailArgs),
    /// Certificates for mutual TLS, signed by the development CA.
    Certs(mqtt_cli::CertsArgs),
    /// Hash a password read from standard input for `[[mqtt.users]]`.
    HashPassword,
}

#[derive(clap::Args, Clone)]
struct ServeArgs {
    /// TOML configuration file; flags given here override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory of the embedded store [default: weir-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// When appends are forced to disk: always, interval:<ms> or never [default: always].
    #[arg(long)]
    fsync: Option<String>,
    /// Where records live: `embedded` (the data directory) or
    /// `nats://HOST:PORT[,HOST:PORT...]` (a JetStream cluster) [default: embedded].
    #[arg(long, value_name = "STORE")]
    store: Option<String>,
    /// Prefix of the JetStream names the store creates [default: weir].
    #[arg(long, value_name = "PREFIX")]
    store_prefix: Option<String>,
    /// Replicas of the JetStream streams the store creates: 1, 3 or 5 [default: 1].
    #[arg(long, value_name = "N")]
    store_replicas: Option<usize>,
    /// Once serving, write what was bound (JSON) to this file.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Address of the HTTP listener (Kinesis API, /health, /metrics)
    /// [default: 127.0.0.1:4567].
    #[arg(long, value_name = "ADDR")]
    http_listen: Option<String>,
    /// Address of the MQTT over TLS listener, or "off" [default: 0.0.0.0:8883].
    #[arg(long, value_name = "ADDR")]
    mqtts_listen: Option<String>,
    /// Address of a plain MQTT listener [default: none].
    #[arg(long, value_name = "ADDR")]
    mqtt_listen: Option<String>,
    /// Let clients without credentials publish on the plain MQTT listener.
    #[arg(long)]
    allow_anonymous: bool,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // One rustls crypto provider, ring, for everything in this process.
    weir_collector::tls::install_default_provider();
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Serve(args)) => args,
        Some(Command::Streams(args)) => return cli::run(cli::Operator::Streams(args)),
        Some(Command::Tail(args)) => return cli::run(cli::Operator::Tail(args)),
        Some(Command::Certs(args)) => return mqtt_cli::certs(args),
        Some(Command::HashPassword) => return mqtt_cli::hash_password(),
        None => cli.serve,
    };
    let config = config_from(&args)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(serve(config, args.ready_file))
}

/// The file's configuration (or the defaults) with the flags applied.
fn config_from(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(dir) = &args.data_dir {
        config.data_dir.clone_from(dir);
    }
    if let Some(fsync) = &args.fsync {
        config.store.fsync.clone_from(fsync);
        config.origin = "command line".into();
    }
    match args.store.as_deref() {
        None => {}
        Some("embedded") => config.store.servers.clear(),
        Some(url) if url.starts_with("nats://") || url.starts_with("tls://") => {
            config.store.servers = url.split(',').map(|s| s.trim().to_owned()).collect();
            config.origin = "command line".into();
        }
        Some(other) => anyhow::bail!(
            "--store {other:?}: expected `embedded` or nats://HOST:PORT[,HOST:PORT...]"
        ),
    }
    if let Some(prefix) = &args.store_prefix {
        config.store.prefix.clone_from(prefix);
        config.origin = "command line".into();
    }
    if let Some(replicas) = args.store_replicas {
        config.store.replicas = replicas;
        config.origin = "command line".into();
    }
    if let Some(listen) = &args.http_listen {
        config.http.listen.clone_from(listen);
        config.origin = "command line".into();
    }
    if let Some(listen) = &args.mqtts_listen {
        config.mqtt.tls_listen.clone_from(listen);
        config.origin = "command line".into();
    }
    if let Some(listen) = &args.mqtt_listen {
        config.mqtt.listen = Some(listen.clone());
        config.origin = "command line".into();
    }
    if args.allow_anonymous {
        config.mqtt.allow_anonymous = true;
    }
    config.store_config()?;
    config.jetstream_settings()?;
    config.http_listen()?;
    config.mqtt_settings()?;
    Ok(config)
}

async fn serve(config: Config, ready_file: Option<PathBuf>) -> anyhow::Result<()> {
    let data_dir = config.data_dir.clone();
    let mut ready_error = None;
    weir_collector::run(
        config,
        |ready| {
            tracing::info!(data_dir = %ready.data_dir.display(), "ready");
            if let Some(path) = &ready_file
                && let Err(e) = write_ready_file(path, ready)
            {
                ready_error = Some(e);
            }
        },
        shutdown_signal(),
    )
    .await
    .with_context(|| format!("running the collector on {}", data_dir.display()))?;
    match ready_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Writes the ready report atomically (temp file, rename), so a reader never
/// sees half of it.
fn write_ready_file(path: &std::path::Path, ready: &weir_collector::Ready) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(ready)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
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
