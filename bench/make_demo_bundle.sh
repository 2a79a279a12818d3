#!/usr/bin/env bash
# Reproduce the demo bundle and sample captures shipped in edge_detect/data/demo/.
#
# Data: the Kaggle casting set (PILOT TECHNOCAST, "casting product image data for quality
# inspection", non-commercial use), 300x300 top views of pump impellers: ok_front (good) and
# def_front (defective). Twelve photos (6 good, 6 defective, chosen by a fixed stride over the
# sorted file names) become the demo's sample captures and are left out of training,
# calibration and test, so the demo scores images the model has never seen.
#
# Model: the project's metric-learning embedder (small CNN, 128x128 gray, L2-constrained softmax)
# trained by `edge-train fit` on the good images only, with outlier exposure from an unrelated
# dataset (brickwork-cracks: masonry patches, no castings), scored by the mean distance to the
# 5 nearest of 1,024 k-means reference embeddings, threshold: the 99th percentile of held-out good
# images' scores (contamination 0.01). It is the configuration that meets issue 2's casting bar
# (docs/BENCHMARKS.md, "Casting at 128 px"); the reference set is reduced from 2,008 to 1,024 so
# the demo data stays under 1 MB. Exported by `edge-train export --quant int8` (float32, int8 with
# float I/O for CPUs, int8_io for the Edge TPU). Until 2026-11-25 the demo shipped a 64x64 plain
# autoencoder (AUROC 0.855, 3 of the 6 defective samples caught); MODEL=plain rebuilds that one.
#
# Usage: [MODEL=metric|plain] bench/make_demo_bundle.sh [CASTING_DIR] [WORK_DIR] [AUX_DIR]
#   CASTING_DIR defaults to ../shared/data/casting/train; WORK_DIR (the run) to bench/results/demo-run;
#   AUX_DIR (metric only) to ../shared/data/brickwork-cracks.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
src="${1:-$here/../shared/data/casting/train}"
work="${2:-$here/bench/results/demo-run}"
aux="${3:-$here/../shared/data/brickwork-cracks}"
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

if [[ "${MODEL:-metric}" == plain ]]; then
  "$bin" fit "$work/data/good" --anomalies "$work/data/defect" --layout folders \
    --model plain --input-size 64 --color gray --width 16 --depth 3 --latent 16 \
    --epochs "${EPOCHS:-20}" --batch-size 32 --patience 4 --max-train "${MAX_TRAIN:-1600}" \
    --calibration mu_k_sigma --k 3 --seed 0 --quiet --out "$work/run"
else
  "$bin" fit "$work/data/good" --anomalies "$work/data/defect" --layout folders \
    --model metric --head gap --alpha 16 --embed-dim 32 --aux "$aux" --scorer knn \
    --reference-size "${REFERENCE_SIZE:-1024}" --input-size 128 --color gray \
    --epochs "${EPOCHS:-8}" --batch-size 64 --seed 0 --quiet --out "$work/run"
fi
rm -rf "$demo/bundle"
"$bin" export "$work/run" --out "$demo/bundle" --quant int8 --name casting-demo --version 1 \
  | tee "$work/export.txt"
# What the demo runs: the bundle's int8 variant, through the device code.
"$bin" evaluate "$work/run" --bundle "$demo/bundle" --variant int8 | tee "$work/evaluate.txt"
du -sh "$demo/bundle" "$demo/samples"
