#!/usr/bin/env bash
# Quick end-to-end demo: make a small synthetic chairs set, train briefly, leave a run directory with a snapshot,
# then compute its FID-1k (official Inception detector, offline), render an interpolation video and a contact sheet.
# Usage: bash scripts/demo.sh [PYTHON]   (the Makefile passes its venv python; `make demo`)
# On a CUDA machine it trains the T4 preset for a short while; on a CPU the tiny `smoke` preset for a few minutes.
set -euo pipefail
PY="${1:-python3}"
cd "$(dirname "$0")/.."
OUT="${DEMO_OUTDIR:-demo-runs}"

if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    # 64 px chairs (2,000 images), T4 preset with 32 px patches, 8 layers from the chairs preset.
    CFG="chairs,t4"; DATA="synth:chairs:64:2000"; KIMG="${DEMO_KIMG:-20}"
    EXTRA=(--snap 5 --set kimg_per_tick=1)
else
    # 32 px chairs (64 images), tiny shapes; about 0.05-0.3 s per step on 2 CPU cores (2 kimg = 500 steps).
    CFG="chairs,smoke"; DATA="synth:chairs"; KIMG="${DEMO_KIMG:-2}"
    EXTRA=()
fi

echo "== Training: --cfg $CFG --data $DATA --kimg $KIMG (outdir $OUT)"
"$PY" train.py --outdir "$OUT" --cfg "$CFG" --data "$DATA" --kimg "$KIMG" "${EXTRA[@]}"

RUN_DIR="$(ls -d "$OUT"/*/ | sort | tail -n 1)"
RUN_DIR="${RUN_DIR%/}"
SNAPSHOT="$(ls "$RUN_DIR"/network-snapshot-*.pkl | sort | tail -n 1)"
echo "== Run directory: $RUN_DIR"
echo "== Latest snapshot: $SNAPSHOT"
echo "DEMO_RUN_DIR=$RUN_DIR"
echo "DEMO_SNAPSHOT=$SNAPSHOT"

echo "== FID-1k of the snapshot (1,000 renders vs all real images; Inception-v3 2015-12-05, offline)"
"$PY" calc_metrics.py --network "$SNAPSHOT" --metrics fid1k_full

echo "== Interpolation video and contact sheet"
"$PY" generate.py interp --network "$SNAPSHOT" --seeds 0-4 --frames 48 --fps 12 --out "$RUN_DIR/demo_interp.mp4" --force
"$PY" generate.py images --network "$SNAPSHOT" --seeds 0-15 --pose 30,30 --outdir "$RUN_DIR/demo_images" \
    --sheet "$RUN_DIR/demo_sheet.png"
echo "== Done. See $RUN_DIR (metric-fid1k_full.jsonl, demo_interp.mp4 or .gif, demo_interp.png, demo_sheet.png)."
