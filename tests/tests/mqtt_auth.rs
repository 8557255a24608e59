//! Authentication and authorisation refusals: bad passwords, unknown users,
//! no credentials on the TLS listener, a certificate from another CA, a
//! client id that is not the certificate's identity, a client id held by
//! another identity, and per-identity ACLs with `%c`/`%u` (a device limited
//! to its own partition keys, in batches too). Refused publishes are not
//! stored; allowed ones are.

mod mqtt_support;

use std::process::Command;
use std::time::Duration;

use mqtt_support::*;
use weir_tests::harness::{Collector, binary};
use weir_wire::{OwnedBatch, OwnedRecord, encode_batch_to_vec};

const TIMEOUT: Duration = Duration::from_secs(60);

fn config(dir: &std::path::Path) -> String {
    let alice = weir_collector::ingest::hash_password("alice-pw").expect("hash");
    let path = config_file(
        dir,
        &format!(
            r#"
[[mqtt.users]]
name = "alice"
password_hash = "{alice}"

[[mqtt.acl]]
identity = "*"
publish = ["weir/telemetry/%c", "weir/telemetry/$batch"]

[[mqtt.acl]]
identity = "alice"
publish = ["weir/alice/#"]

[[mqtt.acl]]
identity = "anonymous"
publish = ["weir/public/+"]
"#
        ),
    );
    path.to_str().expect("utf-8 path").to_owned()
}

