//! `weir-collector certs issue-device NAME` and `weir-collector
//! hash-password`: the command-line side of the MQTT ingest's security
//! (device certificates for mutual TLS, password hashes for
//! `[[mqtt.users]]`).

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use weir_collector::Config;
use weir_collector::certs::{DEFAULT_DEVICE_VALIDITY_DAYS, issue_device_cert};

/// `weir-collector certs ...`.
#[derive(clap::Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    command: CertsCommand,
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Issue a client certificate for device NAME, signed by the development
    /// CA; NAME becomes the device's MQTT identity and client id.
    IssueDevice {
        /// Device name: 1 to 64 of a-z, A-Z, 0-9, '_', '.', '-'.
        name: String,
        /// Data directory holding the development CA [default: the config
        /// file's, else weir-data].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The collector's configuration file (for its data directory).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Validity in days.
        #[arg(long, default_value_t = DEFAULT_DEVICE_VALIDITY_DAYS)]
        days: u32,
        /// Where to write NAME.pem and NAME.key [default: <data-dir>/tls/devices].
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Runs `certs ...`.
pub fn certs(args: CertsArgs) -> anyhow::Result<()> {
    match args.command {
        CertsCommand::IssueDevice { name, data_dir, config, days, out } => {
            let data_dir = match (data_dir, config) {
                (Some(dir), _) => dir,
                (None, Some(path)) => Config::load(&path)?.data_dir,
                (None, None) => Config::default().data_dir,
            };
            let dev = issue_device_cert(&data_dir, &name, days, out.as_deref())
                .with_context(|| format!("issuing a certificate for device {name:?}"))?;
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "certificate: {}", dev.cert.display())?;
            writeln!(stdout, "key:         {}", dev.key.display())?;
            writeln!(stdout, "CA:          {}", dev.ca_cert.display())?;
            writeln!(
                stdout,
                "try: mosquitto_pub -h localhost -p 8883 --cafile {} --cert {} --key {} -i {name} -q 1 -t weir/telemetry/{name} -m hello",
                dev.ca_cert.display(),
                dev.cert.display(),
                dev.key.display()
            )?;
            Ok(())
        }
    }
}

/// Runs `hash-password`: one line from standard input, its Argon2id hash on
/// standard output.
pub fn hash_password() -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("reading the password from stdin")?;
    let password = line.trim_end_matches(['\n', '\r']);
    anyhow::ensure!(!password.is_empty(), "no password on standard input");
    let hash = weir_collector::ingest::hash_password(password)?;
    writeln!(std::io::stdout().lock(), "{hash}")?;
    Ok(())
}
