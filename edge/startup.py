"""The pieces an edge run opens before it writes anything, each checked so a mistake is one line and leaves no
half-claimed folder: the inference threads, the GPS locator, the delivery destinations, and the event message."""

from __future__ import annotations

import logging
import socket
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pothole_edge.edge.config import EdgeConfig
from pothole_edge.edge.decide import Event
from pothole_edge.edge.delivery import Delivery, Mqtt, Webhook
from pothole_edge.edge.gps import LiveGps, Locator, mp4_creation_time, open_gps, parse_start
from pothole_edge.edge.outbox import Outbox
from pothole_edge.edge.outbox import default_path as default_outbox
from pothole_edge.errors import UsageError
from pothole_edge.messages import event_message
from pothole_edge.system import default_threads, usable_cores

log = logging.getLogger("edge")


def threads(config: EdgeConfig) -> int:
    """Inference threads: every usable core by default, never more."""
    cores = usable_cores()
    if config.threads and config.threads > cores:
        log.warning("--threads %d is more than the %d usable cores; using %d", config.threads, cores, cores)
        return cores
    return config.threads or default_threads()


def gps(config: EdgeConfig, kind: str, value: Any, stop: threading.Event) -> tuple[Locator, LiveGps | None, str] | None:
    """The run's locator. A video needs to know when it began, from --video-start or its creation_time."""
    if config.gps is None:
        return None
    track, live, describe = open_gps(config.gps, config.gps_max_age, stop)
    start = None
    if kind == "video":
        start = parse_start(config.video_start) if config.video_start else mp4_creation_time(value)
        if start is None:
            raise UsageError(
                f"--video {value} has no creation_time to match the GPS clock; "
                "pass --video-start, e.g. 2026-11-26T08:15:00+01:00"
            )
    return Locator(track, start, config.gps_offset), live, describe


def delivery(config: EdgeConfig) -> tuple[Delivery, str] | None:
    """The run's destinations around the shared disk outbox, and the vehicle's name."""
    if not (config.mqtt or config.webhook):
        return None
    vehicle = config.vehicle_id or socket.gethostname()
    destinations: list[tuple[str, Any]] = []
    if config.webhook:
        destinations.append((f"webhook:{config.webhook}", Webhook(config.webhook, config.webhook_secret_env)))
    if config.mqtt:
        mqtt = Mqtt(config.mqtt, vehicle, config.mqtt_topic, config.mqtt_ca, config.mqtt_password_env)
        destinations.append((f"mqtt:{config.mqtt}", mqtt))
    path = Path(config.outbox) if config.outbox else default_outbox()
    try:
        outbox = Outbox(path, config.outbox_max)
    except (OSError, sqlite3.Error) as e:
        raise UsageError(f"cannot open the outbox {path}: {e}; pass --outbox with a writable path") from None
    return Delivery(outbox, destinations), vehicle


def message(
    event: Event,
    vehicle: str,
    run_name: str,
    clock: Callable[[float | None], str | None],
    meta: dict[str, Any],
    snapshot: Path | None,
    attach: bool,
) -> dict[str, Any]:
    """The JSON every destination gets for a closed event. The snapshot is named by its path; with
    --attach-snapshot the sender puts its bytes in when it sends (the writer thread may still be saving it)."""
    times = {
        "opened_at": clock(event.start_time),
        "closed_at": clock(event.end_time),
        "peak_at": clock(event.peak_time),
    }
    return event_message(
        vehicle,
        run_name,
        event.id,
        event.peak_prob,
        event.peak_position,
        times,
        [event.start_frame, event.end_frame],
        {"path": str(snapshot), "attach": attach} if snapshot is not None else None,
        {k: meta.get(k) for k in ("arch", "variant", "checkpoint_sha256")},
    )
