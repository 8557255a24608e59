//! A connection's window of publishes: from PUBLISH packets to store appends
//! and back to acknowledgements.
//!
//! A connection reads packets while its previous window is being appended;
//! what it read meanwhile becomes the next window. [`Plan::build`] turns a
//! window into appends, synchronously and in packet order: it maps each topic
//! to a stream, checks the ACL, decodes wire-format batches, drops QoS 2
//! duplicates and groups consecutive raw records of one stream into one
//! append (up to [`MAX_RUN_BYTES`] / [`MAX_RUN_RECORDS`]), so a window of a
//! thousand publishes costs a handful of appends and one group commit.
//! [`Plan::execute`] runs each stream's appends in order, the streams
//! concurrently, and yields one [`Outcome`] per packet, in packet order: the
//! acknowledgements are sent only then, once every record is durable.
//!
//! Idempotent batches go through `StreamStore::append_batch`, which appends
//! a (producer id, batch sequence) only once per shard. Since the store
//! treats every sequence at or below the highest appended one as a
//! duplicate, a producer's later batch must not be appended while an earlier
//! one failed: after a failure, later batches of that producer are refused on
//! this connection until the failed one is sent again and succeeds.
//!
//! - `window`: the types: the packets, the connection's state, the plan
//!   (runs and slots), the executed window;
//! - `plan`: [`Plan::build`], a PUBLISH's steps from topic to slot;
//! - `execute`: [`Plan::execute`], the appends and the outcomes.
//!
//! `plan` and `execute` both use `window`, not each other.

mod execute;
mod plan;
mod window;

pub use window::{
    Client, ConnState, Done, KnownStreams, MAX_RUN_BYTES, MAX_RUN_RECORDS, Outcome, Plan, Publish,
    Work,
};

#[cfg(test)]
mod tests;
