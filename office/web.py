"""The office's HTTP side: the live map and the data, read-only, and the signed webhook ingest.

GET  /                    the map; it asks /version every few seconds and redraws when the registry changed
GET  /potholes.geojson    every pothole, or those in ?bbox=WEST,SOUTH,EAST,NORTH
GET  /potholes.csv, /open311.json, /tracks.json, /snapshots/ID.jpg, /health
POST /events (any path)   a van's webhook: a message signed with the shared secret, inside the replay window

Nothing else changes state: the only write is a signed message, and every other method is refused.
"""

from __future__ import annotations

import json
import logging
import math
import re
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from pothole_edge.messages import SIGNATURE_HEADER, TIMESTAMP_HEADER, MessageError, verify
from pothole_edge.office import mapfiles
from pothole_edge.office.ingest import MAX_MESSAGE_BYTES, Office

log = logging.getLogger("office")
SNAPSHOT = re.compile(r"^/snapshots/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.jpg$")
# a client silent this long mid-request loses its connection, so idle sockets cannot pile up; one that trickles
# a byte at a time is cut off when its whole exchange (one request: the server speaks HTTP/1.0) passes the deadline
CLIENT_TIMEOUT_S = 30.0
REQUEST_DEADLINE_S = 120.0
REFUSAL_STATUS = {"unsigned": 401, "bad signature": 401, "replayed": 401, "from the future": 401, "too large": 413}


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    """WEST,SOUTH,EAST,NORTH in degrees, as in OGC and GeoJSON; ValueError names what is wrong."""
    parts = text.split(",")
    if len(parts) != 4:
        raise ValueError("bbox must be WEST,SOUTH,EAST,NORTH")
    west, south, east, north = (float(p) for p in parts)
    if not all(math.isfinite(v) for v in (west, south, east, north)):
        raise ValueError("bbox values must be finite degrees")
    if not (-180 <= west <= 180 and -180 <= east <= 180 and -90 <= south <= north <= 90):
        raise ValueError("bbox must have longitudes in -180..180 and latitudes in -90..90 with SOUTH <= NORTH")
    return west, south, east, north


class Site:
    """What the handler serves: the office, the webhook secret (None: webhook ingest is off), the page."""

    def __init__(
        self, office: Office, secret: bytes | None, window_s: float, service_code: str, refresh_s: float
    ) -> None:
        self.office, self.secret, self.window_s, self.service_code = office, secret, window_s, service_code
        self.page = mapfiles.live_page(refresh_s).encode()


def make_server(host: str, port: int, site: Site) -> ThreadingHTTPServer:
    class Handler(_Handler):
        pass

    Handler.site = site
    Handler.timeout = CLIENT_TIMEOUT_S
    return _Server((host, port), Handler)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):  # the client went away, or was cut off
            log.debug("connection from %s ended early", client_address[0], exc_info=True)
        else:
            log.exception("a request from %s failed", client_address[0])


class _Handler(BaseHTTPRequestHandler):
    site: Site
    server_version = "pothole-office"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        self._deadline = threading.Timer(REQUEST_DEADLINE_S, self._cut_off)
        self._deadline.daemon = True
        self._deadline.start()

    def _cut_off(self) -> None:
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed

    def finish(self) -> None:
        self._deadline.cancel()
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value, separators=(",", ":")).encode(), "application/json")

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urlparse(self.path)
        office, registry = self.site.office, self.site.office.registry
        if url.path in ("/", "/index.html"):
            self._send(200, self.site.page, "text/html; charset=utf-8")
        elif url.path == "/version":
            self._json(200, {"version": office.version})
        elif url.path == "/potholes.geojson":
            query = parse_qs(url.query)
            try:
                bbox = parse_bbox(query["bbox"][0]) if "bbox" in query else None
            except ValueError as e:
                self._json(400, {"error": str(e)})
                return
            self._send(200, json.dumps(mapfiles.geojson(registry.potholes(bbox))).encode(), "application/geo+json")
        elif url.path == "/potholes.csv":
            self._send(200, mapfiles.csv_text(registry.potholes()).encode(), "text/csv; charset=utf-8")
        elif url.path == "/open311.json":
            self._json(200, mapfiles.open311(registry.potholes(), self.site.service_code))
        elif url.path == "/tracks.json":
            self._json(200, registry.tracks())
        elif url.path == "/health":
            self._json(200, {"version": office.version, **office.stats()})
        elif url.path in ("/leaflet.js", "/leaflet.css"):
            kind = "text/javascript" if url.path.endswith(".js") else "text/css"
            self._send(200, (mapfiles.ASSETS / url.path[1:]).read_bytes(), f"{kind}; charset=utf-8", cache=True)
        elif (m := SNAPSHOT.match(url.path)) and (path := office.data / "snapshots" / f"{m.group(1)}.jpg").is_file():
            self._send(200, path.read_bytes(), "image/jpeg", cache=True)
        else:
            self._json(404, {"error": f"no {url.path} here"})

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        office = self.site.office
        if self.site.secret is None:
            self._json(403, {"error": "webhook ingest is off: start the office with --webhook-secret-env"})
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._json(411, {"error": "Content-Length required"})
            return
        if not 0 <= length <= MAX_MESSAGE_BYTES:
            office.refuse(MessageError("too large", f"{length} bytes"), self.address_string())
            self._json(413, {"error": f"a message is at most {MAX_MESSAGE_BYTES} bytes"})
            return
        body = self.rfile.read(length)
        source = f"webhook {self.address_string()}"
        try:
            verify(
                self.site.secret,
                body,
                self.headers.get(TIMESTAMP_HEADER),
                self.headers.get(SIGNATURE_HEADER),
                time.time(),
                self.site.window_s,
            )
        except MessageError as e:
            office.refuse(e, source)
            self._json(REFUSAL_STATUS.get(e.reason, 400), {"error": e.reason})
            return
        try:
            item = office.parse(body, source)
        except MessageError as e:
            self._json(REFUSAL_STATUS.get(e.reason, 400), {"error": str(e)})
            return
        try:
            (outcome,) = office.ingest([item])
        except Exception as e:  # noqa: BLE001 - a database outage: the van keeps the message and sends it again
            log.warning("registry write failed for a webhook message (%s)", type(e).__name__)
            self._json(503, {"error": "the registry is unavailable; send again later"})
            return
        self._json(200, {"outcome": outcome})

    def _refuse_method(self) -> None:
        self._json(405, {"error": "read-only: GET, or POST a signed message"})

    do_PUT = do_DELETE = do_PATCH = _refuse_method  # noqa: N815 - http.server's names
