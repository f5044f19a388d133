"""pothole-office serve: one office worker. It takes the vans' messages from MQTT and from webhooks into the
registry, and serves the live map and the data over HTTP. A fleet runs several workers on one PostgreSQL: MQTT's
shared subscription splits the messages between them, and the registry's locks keep them from colliding."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pothole_edge import checks
from pothole_edge.errors import UsageError
from pothole_edge.fileio import ensure_writable_dir, write_json

log = logging.getLogger("office")


@dataclass(frozen=True)
class ServeConfig:
    data: str = "runs/office"  # snapshots, the SQLite registry by default, config.json
    db: str | None = None  # an SQLAlchemy URL; None: sqlite in --data
    db_password_env: str = "POTHOLE_EDGE_DB_PASSWORD"
    mqtt: str | None = None  # mqtt://HOST[:PORT]; None: webhooks only
    mqtt_topic: str = "potholes"  # the vans' prefix: PREFIX/VEHICLE/events and PREFIX/VEHICLE/tracks
    mqtt_group: str = "office"  # the shared subscription's group: the workers of one office
    mqtt_client_id: str | None = None  # stable across restarts so the broker keeps the session; None: host-based
    mqtt_ca: str | None = None
    mqtt_password_env: str = "POTHOLE_EDGE_MQTT_PASSWORD"
    http: str = "127.0.0.1:8311"  # HOST:PORT for the map, the data and webhooks
    webhook_secret_env: str | None = None  # the variable holding the vans' webhook secret; None: no webhook ingest
    replay_window_s: float = 300.0  # a signed webhook older or newer than this is refused
    radius: float = 8.0
    repaired_after: int = 3
    service_code: str = "pothole"
    refresh_s: float = 3.0  # how often the open map asks whether anything changed
    batch: int = 500  # most MQTT messages per transaction

    def check(self) -> tuple[str, int]:
        from pothole_edge.office.build import check_registry_flags

        check_registry_flags(self.radius, self.repaired_after)
        host, _, port = self.http.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise UsageError(f"--http {self.http} is not HOST:PORT, e.g. 0.0.0.0:8311")
        if self.webhook_secret_env is not None and not os.environ.get(self.webhook_secret_env):
            raise UsageError(
                f"--webhook-secret-env {self.webhook_secret_env}: that environment variable is empty or unset"
            )
        checks.number("replay_window", self.replay_window_s, 1, 86400, unit=" seconds")
        checks.integer("batch", self.batch, 1, 10000)
        checks.number("refresh", self.refresh_s, 0.1, 3600, unit=" seconds")
        if self.mqtt_ca is not None and not os.path.isfile(self.mqtt_ca):
            raise UsageError(f"--mqtt-ca {self.mqtt_ca} is not a file; give the broker's CA certificate (PEM)")
        return host.strip("[]"), int(port)


def serve(config: ServeConfig, stop: threading.Event, on_ready: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run until `stop` is set; `on_ready` gets the HTTP port once it listens. Returns what was taken and refused."""
    from pothole_edge.office.build import open_registry
    from pothole_edge.office.ingest import Office
    from pothole_edge.office.mqttin import Subscriber
    from pothole_edge.office.web import Site, make_server

    host, port = config.check()
    data = ensure_writable_dir(config.data, "office data folder")
    registry = open_registry(config.db, data, config.db_password_env, config.radius, config.repaired_after)
    office = Office(registry, data)
    secret = os.environ[config.webhook_secret_env].encode() if config.webhook_secret_env else None
    site = Site(office, secret, config.replay_window_s, config.service_code, config.refresh_s)
    try:
        server = make_server(host, port, site)
    except OSError as e:
        raise UsageError(f"--http {config.http}: cannot listen ({e.strerror or e}); pick a free port") from None
    write_json(data / "config.json", dataclasses.asdict(config))
    subscriber = None
    http = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="office-http", daemon=True)
    try:
        if config.mqtt:
            client_id = config.mqtt_client_id or f"pothole-office-{socket.gethostname()}"
            subscriber = Subscriber(
                office,
                config.mqtt,
                client_id,
                config.mqtt_topic,
                config.mqtt_group,
                config.batch,
                config.mqtt_ca,
                config.mqtt_password_env,
            ).start()
        http.start()
        log.info(
            "office: map on http://%s:%d/, registry %s%s%s",
            host,
            server.server_address[1],
            registry.engine.url.render_as_string(hide_password=True),
            f", MQTT {subscriber.name}" if subscriber else "",
            ", webhooks on" if secret else "",
        )
        if on_ready is not None:
            on_ready(server.server_address[1])
        stop.wait()
    finally:
        if subscriber is not None:
            subscriber.close()
        server.shutdown()
        server.server_close()
    log.info("office stopped: %s", office.stats())
    return office.stats()
