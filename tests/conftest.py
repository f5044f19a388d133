"""Tests build their own tiny images; nothing here reads the real photos."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SIZE = 48


def photo(positive: bool, seed: int, size: int = SIZE) -> Image.Image:
    """A small, learnable road-like image: potholes are a dark blob."""
    from pothole_edge.train.demo import render

    return render(positive, np.random.default_rng(seed)).resize((size, size))


def make_folder(root: Path, per_class: int = 10, names: tuple[str, str] = ("normal", "pothole"), seed: int = 0) -> Path:
    for label, name in enumerate(names):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            photo(bool(label), seed * 1000 + label * 100 + i).save(root / name / f"{i:03d}.jpg", quality=90)
    return root


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "data")


@pytest.fixture(scope="session")
def shared_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only dataset shared by the slower training tests."""
    return make_folder(tmp_path_factory.mktemp("shared") / "data", per_class=14)


# the smallest real configuration: random Lite0 at 32 px, a 1x1 + 2x2 view, no worker processes
TINY = dict(
    hard_negatives=4,
    arch="efficientnet_lite0",
    weights="none",
    img_size=32,
    batch_size=8,
    workers=0,
    epochs=2,
    device="cpu",
    grids="1x1+2x2",
)


@pytest.fixture(scope="session")
def trained_run(shared_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained run for the export and benchmark tests. Tests write their exports elsewhere."""
    from pothole_edge.train.config import TrainConfig
    from pothole_edge.train.run import train

    out = tmp_path_factory.mktemp("trained") / "run"
    train(TrainConfig(data=(str(shared_folder),), out=str(out), **(TINY | {"epochs": 3})))
    return out


def crash_in_epoch(monkeypatch: pytest.MonkeyPatch, config, epoch: int, **train_args) -> None:
    """Train with `config` until a kill in the middle of `epoch` (1-based), as a power cut would leave the run."""
    from pothole_edge.train import fit
    from pothole_edge.train.run import train

    real, calls = fit.train_one_epoch, []

    def dies(*args, **kwargs):
        calls.append(1)
        if len(calls) == epoch:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(fit, "train_one_epoch", dies)
        with pytest.raises(KeyboardInterrupt):
            train(config, **train_args)


def free_port() -> int:
    """A TCP port nothing listens on now, for the servers tests start."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def end_process(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `grace` seconds: a loaded machine can take long to clean up
    (gpsfake stops its own gpsd), and a teardown must not fail a test that passed."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for(predicate, timeout: float, what: str) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL server from Debian's package (initdb, pg_ctl), run as the postgres user."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not bins:
        if os.environ.get("POTHOLE_EDGE_CI"):
            pytest.fail("needs PostgreSQL (apt-get install postgresql; scripts/setup.sh does)")
        pytest.skip("needs PostgreSQL (apt-get install postgresql; scripts/setup.sh does)")
    bindir = bins[-1].parent
    # PostgreSQL will not run as root: as root, the server runs as the package's postgres user, in a folder it may enter
    home = Path(tempfile.mkdtemp(prefix="pothole-edge-pg-"))
    home.chmod(0o777)
    data = home / "data"
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run(
        as_user + [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"],
        check=True,
        capture_output=True,
    )
    port = free_port()
    server = as_user + [
        str(bindir / "pg_ctl"),
        "-D",
        str(data),
        "-l",
        str(home / "log"),
        "-o",
        f"-p {port} -k {data} -c listen_addresses=127.0.0.1",
        "-w",
        "start",
    ]
    # the server inherits pg_ctl's output: a pipe here would never close
    subprocess.run(server, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            as_user + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True
        )
        shutil.rmtree(home, ignore_errors=True)
