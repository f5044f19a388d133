"""pothole-office (serve, open311) and edge-map: thin argparse layers over the office's library functions."""

from __future__ import annotations

import json
import signal
import sys
import threading
from typing import Any

from pothole_edge.cli import Parser
from pothole_edge.cli import run as run_command
from pothole_edge.office.serve import ServeConfig


def _registry_flags(p: Any) -> None:
    p.add_argument(
        "--db", help="an SQLAlchemy URL, e.g. postgresql://user@host/potholes (default: sqlite in the data folder)"
    )
    p.add_argument(
        "--db-password-env",
        default="POTHOLE_EDGE_DB_PASSWORD",
        help="environment variable with the --db password, kept out of the URL (default: POTHOLE_EDGE_DB_PASSWORD)",
    )
    p.add_argument(
        "--radius", type=float, default=8.0, help="metres within which sightings are one pothole (default: 8)"
    )
    p.add_argument(
        "--repaired-after",
        type=int,
        default=3,
        help="passes without a detection before a pothole is possibly repaired (default: 3)",
    )
    p.add_argument("--service-code", default="pothole", help="the Open311 service code (default: pothole)")


def map_main(argv: list[str] | None = None) -> None:
    """edge-map RUN_DIR... --out DIR: run folders copied off vans, through the office's ingest, into one map."""
    from pothole_edge.office.build import MapConfig, build

    p = Parser(
        prog="edge-map",
        description=(
            "Merge edge-run folders into one registry of potholes (SQLite or PostgreSQL) and write a map, GeoJSON, "
            "CSV and Open311 requests. The same registry a running pothole-office fills from the vans' messages."
        ),
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="edge-run output folders (run with --gps)")
    p.add_argument(
        "--out", default="runs/map", help="the data folder for the registry and map files (default: runs/map)"
    )
    _registry_flags(p)
    args = p.parse_args(argv)
    config = MapConfig(
        runs=tuple(args.runs),
        out=args.out,
        db=args.db,
        db_password_env=args.db_password_env,
        radius=args.radius,
        repaired_after=args.repaired_after,
        service_code=args.service_code,
    )
    run_command(lambda: build(config))


def _serve_parser(sub: Any) -> None:
    d = ServeConfig()
    p = sub.add_parser("serve", help="take the vans' messages into the registry and serve the live map")
    p.add_argument("--data", default=d.data, help=f"the office's data folder: snapshots, SQLite (default: {d.data})")
    p.add_argument(
        "--mqtt", help="the fleet's broker, mqtt://HOST[:PORT] or mqtts://...; the password from --mqtt-password-env"
    )
    p.add_argument("--mqtt-topic", default=d.mqtt_topic, help=f"the vans' topic prefix (default: {d.mqtt_topic})")
    p.add_argument(
        "--mqtt-group",
        default=d.mqtt_group,
        help="the shared subscription's group: workers with the same group split the messages (default: office)",
    )
    p.add_argument(
        "--mqtt-client-id",
        help="this worker's MQTT client id, kept across restarts so the broker keeps its session",
    )
    p.add_argument("--mqtt-ca", help="the broker's CA certificate (PEM) for mqtts://")
    p.add_argument("--mqtt-password-env", default=d.mqtt_password_env, help=f"(default: {d.mqtt_password_env})")
    p.add_argument(
        "--http", default=d.http, help=f"HOST:PORT to serve the map, the data and webhooks on (default: {d.http})"
    )
    p.add_argument(
        "--webhook-secret-env",
        help="environment variable holding the vans' webhook secret; without it, webhook ingest is off",
    )
    p.add_argument(
        "--replay-window",
        type=float,
        default=d.replay_window_s,
        help="seconds a signed webhook stays valid (default: 300)",
    )
    p.add_argument(
        "--refresh", type=float, default=d.refresh_s, help="seconds between the open map's checks for news (default: 3)"
    )
    p.add_argument("--batch", type=int, default=d.batch, help="most MQTT messages per transaction (default: 500)")
    _registry_flags(p)


def _open311_parser(sub: Any) -> None:
    from pothole_edge.office.open311 import Open311Config

    d = Open311Config(endpoint="", api_key_env="")
    p = sub.add_parser("open311", help="send each new pothole once to a city's GeoReport v2 endpoint")
    p.add_argument("--endpoint", required=True, help="the GeoReport v2 base URL; requests go to ENDPOINT/requests.json")
    p.add_argument("--api-key-env", required=True, help="environment variable holding the city's API key")
    p.add_argument("--data", default=d.data, help=f"the office's data folder (default: {d.data})")
    p.add_argument("--db", help="the registry's SQLAlchemy URL (default: sqlite in the data folder)")
    p.add_argument("--db-password-env", default=d.db_password_env, help=f"(default: {d.db_password_env})")
    p.add_argument(
        "--service-code", default=d.service_code, help=f"the city's code for potholes (default: {d.service_code})"
    )
    p.add_argument("--jurisdiction-id", help="GeoReport's jurisdiction_id, where the city's endpoint serves several")
    p.add_argument(
        "--tries", type=int, default=d.tries, help=f"tries per pothole on 5xx or a lost connection (default: {d.tries})"
    )


def main(argv: list[str] | None = None) -> None:
    p = Parser(prog="pothole-office", description="The fleet's office: one live pothole map from the vans' messages.")
    sub = p.add_subparsers(dest="command", required=True, metavar="{serve,open311}")
    _serve_parser(sub)
    _open311_parser(sub)
    args = p.parse_args(argv)
    if args.command == "open311":
        from pothole_edge.office.open311 import Open311Config, submit

        o = Open311Config(
            endpoint=args.endpoint,
            api_key_env=args.api_key_env,
            data=args.data,
            db=args.db,
            db_password_env=args.db_password_env,
            service_code=args.service_code,
            jurisdiction_id=args.jurisdiction_id,
            tries=args.tries,
        )
        run_command(lambda: print(json.dumps(submit(o))))
    if args.command == "serve":
        config = ServeConfig(
            data=args.data,
            db=args.db,
            db_password_env=args.db_password_env,
            mqtt=args.mqtt,
            mqtt_topic=args.mqtt_topic,
            mqtt_group=args.mqtt_group,
            mqtt_client_id=args.mqtt_client_id,
            mqtt_ca=args.mqtt_ca,
            mqtt_password_env=args.mqtt_password_env,
            http=args.http,
            webhook_secret_env=args.webhook_secret_env,
            replay_window_s=args.replay_window,
            radius=args.radius,
            repaired_after=args.repaired_after,
            service_code=args.service_code,
            refresh_s=args.refresh,
            batch=args.batch,
        )
        run_command(lambda: _until_signal(config))


def _until_signal(config: ServeConfig) -> None:
    """Serve until SIGTERM or Ctrl-C, then stop cleanly: unacknowledged messages stay with the broker."""
    from pothole_edge.office.serve import serve

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    serve(config, stop)
    sys.stdout.flush()
