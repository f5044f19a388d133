"""The office's one way in: every message, from MQTT, a webhook or a copied run folder, is parsed, checked,
its snapshot stored, and written to the registry exactly once. A message that is malformed, unsigned or from the
future is refused with a logged reason and counted; it never stops the service."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from pothole_edge.fileio import write_bytes
from pothole_edge.messages import MessageError, check, snapshot_jpeg
from pothole_edge.office.registry import Incoming, Registry
from pothole_edge.redact import redact

log = logging.getLogger("office")
MAX_MESSAGE_BYTES = 8 << 20  # an event with an attached snapshot is well under this


class Office:
    """The registry and the data folder of one office worker, with what it took and refused."""

    def __init__(self, registry: Registry, data: Path) -> None:
        self.registry, self.data = registry, data
        self.counts: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self._write = threading.Lock()  # one batch at a time per worker: the MQTT thread and the HTTP threads share it
        self.changed = threading.Condition()
        self.version = 0  # bumped when a batch added something: the live map asks for news since its version
        self.status: dict[str, Any] = {}  # what the inputs report, e.g. {"mqtt": "connected"}

    def parse(self, raw: bytes | dict[str, Any], source: str, received: float | None = None) -> Incoming:
        """A checked message with its snapshot stored, or MessageError (logged and counted here)."""
        try:
            if isinstance(raw, (bytes, bytearray)):
                if len(raw) > MAX_MESSAGE_BYTES:
                    raise MessageError("too large", f"{len(raw)} bytes, more than {MAX_MESSAGE_BYTES}")
                try:
                    message = json.loads(raw, parse_constant=_no_constant)
                except (ValueError, UnicodeDecodeError) as e:
                    raise MessageError("malformed", f"not JSON ({str(e)[:80]})") from None
            else:
                message = raw
            kind = check(message)
        except MessageError as e:
            self.refuse(e, source)
            raise
        item = Incoming(message, kind, received if received is not None else time.time())
        jpeg = snapshot_jpeg(message) if kind == "event" else None
        if jpeg is not None:
            name = f"snapshots/{message['event_id']}.jpg"  # check() made the id a canonical UUID: a safe name
            write_bytes(self.data / name, jpeg)
            item.snapshot = name
            message["snapshot"] = {k: v for k, v in message["snapshot"].items() if k != "jpeg_base64"}
        return item

    def refuse(self, error: MessageError, source: str) -> None:
        self.refused[error.reason] += 1
        log.warning("refused a message from %s: %s", redact(source), redact(str(error)))

    def ingest(self, items: list[Incoming]) -> list[str]:
        """Write a batch; "added" or "duplicate" per message. Database errors propagate: the caller keeps the
        messages unacknowledged, so they come again."""
        with self._write:
            outcome = self.registry.ingest(items)
        self.counts.update(outcome)
        if "added" in outcome:
            with self.changed:
                self.version += 1
                self.changed.notify_all()
        return outcome

    def stats(self) -> dict[str, Any]:
        return {
            "added": self.counts["added"],
            "duplicate": self.counts["duplicate"],
            "refused": dict(self.refused),
            **self.status,
        }


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")
