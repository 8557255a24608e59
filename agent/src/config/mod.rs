//! The agent's configuration: a TOML file (`--config`, default
//! `/etc/weir/agent.toml`) parsed into [`ConfigFile`] (what is written) and
//! checked into [`Config`] (what the agent runs with).
//!
//! ```toml
//! device_id = "gw-17"                 # default: /etc/machine-id, else the host name
//!
//! [collector]
//! address = "mqtts://collector.example:8883"   # or mqtt://host:1883 (plain, development)
//! client_id = "gw-17"                 # default: the device id
//! keepalive_secs = 30
//! inflight = 16                       # batches sent and not yet acknowledged
//! reconnect_min_ms = 500              # backoff: doubles per failure, with jitter ...
//! reconnect_max_ms = 30000            # ... up to this
//! # username = "gw-17"                # instead of a client certificate
//! # password = "..."
//!
//! [collector.tls]
//! ca_file = "/etc/weir/ca.pem"        # the CA that signed the collector's certificate
//! cert_file = "/etc/weir/gw-17.pem"   # mutual TLS (optional): the device certificate ...
//! key_file = "/etc/weir/gw-17.key"    # ... and its key
//! # server_name = "collector.example" # default: the host in `address`
//!
//! [spool]
//! dir = "/var/lib/weir-agent/spool"
//! max_bytes = 268435456               # 256 MiB on disk at most
//! when_full = "drop_oldest"           # or "block" (stop reading inputs)
//! min_free_bytes = 67108864            # free space appends leave; default: the smaller of
//!                                     # 64 MiB and 1% of the filesystem; 0: none
//!
//! [batch]
//! max_records = 500
//! max_bytes = 524288
//! linger_ms = 200
//!
//! [status]
//! file = "/var/lib/weir-agent/spool/status.json"   # default: in the spool directory
//! interval_ms = 1000                  # how often it is rewritten
//!
//! [metrics]
//! # listen = "127.0.0.1:9273"         # serve Prometheus text on GET /metrics [default: off]
//!
//! [[inputs]]
//! kind = "file"
//! name = "app"                        # default: the paths; keep it stable (checkpoints)
//! paths = ["/var/log/app/*.log"]
//! start_at = "beginning"              # or "end": files found at the first start
//! max_line_bytes = 16384              # longer lines are split (and counted)
//! partial_flush_ms = 5000             # a last line without newline, once idle this long
//! rotate_wait_ms = 5000               # a rotated file is let go once idle this long
//! rescan_ms = 1000                    # globs listed again for new files
//! poll_ms = 250                       # files checked for growth when idle, where inotify is unavailable (else inotify wakes the input)
//! multiline_start = '^\d{4}-\d{2}-\d{2}'   # optional: a record starts at such a line
//! multiline_max_bytes = 65536
//! multiline_timeout_ms = 1000
//! stream = "logs"
//! partition_key = "{device_id}/{file}"
//!
//! [[inputs]]
//! kind = "metrics"
//! interval_ms = 10000
//! stream = "metrics"
//! partition_key = "{device_id}"      # {metric} also works
//!
//! [[inputs]]
//! kind = "serial"                     # frames from a sensor node (firmware/)
//! name = "uart0"                      # default: the device or socket path
//! path = "/dev/ttyUSB0"               # a tty or pty, raw 8N1 ...
//! baud = 115200                       # ... at this rate
//! # socket = "/tmp/weir-uart0.sock"   # or a Unix socket to connect to (QEMU); not both
//! max_frame_bytes = 4096              # larger frame payloads are counted and skipped
//! stream = "sensors"
//! # partition_key = "{node}"          # default "{key}": each record's own key (the node's);
//! #                                   # {device_id}, {input}, {node} (producer id), {key}
//! ```
//!
//! Unknown keys are errors; every error names the file and the key (and the
//! line, for errors the TOML parser finds), so a typo never silently falls
//! back to a default. Relative paths are taken from the current directory.
//!
//! - `written`: [`ConfigFile`] and its sections, the TOML as written;
//! - `settings`: [`Config`] and the checked settings the agent runs with;
//! - `validate`: parsing, checking, and [`ConfigError`], whose messages name
//!   the key at fault.

mod settings;
mod validate;
mod written;

pub use settings::*;
pub use validate::*;
pub use written::*;
