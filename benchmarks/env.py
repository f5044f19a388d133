"""The environment block: which machine and which library versions the figures belong to."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

from pothole_edge.system import cpu, usable_cores

PACKAGES = (
    "torch",
    "torchvision",
    "onnxruntime",
    "onnxruntime-gpu",
    "onnx",
    "opencv-python-headless",
    "opencv-python",
    "numpy",
)


def busy(cores: int, load: tuple[float, float, float] | None = None) -> str | None:
    """Why the machine looks busy, or None: a load average (the last minute's) of more than half its cores
    before the benchmark starts means another job will share the CPU, and every ratio will be off."""
    if load is None:
        try:
            load = os.getloadavg()
        except OSError:
            return None
    if load[0] > max(0.5, cores / 2):
        return f"the load average was {load[0]:.2f} on {cores} cores when the benchmark started"
    return None


def environment(threads: int) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    info = cpu()
    cuda = torch.cuda.is_available()
    return {
        "cpu": info["name"],
        "cpu_flags": info["flags"],
        "cores": os.cpu_count(),
        "cores_usable": usable_cores(),
        "threads_used": threads,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "cuda": torch.version.cuda if cuda else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "onnxruntime_providers": ort.get_available_providers(),
        "busy": busy(usable_cores()),
    }
