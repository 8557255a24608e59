//! The operator command line: `weir-collector streams ...` and
//! `weir-collector tail ...`, for people without the AWS CLI. Both talk to a
//! running collector through its Kinesis API (`--endpoint`), so they work the
//! same against a local or a remote collector.

mod client;
mod streams;
mod tail;
mod time;

use anyhow::Context;

pub use streams::StreamsArgs;
pub use tail::TailArgs;

/// The API of a local collector with default settings.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:4567";

/// An operator command.
pub enum Operator {
    /// `streams ...`.
    Streams(StreamsArgs),
    /// `tail ...`.
    Tail(TailArgs),
}

/// Runs an operator command to completion.
pub fn run(op: Operator) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        match op {
            Operator::Streams(args) => streams::run(args).await,
            Operator::Tail(args) => tail::run(args).await,
        }
    })
}
