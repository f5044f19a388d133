"""Events to the office: MQTT (QoS 1) and signed HTTPS webhooks, fed from the disk outbox by one thread per
destination, with back-off, so a dead network never slows inference and nothing confirmed is lost.

A message leaves the outbox only when its destination confirmed it: the broker's PUBACK, or a 2xx from the
webhook. Everything else is retried, so a receiver may see an event twice and drops duplicates by `event_id`.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from pothole_edge.edge.outbox import Outbox
from pothole_edge.errors import UsageError
from pothole_edge.messages import SIGNATURE_HEADER, TIMESTAMP_HEADER, message_id, sign
from pothole_edge.redact import redact

log = logging.getLogger("edge")


def event_id(vehicle: str, run: str, event: int) -> str:
    """Globally unique and the same on every retry: derived from the vehicle, the run and the event's number."""
    return message_id(vehicle, run, event)


class SendError(Exception):
    """The destination did not confirm; the message stays queued."""


class Mqtt:
    """Publishes to TOPIC_PREFIX/VEHICLE/events with QoS 1 through paho-mqtt, reconnecting on its own thread."""

    def __init__(
        self,
        url: str,
        vehicle: str,
        prefix: str = "potholes",
        ca_file: str | None = None,
        password_env: str = "POTHOLE_EDGE_MQTT_PASSWORD",
    ) -> None:
        import paho.mqtt.client as mqtt

        u = urlparse(url)
        try:
            port = u.port
        except ValueError:
            raise UsageError(f"--mqtt {redact(url)}: the port must be a number from 1 to 65535") from None
        if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
            raise UsageError(f"--mqtt {redact(url)} is not mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
        if ca_file is not None and not os.path.isfile(ca_file):
            raise UsageError(f"--mqtt-ca {ca_file} is not a file; give the broker's CA certificate (PEM)")
        self.name = f"mqtt {u.hostname}:{port or (8883 if u.scheme == 'mqtts' else 1883)}"
        self.topics = {kind: f"{prefix.strip('/')}/{vehicle}/{kind}s" for kind in ("event", "track")}
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"pothole-edge-{vehicle}-{os.getpid()}", clean_session=True
        )
        if u.username:
            self.client.username_pw_set(u.username, os.environ.get(password_env))
        if u.scheme == "mqtts":
            self.client.tls_set(ca_certs=ca_file, cert_reqs=ssl.CERT_REQUIRED)
        self.client.reconnect_delay_set(0.5, 8)
        self.client.connect_async(u.hostname, port or (8883 if u.scheme == "mqtts" else 1883), keepalive=15)
        self.client.loop_start()

    def send(self, payload: dict[str, Any]) -> None:
        if not self.client.is_connected():
            raise SendError("not connected")
        topic = self.topics[payload.get("kind", "event")]  # PREFIX/VEHICLE/events or PREFIX/VEHICLE/tracks
        info = self.client.publish(topic, json.dumps(payload, separators=(",", ":")), qos=1)
        try:
            info.wait_for_publish(timeout=5)
        except (RuntimeError, ValueError) as e:
            raise SendError(str(e)) from None
        if not info.is_published():
            raise SendError("no PUBACK within 5 s")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Webhook:
    """POSTs the JSON to an HTTP(S) endpoint, signed with HMAC-SHA256 over its time of sending and the body.

    A redirect is a failure, never followed: urllib would re-send to the other host as a GET with the signature
    and count that host's 200 as delivered. The whole request, trickling servers included, ends by a deadline.
    """

    def __init__(self, url: str, secret_env: str | None, timeout_s: float = 5.0) -> None:
        try:
            u = urlparse(url)
            port = u.port
        except ValueError as e:
            raise UsageError(f"--webhook {redact(url)}: {e}; give http(s)://HOST[:PORT]/PATH") from None
        if u.scheme not in ("http", "https") or not u.hostname:
            raise UsageError(f"--webhook {redact(url)} is not an http(s):// URL")
        secret = os.environ.get(secret_env) if secret_env else None
        if secret_env and not secret:
            raise UsageError(f"--webhook-secret-env {secret_env}: that environment variable is empty or unset")
        self.url, self.secret, self.timeout_s = url, secret.encode() if secret else None, timeout_s
        self.host, self.port, self.https = u.hostname, port, u.scheme == "https"
        self.path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        self.name = f"webhook {u.hostname}"

    def send(self, payload: dict[str, Any]) -> None:
        import http.client

        body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        headers = {"Content-Type": "application/json"}
        if self.secret:
            now = int(time.time())  # signed as it leaves: a message that waited in the outbox is still fresh
            headers[TIMESTAMP_HEADER] = str(now)
            headers[SIGNATURE_HEADER] = sign(self.secret, body, now)
        if self.https:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self.host, self.port, timeout=self.timeout_s, context=ssl.create_default_context()
            )
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        expired = threading.Event()
        deadline = threading.Timer(self.timeout_s * 2, _abort, (conn, expired))
        deadline.start()
        try:
            conn.request("POST", self.path, body, headers)
            response = conn.getresponse()
            response.read(1 << 16)
            status, location = response.status, response.getheader("Location")
        except (OSError, http.client.HTTPException) as e:
            if expired.is_set():
                raise SendError(f"no complete answer within {self.timeout_s * 2:g} s") from None
            raise SendError(str(e) or type(e).__name__) from None
        finally:
            deadline.cancel()
            conn.close()
        if 300 <= status < 400:
            raise SendError(f"HTTP {status} redirect to {redact(str(location))}: not followed; point --webhook at it")
        if not 200 <= status < 300:
            raise SendError(f"HTTP {status}")

    def close(self) -> None:
        pass


