#!/usr/bin/env bash
# Create .venv with the training, export and test extras, and .venv-edge with the edge extra alone
# (what a dashcam installs; the tests run edge-run from it). Idempotent.
# torch and torchvision are named first at the versions the team machines serve from local disk;
# elsewhere pip fetches them from PyPI like any other package.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e ".[all]"
[ -x .venv-edge/bin/python ] || "${PYTHON:-python3}" -m venv .venv-edge
.venv-edge/bin/python -m pip install -q -e ".[edge]"
# the stream tests serve video with Debian's ffmpeg
if ! command -v ffmpeg >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ffmpeg) >/dev/null
    else
        echo "setup: ffmpeg is missing and cannot be installed here (needs root and apt-get); the stream test will be skipped" >&2
    fi
fi
