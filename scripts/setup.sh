#!/usr/bin/env bash
# Create .venv and install the project with its training and test extras (idempotent).
# torch and torchvision are named first at the versions the team machines serve from local disk;
# elsewhere pip fetches them from PyPI like any other package.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e ".[all]"
