"""The environment block: which machine and which library versions the figures belong to."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

from edge.session import usable_cores

PACKAGES = ("torch", "torchvision", "onnxruntime", "onnxruntime-gpu", "onnx", "opencv-python-headless", "opencv-python", "numpy")
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def _cpu() -> tuple[str, list[str]]:
    name, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    name = value.strip()
                elif key.strip() == "flags":
                    present = set(value.split())
                    flags = [flag for flag in CPU_FLAGS if flag in present]
                    break
    except OSError:
        pass
    return name, flags


def environment(threads: int) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    name, flags = _cpu()
    cuda = torch.cuda.is_available()
    return {
        "cpu": name,
        "cpu_flags": flags,
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
