//! The load generator: per case, `connections` MQTT 3.1.1 connections over
//! its own lean client (frames encoded once with rumqttc's codec, packet id
//! and batch sequence number patched in place, PUBACKs parsed in place),
//! `window` publishes in flight each, counting what is acknowledged in the
//! measured seconds and each publish's latency.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long outstanding acknowledgements may take once sending stops.
pub(super) const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// QoS 0 publishes per QoS 1 barrier in the `qos0` case.
pub(super) const QOS0_GROUP: usize = 100;
/// Records per publish in the `batch` case (messages per burst for JetStream).
pub(super) const BATCH_RECORDS: usize = 100;
/// Password of the `bench` user the generator logs in as.
pub(super) const BENCH_PASSWORD: &str = "bench-password";

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Qos1,
    Qos0,
    Batch,
}

#[derive(Clone)]
pub(super) struct Case {
    pub(super) name: &'static str,
    pub(super) mode: Mode,
    pub(super) payload: usize,
    pub(super) connections: usize,
    pub(super) window: usize,
    pub(super) tls: bool,
}

/// Where a run sends its load.
#[derive(Clone)]
pub(super) struct Target {
    pub(super) name: &'static str,
    pub(super) addr: SocketAddr,
    pub(super) tls: Option<Arc<rustls::ClientConfig>>,
}

/// One run's figures.
#[derive(Clone, Copy, Default)]
pub(super) struct Figures {
    pub(super) msgs_per_sec: f64,
    pub(super) records_per_sec: f64,
    pub(super) mb_per_sec: f64,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
}

/// The bytes one publish of a case carries.
fn payload(case: &Case, conn: usize) -> Vec<u8> {
    match case.mode {
        Mode::Batch => {
            let records = (0..BATCH_RECORDS)
                .map(|i| {
                    weir_wire::OwnedRecord::new(format!("c{conn}-k{i}"), vec![b'x'; case.payload])
                })
                .collect();
            // The sequence number is patched per publish in `Frames`.
            weir_wire::encode_batch_to_vec(&weir_wire::OwnedBatch {
                producer_id: format!("bench-{conn}-{}", std::process::id()),
                batch_seq: 0,
                records,
            })
            .unwrap_or_default()
        }
        _ => vec![b'x'; case.payload],
    }
}

/// Runs one case against one target and measures it.
pub(super) async fn load(
    case: &Case,
    target: &Target,
    stream: &str,
    seconds: f64,
) -> Result<Figures, String> {
    let start = Instant::now() + Duration::from_secs(1);
    let end = start + Duration::from_secs_f64(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for conn in 0..case.connections {
        let (case, target, stream) = (case.clone(), target.clone(), stream.to_owned());
        tasks.spawn(async move { connection(&case, &target, &stream, conn, start, end).await });
    }
    let mut acked = 0u64;
    let mut bytes = 0u64;
    let mut latencies: Vec<u32> = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let r = r.map_err(|e| e.to_string())??;
        acked += r.acked;
        bytes += r.bytes;
        latencies.extend(r.latencies_us);
    }
    Ok(figures(case.mode, acked, bytes, latencies, seconds))
}

/// A run's figures from what was acknowledged in its measured `seconds`:
/// `acked` publishes (window slots' worth), `bytes` of payload, and each
/// slot's publish→acknowledgement latency in µs.
pub(super) fn figures(
    mode: Mode,
    acked: u64,
    bytes: u64,
    mut latencies: Vec<u32>,
    seconds: f64,
) -> Figures {
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |us| f64::from(*us) / 1000.0)
    };
    let msgs = acked as f64 / seconds;
    Figures {
        msgs_per_sec: msgs,
        records_per_sec: if mode == Mode::Batch { msgs * BATCH_RECORDS as f64 } else { msgs },
        mb_per_sec: bytes as f64 / seconds / 1e6,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    }
}

