"""What this machine offers: usable cores and the CPU features that decide INT8 settings."""

from __future__ import annotations

import os
import platform
from functools import lru_cache

CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def usable_cores() -> int:
    """Cores this process may run on (a container or taskset may allow fewer than the machine has)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_threads() -> int:
    """Inference threads: every usable core. Leaving one to edge-run's reader was slower: on 2 AVX2 cores, 2
    threads ran a 720p INT8 clip at 14.4-15.1 fps against 9.5-9.8 fps for 1 (README, speed on AVX2)."""
    return usable_cores()


@lru_cache(maxsize=1)
def cpu() -> dict[str, object]:
    """The CPU's name, its architecture, and the flags among CPU_FLAGS that it has."""
    name, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
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
    return {"name": name, "machine": platform.machine(), "flags": flags}


def int8_reduce_range_default() -> tuple[bool, str]:
    """Whether INT8 weights should use 7 bits on this CPU, and why.

    x86 without VNNI multiplies u8 x s8 with vpmaddubsw, whose int16 sums saturate with full
    8-bit weights; 7-bit weights avoid that. VNNI (and ARM's dot-product instructions) accumulate
    in int32, so there the full range is both exact and more accurate.
    """
    info = cpu()
    machine = str(info["machine"]).lower()
    if machine not in ("x86_64", "amd64", "i386", "i686"):
        return False, f"{machine}: no u8 x s8 saturation"
    vnni = [f for f in VNNI_FLAGS if f in info["flags"]]
    if vnni:
        return False, f"x86 with {vnni[0]}: int32 accumulation, no saturation"
    return True, "x86 without VNNI: 8-bit products saturate int16 sums"
