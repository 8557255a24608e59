//! Tests of parsing and checking configurations.

use super::*;
use crate::spool::FullPolicy;
use crate::tail::StartAt;

const GOOD: &str = r#"
device_id = "gw-1"
[collector]
address = "mqtts://collector.example:8883"
[collector.tls]
ca_file = "/etc/weir/ca.pem"
[[inputs]]
kind = "file"
paths = ["/var/log/*.log"]
stream = "logs"
[[inputs]]
kind = "metrics"
stream = "metrics"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("agent.toml"))
}

fn bad_key(text: &str) -> String {
    match parse(text).expect_err("invalid") {
        ConfigError::Invalid { key, .. } => key,
        other => panic!("expected an invalid value, got {other}"),
    }
}

#[test]
fn a_small_file_gets_the_defaults() {
    let c = parse(GOOD).expect("valid");
    assert_eq!(c.device_id, "gw-1");
    assert_eq!(c.collector.client_id, "gw-1");
    assert_eq!((c.collector.host.as_str(), c.collector.port), ("collector.example", 8883));
    let tls = c.collector.tls.expect("tls");
    assert_eq!(tls.server_name, "collector.example");
    assert_eq!(c.batch.max_records, 500);
    assert_eq!(c.spool.policy, FullPolicy::DropOldest);
    assert_eq!(c.status_file, Path::new(DEFAULT_SPOOL_DIR).join(STATUS_FILE_NAME));
    assert_eq!(c.inputs.len(), 2);
    assert_eq!(c.inputs[0].name, "/var/log/*.log");
    assert_eq!(c.inputs[1].name, "metrics");
    let InputKind::File(f) = &c.inputs[0].kind else { panic!("file input") };
    assert_eq!(f.tail.start_at, StartAt::Beginning);
    assert!(f.multiline.is_none());
}

#[test]
fn addresses() {
    assert_eq!(
        parse_address("mqtt://127.0.0.1:1884").expect("ok"),
        (Scheme::Plain, "127.0.0.1".into(), 1884)
    );
    assert_eq!(parse_address("mqtts://[::1]").expect("ok"), (Scheme::Tls, "::1".into(), 8883));
    assert_eq!(parse_address("mqtts://h:9/").expect("ok"), (Scheme::Tls, "h".into(), 9));
    assert!(parse_address("tcp://h:1").is_err());
    assert!(parse_address("mqtts://h:0").is_err());
    assert!(parse_address("mqtts://:8883").is_err());
    assert!(parse_address("mqtts://h:port").is_err());
}

#[test]
fn errors_name_the_key() {
    let e = parse("[collector]\naddres = \"x\"\n").expect_err("typo");
    let text = e.to_string();
    assert!(text.starts_with("agent.toml:2: `collector.addres`: unknown field"), "{text}");
    assert_eq!(bad_key(&GOOD.replace("mqtts://", "tcp://")), "collector.address");
    assert_eq!(
        bad_key(&GOOD.replace("ca_file = \"/etc/weir/ca.pem\"", "")),
        "collector.tls.ca_file"
    );
    assert_eq!(bad_key(&GOOD.replace("device_id = \"gw-1\"", "device_id = \"a b\"")), "device_id");
    assert_eq!(bad_key(&GOOD.replace("stream = \"logs\"", "stream = \"a/b\"")), "inputs[0].stream");
    assert_eq!(bad_key(&GOOD.replace("stream = \"logs\"", "")), "inputs[0].stream");
    assert_eq!(bad_key(&GOOD.replace("kind = \"metrics\"", "kind = \"serial\"")), "inputs[1].path");
    assert_eq!(bad_key(&GOOD.replace("kind = \"metrics\"", "kind = \"gps\"")), "inputs[1].kind");
    assert_eq!(
        bad_key(&GOOD.replace("stream = \"metrics\"", "stream = \"m\"\npaths = [\"/x\"]")),
        "inputs[1].paths"
    );
    assert_eq!(
        bad_key(&GOOD.replace("stream = \"logs\"", "stream = \"l\"\nmultiline_start = \"(\"")),
        "inputs[0].multiline_start"
    );
    assert_eq!(
        bad_key(&GOOD.replace("stream = \"logs\"", "stream = \"l\"\npartition_key = \"{metric}\"")),
        "inputs[0].partition_key"
    );
    assert_eq!(
        bad_key(&GOOD.replace("paths = [\"/var/log/*.log\"]", "paths = []")),
        "inputs[0].paths"
    );
    assert_eq!(bad_key(&format!("{GOOD}[batch]\nmax_records = 501\n")), "batch.max_records");
    assert_eq!(bad_key(&format!("{GOOD}[spool]\nmax_bytes = 1000\n")), "spool.max_bytes");
    // One line alone must fit a quarter of the spool.
    let long_lines =
        GOOD.replace("stream = \"logs\"", "stream = \"logs\"\nmax_line_bytes = 1048576");
    assert_eq!(bad_key(&format!("{long_lines}[spool]\nmax_bytes = 2097152\n")), "spool.max_bytes");
    assert!(parse(&format!("{long_lines}[spool]\nmax_bytes = 8388608\n")).is_ok());
    assert_eq!(
        bad_key(
            &GOOD.replace("kind = \"metrics\"", "kind = \"metrics\"\nname = \"/var/log/*.log\"")
        ),
        "inputs[1].name"
    );
    let e = parse(&format!("{GOOD}[spool]\nwhen_full = \"sometimes\"\n")).expect_err("bad policy");
    assert!(e.to_string().contains("`spool.when_full`: unknown variant `sometimes`"), "{e}");
    let text = GOOD.replace("stream = \"logs\"", "stream = \"logs\"\nstart_at = \"middle\"");
    let e = parse(&text).expect_err("bad start");
    assert!(e.to_string().contains(":11: `inputs[0].start_at`:"), "{e}");
    let text = GOOD.replace("kind = \"metrics\"", "kind = \"metrics\"\ninterval_ms = \"fast\"");
    let e = parse(&text).expect_err("bad type");
    assert!(e.to_string().contains("`inputs[1].interval_ms`: invalid type"), "{e}");
    let e =
        parse("device_id = \"x\"\n[collector]\naddress = \"mqtt://h\"\n").expect_err("no inputs");
    assert!(e.to_string().contains("`inputs`"), "{e}");
}

