"""Secrets never reach a file, a log line or an error message.

Passwords arrive inside URLs (`postgresql://fleet:PW@host/db`, `mqtt://van:PW@broker`, `rtsp://cam:PW@10.0.0.9`)
or as query parameters (`?token=...`). Every JSON file the project writes, every log record and every `error:`
line passes through `redact`, so a new flag cannot leak one by forgetting.
"""

from __future__ import annotations

import logging
import re
from typing import Any

MASK = "***"
# scheme://user:password@ -> scheme://user:***@ (the user name stays: it says which account was used)
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^/\s:@]*):([^@\s]*)@")
_QUERY = re.compile(r"(?i)([?&;](?:password|passwd|pwd|secret|token|access_token|api_key|apikey|key|sig)=)[^&\s#]*")


def redact(text: str) -> str:
    """The text with every password in a URL and every secret query parameter masked."""
    if "://" not in text and "=" not in text:
        return text
    return _QUERY.sub(rf"\g<1>{MASK}", _USERINFO.sub(rf"\g<1>:{MASK}@", text))


def redacted(value: Any) -> Any:
    """A copy of a JSON-like value (dicts, lists, strings) with `redact` applied to every string in it."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redacted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redacted(v) for v in value]
    return value


class RedactFilter(logging.Filter):
    """Masks secrets in a log record, arguments included, before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True