struct ConnResult {
    acked: u64,
    bytes: u64,
    latencies_us: Vec<u32>,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn connection(
    case: &Case,
    target: &Target,
    stream: &str,
    conn: usize,
    start: Instant,
    end: Instant,
) -> Result<ConnResult, String> {
    let tcp = TcpStream::connect(target.addr)
        .await
        .map_err(|e| format!("connect {}: {e}", target.addr))?;
    let _ = tcp.set_nodelay(true);
    let mut io: Box<dyn Io> = match &target.tls {
        Some(config) => {
            let connector = tokio_rustls::TlsConnector::from(config.clone());
            let name =
                rustls::pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
            Box::new(connector.connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))?)
        }
        None => Box::new(tcp),
    };
    let client_id = format!("bench-{}-{conn}-{}", target.name, std::process::id());
    let mut out = BytesMut::new();
    let mut connect = rumqttc::Connect::new(client_id);
    connect.keep_alive = 120;
    connect.set_login("bench", BENCH_PASSWORD);
    rumqttc::Packet::Connect(connect).write(&mut out, 1 << 20).map_err(|e| e.to_string())?;
    io.write_all(&out).await.map_err(|e| e.to_string())?;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        if buf.len() >= 4 {
            if buf[0] != 0x20 || buf[3] != 0 {
                return Err(format!("{}: connection refused ({:?})", target.name, &buf[..4]));
            }
            let _ = buf.split_to(4);
            break;
        }
        if io.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
            return Err(format!("{}: closed before CONNACK", target.name));
        }
    }
    let topic = match case.mode {
        Mode::Batch => format!("weir/{stream}/$batch"),
        _ => format!("weir/{stream}/c{conn}"),
    };
    let body = payload(case, conn);
    let mut frames = Frames::new(&topic, &body, case.mode == Mode::Batch);
    // A window slot is one QoS 1 publish, or in QoS 0 mode a group of QoS 0
    // publishes closed by a QoS 1 barrier.
    let per_slot: u64 = if case.mode == Mode::Qos0 { QOS0_GROUP as u64 + 1 } else { 1 };
    let mut sent_at: Vec<Option<Instant>> = vec![None; 65536];
    let mut next_pkid: u16 = 1;
    let mut outstanding = 0usize;
    let mut result = ConnResult { acked: 0, bytes: 0, latencies_us: Vec::new() };
    let mut stopping_since: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now >= end && stopping_since.is_none() {
            stopping_since = Some(now);
        }
        if stopping_since.is_none() {
            out.clear();
            while outstanding < case.window {
                if case.mode == Mode::Qos0 {
                    for _ in 0..QOS0_GROUP {
                        frames.qos0(&mut out);
                    }
                }
                frames.qos1(&mut out, next_pkid);
                sent_at[usize::from(next_pkid)] = Some(now);
                next_pkid = if next_pkid == u16::MAX { 1 } else { next_pkid + 1 };
                outstanding += 1;
            }
            if !out.is_empty() {
                io.write_all(&out).await.map_err(|e| format!("{}: write: {e}", target.name))?;
            }
        }
        if outstanding == 0 {
            break;
        }
        if stopping_since.is_some_and(|s| s.elapsed() > DRAIN_TIMEOUT) {
            return Err(format!(
                "{}: {outstanding} acknowledgements missing after {DRAIN_TIMEOUT:?}",
                target.name
            ));
        }
        let read = tokio::time::timeout(DRAIN_TIMEOUT, io.read_buf(&mut buf))
            .await
            .map_err(|_| format!("{}: no acknowledgement for {DRAIN_TIMEOUT:?}", target.name))?
            .map_err(|e| format!("{}: read: {e}", target.name))?;
        if read == 0 {
            return Err(format!("{}: connection closed", target.name));
        }
        let now = Instant::now();
        while buf.len() >= 4 {
            if buf[0] != 0x40 || buf[1] != 0x02 {
                return Err(format!("{}: unexpected packet {:#04x}", target.name, buf[0]));
            }
            let pkid = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
            let _ = buf.split_to(4);
            outstanding = outstanding.saturating_sub(1);
            if let Some(t) = sent_at[pkid].take()
                && t >= start
                && now <= end
            {
                result.acked += per_slot;
                result.bytes += per_slot * body.len() as u64;
                result
                    .latencies_us
                    .push(u32::try_from(now.duration_since(t).as_micros()).unwrap_or(u32::MAX));
            }
        }
    }
    let _ = io.write_all(&[0xE0, 0x00]).await;
    let _ = io.shutdown().await;
    Ok(result)
}

/// Pre-encoded PUBLISH frames: only the packet id (and a batch's sequence
/// number) change between publishes.
struct Frames {
    qos1: Vec<u8>,
    qos0: Vec<u8>,
    pkid_at: usize,
    /// Where the batch sequence number's varint sits, for batches (a fixed
    /// 9-byte varint is reserved so it can be patched in place).
    seq_at: Option<usize>,
    seq: u64,
}

impl Frames {
    fn new(topic: &str, body: &[u8], batch: bool) -> Self {
        let mut body = body.to_vec();
        let mut seq_at = None;
        if batch {
            // Envelope: [version][kind][producer id len][id][seq varint]...
            // Re-encode the sequence as a 9-byte varint placeholder.
            let id_len = usize::from(body[2]);
            let at = 3 + id_len;
            body.splice(at..at + 1, [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00]);
            seq_at = Some(at);
        }
        let encode = |qos: rumqttc::QoS| {
            let mut p = rumqttc::Publish::from_bytes(topic, qos, bytes::Bytes::from(body.clone()));
            p.pkid = if qos == rumqttc::QoS::AtMostOnce { 0 } else { 1 };
            let mut b = BytesMut::new();
            let _ = rumqttc::Packet::Publish(p).write(&mut b, 64 << 20);
            b.to_vec()
        };
        let qos1 = encode(rumqttc::QoS::AtLeastOnce);
        let qos0 = encode(rumqttc::QoS::AtMostOnce);
        // The packet id follows the fixed header and the topic.
        let header = qos1.len() - (2 + topic.len() + 2 + body.len());
        let pkid_at = header + 2 + topic.len();
        let seq_at = seq_at.map(|at| pkid_at + 2 + at);
        Self { qos1, qos0, pkid_at, seq_at, seq: 0 }
    }

    fn qos1(&mut self, out: &mut BytesMut, pkid: u16) {
        let start = out.len();
        out.extend_from_slice(&self.qos1);
        out[start + self.pkid_at..start + self.pkid_at + 2].copy_from_slice(&pkid.to_be_bytes());
        if let Some(at) = self.seq_at {
            self.seq += 1;
            let mut v = self.seq;
            for i in 0..9 {
                let last = i == 8;
                let byte = (v & 0x7F) as u8 | if last { 0 } else { 0x80 };
                out[start + at + i] = byte;
                v >>= 7;
            }
        }
    }

    fn qos0(&self, out: &mut BytesMut) {
        out.extend_from_slice(&self.qos0);
    }
}