#[test]
fn serial_inputs() {
    let serial =
        |keys: &str| GOOD.replace("kind = \"metrics\"", &format!("kind = \"serial\"\n{keys}"));
    let c = parse(&serial("path = \"/dev/ttyUSB0\"")).expect("valid");
    let InputKind::Serial(s) = &c.inputs[1].kind else { panic!("serial input") };
    assert_eq!(s.source, SerialSource::Device { path: "/dev/ttyUSB0".into(), baud: DEFAULT_BAUD });
    assert_eq!(s.max_frame_bytes, MAX_FRAME_PAYLOAD);
    // Each record keeps its node's key by default.
    let own_key = KeyTemplate::parse("{key}", Placeholders::Serial).expect("template");
    assert_eq!(c.inputs[1].key, own_key);
    assert_eq!(c.inputs[1].name, "/dev/ttyUSB0");
    let c = parse(&serial("socket = \"/run/uart.sock\"\npartition_key = \"{node}/{key}\""))
        .expect("valid");
    let InputKind::Serial(s) = &c.inputs[1].kind else { panic!("serial input") };
    assert_eq!(s.source, SerialSource::Socket { path: "/run/uart.sock".into() });
    let written = KeyTemplate::parse("{node}/{key}", Placeholders::Serial).expect("template");
    assert_eq!(c.inputs[1].key, written);
    assert_eq!(bad_key(&serial("path = \"/d\"\nsocket = \"/s\"")), "inputs[1].socket");
    assert_eq!(bad_key(&serial("socket = \"/s\"\nbaud = 9600")), "inputs[1].baud");
    assert_eq!(bad_key(&serial("path = \"/d\"\nbaud = 1")), "inputs[1].baud");
    assert_eq!(
        bad_key(&serial("path = \"/d\"\nmax_frame_bytes = 5000")),
        "inputs[1].max_frame_bytes"
    );
    assert_eq!(
        bad_key(&serial("path = \"/d\"\npartition_key = \"{metric}\"")),
        "inputs[1].partition_key"
    );
    assert_eq!(bad_key(&serial("path = \"/d\"\ninterval_ms = 5000")), "inputs[1].interval_ms");
    assert_eq!(
        bad_key(&GOOD.replace("stream = \"logs\"", "stream = \"logs\"\nbaud = 9600")),
        "inputs[0].baud"
    );
}

#[test]
fn tls_keys_need_an_mqtts_address() {
    let text = GOOD.replace("mqtts://", "mqtt://");
    assert_eq!(bad_key(&text), "collector.tls.ca_file");
    let text =
        GOOD.replace("ca_file = \"/etc/weir/ca.pem\"", "ca_file = \"/ca\"\ncert_file = \"/c\"");
    assert_eq!(bad_key(&text), "collector.tls.key_file");
}
