#!/usr/bin/env bash
# Install (idempotent) and run the pipeline on the embedded synthetic dataset: no data, no network.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=${1:-runs/demo-$(date +%Y%m%d-%H%M%S)}
.venv/bin/pt-train --data demo --out "$out" --epochs 6
echo "demo run written to $out (metrics.json, model.pt and the PNG plots)"
