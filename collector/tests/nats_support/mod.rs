//! A real `nats-server` with JetStream for tests: started on a free port of
//! 127.0.0.1 (never 4222, the machine's shared server) with its store in a
//! fresh temp dir, ready once its JetStream answers an account info request
//! (bounded by [`READY_TIMEOUT`]), killed when dropped. The binary is
//! `nats-server` on `PATH`, else `/usr/sbin/nats-server`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Longest wait for a started server to answer.
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// The machine's shared NATS port, never used by tests.
const SHARED_PORT: u16 = 4222;

/// A running `nats-server -js`.
pub struct NatsServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

fn binary() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).map(|p| p.join("nats-server")).find(|p| p.is_file())
    });
    on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server"))
}

fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let port = listener.local_addr().expect("local addr").port();
        if port != SHARED_PORT {
            return port;
        }
    }
}

impl NatsServer {
    /// Starts a server and waits until its JetStream answers.
    pub async fn start() -> Self {
        let bin = binary();
        assert!(bin.is_file(), "nats-server not found on PATH nor at {}", bin.display());
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("nats.log")).expect("log file");
        let store = dir.path().join("store");
        let child = Command::new(&bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let server = Self { child, port, dir };
        server.wait_ready().await;
        server
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            // The raw account info request: async-nats 0.48 cannot parse a
            // 2.9 server's answer into its `Account`.
            match async_nats::connect(self.url()).await {
                Ok(client) => match client.request("$JS.API.INFO", "".into()).await {
                    Ok(m) if !String::from_utf8_lossy(&m.payload).contains("\"error\"") => {
                        return;
                    }
                    Ok(m) => last = String::from_utf8_lossy(&m.payload).into_owned(),
                    Err(e) => last = e.to_string(),
                },
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "nats-server on port {} not ready within {READY_TIMEOUT:?} ({last}); log:\n{}",
            self.port,
            self.log()
        );
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A JetStream context on a new connection.
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        let client = async_nats::connect(self.url()).await.expect("connect to nats-server");
        async_nats::jetstream::new(client)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
