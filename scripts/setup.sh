#!/usr/bin/env bash
# Create .venv with the training, export and test extras, and .venv-edge with the edge extra alone
# (what a dashcam installs; the tests run edge-run from it). Idempotent: a second run checks and exits fast.
# torch and torchvision are named first at the versions the team machines serve from local disk;
# elsewhere pip fetches them from PyPI like any other package (the CUDA build is several GB).
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "setup: $*" >&2; }
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { say "needs Python 3.10 or newer; $PY is $("$PY" -V 2>&1)"; exit 1; }
if [ ! -x .venv/bin/python ]; then
    say "creating .venv (training, export, benchmarks, tests)"
    "$PY" -m venv .venv || { say "python3 -m venv failed: install python3-venv (apt-get install python3-venv)"; exit 1; }
fi
say "installing torch 2.14.1 and torchvision 0.29.1 into .venv (5.2 GB installed with their CUDA libraries; about a minute from a local wheel cache)"
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
say "installing pothole-edge[all] into .venv: timm, onnx, onnxruntime, onnxslim, OpenCV, scikit-learn, matplotlib, click, pytest (about 0.9 GB)"
.venv/bin/python -m pip install -q -e ".[all]"
if [ ! -x .venv-edge/bin/python ]; then
    say "creating .venv-edge (what a dashcam installs: no torch)"
    "$PY" -m venv .venv-edge
fi
say "installing pothole-edge[edge] into .venv-edge: onnxruntime, OpenCV headless, Pillow, numpy (about 350 MB)"
.venv-edge/bin/python -m pip install -q -e ".[edge]"
# the stream tests serve video with Debian's ffmpeg
if ! command -v ffmpeg >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing Debian's ffmpeg for the stream tests (about 100 MB)"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ffmpeg) >/dev/null
    else
        say "ffmpeg is missing and cannot be installed here (needs root and apt-get); the stream test will be skipped"
    fi
fi
say "done: .venv and .venv-edge are ready"
