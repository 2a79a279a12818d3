"""The evaluation report folder: metrics.json and PNG plots people would rather look at than read.

- ``histogram.png``: normal vs anomalous scores with the threshold line
- ``roc.png``: the ROC curve with its AUROC
- ``worst_normals.png`` / ``hidden_anomalies.png``: the highest-scored normals and the
  lowest-scored anomalies, each over its heatmap overlay (models without pixel maps, such as the
  metric embedders: the images alone, captioned with their scores)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np

from edge_detect.preprocess import Preprocess

from .metrics import roc_curve

GRID_N = 8  # images per grid
MIN_TILE_PX = 96  # smaller inputs (MNIST's 28 px) are enlarged by a whole factor, so they and the captions read


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def histogram(val_scores: np.ndarray, test_scores: np.ndarray, labels: np.ndarray, threshold: float,
              out: Path) -> Path:
    """Score histogram: validation normals, test normals, test anomalies, and the threshold line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    allv = np.concatenate([val_scores, test_scores, [threshold]])
    bins = np.linspace(allv.min(), np.quantile(allv, 0.995) * 1.05 + 1e-12, 60)
    # The far tail would squeeze the interesting part into a few bars: it piles into the last one.
    beyond = int((allv[:-1] > bins[-1]).sum())

    def hist(v: np.ndarray, **kw: Any) -> None:
        # Each group as shares of itself: a few hundred normals would vanish under thousands of anomalies.
        ax.hist(np.clip(v, bins[0], bins[-1]), bins, weights=np.full(len(v), 1.0 / max(len(v), 1)), alpha=0.5, **kw)

    hist(val_scores, label=f"validation normal ({len(val_scores)})", color="tab:blue")
    if len(test_scores):
        y = np.asarray(labels).astype(bool)
        hist(test_scores[~y], label=f"test normal ({(~y).sum()})", color="tab:green")
        hist(test_scores[y], label=f"test anomalous ({y.sum()})", color="tab:red")
    ax.axvline(threshold, color="k", ls="--", label=f"threshold {threshold:.4g}")
    ax.set_xlabel("anomaly score" + (f"   (last bar: also {beyond} scores above {bins[-1]:.4g})" if beyond else ""))
    ax.set_ylabel("share of the group's images")
    ax.set_yscale("log")  # the few normals past the threshold are the false alarms: keep them visible
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def roc_plot(scores: np.ndarray, labels: np.ndarray, out: Path, auroc: Optional[float]) -> Path:
    plt = _plt()
    fpr, tpr, _ = roc_curve(scores, labels)
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=110)
    ax.plot(fpr, tpr, lw=2, label=f"AUROC {auroc:.4f}" if auroc is not None else None)
    ax.plot([0, 1], [0, 1], color="0.7", ls=":")
    ax.set_xlabel("false-positive rate (normals flagged)")
    ax.set_ylabel("true-positive rate (anomalies caught)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def heatmap_grid(xs: np.ndarray, maps: Optional[np.ndarray], threshold: float, captions: Sequence[str],
                 out: Union[str, Path], pre: Optional[Preprocess] = None, cols: int = 8,
                 masks: Optional[np.ndarray] = None) -> Path:
    """A report grid PNG: per image its input over its heatmap overlay (with region boxes), captioned.

    For the evaluation report's worst-scored normals / best-hidden anomalies. xs (N, H, W, C) model
    inputs, maps (N, H, W) pixel maps or None (tiles of the inputs alone), threshold in map units;
    masks (N, H, W) outline ground truth in green where given (on the overlay, or on the input).
    """
    from PIL import Image, ImageDraw

    from edge_detect.heatmap import draw_boxes, overlay, regions, to_uint8_image

    pre = pre or Preprocess(size=tuple(xs.shape[1:3]), color="gray" if xs.shape[3] == 1 else "rgb")
    n = len(xs)
    if n == 0:
        raise ValueError("no images for the heatmap grid")
    zoom = -(-MIN_TILE_PX // max(xs.shape[1:3]))  # ceil; 1 for inputs of 96 px and more
    h, w = xs.shape[1] * zoom, xs.shape[2] * zoom
    cap = 12  # px of caption under each tile
    panels = 1 if maps is None else 2  # the input, and its overlay when there is a map
    cols = min(cols, n)
    rows = (n + cols - 1) // cols
    sheet = Image.new("RGB", (cols * (w + 4), rows * (panels * h + cap + 6)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i in range(n):
        img = to_uint8_image(xs[i], pre.scale, pre.offset)
        if maps is None:
            ov = np.stack([img] * 3, axis=-1) if img.ndim == 2 else img.copy()
        else:
            ov = draw_boxes(overlay(img, maps[i], threshold), regions(maps[i], threshold))
        if masks is not None and masks[i].any():
            m = masks[i].astype(bool)
            p = np.pad(m, 1, mode="edge")
            inner = p[2:, 1:-1] & p[:-2, 1:-1] & p[1:-1, 2:] & p[1:-1, :-2]
            ov[m & ~inner] = (0, 255, 0)  # the mask's outline
        r, c = divmod(i, cols)
        x0, y0 = c * (w + 4) + 2, r * (panels * h + cap + 6) + 2
        if maps is not None:
            sheet.paste(Image.fromarray(img).resize((w, h), Image.NEAREST), (x0, y0))
        sheet.paste(Image.fromarray(ov).resize((w, h), Image.NEAREST), (x0, y0 + (panels - 1) * h))
        draw.text((x0, y0 + panels * h), str(captions[i])[: max(4, w // 6)], fill=(0, 0, 0))
    out = Path(out)
    sheet.save(out)
    return out


def write_report(out_dir: Path, metrics: Dict[str, Any], val_scores: np.ndarray, test_scores: np.ndarray,
                 splits: Any, threshold: float, maps: Optional[np.ndarray] = None,
                 pre: Optional[Preprocess] = None) -> Path:
    """Write metrics.json and every plot that the data allows into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(
        {k: v for k, v in metrics.items() if k != "scores"}, indent=2) + "\n")
    y = np.asarray(splits.y_test).astype(bool)
    histogram(np.asarray(val_scores), np.asarray(test_scores), y, threshold, out_dir / "histogram.png")
    if len(test_scores) and y.any() and (~y).any():
        roc_plot(test_scores, y, out_dir / "roc.png", metrics.get("auroc"))
    if not len(test_scores):
        return out_dir
    pix_thr = 0.0
    if maps is not None:
        pix_thr = float(np.quantile(maps[~y], 0.999)) if (~y).any() else float(np.quantile(maps, 0.99))
    for name, sel, reverse in (("worst_normals", ~y, True), ("hidden_anomalies", y, False)):
        idx = np.nonzero(sel)[0]
        if not len(idx):
            continue
        idx = idx[np.argsort(test_scores[idx])]
        idx = (idx[::-1] if reverse else idx)[:GRID_N]
        masks = splits.masks_test[idx] if getattr(splits, "masks_test", None) is not None else None
        caps = [f"{splits.test_kinds[i][:8]} {test_scores[i]:.3g}" for i in idx]
        heatmap_grid(splits.x_test[idx], None if maps is None else maps[idx], pix_thr, caps,
                     out_dir / f"{name}.png", pre, masks=masks)
    return out_dir
