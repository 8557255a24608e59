//! Test harness for Weir's end-to-end tests.
//!
//! Starts the real binaries as processes, each in a fresh temp directory,
//! waits for readiness by condition (never a guessed sleep), and on failure
//! prints the command line, the process's log and the data directory listing.
//! `nats` does the same for NATS servers with JetStream (one, or a cluster);
//! `tmpfs` mounts small filesystems for the full-disk tests.

pub mod harness;
pub mod nats;
pub mod tmpfs;
