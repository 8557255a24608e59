//! Tests of the sampler: one batch frame per tick, partition keys, the health
//! record (dropped frames, sensor errors), configuration checks, boot ids.

use std::string::{String as StdString, ToString};
use std::vec;
use std::vec::Vec;

use embedded_hal::i2c::ErrorKind;
use embedded_hal_mock::eh1::i2c::{Mock, Transaction};
use weir_wire::{Envelope, FeedResult, FrameDecoder, FrameKind};

use super::*;
use crate::queue::FrameQueue;
use crate::sensor::Quantity;
use crate::tmp102::{self, Address, Tmp102};

const B: usize = 512;
const F: usize = max_encoded_frame_len(B);

/// What one queued frame holds: frame seq, producer id, batch seq and
/// `(key, timestamp, data)` per record.
#[derive(Debug, PartialEq)]
struct Batch {
    seq: u32,
    producer: StdString,
    batch_seq: u64,
    records: Vec<(StdString, Option<u64>, StdString)>,
}

/// Decodes the frames of `queue` as the gateway will.
fn frames<const N: usize, const G: usize>(queue: &mut FrameQueue<N, G>) -> Vec<Batch> {
    let mut out = Vec::new();
    let mut decoder = FrameDecoder::<G>::new();
    queue.rewind();
    while let Some((_, line)) = queue.next_unsent() {
        let FeedResult::Frame { frame, remaining } = decoder.feed(line) else {
            panic!("not a frame");
        };
        assert!(remaining.is_empty());
        assert_eq!(frame.kind, FrameKind::Data);
        let Envelope::Batch(view) = Envelope::decode(frame.payload).expect("envelope") else {
            panic!("not a batch");
        };
        let records = view
            .records()
            .map(|r| {
                let r = r.expect("record");
                let data = core::str::from_utf8(r.data).expect("utf8").to_string();
                (r.partition_key.to_string(), r.producer_timestamp_ms, data)
            })
            .collect();
        out.push(Batch {
            seq: frame.seq,
            producer: view.producer_id().to_string(),
            batch_seq: view.batch_seq(),
            records,
        });
        queue.mark_sent();
    }
    out
}

fn temp(bytes: [u8; 2]) -> Transaction {
    Transaction::write_read(0x48, vec![0x00], bytes.to_vec())
}

fn config(keys: KeyMode, health_every: u32) -> SamplerConfig<'static> {
    SamplerConfig { node_id: "node-1", boot_id: 0x2a, keys, health_every }
}

fn health(dropped: u32, queued: usize, errors: u32, uptime: u64) -> StdString {
    std::format!(
        r#"{{"metric":"weir.health","frames_dropped":{dropped},"frames_queued":{queued},"sensor_errors":{errors},"uptime_ms":{uptime}}}"#
    )
}

#[test]
fn a_tick_becomes_one_batch_frame_keyed_by_node() {
    let mut i2c = Mock::new(&[temp([0x19, 0x40]), temp([0xE7, 0x00])]);
    let mut sensor = Tmp102::new(i2c.clone(), Address::Gnd);
    let mut sampler = Sampler::<B>::new(&config(KeyMode::Node, 10)).expect("config");
    let mut queue = FrameQueue::<4, F>::with_first_seq(40);

    let mut tick = sampler.start(&mut queue, 1_000, Some(1_700_000_000_000)).expect("start");
    let m = tick.read(&mut sensor).expect("read");
    assert_eq!(m, Measurement { quantity: Quantity::Temperature, milli: 25_250 });
    let pushed = tick.finish().expect("finish");
    assert_eq!(pushed, Some(Pushed { seq: 40, dropped: None }));

    let mut tick = sampler.start(&mut queue, 2_000, None).expect("start");
    tick.read(&mut sensor).expect("read");
    tick.finish().expect("finish");
    i2c.done();

    let ts = Some(1_700_000_000_000);
    let reading = |value: &str, uptime: u64| {
        std::format!(
            r#"{{"metric":"temperature","sensor":"tmp102","value":{value},"unit":"celsius","uptime_ms":{uptime}}}"#
        )
    };
    assert_eq!(
        frames(&mut queue),
        [
            Batch {
                seq: 40,
                producer: "node-1@0000002a".into(),
                batch_seq: 40,
                records: vec![
                    ("node-1".into(), ts, health(0, 0, 0, 1_000)),
                    ("node-1".into(), ts, reading("25.250", 1_000)),
                ],
            },
            Batch {
                seq: 41,
                producer: "node-1@0000002a".into(),
                batch_seq: 41,
                records: vec![("node-1".into(), None, reading("-25.000", 2_000))],
            },
        ]
    );
}

