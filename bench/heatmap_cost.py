"""What heatmaps and anomaly regions cost on the device, against the frame time.

A 128x128 (--size) gray autoencoder (training.models' plain family) is trained briefly on casting ok_front, converted
to float32 and int8 TFLite and written as a bundle whose calibration carries a pixel threshold
from normal validation maps. Then, on casting images, per frame:

* frame: Detector.score(bytes) = decode + preprocess + invoke + score (what every frame pays),
  median over held-out ok_front and def_front frames;
* heatmap: Heatmapper.explain = pixel map + regions (boxes in source px) + overlay + JPEG encode
  (what an event pays on top), timed on every def_front frame (the strict reading: per anomalous
  frame, not amortised over the frames that raise no event), split into its stages.

Usage: python bench/heatmap_cost.py [--data DIR] [--n 200] [--train 600] [--val 100] [--size 128] [--epochs 4]
       [--threads 1] [--work DIR]  (DIR/bundle is reused when it exists: timing reruns skip the training)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import common
import numpy as np

STAGES = ("map", "regions", "overlay", "jpeg")


def build_bundle(casting: Path, work: Path, n_train: int, n_val: int, epochs: int, size: int) -> Path:
    """Train the AE on ``size`` px squares, convert float32 + int8 and write WORK/bundle; returns its path."""
    from edge_detect.bundle import write_bundle
    from edge_detect.preprocess import Preprocess
    from edge_detect.runtime import TFLiteModel
    from training.export import convert, fixed_batch_model
    from training.models import build_model

    pre = Preprocess(size=(size, size))
    tr, _ = common.split_files(casting / "ok_front", [n_train, n_val])
    x_tr = pre.batch(tr)
    t0 = time.time()
    model = common.train_ae(x_tr, epochs)
    print(f"trained {len(x_tr)} images x {epochs} epochs in {time.time() - t0:.0f} s")
    fixed = fixed_batch_model(model,
                             lambda: build_model("plain", (size, size, 1), batch_size=1, width=16, depth=3, latent=16))
    work.mkdir(parents=True, exist_ok=True)
    files, variants = {}, {}
    for v in ("float32", "int8"):
        blob, _ = convert(fixed, v, x_tr[:200] if v == "int8" else None)
        name = f"model_{v}.tflite"
        (work / name).write_bytes(blob)
        files[name] = work / name
        m = TFLiteModel(work / name)
        variants[v] = {"file": name, "input": m.input.to_dict(), "output": m.output.to_dict()}
    scoring = {"kind": "reconstruction", "method": "max_smooth", "smooth": 5}
    manifest = {"name": "heatmap-cost", "version": "1", "family": "conv_ae", "model": {}, "created": "x",
                "preprocess": pre.to_dict(), "scoring": scoring, "calibration": {"threshold": 1.0},
                "variants": variants, "default_variant": "float32"}
    return write_bundle(work / "bundle", manifest, files)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--n", type=int, default=200, help="frames timed per variant (half ok, half def)")
    ap.add_argument("--train", type=int, default=600, help="ok_front training images")
    ap.add_argument("--val", type=int, default=100, help="ok_front validation images (thresholds)")
    ap.add_argument("--size", type=int, default=128, help="model input, px (square)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default=None, help="folder for the bundle; reused when WORK/bundle exists")
    a = ap.parse_args()
    casting = common.data_dir(a.data, "casting/train")

    from edge_detect.detector import Detector
    from edge_detect.heatmap import Heatmapper, source_size
    from edge_detect.preprocess import Preprocess
    from training.pixel_metrics import pixel_calibration

    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="heatmap-cost-"))
    b = work / "bundle"
    if not (b / "manifest.json").exists():
        b = build_bundle(casting, work, a.train, a.val, a.epochs, a.size)
    else:
        print(f"reusing {b}")
    pre = Preprocess(size=(a.size, a.size))
    _, va = common.split_files(casting / "ok_front", [a.train, a.val])
    x_va = pre.batch(va)
    ok = common.image_files(casting / "ok_front", a.n // 2, skip=a.train + a.val)
    bad = [p.read_bytes() for p in common.image_files(casting / "def_front", a.n // 2)]
    frames = [p.read_bytes() for p in ok] + bad
    rows = []
    for v in ("float32", "int8"):
        det = Detector(b, variant=v, num_threads=a.threads)
        cal = pixel_calibration(b, v, x_va)
        det.threshold = float(np.quantile(det.infer(x_va)[0], 0.99))
        hm = Heatmapper(det, pixel_threshold=cal["pixel_threshold"])
        for f in frames[:10]:  # warm-up
            hm.explain(det.preprocess(f), det.score(f).error_map, source_size(f))
        frame_ms = []
        for f in frames:
            t0 = time.perf_counter()
            det.score(f)
            frame_ms.append((time.perf_counter() - t0) * 1e3)
        heat = {k: [] for k in ("ms", "n_regions", "bytes", *STAGES)}
        flagged = 0
        for f in bad:
            r = det.score(f)
            flagged += bool(r.anomalous)
            # The daemon has x already; re-preprocessing here is not part of the heatmap's cost.
            ex = hm.explain(det.preprocess(f), r.error_map, source_size(f))
            for k, val in (("ms", ex.ms), ("n_regions", len(ex.regions)), ("bytes", len(ex.heatmap_jpeg)),
                           *ex.stages_ms.items()):
                heat[k].append(val)
        fm, hmm = float(np.median(frame_ms)), float(np.median(heat["ms"]))
        rows.append({"variant": v, "frame_ms_p50": fm, "heatmap_ms_p50": hmm,
                     "heatmap_ms_p90": float(np.percentile(heat["ms"], 90)), "ratio": hmm / fm,
                     **{f"{k}_ms_p50": float(np.median(heat[k])) for k in STAGES},
                     "regions_mean": float(np.mean(heat["n_regions"])),
                     "jpeg_bytes_p50": float(np.median(heat["bytes"])), "pixel_threshold": cal["pixel_threshold"],
                     "def_frames": len(bad), "def_flagged": flagged})
    print(common.machine_line())
    common.print_table(rows, title=f"heatmap per def_front frame vs frame time, {a.size}x{a.size} gray, casting, "
                                   f"{a.threads} thread(s)")
    print(common.write_result("heatmap_cost", {"rows": rows, "size": a.size, "epochs": a.epochs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
