"""Per-frame model cost through the device's Detector: invoke and scoring, p50 / p99 ms.

``edge_detect.detector.Detector.score_array`` on one random preprocessed input per bundle,
timed round-robin in blocks of 25 calls so that load from other processes hits every bundle
alike. Scoring is what the scorer adds after the interpreter: an error map for one autoencoder,
every member's smoothed map and their order statistic for a vote (``edge-train vote``).

    python bench/score_cost.py runs/mnist-vote/s0-bundle runs/bench-mnist/superres-l4-mse-bundle \
        [--variant int8] [--blocks 20]
"""

from __future__ import annotations

import argparse

import common
import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+")
    ap.add_argument("--variant", default="int8")
    ap.add_argument("--blocks", type=int, default=20, help="rounds of 25 calls per bundle")
    ap.add_argument("--name", default="score_cost")
    args = ap.parse_args()

    from edge_detect.detector import Detector

    dets = {b: Detector(b, variant=args.variant, num_threads=1) for b in args.bundles}
    inputs = {b: np.random.default_rng(0).random(d.input_spec.shape[1:], dtype=np.float32) for b, d in dets.items()}
    times = {b: {"invoke": [], "score": []} for b in dets}
    for b, d in dets.items():  # warm-up
        for _ in range(10):
            d.score_array(inputs[b])
    for _ in range(args.blocks):
        for b, d in dets.items():
            for _ in range(25):
                t = d.score_array(inputs[b]).timings
                times[b]["invoke"].append(t["invoke"])
                times[b]["score"].append(t["score"])
    rows = [{"bundle": b, "scorer": d.scorer.kind, "variant": d.variant,
             "invoke_p50_ms": common.percentile(times[b]["invoke"], 50),
             "score_p50_ms": common.percentile(times[b]["score"], 50),
             "score_p99_ms": common.percentile(times[b]["score"], 99), "n": len(times[b]["score"])}
            for b, d in dets.items()]
    common.print_table(rows)
    print(common.machine_line())
    print("wrote", common.write_result(args.name, {"variant": args.variant, "rows": rows}))


if __name__ == "__main__":
    main()
