"""pothole-office open311: each new pothole POSTed once to a city's GeoReport v2 endpoint (`POST
{endpoint}/requests.json`), its `service_request_id` stored beside it.

A pothole is claimed (state `pending`) in the registry and committed before its request leaves, so no run, and
no second office worker, sends it again. A 5xx or a dropped connection is retried with back-off; when every try
failed the claim is released (state `failed`) and the next run sends it again. A run killed while a request was
in flight leaves that pothole `pending`: the city may or may not have it, so it is reported and left for a
person, never sent twice.
"""

from __future__ import annotations

import json
import logging
import math
import os
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlparse

from pothole_edge.errors import UsageError
from pothole_edge.redact import redact

log = logging.getLogger("office")


@dataclass(frozen=True)
class Open311Config:
    endpoint: str  # the GeoReport v2 base URL, e.g. https://city.example/open311/v2
    api_key_env: str  # the environment variable holding the city's API key
    data: str = "runs/office"
    db: str | None = None
    db_password_env: str = "POTHOLE_EDGE_DB_PASSWORD"
    service_code: str = "pothole"
    jurisdiction_id: str | None = None
    tries: int = 4  # per pothole and run: the first and three retries on 5xx or a lost connection
    timeout_s: float = 10.0

    def check(self) -> str:
        u = urlparse(self.endpoint)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise UsageError(f"--endpoint {redact(self.endpoint)} is not an http(s):// URL of a GeoReport v2 service")
        key = os.environ.get(self.api_key_env)
        if not key:
            raise UsageError(f"--api-key-env {self.api_key_env}: that environment variable is empty or unset")
        if not 1 <= self.tries <= 20:
            raise UsageError(f"--tries must be from 1 to 20, got {self.tries}")
        return key


class RetryLater(Exception):
    """A 5xx or a lost connection: the city may take it on another try."""


def post(endpoint: str, form: dict[str, Any], timeout_s: float) -> list[dict[str, Any]]:
    """One GeoReport v2 POST; the parsed JSON answer. Redirects are not followed: they would re-send the key."""
    import http.client

    u = urlparse(endpoint.rstrip("/") + "/requests.json")
    conn: http.client.HTTPConnection
    if u.scheme == "https":
        conn = http.client.HTTPSConnection(u.hostname, u.port, timeout=timeout_s, context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout_s)
    body = urlencode(form)
    try:
        conn.request("POST", u.path, body, {"Content-Type": "application/x-www-form-urlencoded"})
        response = conn.getresponse()
        status, text = response.status, response.read(1 << 20)
    except (OSError, http.client.HTTPException) as e:
        raise RetryLater(str(e) or type(e).__name__) from None
    finally:
        conn.close()
    if status >= 500:
        raise RetryLater(f"HTTP {status}")
    if not 200 <= status < 300:
        raise UsageError(
            f"--endpoint {redact(endpoint)} answered HTTP {status}: {redact(text[:200].decode('utf-8', 'replace'))}"
        )
    try:
        answer = json.loads(text)
    except ValueError:
        raise UsageError(f"--endpoint {redact(endpoint)} answered with something that is not JSON") from None
    if isinstance(answer, dict):
        answer = [answer]
    if not (isinstance(answer, list) and answer and isinstance(answer[0], dict)):
        raise UsageError(f"--endpoint {redact(endpoint)} answered without a service request")
    return answer


def submit(config: Open311Config, sleep: Any = time.sleep) -> dict[str, int]:
    """Send every pothole not yet sent and not marked repaired; returns how many went, failed or wait."""
    from pathlib import Path

    from sqlalchemy import select

    from pothole_edge.office import mapfiles
    from pothole_edge.office.build import open_registry

    key = config.check()
    if config.db is None and not (Path(config.data) / "potholes.sqlite").is_file():
        raise UsageError(
            f"--data {config.data} has no registry (potholes.sqlite): give the folder pothole-office serve or "
            "edge-map wrote, or --db"
        )
    registry = open_registry(config.db, Path(config.data), config.db_password_env, 8.0, 3)
    claims = registry.t["open311"]
    with registry.engine.connect() as db:
        states = dict(db.execute(select(claims.c.pothole_id, claims.c.state)).all())
    todo = [p for p in registry.potholes() if not p["possibly_repaired"] and states.get(p["id"]) in (None, "failed")]
    counts = {"submitted": 0, "failed": 0, "pending": sum(1 for s in states.values() if s == "pending")}
    if counts["pending"]:
        log.warning(
            "%d pothole(s) were in flight when an earlier run stopped: check the city's system for them; "
            "they are not sent again",
            counts["pending"],
        )
    for p in todo:
        if not _claim(registry.engine, claims, p["id"], states.get(p["id"])):
            continue  # another worker took it
        (request,) = mapfiles.open311([p], config.service_code)
        form = {"api_key": key, **request}
        if config.jurisdiction_id:
            form["jurisdiction_id"] = config.jurisdiction_id
        error = None
        for attempt in range(config.tries):
            try:
                answer = post(config.endpoint, form, config.timeout_s)[0]
            except RetryLater as e:
                error = str(e)
                if attempt + 1 < config.tries:
                    sleep(min(0.5 * 2**attempt, 30.0))
                continue
            except UsageError:
                _settle(registry.engine, claims, p["id"], "failed", error="refused")
                raise
            _settle(
                registry.engine,
                claims,
                p["id"],
                "submitted",
                service_request_id=_text(answer.get("service_request_id")),
                token=_text(answer.get("token")),
            )
            counts["submitted"] += 1
            break
        else:
            _settle(registry.engine, claims, p["id"], "failed", error=error)
            counts["failed"] += 1
            log.warning(
                "pothole %d: not accepted after %d tries (%s); the next run tries again", p["id"], config.tries, error
            )
    log.info("Open311: %d sent, %d failed, %d in doubt", counts["submitted"], counts["failed"], counts["pending"])
    return counts


def _claim(engine: Any, claims: Any, pothole_id: int, state: str | None) -> bool:
    """Mark the pothole pending and commit, before anything is sent; False if another worker got there first."""
    from sqlalchemy.exc import IntegrityError

    try:
        with engine.begin() as db:
            if state is None:
                db.execute(claims.insert(), {"pothole_id": pothole_id, "state": "pending", "updated": time.time()})
                return True
            done = db.execute(
                claims.update()
                .where(claims.c.pothole_id == pothole_id, claims.c.state == "failed")
                .values(state="pending", updated=time.time())
            )
            return done.rowcount == 1
    except IntegrityError:
        return False


def _settle(engine: Any, claims: Any, pothole_id: int, state: str, **values: Any) -> None:
    with engine.begin() as db:
        db.execute(
            claims.update()
            .where(claims.c.pothole_id == pothole_id)
            .values(state=state, updated=time.time(), last_error=values.pop("error", None), **values)
        )


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return str(value)[:200]
