//! The shipper: reads spool entries in order and publishes each batch at
//! QoS 1 to `weir/<stream>/$batch`; an entry is released from the spool only
//! once the collector's PUBACK says it is durable there.
//!
//! # Window and acknowledgements
//!
//! Up to `collector.inflight` batches (and at most [`MAX_INFLIGHT_BYTES`] of
//! payload) are in flight. The spool is read entry by entry through a
//! [`Cursor`], so memory does not grow with the backlog. PUBACKs are matched
//! to entries by packet id (rumqttc reports each publish's packet id as it
//! writes it, in order); the spool is acknowledged up to the end of the
//! contiguous prefix of acknowledged entries, at most every [`ACK_INTERVAL`]
//! or [`ACK_EVERY`] entries (each acknowledgement rewrites the spool's state
//! file). Checkpoint-only entries (no records) are released without a send.
//!
//! # Reconnects
//!
//! Each connection is a new rumqttc client with a clean session; its event
//! loop runs in its own task and forwards events here, so nothing here
//! cancels a half-done rumqttc poll. When a connection fails — refused,
//! TLS error, collector gone, keep-alive lost — the shipper waits (backoff
//! with jitter, [`crate::backoff`]) and starts again from the first
//! unacknowledged entry. Batches sent again are recognised by the collector
//! (producer id and batch sequence number) and appended once.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::SeedableRng;
use rumqttc::{
    AsyncClient, ConnectionError, Event, Incoming, MqttOptions, NetworkOptions, Outgoing, QoS,
    TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::checkpoint::MetaStream;
use crate::config::CollectorConfig;
use crate::log_limit::LogLimit;
use crate::spool::{Cursor, Spool};
use crate::stats::{ConnState, Shared, lock, now_ms};

/// Most payload bytes in flight, whatever the window: bounds the memory the
/// MQTT client holds for re-sending.
pub const MAX_INFLIGHT_BYTES: usize = 4 * 1024 * 1024;
/// Most time between an acknowledgement and its release from the spool.
pub const ACK_INTERVAL: Duration = Duration::from_millis(100);
/// Release acknowledged entries from the spool after this many, at the latest.
pub const ACK_EVERY: u64 = 64;
/// Events queued from the MQTT event loop task to the shipper.
const EVENT_QUEUE: usize = 64;
/// Largest MQTT packet sent: a full wire batch and its topic.
const MAX_OUTGOING_PACKET: usize = weir_wire::MAX_BATCH_BYTES + 64 * 1024;
/// Largest MQTT packet accepted (the collector sends acknowledgements only).
const MAX_INCOMING_PACKET: usize = 64 * 1024;
/// TCP connect + TLS + MQTT CONNECT must finish within this, seconds.
const CONNECT_TIMEOUT_SECS: u64 = 10;
/// At shutdown, acknowledgements of batches in flight are awaited this long.
pub const DRAIN_ON_STOP: Duration = Duration::from_secs(2);

/// The topic of a stream's batches.
pub fn batch_topic(stream: &str) -> String {
    format!("weir/{stream}/$batch")
}

/// What the shipper needs.
#[derive(Clone)]
pub struct ShipperSetup {
    /// Where and how to connect.
    pub collector: CollectorConfig,
    /// TLS client configuration, for `mqtts`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for ShipperSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShipperSetup")
            .field("collector", &self.collector.address)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct InFlight {
    seq: u64,
    records: u32,
    bytes: usize,
    /// Packet id, once rumqttc has written the publish.
    pkid: Option<u16>,
    acked: bool,
}

/// Why a connection ended.
enum End {
    /// The agent is stopping.
    Stop,
    /// The connection failed; the message says why.
    Failed(String),
}

/// Ships until the agent stops.
pub async fn run(setup: ShipperSetup, spool: Arc<Mutex<Spool>>, shared: Arc<Shared>) {
    let c = &setup.collector;
    let mut backoff = Backoff::new(c.reconnect_min, c.reconnect_max);
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut attempts: u64 = 0;
    let mut shipper = Shipper {
        setup: &setup,
        spool: &spool,
        shared: &shared,
        unreleased: None,
        last_release: Instant::now(),
        since_release: 0,
        release_log: LogLimit::new(),
    };
    loop {
        if shared.shutdown.is_set() {
            break;
        }
        shared.shipper.set_state(ConnState::Connecting);
        match shipper.connection(&mut backoff, attempts).await {
            End::Stop => break,
            End::Failed(message) => {
                attempts += 1;
                shared.shipper.set_state(ConnState::Backoff);
                shared.shipper.connected_since_ms.store(0, Ordering::Relaxed);
                shared.shipper.inflight.store(0, Ordering::Relaxed);
                let delay = backoff.next_delay(&mut rng);
                tracing::warn!(collector = %c.address, error = %message, retry_in = ?delay, "connection to the collector failed");
                shared.shipper.last_error.set(&message);
                tokio::select! {
                    () = shared.shutdown.wait() => break,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    shared.shipper.set_state(ConnState::Stopped);
    shared.shipper.connected_since_ms.store(0, Ordering::Relaxed);
}

struct Shipper<'a> {
    setup: &'a ShipperSetup,
    spool: &'a Arc<Mutex<Spool>>,
    shared: &'a Arc<Shared>,
    /// Acknowledged prefix not yet released from the spool.
    unreleased: Option<u64>,
    last_release: Instant,
    since_release: u64,
    /// Failed releases (a state file that cannot be written), logged at a
    /// bounded rate: the release is tried every [`ACK_INTERVAL`].
    release_log: LogLimit,
}

impl Shipper<'_> {
    fn options(&self) -> MqttOptions {
        let c = &self.setup.collector;
        let mut opts = MqttOptions::new(c.client_id.clone(), c.host.clone(), c.port);
        opts.set_keep_alive(c.keepalive);
        opts.set_clean_session(true);
        opts.set_inflight(u16::try_from(c.inflight).unwrap_or(u16::MAX));
        opts.set_max_packet_size(MAX_INCOMING_PACKET, MAX_OUTGOING_PACKET);
        if let Some((user, password)) = &c.login {
            opts.set_credentials(user.clone(), password.clone());
        }
        if let Some(tls) = &self.setup.tls {
            opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls.clone())));
        }
        opts
    }

    /// One connection, from connecting until it fails or the agent stops.
    async fn connection(&mut self, backoff: &mut Backoff, attempts: u64) -> End {
        let window = self.setup.collector.inflight;
        let (client, mut eventloop) = AsyncClient::new(self.options(), window + 4);
        let mut network = NetworkOptions::new();
        network.set_connection_timeout(CONNECT_TIMEOUT_SECS);
        eventloop.set_network_options(network);
        // The event loop runs on its own; its events come through `rx`.
        let (tx, mut rx) = mpsc::channel::<Result<Event, ConnectionError>>(EVENT_QUEUE);
        let driver = tokio::spawn(async move {
            loop {
                let event = eventloop.poll().await;
                let failed = event.is_err();
                if tx.send(event).await.is_err() || failed {
                    break;
                }
            }
        });
        let end = self.session(&client, &mut rx, backoff, attempts, window).await;
        driver.abort();
        self.release(true);
        end
    }

    async fn session(
        &mut self,
        client: &AsyncClient,
        rx: &mut mpsc::Receiver<Result<Event, ConnectionError>>,
        backoff: &mut Backoff,
        attempts: u64,
        window: usize,
    ) -> End {
        let shared = self.shared;
        let mut inflight: VecDeque<InFlight> = VecDeque::new();
        let mut cursor = Cursor::at(lock(self.spool).acked_below());
        let mut connected = false;
        loop {
            if connected && let Err(message) = self.fill(client, &mut inflight, &mut cursor, window)
            {
                return End::Failed(message);
            }
            self.take_acked(&mut inflight);
            if self.unreleased.is_some()
                && (self.since_release >= ACK_EVERY || self.last_release.elapsed() >= ACK_INTERVAL)
            {
                self.release(false);
            }
            let bytes: usize = inflight.iter().map(|f| f.bytes).sum();
            let room = inflight.len() < window && bytes < MAX_INFLIGHT_BYTES;
            let release_at = self.unreleased.map(|_| self.last_release + ACK_INTERVAL);
            tokio::select! {
                biased;
                () = shared.shutdown.wait() => {
                    self.drain(rx, &mut inflight).await;
                    let _ = client.try_disconnect();
                    return End::Stop;
                }
                event = rx.recv() => match event {
                    None => return End::Failed("the MQTT event loop stopped".into()),
                    Some(Err(e)) => return End::Failed(describe(&e)),
                    Some(Ok(Event::Incoming(Incoming::ConnAck(_)))) => {
                        connected = true;
                        backoff.reset();
                        shared.shipper.set_state(ConnState::Connected);
                        shared.shipper.connected_since_ms.store(now_ms(), Ordering::Relaxed);
                        if attempts > 0 {
                            shared.shipper.reconnects.fetch_add(1, Ordering::Relaxed);
                        }
                        tracing::info!(collector = %self.setup.collector.address, from_seq = cursor.seq, "connected to the collector");
                    }
                    Some(Ok(event)) => on_event(&event, &mut inflight),
                },
                () = shared.appended.notified(), if connected && room => {}
                () = sleep_until(release_at), if release_at.is_some() => {}
            }
        }
    }

    /// Sends entries until the window is full or the spool has no more.
    fn fill(
        &mut self,
        client: &AsyncClient,
        inflight: &mut VecDeque<InFlight>,
        cursor: &mut Cursor,
        window: usize,
    ) -> Result<(), String> {
        let mut bytes: usize = inflight.iter().map(|f| f.bytes).sum();
        while inflight.len() < window && bytes < MAX_INFLIGHT_BYTES {
            let entry =
                lock(self.spool).read(cursor).map_err(|e| format!("reading the spool: {e}"))?;
            let Some(entry) = entry else { break };
            if entry.records == 0 {
                inflight.push_back(InFlight {
                    seq: entry.seq,
                    records: 0,
                    bytes: 0,
                    pkid: None,
                    acked: true,
                });
                continue;
            }
            let stream = match serde_json::from_slice::<MetaStream>(&entry.meta) {
                Ok(m) if !m.stream.is_empty() => m.stream,
                other => {
                    // Only this agent writes the spool; an entry it cannot
                    // read is skipped (and reported) rather than blocking all
                    // the others forever.
                    let why = other.err().map_or_else(|| "no stream".to_owned(), |e| e.to_string());
                    tracing::error!(seq = entry.seq, error = %why, "spool entry with unreadable metadata skipped");
                    self.shared
                        .shipper
                        .last_error
                        .set(format!("spool entry {} skipped: {why}", entry.seq));
                    inflight.push_back(InFlight {
                        seq: entry.seq,
                        records: 0,
                        bytes: 0,
                        pkid: None,
                        acked: true,
                    });
                    continue;
                }
            };
            let size = entry.payload.len();
            client
                .try_publish(batch_topic(&stream), QoS::AtLeastOnce, false, entry.payload)
                .map_err(|e| format!("handing a batch to the MQTT client: {e}"))?;
            inflight.push_back(InFlight {
                seq: entry.seq,
                records: entry.records,
                bytes: size,
                pkid: None,
                acked: false,
            });
            bytes += size;
        }
        self.shared.shipper.inflight.store(inflight.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Pops the acknowledged prefix of the window and counts it.
    fn take_acked(&mut self, inflight: &mut VecDeque<InFlight>) {
        let stats = &self.shared.shipper;
        while inflight.front().is_some_and(|f| f.acked) {
            let Some(f) = inflight.pop_front() else { break };
            if f.records > 0 {
                stats.batches.fetch_add(1, Ordering::Relaxed);
                stats.records.fetch_add(u64::from(f.records), Ordering::Relaxed);
                stats.bytes.fetch_add(f.bytes as u64, Ordering::Relaxed);
            }
            self.unreleased = Some(f.seq + 1);
            self.since_release += 1;
        }
        stats.inflight.store(inflight.len() as u64, Ordering::Relaxed);
    }

    /// Releases the acknowledged prefix from the spool (`force`: even if
    /// recently done).
    fn release(&mut self, force: bool) {
        let Some(below) = self.unreleased else { return };
        if !force && self.since_release < ACK_EVERY && self.last_release.elapsed() < ACK_INTERVAL {
            return;
        }
        if let Err(e) = lock(self.spool).ack(below) {
            if let Some(failures) = self.release_log.hit(std::time::Instant::now()) {
                tracing::warn!(error = %e, failures, "releasing acknowledged spool entries failed; will retry");
            }
            self.shared.batcher.last_error.set(&e);
            // Older segments may have gone (see `Spool::ack`): a batcher
            // waiting on a full disk looks again.
            self.shared.space.notify();
            return;
        }
        if self.release_log.active() {
            self.release_log.reset();
            tracing::info!("releasing acknowledged spool entries works again");
        }
        self.unreleased = None;
        self.since_release = 0;
        self.last_release = Instant::now();
        self.shared.space.notify();
    }

    /// At shutdown: waits a little for the acknowledgements of what is in
    /// flight, so it is not sent again at the next start.
    async fn drain(
        &mut self,
        rx: &mut mpsc::Receiver<Result<Event, ConnectionError>>,
        inflight: &mut VecDeque<InFlight>,
    ) {
        let deadline = Instant::now() + DRAIN_ON_STOP;
        self.take_acked(inflight);
        while !inflight.is_empty() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Ok(event))) => on_event(&event, inflight),
                _ => break,
            }
            self.take_acked(inflight);
        }
        self.release(true);
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Matches rumqttc's events to the window.
fn on_event(event: &Event, inflight: &mut VecDeque<InFlight>) {
    match event {
        // Publishes are written in the order they were handed over.
        Event::Outgoing(Outgoing::Publish(pkid)) => {
            if let Some(f) =
                inflight.iter_mut().find(|f| !f.acked && f.pkid.is_none() && f.records > 0)
            {
                f.pkid = Some(*pkid);
            }
        }
        Event::Incoming(Incoming::PubAck(ack)) => {
            match inflight.iter_mut().find(|f| !f.acked && f.pkid == Some(ack.pkid)) {
                Some(f) => f.acked = true,
                None => tracing::debug!(pkid = ack.pkid, "acknowledgement of no batch in flight"),
            }
        }
        _ => {}
    }
}

/// A connection error in words for the log and the status.
fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => {
            format!(
                "the collector refused the connection: {code:?} (check the client certificate, client id or credentials)"
            )
        }
        ConnectionError::Tls(t) => format!("TLS: {t}"),
        ConnectionError::Io(io) => format!("network: {io}"),
        ConnectionError::NetworkTimeout => "timed out connecting".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::PubAck;

    fn entry(seq: u64) -> InFlight {
        InFlight { seq, records: 3, bytes: 10, pkid: None, acked: false }
    }

    #[test]
    fn acknowledgements_match_packet_ids_in_write_order() {
        let mut w: VecDeque<InFlight> = (0..3).map(entry).collect();
        w.insert(1, InFlight { seq: 9, records: 0, bytes: 0, pkid: None, acked: true });
        for pkid in [5, 6, 7] {
            on_event(&Event::Outgoing(Outgoing::Publish(pkid)), &mut w);
        }
        let pkids: Vec<Option<u16>> = w.iter().map(|f| f.pkid).collect();
        assert_eq!(pkids, vec![Some(5), None, Some(6), Some(7)]);
        on_event(&Event::Incoming(Incoming::PubAck(PubAck::new(6))), &mut w);
        assert!(w[2].acked && !w[0].acked);
        on_event(&Event::Incoming(Incoming::PubAck(PubAck::new(42))), &mut w);
        assert_eq!(w.iter().filter(|f| f.acked).count(), 2);
    }

    #[test]
    fn topics_and_error_words() {
        assert_eq!(batch_topic("logs"), "weir/logs/$batch");
        let refused = describe(&ConnectionError::ConnectionRefused(
            rumqttc::ConnectReturnCode::NotAuthorized,
        ));
        assert!(refused.contains("NotAuthorized"), "{refused}");
    }
}
