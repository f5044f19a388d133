"""The value checks every stage's config makes, written once so that one flag takes one range everywhere
(`--threshold` is a probability in [0, 1] in pt-eval and edge-run alike). Each raises UsageError with the flag,
the values it takes, and the value given."""

from __future__ import annotations

import math
from typing import Any

from pothole_edge.errors import UsageError


def flag(name: str) -> str:
    """ "max_fpr" -> "--max-fpr" """
    return "--" + name.replace("_", "-")


def is_number(value: Any) -> bool:
    """A finite int or float; True and False are not numbers here."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def boolean(name: str, value: Any) -> None:
    """A saved or hand-written config may hold "no" where a switch belongs: that must not read as on."""
    if not isinstance(value, bool):
        raise UsageError(f"{flag(name)} must be true or false, got {value!r}")


def integer(name: str, value: Any, low: int, high: int | None = None) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and low <= value and (high is None or value <= high)
    if not ok:
        span = f"of {low} or more" if high is None else f"from {low} to {high}"
        raise UsageError(f"{flag(name)} must be an integer {span}, got {value!r}")


def number(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    unit: str = "",
) -> None:
    """A finite number in the interval; `low_open`/`high_open` leave that end out."""
    ok = is_number(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise UsageError(f"{flag(name)} must be {_span(low, high, low_open, high_open)}{unit}, got {value!r}")


def probability(name: str, value: Any) -> None:
    number(name, value, 0.0, 1.0)


def choice(name: str, value: Any, choices: tuple[str, ...], optional: bool = False) -> None:
    if (value is None and optional) or value in choices:
        return
    raise UsageError(f"unknown {flag(name)} {value!r}; choose one of: {', '.join(choices)}")


def _span(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is None and high is None:
        return "a number"
    if high is None:
        return f"above {low:g}" if low_open else f"{low:g} or more"
    if low is None:
        return f"below {high:g}" if high_open else f"at most {high:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
