//! weir-agent: the Linux device agent.
//!
//! Not built yet: the agent issue fills this crate with the tailer, host
//! metrics, the disk spool and the MQTT shipper. Today it only states its
//! version, so that the workspace, its binaries and the test harness exist
//! from the first commit.

/// The agent's version, as its binary reports it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
