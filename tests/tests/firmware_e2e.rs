//! The whole path, node to stream: the QEMU board example
//! (`firmware/boards/qemu-lm3s6965`) runs in `qemu-system-arm` with UART0 on
//! a Unix socket; the real `weir-agent`'s serial input connects to that
//! socket, spools the node's frames, acknowledges them back over UART0 and
//! ships them over mutual TLS to a real `weir-collector`; the test reads the
//! records back through the Kinesis API (the AWS SDK).
//!
//! Checks: the example exits successfully having had every frame
//! acknowledged (it prints its link counters over semihosting); every
//! sample arrived exactly once, with the node's partition key, in order of
//! the node's uptime; each health record precedes its tick's reading. The
//! test prints its run time.
//!
//! Needs `qemu-system-arm` and the `thumbv7m-none-eabi` target; `scripts/test`
//! installs both when they are missing.

mod agent_support;
mod firmware_support;

use std::time::{Duration, Instant};

use agent_support::{AgentSetup, FAST_BATCH, SHIP_TIMEOUT, collector, device_cert, mqtts_addr};
use firmware_support::{HEALTH_EVERY, NODE_ID, Qemu, SAMPLES, build_example};
use weir_tests::harness::wait_for;

const STREAM: &str = "node-telemetry";
/// Boot, 16 paced ticks and the wait for the last acks take a few seconds.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn qemu_node_to_agent_to_collector_over_the_serial_line() {
    let started = Instant::now();
    let elf = build_example();
    let built = started.elapsed();

    let tmp = tempfile::tempdir().expect("tempdir");
    let data_dir = tmp.path().join("data");
    let mut collector = collector(&data_dir, tmp.path(), 0);
    let http = collector.ready()["http"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no http address in the ready file\n{}", collector.report()));
    let (ca, cert, key) = device_cert(&data_dir, "gw-qemu", tmp.path());

    // QEMU listens on the socket and starts the guest only once the agent
    // has connected, so no byte goes to nobody.
    let socket = tmp.path().join("uart0.sock");
    let qemu_dir = tmp.path().join("qemu");
    std::fs::create_dir_all(&qemu_dir).expect("qemu dir");
    let mut qemu = Qemu::start(&elf, &socket, &qemu_dir);
    assert!(
        wait_for(RUN_TIMEOUT, || socket.exists() || qemu.try_wait().is_some()),
        "QEMU never opened UART0\n{}",
        qemu.context()
    );
    let agent_dir = tmp.path().join("agent");
    std::fs::create_dir_all(&agent_dir).expect("agent dir");
    let mut agent = AgentSetup {
        dir: agent_dir,
        device_id: "gw-qemu".into(),
        address: mqtts_addr(&collector).to_string(),
        ca,
        identity: Some((cert, key)),
        spool: String::new(),
        extra: format!(
            "{FAST_BATCH}\n[[inputs]]\nkind = \"serial\"\nname = \"uart0\"\nsocket = {socket:?}\n\
             stream = \"{STREAM}\"\n"
        ),
    }
    .write();
    agent.start();

    let status = qemu.wait_until(Instant::now() + RUN_TIMEOUT).unwrap_or_else(|| {
        panic!(
            "the example still runs after {RUN_TIMEOUT:?}\n{}\n{}",
            qemu.context(),
            agent.report()
        )
    });
    assert!(
        status.success(),
        "the example exited with {status}\n{}\n{}",
        qemu.context(),
        agent.report()
    );
    let link = qemu.stdout();
    let counters: Vec<u64> = link
        .lines()
        .find_map(|l| l.strip_prefix("link: "))
        .unwrap_or_else(|| panic!("no link counters from the example\n{}", qemu.context()))
        .split(' ')
        .filter_map(|w| w.parse().ok())
        .collect();
    let [acks, queued, sent, retransmits, bad] = counters[..] else {
        panic!("link counters {counters:?}\n{}", qemu.context())
    };
    assert!(acks > 0, "the node got no ack\n{}\n{}", qemu.context(), agent.report());
    assert_eq!(queued, 0, "frames left unacknowledged on the node\n{}", qemu.context());
    assert_eq!(bad, 0, "the node refused bytes from the agent\n{}", qemu.context());

    // 16 readings and a health record every fourth tick.
    let health = u64::from(SAMPLES.div_ceil(HEALTH_EVERY));
    let total = u64::from(SAMPLES) + health;
    assert!(
        agent.wait_status(SHIP_TIMEOUT, |s| {
            s["shipped"]["records"].as_u64() == Some(total)
                && s["spool"]["entries"] == 0
                && s["pending_records"] == 0
        }),
        "the agent did not ship {total} records\n{}",
        agent.report()
    );
    let serial = agent.status().expect("status")["inputs"][0]["serial"].clone();
    assert_eq!(serial["frames"], u64::from(SAMPLES), "{serial}");
    assert_eq!(serial["corrupt"], 0, "{serial}");
    assert_eq!(serial["duplicates"].as_u64(), Some(sent - u64::from(SAMPLES)), "{serial}");
    let node = &serial["nodes"][0];
    let producer = node["producer"].as_str().unwrap_or_default();
    assert!(producer.starts_with(NODE_ID), "producer id {producer:?}");
    assert_eq!(node["acked_seq"].as_u64(), Some(u64::from(SAMPLES - 1)), "{serial}");

    let records = firmware_support::read_kinesis(http, STREAM);
    let mut uptimes = Vec::new();
    let mut health_at = Vec::new();
    for (_, key, data) in &records {
        assert_eq!(key, NODE_ID, "records keep the node's partition key");
        let v: serde_json::Value = serde_json::from_slice(data).expect("JSON record");
        let uptime = v["uptime_ms"].as_u64().expect("uptime_ms");
        match v["metric"].as_str() {
            Some("temperature") => {
                assert_eq!(v["sensor"], "tmp102");
                assert_eq!(v["unit"], "celsius");
                let t = v["value"].as_f64().expect("value");
                assert!((20.0..30.0).contains(&t), "implausible temperature {t}");
                uptimes.push(uptime);
            }
            Some("weir.health") => {
                assert!(
                    health_at.len() == uptimes.len() / HEALTH_EVERY as usize,
                    "health record at {uptime} out of place"
                );
                assert!(
                    uptimes.last().is_none_or(|u| *u < uptime),
                    "health record of tick {uptime} after that tick's reading"
                );
                health_at.push(uptime);
            }
            other => panic!("unexpected record {other:?}: {v}"),
        }
    }
    let expect: Vec<u64> = (0..u64::from(SAMPLES)).map(|t| t * 1000).collect();
    assert_eq!(uptimes, expect, "every reading exactly once, in order");
    let expect_health: Vec<u64> =
        (0..u64::from(SAMPLES)).step_by(HEALTH_EVERY as usize).map(|t| t * 1000).collect();
    assert_eq!(health_at, expect_health, "every health record exactly once, in order");

    assert!(
        agent.stop(Duration::from_secs(30)).is_some(),
        "agent did not stop\n{}",
        agent.report()
    );
    agent_support::stop(&mut collector);
    let run = started.elapsed();
    #[allow(clippy::print_stdout)]
    {
        println!(
            "firmware_e2e: {} records node -> agent -> collector; {acks} acks, {retransmits} retransmits; \
             run time {:.1} s ({:.1} s building the example)",
            records.len(),
            run.as_secs_f64(),
            built.as_secs_f64()
        );
    }
}