#[test]
fn per_sensor_keys_and_sensor_errors_in_the_health_record() {
    let mut i2c = Mock::new(&[temp([0, 0]).with_error(ErrorKind::Other), temp([0x00, 0x10])]);
    let mut sensor = Tmp102::new(i2c.clone(), Address::Gnd);
    let mut sampler = Sampler::<B>::new(&config(KeyMode::PerSensor, 2)).expect("config");
    let mut queue = FrameQueue::<4, F>::new();

    let mut tick = sampler.start(&mut queue, 0, None).expect("start");
    assert_eq!(
        tick.read(&mut sensor),
        Err(SampleError::Sensor(tmp102::Error::I2c(ErrorKind::Other)))
    );
    tick.finish().expect("finish");
    let tick = sampler.start(&mut queue, 10, None).expect("start");
    assert_eq!(tick.finish(), Ok(None), "no reading and no health due: no frame");
    let mut tick = sampler.start(&mut queue, 20, None).expect("start");
    tick.read(&mut sensor).expect("read");
    tick.finish().expect("finish");
    assert_eq!(sampler.sensor_errors(), 1);
    i2c.done();

    let got = frames(&mut queue);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].records, [("node-1".into(), None, health(0, 0, 0, 0))]);
    assert_eq!(got[1].seq, 1);
    let keys: Vec<&str> = got[1].records.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(keys, ["node-1", "node-1/tmp102"]);
    assert_eq!(got[1].records[0].2, health(0, 1, 1, 20));
    assert!(got[1].records[1].2.contains(r#""value":0.062,"#));
}

#[test]
fn dropped_frames_are_reported_in_the_next_health_record() {
    let mut sampler = Sampler::<B>::new(&config(KeyMode::Node, 1)).expect("config");
    let mut queue = FrameQueue::<2, F>::new();
    for uptime in 0..4 {
        let tick = sampler.start(&mut queue, uptime, None).expect("start");
        tick.finish().expect("finish");
    }
    assert_eq!(queue.dropped(), 2);
    let got = frames(&mut queue);
    let seqs: Vec<u32> = got.iter().map(|b| b.seq).collect();
    assert_eq!(seqs, [2, 3]);
    assert_eq!(got[0].records[0].2, health(0, 2, 0, 2));
    assert_eq!(got[1].records[0].2, health(1, 2, 0, 3));
}

struct Named(&'static str);

impl Sensor for Named {
    type Error = Infallible;

    fn name(&self) -> &str {
        self.0
    }

    fn read(&mut self) -> Result<Measurement, Infallible> {
        Ok(Measurement { quantity: Quantity::RelativeHumidity, milli: 45_000 })
    }
}

#[test]
fn sensor_names_are_checked_and_a_full_batch_is_an_error() {
    // Room for the header and the health record, not for a reading too.
    let mut sampler = Sampler::<128>::new(&config(KeyMode::PerSensor, 1000)).expect("config");
    let mut queue = FrameQueue::<2, { max_encoded_frame_len(128) }>::new();
    let mut tick = sampler.start(&mut queue, 0, None).expect("start");
    for bad in ["", "has space", "quote\"", "x234567890123456789012345678901234"] {
        assert_eq!(tick.read(&mut Named(bad)), Err(SampleError::InvalidSensorName), "{bad:?}");
    }
    let too_big = tick.read(&mut Named("sht31"));
    assert_eq!(too_big, Err(SampleError::Encode(EncodeError::BufferFull)));
    assert_eq!(tick.finish(), Ok(Some(Pushed { seq: 0, dropped: None })));
    let got = frames(&mut queue);
    assert_eq!(got[0].records.len(), 1, "the health record alone");
}

#[test]
fn invalid_configurations_are_refused() {
    let long = "n".repeat(56);
    let bad = [
        (
            SamplerConfig { node_id: "", ..config(KeyMode::Node, 1) },
            ConfigError::InvalidNodeId { bytes: 0 },
        ),
        (
            SamplerConfig { node_id: &long, ..config(KeyMode::Node, 1) },
            ConfigError::InvalidNodeId { bytes: 56 },
        ),
        (config(KeyMode::Node, 0), ConfigError::ZeroHealthInterval),
    ];
    for (config, error) in bad {
        assert_eq!(Sampler::<B>::new(&config).map(|_| ()), Err(error));
    }
    assert_eq!(
        ConfigError::InvalidNodeId { bytes: 0 }.to_string(),
        "node_id is 0 bytes; it must be 1 to 55"
    );
}

#[test]
fn each_boot_is_its_own_producer_keyed_by_the_node() {
    // The longest node id still makes a producer id the wire accepts.
    let node_id = "n".repeat(MAX_NODE_ID_BYTES);
    let mut queue = FrameQueue::<4, F>::new();
    for boot_id in [0, 0xdead_beef] {
        let config = SamplerConfig { node_id: &node_id, boot_id, ..config(KeyMode::Node, 1) };
        let mut sampler = Sampler::<B>::new(&config).expect("config");
        let expected = std::format!("{node_id}@{boot_id:08x}");
        assert_eq!(sampler.producer_id(), expected);
        sampler.start(&mut queue, 0, None).expect("start").finish().expect("finish");
    }
    let got = frames(&mut queue);
    let producers: Vec<&str> = got.iter().map(|b| b.producer.as_str()).collect();
    let boot_a = std::format!("{node_id}@00000000");
    let boot_b = std::format!("{node_id}@deadbeef");
    assert_eq!(producers, [boot_a.as_str(), boot_b.as_str()]);
    assert!(got.iter().all(|b| b.records[0].0 == node_id), "partition key: the node id");
}
