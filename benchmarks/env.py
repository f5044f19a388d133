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
    }
