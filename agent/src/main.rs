//! `weir-agent`: command-line entry point. Parses arguments, sets up
//! logging, runs [`weir_agent::run`] until SIGTERM or Ctrl-C; also
//! `check-config` and `status`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use weir_agent::config::{Config, DEFAULT_CONFIG_PATH, InputKind};

/// Weir's device agent: tails logs and samples host metrics, spools them to
/// disk and ships them to a collector over MQTT/TLS.
#[derive(Parser)]
#[command(name = "weir-agent", version = weir_agent::VERSION, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (also what no subcommand does).
    Run {
        /// Configuration file.
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Check a configuration file: every error names the key at fault.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Print the running agent's state (from its status file).
    Status {
        /// The agent's configuration file (for the status file's path).
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Read this status file instead.
        #[arg(long, conflicts_with = "config")]
        file: Option<PathBuf>,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::CheckConfig { file }) => check_config(&file),
        Some(Command::Status { config, file, json }) => status(&config, file.as_deref(), json),
        Some(Command::Run { config }) => run(&config),
        None => run(&cli.config),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // Error messages here already carry their cause's text; add a
            // cause only when it says something new.
            let mut message = e.to_string();
            for cause in e.chain().skip(1) {
                let cause = cause.to_string();
                if !message.contains(&cause) {
                    message = format!("{message}: {cause}");
                }
            }
            let _ = writeln!(std::io::stderr(), "weir-agent: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(config_path: &Path) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // One rustls crypto provider, ring, for everything in this process.
    weir_agent::tls::install_default_provider();
    let config = Config::load(config_path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(RUNTIME_WORKERS)
        .enable_all()
        .thread_name("weir-agent")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(weir_agent::run(config, shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}

/// Async worker threads: the shipper and the status writer need little; the
/// inputs and the batcher have threads of their own.
const RUNTIME_WORKERS: usize = 2;

fn check_config(path: &Path) -> anyhow::Result<ExitCode> {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut out = std::io::stdout().lock();
    let mut problems = 0;
    if let Some(files) = &config.collector.tls {
        weir_agent::tls::install_default_provider();
        if let Err(e) = weir_agent::tls::client_config(files) {
            let _ = writeln!(std::io::stderr(), "{}: {e}", config.origin);
            problems += 1;
        }
    }
    writeln!(
        out,
        "{}: device {}, collector {}",
        config.origin, config.device_id, config.collector.address
    )?;
    writeln!(
        out,
        "spool {} ({} MiB, {} when full), status {}",
        config.spool_dir.display(),
        config.spool.max_bytes / (1024 * 1024),
        weir_agent::status::policy_name(config.spool.policy),
        config.status_file.display()
    )?;
    for (i, input) in config.inputs.iter().enumerate() {
        match &input.kind {
            InputKind::File(f) => {
                let mut matched = 0;
                for pattern in &f.tail.globs {
                    for entry in glob::glob(pattern).into_iter().flatten() {
                        match entry {
                            Ok(p) if p.is_file() => {
                                matched += 1;
                                if let Err(e) = std::fs::File::open(&p) {
                                    let _ = writeln!(
                                        std::io::stderr(),
                                        "{}: `inputs[{i}].paths`: {} is not readable: {e}",
                                        config.origin,
                                        p.display()
                                    );
                                    problems += 1;
                                }
                            }
                            Ok(_) => {}
                            Err(e) => {
                                let _ = writeln!(
                                    std::io::stderr(),
                                    "{}: `inputs[{i}].paths`: {e}",
                                    config.origin
                                );
                                problems += 1;
                            }
                        }
                    }
                }
                writeln!(
                    out,
                    "input {:?}: file, {matched} files match now -> stream {}",
                    input.name, input.stream
                )?;
            }
            InputKind::Metrics(m) => {
                writeln!(
                    out,
                    "input {:?}: metrics every {:?} -> stream {}",
                    input.name, m.interval, input.stream
                )?;
            }
            InputKind::Serial(sc) => {
                let line = match &sc.source {
                    weir_agent::config::SerialSource::Device { path, baud } => {
                        format!("device {} at {baud} baud", path.display())
                    }
                    weir_agent::config::SerialSource::Socket { path } => {
                        format!("socket {}", path.display())
                    }
                };
                writeln!(out, "input {:?}: serial, {line} -> stream {}", input.name, input.stream)?;
                if !sc.source.path().exists() {
                    // Not an error: a USB adapter or QEMU may come later;
                    // the input keeps trying to open it.
                    let _ = writeln!(
                        std::io::stderr(),
                        "{}: `inputs[{i}]`: {} does not exist yet (the input retries until it does)",
                        config.origin,
                        sc.source.path().display()
                    );
                }
            }
        }
    }
    if problems > 0 {
        return Ok(ExitCode::FAILURE);
    }
    writeln!(out, "configuration OK")?;
    Ok(ExitCode::SUCCESS)
}

fn status(config_path: &Path, file: Option<&Path>, json: bool) -> anyhow::Result<ExitCode> {
    let path = match file {
        Some(f) => f.to_path_buf(),
        None => Config::load(config_path)?.status_file,
    };
    let status = weir_agent::status::read_status(&path)?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&status)?)?;
    } else {
        write!(out, "{}", weir_agent::status::render(&status, weir_agent::stats::now_ms()))?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the agent");
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
