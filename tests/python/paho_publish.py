#!/usr/bin/env python3
"""Publishes numbered messages to a Weir collector with the Eclipse Paho
Python client (paho-mqtt 2.x), as a stock MQTT client would, and reports how
many were acknowledged.

Used by tests/tests/mqtt_clients.rs; scripts/test installs paho-mqtt.

Each message i goes to <prefix>/key-<i % 3> with payload "<client id>:<i>".
Exits 0 only if every message was acknowledged (QoS 1/2) or sent (QoS 0)
with a success reason code; prints one JSON line with the counts.
"""

import argparse
import json
import sys
import threading

import paho.mqtt.client as mqtt


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--protocol", choices=["311", "5"], default="311")
    p.add_argument("--client-id", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--count", type=int, default=30)
    p.add_argument("--qos", type=int, choices=[0, 1, 2], default=1)
    p.add_argument("--ca")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--username")
    p.add_argument("--password")
    p.add_argument("--timeout", type=float, default=30.0)
    args = p.parse_args()

    protocol = mqtt.MQTTv5 if args.protocol == "5" else mqtt.MQTTv311
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=protocol
    )
    if args.username:
        client.username_pw_set(args.username, args.password)
    if args.ca:
        client.tls_set(ca_certs=args.ca, certfile=args.cert, keyfile=args.key)

    connected = threading.Event()
    failures = []

    def on_connect(_client, _userdata, _flags, reason_code, _properties):
        if reason_code.is_failure:
            failures.append(f"connect: {reason_code}")
        connected.set()

    def on_publish(_client, _userdata, mid, reason_code, _properties):
        if reason_code.is_failure:
            failures.append(f"publish {mid}: {reason_code}")

    client.on_connect = on_connect
    client.on_publish = on_publish
    client.connect(args.host, args.port, keepalive=30)
    client.loop_start()
    if not connected.wait(args.timeout) or failures:
        print(json.dumps({"acked": 0, "failures": failures or ["no CONNACK"]}))
        return 1

    infos = []
    for i in range(args.count):
        topic = f"{args.prefix}/key-{i % 3}"
        infos.append(client.publish(topic, f"{args.client_id}:{i}".encode(), qos=args.qos))
    acked = 0
    for info in infos:
        info.wait_for_publish(timeout=args.timeout)
        if info.is_published():
            acked += 1
    client.disconnect()
    client.loop_stop()
    print(json.dumps({"acked": acked, "failures": failures}))
    return 0 if acked == args.count and not failures else 1


if __name__ == "__main__":
    sys.exit(main())