def _abort(conn: Any, expired: threading.Event) -> None:
    """Ends a request that outlived its deadline: shutting the socket wakes the blocked read."""
    import socket

    expired.set()
    if conn.sock is not None:
        try:
            conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


@dataclass
class Stats:
    queued: int = 0
    delivered: int = 0
    retried: int = 0
    last_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Sender:
    """One destination's thread: takes due messages from the outbox, sends, and backs off on failure."""

    def __init__(self, destination: Any, key: str, outbox: Outbox, stop: threading.Event) -> None:
        self.destination, self.key, self.outbox, self.stop = destination, key, outbox, stop
        self.stats = Stats()
        self.wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"send-{key}", daemon=True)

    def start(self) -> Sender:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                batch = self.outbox.due(self.key)
                for message_id, payload, attempts in batch:
                    if self.stop.is_set():
                        break
                    try:
                        self.destination.send(_with_snapshot(payload))
                    except SendError as e:
                        self.stats.retried += 1
                        if self.stats.last_error != str(e):
                            log.warning(
                                "%s: %s; event %s stays queued", self.destination.name, e, payload.get("event_id")
                            )
                        self.stats.last_error = str(e)
                        self.outbox.retry_later(message_id, attempts + 1, min(0.5 * 2**attempts, 30.0))
                        break  # a failing destination is not hammered with the rest of the batch
                    else:
                        self.outbox.done(message_id)
                        self.stats.delivered += 1
                        self.stats.last_error = None
                self.wake.wait(0.2 if not batch else 0.0)
                self.wake.clear()
        finally:
            self.outbox.close()

    def drain(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.outbox.pending(self.key) and time.monotonic() < deadline:
            self.wake.set()
            time.sleep(0.05)

    def join(self) -> None:
        self._thread.join(10)
        self.destination.close()

    def summary(self) -> dict[str, Any]:
        return {
            "destination": self.destination.name,
            "queued": self.stats.queued,
            "delivered": self.stats.delivered,
            "retried": self.stats.retried,
            "pending": self.outbox.pending(self.key),
            "dropped": self.outbox.dropped(self.key),
            "last_error": self.stats.last_error,
        }


def _with_snapshot(payload: dict[str, Any]) -> dict[str, Any]:
    """With --attach-snapshot, the JPEG goes in the message as base64 when it is sent."""
    shot = payload.get("snapshot")
    if not shot or not shot.pop("attach", False):
        return payload
    path = shot.get("path")
    try:
        with open(path, "rb") as f:
            shot["jpeg_base64"] = base64.b64encode(f.read()).decode()
    except OSError:
        shot["jpeg_base64"] = None  # not saved (a full disk, or a storage cap): the event still goes
    return payload


class Delivery:
    """Every destination of one run, around one outbox. Its threads outlive the run's own stop signal: they
    stop only after `finish` gave them the drain time."""

    def __init__(self, outbox: Outbox, destinations: list[tuple[str, Any]]) -> None:
        self.outbox = outbox
        self.halt = threading.Event()
        self.senders = [Sender(d, key, Outbox(outbox.path, outbox.max_messages), self.halt) for key, d in destinations]

    def start(self) -> Delivery:
        for s in self.senders:
            s.start()
        return self

    def queue(self, event_id: str, payload: dict[str, Any]) -> None:
        """Commit the event to the outbox for every destination, before anything is sent."""
        for s in self.senders:
            if self.outbox.put(event_id, s.key, payload):
                s.stats.queued += 1
            s.wake.set()

    def finish(self, drain_s: float) -> list[dict[str, Any]]:
        for s in self.senders:
            s.drain(drain_s)
        return [s.summary() for s in self.senders]

    def close(self) -> None:
        self.halt.set()
        for s in self.senders:
            s.join()
        self.outbox.close()
