"""The office's MQTT side: a persistent MQTT 5 session at QoS 1 on a shared subscription, so several workers
split one fleet's messages. A message is acknowledged only after the registry committed it (or refused it), so a
worker that dies mid-batch loses nothing: the broker sends those messages again."""

from __future__ import annotations

import logging
import os
import queue
import ssl
import threading
from typing import Any
from urllib.parse import urlparse

from pothole_edge.errors import UsageError
from pothole_edge.messages import MessageError
from pothole_edge.office.ingest import Office
from pothole_edge.redact import redact

log = logging.getLogger("office")
SESSION_EXPIRY_S = 7 * 24 * 3600  # the broker keeps a stopped worker's messages a week


def topics(prefix: str, group: str) -> list[str]:
    """`$share/GROUP/PREFIX/+/events` and `.../tracks`: each message goes to one worker of the group."""
    base = prefix.strip("/")
    return [f"$share/{group}/{base}/+/{kind}" for kind in ("events", "tracks")]


class Subscriber:
    def __init__(
        self,
        office: Office,
        url: str,
        client_id: str,
        prefix: str = "potholes",
        group: str = "office",
        batch: int = 500,
        ca_file: str | None = None,
        password_env: str = "POTHOLE_EDGE_MQTT_PASSWORD",
    ) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        u = urlparse(url)
        try:
            port = u.port or (8883 if u.scheme == "mqtts" else 1883)
        except ValueError:
            raise UsageError(f"--mqtt {redact(url)}: the port must be a number from 1 to 65535") from None
        if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
            raise UsageError(f"--mqtt {redact(url)} is not mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
        self.office, self.batch, self.name = office, batch, f"mqtt {u.hostname}:{port}"
        self.topics = topics(prefix, group)
        self.inbox: queue.Queue[Any] = queue.Queue()
        self.stop = threading.Event()
        self.connected = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=True
        )
        if u.username:
            self.client.username_pw_set(u.username, os.environ.get(password_env))
        if u.scheme == "mqtts":
            self.client.tls_set(ca_certs=ca_file, cert_reqs=ssl.CERT_REQUIRED)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = lambda client, userdata, msg: self.inbox.put(msg)
        self.client.reconnect_delay_set(0.5, 8)
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = SESSION_EXPIRY_S
        properties.ReceiveMaximum = min(65535, 2 * batch)  # unacknowledged messages in flight: a batch and the next
        self.client.connect_async(host=u.hostname, port=port, keepalive=30, clean_start=False, properties=properties)
        self.worker = threading.Thread(target=self._work, name="office-mqtt", daemon=True)

    def start(self) -> Subscriber:
        self.client.loop_start()
        self.worker.start()
        return self

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            log.warning("%s refused the connection: %s", self.name, reason)
            return
        client.subscribe([(t, 1) for t in self.topics])
        self.office.status["mqtt"] = "connected"
        log.info("%s: subscribed to %s (session kept: %s)", self.name, ", ".join(self.topics), flags.session_present)

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: list[Any], properties: Any) -> None:
        failed = [str(r) for r in reasons if r.is_failure]
        if failed:
            log.warning("%s refused the subscription: %s", self.name, ", ".join(failed))
            return
        self.connected.set()
        self.office.status["mqtt"] = "subscribed"

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.connected.clear()
        self.office.status["mqtt"] = "disconnected"
        if not self.stop.is_set():
            log.warning("%s: disconnected (%s); reconnecting", self.name, reason)

    def _work(self) -> None:
        """Batches of whatever arrived, each committed in one transaction, then acknowledged in order."""
        while not self.stop.is_set():
            try:
                first = self.inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            batch = [first]
            while len(batch) < self.batch:
                try:
                    batch.append(self.inbox.get_nowait())
                except queue.Empty:
                    break
            self._take(batch)

    def _take(self, batch: list[Any]) -> None:
        items, kept = [], []
        for msg in batch:
            try:
                items.append(self.office.parse(msg.payload, f"{self.name} {msg.topic}"))
                kept.append(msg)
            except MessageError:
                pass  # refused: logged and counted; acknowledged below so it is not sent again
        if items and not self._commit(items):
            return  # stopping before the registry took them: unacknowledged, the broker sends them again
        for msg in batch:
            self.client.ack(msg.mid, msg.qos)

    def _commit(self, items: list[Any]) -> bool:
        """True once the registry has the batch; a database outage is waited out, never the end of the worker."""
        delay = 0.5
        while not self.stop.is_set():
            try:
                self.office.ingest(items)
                return True
            except Exception as e:  # noqa: BLE001 - any driver error: keep the messages, unacknowledged, and retry
                why = redact(str(e))[:200]
                log.warning("registry write failed (%s); %d message(s) wait %.0f s", why, len(items), delay)
                self.stop.wait(delay)
                delay = min(delay * 2, 30.0)
        return False

    def close(self) -> None:
        self.stop.set()
        self.worker.join(10)
        self.client.disconnect()
        self.client.loop_stop()