fn issue(c: &Collector, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let out = Command::new(binary("weir-collector"))
        .args(["certs", "issue-device", name, "--data-dir"])
        .arg(&c.data_dir)
        .output()
        .expect("certs issue-device");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dir = c.data_dir.join("tls/devices");
    (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_checked_and_refusals_carry_reason_codes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = start(&["--config", &config(tmp.path())]);
    let (plain, secure) = (addr(&c, "mqtt"), addr(&c, "mqtts"));
    let ca = ca(&c);
    let server_only = tls(&ca, None);
    let one = || vec![Msg::new("weir/alice/x", 1, "x")];

    // Wrong password, unknown user: 3.1.1 code 4, MQTT 5 0x86.
    for (user, pw) in [("alice", "wrong"), ("mallory", "alice-pw")] {
        let r = publish(&Conn::new(plain, Version::V4, "c4").with_login(user, pw), one(), TIMEOUT)
            .await;
        assert_eq!(r.connack, Some(4), "{user}: {r:?}");
        let r = publish(&Conn::new(plain, Version::V5, "c5").with_login(user, pw), one(), TIMEOUT)
            .await;
        assert_eq!(r.connack, Some(0x86), "{user}: {r:?}");
    }
    // No credentials on the TLS listener: anonymous is for the plain one only.
    let r = publish(
        &Conn::new(secure, Version::V4, "anon").with_tls(server_only.clone()),
        one(),
        TIMEOUT,
    )
    .await;
    assert_eq!(r.connack, Some(5), "{r:?}");
    let r = publish(
        &Conn::new(secure, Version::V5, "anon").with_tls(server_only.clone()),
        one(),
        TIMEOUT,
    )
    .await;
    assert_eq!(r.connack, Some(0x87), "{r:?}");
    // The right password works on both listeners.
    let r = publish(
        &Conn::new(secure, Version::V5, "a1").with_tls(server_only).with_login("alice", "alice-pw"),
        one(),
        TIMEOUT,
    )
    .await;
    r.assert_all_ok();

    // A certificate's identity is the client id: another one is refused.
    let (cert, key) = issue(&c, "dev-1");
    let mutual = tls(&ca, Some((&cert, &key)));
    let r =
        publish(&Conn::new(secure, Version::V5, "dev-2").with_tls(mutual.clone()), one(), TIMEOUT)
            .await;
    assert_eq!(r.connack, Some(0x85), "{r:?}");
    let r =
        publish(&Conn::new(secure, Version::V4, "dev-2").with_tls(mutual), one(), TIMEOUT).await;
    assert_eq!(r.connack, Some(2), "{r:?}");

    // A certificate from another CA fails the handshake.
    let other = tempfile::tempdir().expect("tempdir");
    weir_collector::certs::ensure_dev_tls(other.path(), &[]).expect("other CA");
    let stranger =
        weir_collector::certs::issue_device_cert(other.path(), "dev-1", 1, None).expect("stranger");
    let forged = tls(&ca, Some((&stranger.cert, &stranger.key)));
    let r =
        publish(&Conn::new(secure, Version::V5, "dev-1").with_tls(forged), one(), TIMEOUT).await;
    assert!(r.connack.is_none() && r.error.is_some(), "{r:?}");
    // The client may see the failure before the collector logs it.
    let logged = weir_tests::harness::wait_for(Duration::from_secs(10), || {
        c.log().contains("TLS handshake failed")
    });
    assert!(logged, "{}", c.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acls_limit_each_identity_to_its_topics_and_keys() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut c = start(&["--config", &config(tmp.path())]);
    let (plain, secure) = (addr(&c, "mqtt"), addr(&c, "mqtts"));
    let ca = ca(&c);
    let (cert, key) = issue(&c, "dev-1");
    let device = Conn::new(secure, Version::V5, "dev-1").with_tls(tls(&ca, Some((&cert, &key))));
    let batch = |keys: &[&str], seq: u64| {
        encode_batch_to_vec(&OwnedBatch {
            producer_id: "dev-1".into(),
            batch_seq: seq,
            records: keys
                .iter()
                .map(|k| OwnedRecord::new(*k, format!("batch {seq}").into_bytes()))
                .collect(),
        })
        .expect("encode")
    };
    let r = publish(
        &device,
        vec![
            Msg::new("weir/telemetry/dev-1", 1, "own key"),
            Msg::new("weir/telemetry/dev-2", 1, "someone else's key"),
            Msg::new("weir/alice/x", 1, "alice's topic"),
            Msg::new("weir/telemetry/$batch", 1, batch(&["dev-1", "dev-1"], 1)),
            Msg::new("weir/telemetry/$batch", 1, batch(&["dev-1", "dev-2"], 2)),
            Msg::new("weir/telemetry/dev-1", 2, "own key at QoS 2"),
        ],
        TIMEOUT,
    )
    .await;
    assert_eq!(
        r.acks,
        vec![Ack::Ok, Ack::Refused(0x87), Ack::Refused(0x87), Ack::Ok, Ack::Refused(0x87), Ack::Ok],
        "{r:?}"
    );
    // Anonymous clients get the anonymous rule and the "*" one.
    let r = publish(
        &Conn::new(plain, Version::V5, "anon-1"),
        vec![
            Msg::new("weir/public/k", 1, "public"),
            Msg::new("weir/telemetry/anon-1", 1, "own client id"),
            Msg::new("weir/alice/k", 1, "not alice"),
        ],
        TIMEOUT,
    )
    .await;
    assert_eq!(r.acks, vec![Ack::Ok, Ack::Ok, Ack::Refused(0x87)], "{r:?}");
    // Alice's own rule.
    let r = publish(
        &Conn::new(plain, Version::V5, "alice-phone").with_login("alice", "alice-pw"),
        vec![Msg::new("weir/alice/notes", 1, "mine")],
        TIMEOUT,
    )
    .await;
    r.assert_all_ok();
    // 3.1.1 has no negative PUBACK: the connection is closed.
    let r = publish(
        &Conn::new(plain, Version::V4, "anon-2"),
        vec![Msg::new("weir/alice/k", 1, "refused")],
        TIMEOUT,
    )
    .await;
    assert_ne!(r.acks[0], Ack::Ok, "{r:?}");
    assert!(r.error.is_some(), "{r:?}");

    // A client id held by a certificate identity cannot be borrowed.
    let (hold_tx, hold_rx) = tokio::sync::oneshot::channel::<()>();
    {
        use rumqttc::v5::{AsyncClient, Event, MqttOptions};
        use rumqttc::{TlsConfiguration, Transport};
        let mut opts = MqttOptions::new("dev-1", "127.0.0.1", secure.port());
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls(
            &ca,
            Some((&cert, &key)),
        ))));
        let (_client, mut el) = AsyncClient::new(opts, 4);
        let (connected_tx, connected_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut connected_tx = Some(connected_tx);
            let mut hold_rx = hold_rx;
            loop {
                tokio::select! {
                    _ = &mut hold_rx => break,
                    ev = el.poll() => match ev {
                        Ok(Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::ConnAck(_))) => {
                            if let Some(tx) = connected_tx.take() { let _ = tx.send(()); }
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            }
        });
        tokio::time::timeout(TIMEOUT, connected_rx)
            .await
            .expect("device connects")
            .expect("connected");
        let r = publish(
            &Conn::new(plain, Version::V5, "dev-1"),
            vec![Msg::new("weir/public/k", 1, "x")],
            TIMEOUT,
        )
        .await;
        assert_eq!(r.connack, Some(0x87), "anonymous client took dev-1's client id: {r:?}");
        let _ = hold_tx.send(());
        let _ = task.await;
    }

    let telemetry = stop_and_read(&mut c, "telemetry").await.expect("telemetry");
    let mut got: Vec<(String, String)> = telemetry
        .iter()
        .map(|r| {
            (
                r.record.partition_key.to_string(),
                String::from_utf8_lossy(&r.record.data).into_owned(),
            )
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, String)> = [
        ("anon-1", "own client id"),
        ("dev-1", "batch 1"),
        ("dev-1", "batch 1"),
        ("dev-1", "own key"),
        ("dev-1", "own key at QoS 2"),
    ]
    .iter()
    .map(|(k, d)| (k.to_string(), d.to_string()))
    .collect();
    want.sort();
    assert_eq!(got, want);
    assert!(read_stream(&c.data_dir, "alice").await.is_some_and(|r| r.len() == 1));
    assert!(read_stream(&c.data_dir, "public").await.is_some_and(|r| r.len() == 1));
}
