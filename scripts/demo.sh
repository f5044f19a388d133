#!/usr/bin/env bash
# Install (idempotent), then train, evaluate and export on the embedded synthetic dataset: no data, no network.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=${1:-runs/demo-$(date +%Y%m%d-%H%M%S)}
.venv/bin/pt-train --data demo --out "$out" --epochs 6
.venv/bin/pt-export "$out" --opset 17 --int8
echo "demo run in $out: model.pt, metrics.json and plots from training; model.onnx, model.int8.onnx and parity.json from export"
