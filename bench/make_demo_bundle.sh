#!/usr/bin/env bash
# Reproduce the demo bundle and sample captures shipped in edge_detect/data/demo/.
#
# Data: the Kaggle casting set (PILOT TECHNOCAST, "casting product image data for quality
# inspection", non-commercial use), 300x300 top views of pump impellers: ok_front (good) and
# def_front (defective). Twelve photos (6 good, 6 defective, chosen by a fixed stride over the
# sorted file names) become the demo's sample captures and are left out of training,
# calibration and test, so the demo scores images the model has never seen.
#
# Model: the project's plain convolutional autoencoder at 64x64 gray, trained by `edge-train fit`
# on the good images only, threshold mu + 3 sigma of the held-out normal validation scores (a first
# build used best F1, which on this imbalanced set, 2626 defects vs 574 good, flagged 58% of good
# parts: useless on a line), and
# exported by `edge-train export` to float32 + int8 (the device default on a CPU).
#
# Usage: bench/make_demo_bundle.sh [CASTING_DIR] [WORK_DIR]
#   CASTING_DIR defaults to ../shared/data/casting/train; WORK_DIR (the run) to bench/results/demo-run.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
src="${1:-$here/../shared/data/casting/train}"
work="${2:-$here/bench/results/demo-run}"
bin="${EDGE_TRAIN:-$here/.venv/bin/edge-train}"
demo="$here/edge_detect/data/demo"
n=6        # samples per class
stride=97  # every 97th file of the sorted names: spread over the whole set, fixed

rm -rf "$work" && mkdir -p "$work/data/good" "$work/data/defect"
rm -rf "$demo/samples" && mkdir -p "$demo/samples/good" "$demo/samples/defect"
pick() {  # $1 source folder, $2 sample folder, $3 training folder (symlinks to everything else)
  local i=0 k=0
  while IFS= read -r f; do
    if (( i % stride == 0 && k < n )); then cp "$1/$f" "$2/$f"; k=$((k + 1))
    else ln -s "$1/$f" "$3/$f"; fi
    i=$((i + 1))
  done < <(ls "$1" | LC_ALL=C sort)
}
pick "$src/ok_front" "$demo/samples/good" "$work/data/good"
pick "$src/def_front" "$demo/samples/defect" "$work/data/defect"

"$bin" fit "$work/data/good" --anomalies "$work/data/defect" --layout folders \
  --model plain --input-size 64 --color gray --width 16 --depth 3 --latent 16 \
  --epochs "${EPOCHS:-20}" --batch-size 32 --patience 4 --max-train "${MAX_TRAIN:-1600}" \
  --calibration mu_k_sigma --k 3 --seed 0 --quiet --out "$work/run"
"$bin" evaluate "$work/run" | tee "$work/evaluate.txt"
rm -rf "$demo/bundle"
"$bin" export "$work/run" --out "$demo/bundle" --quant int8 --name casting-demo --version 1 --allow-degraded \
  | tee "$work/export.txt"
du -sh "$demo/bundle" "$demo/samples"
