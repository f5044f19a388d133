#!/usr/bin/env bash
# Install (idempotent), then train, evaluate, export and run the edge on the embedded synthetic dataset:
# no data, no network. Everything goes into one folder: runs/demo-<date-time>, or the first argument.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=${1:-runs/demo-$(date +%Y%m%d-%H%M%S)}
.venv/bin/pt-train --data demo --out "$out" --epochs 6
.venv/bin/pt-export "$out" --opset 17 --int8
# a dashcam-sized clip of the test photos, run through the edge install alone (no torch)
.venv-edge/bin/edge-clip render --manifest "$out/split.csv" --subset test --out "$out/clip.mp4" --size 640x360
.venv-edge/bin/edge-run --model "$out/model.int8.onnx" --video "$out/clip.mp4" --out "$out/edge"
.venv-edge/bin/edge-clip score "$out/edge" "$out/clip.mp4.labels.csv"
echo "demo run in $out: model.pt, metrics.json and plots from training; model.onnx, model.int8.onnx and parity.json"
echo "from export; clip.mp4 and edge/ (predictions.jsonl, events.jsonl, snapshots/, summary.json) from edge-run"
