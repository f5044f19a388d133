"""The office's ingest rate: event messages per second from MQTT into the registry, on one worker.

    printf 'listener 1883 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\n' > bench.conf
    mosquitto -c bench.conf &
    python -m pothole_edge.benchmarks.ingest --mqtt mqtt://127.0.0.1:1883 --messages 20000 --out DIR

A fleet of --vans publishes --messages events (QoS 1) at random points of a city grid as fast as the broker takes
them; the rate is messages over the time from the first publish to the last commit. The worker batches what has
arrived (--batch per transaction) and acknowledges each message after its commit, as `pothole-office serve` does.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from pothole_edge.messages import event_message
from pothole_edge.office.ingest import Office
from pothole_edge.office.mqttin import Subscriber
from pothole_edge.office.registry import Registry, engine_for

ORIGIN = (48.0, 11.0)


def measure(url: str, messages: int, vans: int, batch: int, db: str | None, data: Path) -> dict[str, Any]:
    import paho.mqtt.client as mqtt

    registry = Registry(engine_for(db, str(data / "potholes.sqlite")))
    office = Office(registry, data)
    prefix = f"bench-{uuid.uuid4().hex[:8]}"  # a topic of its own: nothing else on the broker reaches this office
    worker = Subscriber(office, url, f"{prefix}-office", prefix, "bench", batch).start()
    if not worker.connected.wait(20):
        raise SystemExit(f"no subscription on {url} within 20 s: is the broker running?")
    rng = np.random.default_rng(0)
    lat = ORIGIN[0] + rng.uniform(0, 0.05, messages)  # a city about 5 km across
    lon = ORIGIN[1] + rng.uniform(0, 0.07, messages)
    payloads = [
        json.dumps(
            event_message(f"van-{n % vans}", "day", n // vans, 0.9, {"lat": a, "lon": b, "gps_time": 1.8e9 + n}, {})
        )
        for n, (a, b) in enumerate(zip(lat.tolist(), lon.tolist()))
    ]
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{prefix}-fleet", protocol=mqtt.MQTTv5)
    publisher.max_inflight_messages_set(1000)
    publisher.max_queued_messages_set(0)
    host, port = url.removeprefix("mqtt://").rsplit(":", 1)
    publisher.connect(host, int(port))
    publisher.loop_start()
    started = time.perf_counter()
    infos = [publisher.publish(f"{prefix}/van-{n % vans}/events", p, qos=1) for n, p in enumerate(payloads)]
    for info in infos:
        info.wait_for_publish(60)
    published = time.perf_counter() - started
    deadline = time.monotonic() + 600
    while office.counts["added"] + office.counts["duplicate"] < messages and time.monotonic() < deadline:
        time.sleep(0.01)
    if office.counts["added"] + office.counts["duplicate"] < messages:
        raise SystemExit(
            f"only {office.counts['added']} of {messages} messages arrived: raise the broker's max_queued_messages"
        )
    took = time.perf_counter() - started
    publisher.loop_stop()
    publisher.disconnect()
    worker.close()
    return {
        "messages": messages,
        "vans": vans,
        "batch": batch,
        "db": registry.engine.dialect.name,
        "postgis": registry.postgis,
        "publish_s": round(published, 2),
        "ingest_s": round(took, 2),
        "messages_per_s": round(messages / took),
        "added": office.counts["added"],
        "potholes": len(registry.potholes()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pothole_edge.benchmarks.ingest", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--mqtt", required=True, help="a running broker, mqtt://HOST:PORT")
    parser.add_argument("--messages", type=int, default=20000, help="events published (default: %(default)s)")
    parser.add_argument("--vans", type=int, default=50, help="vehicles they come from (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=500, help="most messages per transaction (default: %(default)s)")
    parser.add_argument("--db", help="an SQLAlchemy URL of an empty database (default: SQLite in a new folder)")
    parser.add_argument("--out", default="runs/bench-ingest", help="report folder (default: %(default)s)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as data:
        row = measure(args.mqtt, args.messages, args.vans, args.batch, args.db, Path(data))
    print(json.dumps(row), flush=True)
    (out / "ingest.json").write_text(json.dumps(row, indent=2) + "\n")


if __name__ == "__main__":
    main()
