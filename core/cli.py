"""What every command shares: one-line errors, exit codes, logging, defaults taken from the configs,
and entry points that say which extra to install instead of failing on an import.

Exit codes: 0 done, 1 a gate or the source failed, 2 the user's mistake (one `error:` line, no
traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import importlib.util
import logging
import sys
from collections.abc import Callable
from typing import Any

from pothole_edge.errors import DiskFull, UsageError, is_disk_full
from pothole_edge.redact import RedactFilter, redact

OURS = ("pothole_edge", "pt-train", "pt-eval", "pt-export", "pt-bench", "edge", "office")


def setup_logging() -> None:
    # libraries stay at WARNING: onnxruntime's quantiser alone logs hundreds of INFO lines
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactFilter) for f in handler.filters):
            handler.addFilter(RedactFilter())
    for name in OURS:
        logging.getLogger(name).setLevel(logging.INFO)


def fail(message: str, code: int = 2) -> None:
    print(f"error: {redact(message)}", file=sys.stderr)
    sys.exit(code)


def run(fn: Callable[[], Any], interrupted: str = "interrupted") -> Any:
    """User mistakes become one line on stderr and exit code 2; a full disk one line and exit 1; Ctrl-C 130."""
    setup_logging()
    try:
        return fn()
    except UsageError as e:
        fail(str(e))
    except DiskFull as e:
        fail(str(e), 1)
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        sys.exit(130)
    except OSError as e:
        if not is_disk_full(e):
            raise
        fail(
            f"no space left on the device{f' writing {e.filename}' if e.filename else ''}; "
            "free some space and run it again",
            1,
        )


class Parser(argparse.ArgumentParser):
    """argparse with the one-line `error:` form every pothole-edge command uses (argparse, not click, where a
    dashcam or an office server installs no click)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {redact(message)} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def given(**options: Any) -> dict[str, Any]:
    """The options the user gave: click passes None (or () for a repeatable option) for the rest, so the config's
    defaults apply."""
    return {k: v for k, v in options.items() if v is not None and v != ()}


def default(config: type, name: str) -> Any:
    """A config field's default, so help texts cannot drift from the dataclass."""
    for f in dataclasses.fields(config):
        if f.name == name:
            return f.default
    raise KeyError(name)


def main_click(command: Any, argv: list[str] | None = None) -> None:
    """Run a click command so that its own usage errors follow the one-line `error:` form too."""
    import click

    try:
        command.main(args=argv, prog_name=command.name, standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except click.ClickException as e:
        fail(f"{e.format_message()} (see {command.name} --help)", e.exit_code if e.exit_code else 2)


# console script -> (module, function, the extra that provides its imports, modules to check)
COMMANDS = {
    "pt-train": (
        "pothole_edge.train.cli",
        "train_main",
        "train",
        ("torch", "torchvision", "timm", "click", "sklearn", "PIL", "cv2"),
    ),
    "pt-eval": (
        "pothole_edge.train.cli",
        "eval_main",
        "train",
        ("torch", "torchvision", "timm", "click", "sklearn", "PIL", "cv2"),
    ),
    "pt-ensemble": (
        "pothole_edge.train.cli",
        "ensemble_main",
        "train",
        ("torch", "torchvision", "timm", "click", "sklearn", "PIL", "cv2"),
    ),
    "pt-export": (
        "pothole_edge.export.cli",
        "export_main",
        "export",
        ("torch", "onnx", "onnxruntime", "onnxslim", "click", "cv2"),
    ),
    "pt-calibrate": (
        "pothole_edge.export.cli",
        "calibrate_main",
        "export",
        ("onnxruntime", "click", "cv2", "PIL", "matplotlib"),
    ),
    "pt-bench": (
        "pothole_edge.benchmarks.cli",
        "bench_main",
        "export",
        ("torch", "onnx", "onnxruntime", "click", "cv2"),
    ),
    "edge-run": ("pothole_edge.edge.cli", "main", "edge", ("onnxruntime", "cv2", "PIL")),
    "edge-clip": ("pothole_edge.edge.cli", "clip_main", "edge", ("onnxruntime", "cv2", "PIL")),
    "edge-map": ("pothole_edge.office.cli", "map_main", "office", ("sqlalchemy", "cv2")),
    "pothole-office": ("pothole_edge.office.cli", "main", "office", ("sqlalchemy", "paho", "cv2")),
}


def launch(name: str) -> None:
    module, function, extra, needs = COMMANDS[name]
    missing = [m for m in needs if importlib.util.find_spec(m) is None]
    if missing:
        fail(
            f"{name} needs the '{extra}' extra ({', '.join(missing)} missing here); install it with "
            f"pip install '.[{extra}]' in a clone, or pip install 'pothole-edge[{extra}]'"
        )
    getattr(importlib.import_module(module), function)()


# the console scripts: each checks its extra, then hands over to its stage's CLI
pt_train = functools.partial(launch, "pt-train")
pt_eval = functools.partial(launch, "pt-eval")
pt_ensemble = functools.partial(launch, "pt-ensemble")
pt_export = functools.partial(launch, "pt-export")
pt_calibrate = functools.partial(launch, "pt-calibrate")
pt_bench = functools.partial(launch, "pt-bench")
edge_run = functools.partial(launch, "edge-run")
edge_clip = functools.partial(launch, "edge-clip")
edge_map = functools.partial(launch, "edge-map")
pothole_office = functools.partial(launch, "pothole-office")
