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
# the real parts the tests start: ffmpeg (a stream server), gpsd and gpsfake, PostgreSQL with PostGIS, a headless browser, an MQTT broker
declare -A PROVIDES=([ffmpeg]=ffmpeg [gpsd]=gpsd [gpsfake]=gpsd-clients [/usr/lib/postgresql]=postgresql [chromium]=chromium [chromedriver]=chromium-driver [mosquitto]=mosquitto [mosquitto_sub]=mosquitto-clients [/usr/share/postgresql/15/extension/postgis.control]=postgresql-15-postgis-3)
missing=()
for tool in "${!PROVIDES[@]}"; do
    if [[ "$tool" == /* ]]; then [ -e "$tool" ] || missing+=("${PROVIDES[$tool]}"); else command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || missing+=("${PROVIDES[$tool]}"); fi
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing Debian's ${missing[*]} for the tests that start real servers and a browser (about 500 MB with chromium)"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}") >/dev/null
    else
        say "missing ${missing[*]} and cannot install them here (needs root and apt-get); the tests that need them will be skipped"
    fi
fi
say "done: .venv and .venv-edge are ready"
