"""What heatmaps and anomaly regions cost on the device, against the frame time.

A 128x128 gray autoencoder (training.models' plain family) is trained briefly on casting ok_front, converted
to float32 and int8 TFLite and written as a bundle whose calibration carries a pixel threshold
from normal validation maps. Then, on casting images (ok and def), per frame:

* frame: Detector.score(bytes) = decode + preprocess + invoke + score (what every frame pays);
* heatmap: Heatmapper.explain = pixel map + regions (boxes in source px) + overlay + JPEG encode
  (what an event pays on top).

Usage: python bench/heatmap_cost.py [--data DIR] [--n 200] [--epochs 4] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import common
import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--n", type=int, default=200, help="frames timed per variant")
    ap.add_argument("--train", type=int, default=600)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    casting = common.data_dir(a.data, "casting/train")

    from edge_detect.bundle import write_bundle
    from edge_detect.detector import Detector
    from edge_detect.heatmap import Heatmapper, source_size
    from edge_detect.preprocess import Preprocess
    from training.export import convert, fixed_batch_model
    from training.models import build_model
    from training.pixel_metrics import pixel_calibration

    size = 128
    pre = Preprocess(size=(size, size))
    tr, va = common.split_files(casting / "ok_front", [a.train, 100])
    x_tr, x_va = pre.batch(tr), pre.batch(va)
    t0 = time.time()
    model = common.train_ae(x_tr, a.epochs)
    print(f"trained {len(x_tr)} images x {a.epochs} epochs in {time.time() - t0:.0f} s")
    fixed = fixed_batch_model(model,
                             lambda: build_model("plain", (size, size, 1), batch_size=1, width=16, depth=3, latent=16))
    work = Path(tempfile.mkdtemp(prefix="heatmap-cost-"))
    files, variants = {}, {}
    for v in ("float32", "int8"):
        blob, _ = convert(fixed, v, x_tr[:200] if v == "int8" else None)
        name = f"model_{v}.tflite"
        (work / name).write_bytes(blob)
        files[name] = work / name
        from edge_detect.runtime import TFLiteModel

        m = TFLiteModel(work / name)
        variants[v] = {"file": name, "input": m.input.to_dict(), "output": m.output.to_dict()}
    scoring = {"kind": "reconstruction", "method": "max_smooth", "smooth": 5}
    manifest = {"name": "heatmap-cost", "version": "1", "family": "conv_ae", "model": {}, "created": "x",
                "preprocess": pre.to_dict(), "scoring": scoring, "calibration": {"threshold": 1.0},
                "variants": variants, "default_variant": "float32"}
    b = write_bundle(work / "bundle", manifest, files)
    rows = []
    ok, bad = common.image_files(casting / "ok_front", a.n // 2, skip=a.train + 100), common.image_files(
        casting / "def_front", a.n // 2)
    frames = [p.read_bytes() for p in ok + bad]
    for v in ("float32", "int8"):
        det = Detector(b, variant=v, num_threads=a.threads)
        _, maps, _ = det.infer(x_va)
        cal = pixel_calibration(b, v, x_va)
        val_scores = det.infer(x_va)[0]
        det.threshold = float(np.quantile(val_scores, 0.99))
        hm = Heatmapper(det, pixel_threshold=cal["pixel_threshold"])
        frame_ms, heat_ms, n_regions = [], [], []
        for f in frames[:10]:  # warm-up
            r = det.score(f)
            hm.explain(det.preprocess(f), r.error_map, source_size(f))
        for f in frames:
            t0 = time.perf_counter()
            r = det.score(f)
            t1 = time.perf_counter()
            # The daemon has x already; re-preprocessing here is not part of the heatmap's cost.
            x = det.preprocess(f)
            t2 = time.perf_counter()
            ex = hm.explain(x, r.error_map, source_size(f))
            t3 = time.perf_counter()
            frame_ms.append((t1 - t0) * 1e3)
            heat_ms.append((t3 - t2) * 1e3)
            n_regions.append(len(ex.regions))
        fm, hmm = float(np.median(frame_ms)), float(np.median(heat_ms))
        rows.append({"variant": v, "frames": len(frames), "frame_ms_p50": fm, "heatmap_ms_p50": hmm,
                     "heatmap_ms_p90": float(np.percentile(heat_ms, 90)), "ratio": hmm / fm,
                     "pixel_threshold": cal["pixel_threshold"], "regions_mean": float(np.mean(n_regions)),
                     "jpeg_bytes": len(ex.heatmap_jpeg)})
    print(common.machine_line())
    common.print_table(rows, title=f"heatmap + regions vs frame time, {size}x{size} gray, casting, "
                                   f"{a.threads} thread(s)")
    print(common.write_result("heatmap_cost", {"rows": rows, "size": size, "epochs": a.epochs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
