"""Heatmaps and anomaly regions: labelling, boxes back in source px, JPEG overlays, the Detector path."""

from __future__ import annotations

import io
from collections import deque

import numpy as np
import pytest
from PIL import Image

from edge_detect import heatmap as H


def _bfs_label(mask: np.ndarray, conn: int) -> int:
    """Reference component count by breadth-first search."""
    h, w = mask.shape
    seen = np.zeros_like(mask, bool)
    steps = [(-1, 0), (1, 0), (0, -1), (0, 1)] + ([(-1, -1), (-1, 1), (1, -1), (1, 1)] if conn == 8 else [])
    n = 0
    for y in range(h):
        for x in range(w):
            if mask[y, x] and not seen[y, x]:
                n += 1
                seen[y, x] = True
                q = deque([(y, x)])
                while q:
                    a, b = q.popleft()
                    for dy, dx in steps:
                        c, d = a + dy, b + dx
                        if 0 <= c < h and 0 <= d < w and mask[c, d] and not seen[c, d]:
                            seen[c, d] = True
                            q.append((c, d))
    return n


def test_label_known_shapes() -> None:
    m = np.zeros((8, 8), bool)
    m[1, 1] = m[2, 2] = True  # diagonal neighbours: one component with 8-connectivity, two with 4
    m[5:7, 0:8] = True  # a bar spanning the width
    m[0, 5:8] = True
    m[1, 7] = True  # an L: one component
    lab8, n8 = H.label(m, 8)
    lab4, n4 = H.label(m, 4)
    assert (n8, n4) == (3, 4)
    assert lab8[1, 1] == lab8[2, 2] != 0 and lab4[1, 1] != lab4[2, 2]
    assert lab8[0, 5] == lab8[1, 7] and np.all(lab8[5:7] == lab8[5, 0])
    assert np.all((lab8 > 0) == m)
    # U shape: the two arms meet only at the bottom row, after both were seen as separate runs.
    u = np.zeros((5, 5), bool)
    u[:, 0] = u[:, 4] = u[4, :] = True
    assert H.label(u, 4)[1] == 1
    assert H.label(np.zeros((3, 3), bool))[1] == 0


def test_label_agrees_with_bfs_on_random_masks() -> None:
    rng = np.random.default_rng(0)
    for _ in range(60):
        m = rng.random((int(rng.integers(1, 24)), int(rng.integers(1, 24)))) < rng.random()
        for conn in (4, 8):
            lab, n = H.label(m, conn)
            assert n == _bfs_label(m, conn)
            # Same partition: each label maps to one BFS component and vice versa (count check suffices
            # together with every True pixel labelled).
            assert np.all((lab > 0) == m) and len(np.unique(lab[m])) == n


def test_regions_boxes_peak_area_in_model_px() -> None:
    pm = np.zeros((20, 30), np.float32)
    pm[2:6, 3:10] = 0.5
    pm[4, 5] = 0.9  # the peak of region A
    pm[12:18, 20:22] = 0.7  # region B, 12 px
    pm[0, 29] = 0.8  # a speck, dropped by min_area
    regs = H.regions(pm, 0.2, min_area=4)
    assert [(r.x, r.y, r.w, r.h, r.area_px) for r in regs] == [(3, 2, 7, 4, 28), (20, 12, 2, 6, 12)]
    assert regs[0].peak == pytest.approx(0.9) and regs[1].peak == pytest.approx(0.7)
    assert H.regions(pm, 0.2, min_area=1)[1].area_px == 1  # the speck, peak 0.8, now second
    assert len(H.regions(pm, 0.2, max_regions=1)) == 1
    assert H.regions(pm, 1.0) == []


def _bfs_regions(pm: np.ndarray, t: float, conn: int) -> list:
    """Reference (x, y, w, h, area, peak) per component, by breadth-first search, sorted."""
    mask = pm > t
    lab = np.zeros(mask.shape, int)
    h, w = mask.shape
    steps = [(-1, 0), (1, 0), (0, -1), (0, 1)] + ([(-1, -1), (-1, 1), (1, -1), (1, 1)] if conn == 8 else [])
    out = []
    for y in range(h):
        for x in range(w):
            if mask[y, x] and not lab[y, x]:
                lab[y, x] = len(out) + 1
                q, px = deque([(y, x)]), []
                while q:
                    a, b = q.popleft()
                    px.append((a, b))
                    for dy, dx in steps:
                        c, d = a + dy, b + dx
                        if 0 <= c < h and 0 <= d < w and mask[c, d] and not lab[c, d]:
                            lab[c, d] = lab[y, x]
                            q.append((c, d))
                ys, xs = np.array(px).T
                out.append((xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1, len(px),
                            float(pm[ys, xs].max())))
    return sorted(out)


def test_regions_agree_with_bfs_on_random_maps() -> None:
    """Boxes, areas and peaks of the vectorised labelling (cropped to the hot pixels) against BFS."""
    rng = np.random.default_rng(3)
    for _ in range(40):
        h, w = int(rng.integers(1, 30)), int(rng.integers(1, 30))
        pm = rng.random((h, w)).astype(np.float32)
        pm[: int(rng.integers(0, h)), :] *= 0.1  # often a cold margin, so the crop offset matters
        t = float(rng.uniform(0.2, 0.9))
        for conn in (4, 8):
            got = sorted((r.x, r.y, r.w, r.h, r.area_px, r.peak)
                         for r in H.regions(pm, t, min_area=1, max_regions=10**6, connectivity=conn))
            want = _bfs_regions(pm, t, conn)
            assert [g[:5] for g in got] == [v[:5] for v in want]
            assert [g[5] for g in got] == pytest.approx([v[5] for v in want])


def test_label_joins_a_snake_and_a_spiral() -> None:
    """Long winding components that a few rounds of label propagation must still join into one."""
    snake = np.zeros((33, 20), bool)
    snake[::4] = True
    for i, r in enumerate(range(0, 29, 4)):
        snake[r : r + 5, 19 if i % 2 == 0 else 0] = True
    assert H.label(snake, 4)[1] == 1
    spiral = np.zeros((21, 21), bool)
    y0, x0, y1, x1 = 0, 0, 20, 20
    while y0 <= y1 and x0 <= x1:  # walls of a square spiral, 1 px apart
        spiral[y0, x0 : x1 + 1] = True
        spiral[y0 : y1 + 1, x1] = True
        spiral[y1, x0 : x1 + 1] = True
        spiral[y0 + 2 : y1 + 1, x0] = True
        y0, x0, y1, x1 = y0 + 2, x0 + 2, y1 - 2, x1 - 2
        if y0 <= y1:
            spiral[y0, x0 - 1] = True  # the gap that links this ring to the next
    assert H.label(spiral, 4)[1] == _bfs_label(spiral, 4)


def test_regions_back_to_source_px_with_resize_and_roi() -> None:
    pm = np.zeros((16, 16), np.float32)
    pm[4:8, 2:6] = 1.0  # model px x 2..6, y 4..8
    # No ROI, 64x32 source (w, h): x scales by 4, y by 2.
    (r,) = H.regions(pm, 0.5, source_wh=(64, 32), min_area=1)
    assert (r.x, r.y, r.w, r.h, r.area_px) == (8, 8, 16, 8, 16 * 8)
    # ROI (x=100, y=50, w=32, h=48) of a big frame: scale 2 x 3, then offset; source size is ignored.
    (r,) = H.regions(pm, 0.5, source_wh=(4000, 3000), roi=(100, 50, 32, 48), min_area=1)
    assert (r.x, r.y, r.w, r.h) == (100 + 4, 50 + 12, 8, 12)
    # Non-integer scale rounds outwards and never leaves the ROI.
    pm2 = np.zeros((3, 3), np.float32)
    pm2[2, 2] = 1.0
    (r,) = H.regions(pm2, 0.5, source_wh=(10, 10), min_area=1)
    assert (r.x, r.y, r.x + r.w, r.y + r.h) == (6, 6, 10, 10)


def test_region_boxes_cover_the_source_pixels_of_a_drawn_defect() -> None:
    """End to end through the real preprocessing: a square in a 300x200 photo, ROI crop, 64x64 model."""
    from edge_detect.preprocess import Preprocess

    src = np.full((200, 300), 60, np.uint8)
    src[120:150, 200:240] = 250  # the defect, source px x 200..240, y 120..150
    pre = Preprocess(size=(64, 64), roi=(150, 80, 128, 96), draft=False)
    x = pre(src)
    pm = (x[:, :, 0] > 0.5).astype(np.float32)
    (r,) = H.regions(pm, 0.5, source_wh=H.source_size(src), roi=pre.roi, min_area=1)
    assert r.x <= 200 and r.y <= 120 and r.x + r.w >= 240 and r.y + r.h >= 150
    assert r.x >= 196 and r.y >= 116 and r.x + r.w <= 244 and r.y + r.h <= 154  # tight: within 2 model px


def test_source_size_of_every_frame_kind(tmp_path) -> None:
    arr = np.zeros((30, 40, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    (tmp_path / "f.jpg").write_bytes(buf.getvalue())
    assert H.source_size(arr) == (40, 30)
    assert H.source_size(buf.getvalue()) == (40, 30)
    assert H.source_size(tmp_path / "f.jpg") == (40, 30)
    assert H.source_size(Image.fromarray(arr)) == (40, 30)


def test_overlay_jpeg_decodes_and_shows_the_hot_spot() -> None:
    img = np.full((32, 48, 3), 128, np.uint8)
    pm = np.zeros((32, 48), np.float32)
    pm[10:20, 30:40] = 0.4
    regs = H.regions(pm, 0.1)
    data = H.overlay_jpeg(img, pm, 0.1, regs)
    out = np.asarray(Image.open(io.BytesIO(data)))
    assert Image.open(io.BytesIO(data)).format == "JPEG" and out.shape == (32, 48, 3)
    # The hot spot is bright yellow-white (4x threshold saturates the scale); the rest stays gray-ish.
    assert out[14, 34].mean() > 160 and abs(int(out[14, 34, 0]) - int(out[14, 34, 2])) > 40
    assert abs(out[2, 2].astype(int) - 128).max() < 60
    # A map at another size is resized onto the image.
    assert H.overlay(img, pm[::2, ::2], 0.1).shape == (32, 48, 3)


def test_gray_overlay_is_rgbx_inside_and_rgb_outside() -> None:
    """The gray path gathers RGBX words; overlay() still returns RGB, and the JPEG is the same image."""
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (24, 40), dtype=np.uint8)
    pm = rng.random((24, 40)).astype(np.float32) * 0.3
    rgbx = H._blend(img, pm, 0.1, 0.5)
    rgb = H.overlay(img, pm, 0.1)
    assert rgbx.shape == (24, 40, 4) and rgb.shape == (24, 40, 3) and np.array_equal(rgbx[:, :, :3], rgb)
    # Reference blend in plain integer arithmetic, as the RGB path computes it.
    idx = H._lut_index(pm, 0.1)
    wgt = H._weight_lut(0.5)[idx][:, :, None].astype(int)
    g = img[:, :, None].astype(int)
    assert np.array_equal(rgb, g + (((H.COLORMAP[idx].astype(int) - g) * wgt + 128) >> 8))
    a = np.asarray(Image.open(io.BytesIO(H.encode_jpeg(rgbx))))
    b = np.asarray(Image.open(io.BytesIO(H.encode_jpeg(np.ascontiguousarray(rgb)))))
    assert a.shape == (24, 40, 3) and np.array_equal(a, b)
    box = [H.Region(2, 3, 5, 4, 1.0, 20)]
    drawn = H.draw_boxes(rgbx, box, copy=False)
    assert drawn is rgbx and tuple(rgbx[3, 2, :3]) == (0, 255, 255) and rgbx[3, 2, 3] == 0
    before = rgb.copy()
    assert tuple(H.draw_boxes(rgb, box, color=(1, 2, 3))[3, 2]) == (1, 2, 3) and np.array_equal(rgb, before)


def test_colormap_is_monotone_in_brightness() -> None:
    lum = H.COLORMAP.astype(float) @ [0.299, 0.587, 0.114]
    assert H.COLORMAP.shape == (256, 3) and np.all(np.diff(lum) >= -1.0)
    assert tuple(H.colorize(np.array([[0.0, 0.5, 10.0]]), 1.0)[0, 2]) == tuple(H.COLORMAP[255])


def test_pixel_threshold_calibration_and_fallbacks() -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((10, 32, 32))
    cal = H.calibrate_pixel_threshold(maps, 0.99)
    assert cal["pixel_threshold"] == pytest.approx(0.99, abs=0.01) and cal["pixel_quantile"] == 0.99
    assert H.pixel_threshold_of({"pixel_threshold": 0.3, "threshold": 1.0}, {"method": "mse"}) == (0.3, "calibrated")
    assert H.pixel_threshold_of({"threshold": 0.2}, {"method": "max_smooth"})[0] == 0.2
    assert H.pixel_threshold_of({"threshold": 0.2}, {"method": "mse"})[0] == H.DEFAULT_PIXEL_THRESHOLDS["mse"]
    with pytest.raises(ValueError, match="no normal error maps"):
        H.calibrate_pixel_threshold(np.zeros((0, 4, 4)))
    # mse maps are smoothed before thresholding; max_smooth maps pass through unchanged.
    sq = np.zeros((9, 9), np.float32)
    sq[4, 4] = 25.0
    assert H.pixel_map(sq, "mse", 5).max() == pytest.approx(1.0)
    assert H.pixel_map(sq, "max_smooth", 5) is not None and H.pixel_map(sq, "max_smooth", 5).max() == 25.0


@pytest.mark.slow
def test_heatmapper_on_a_real_bundle(tmp_path) -> None:
    """The daemon's path: Detector.score -> Heatmapper.explain; the box lands on the blob, in source px."""
    from tiny_bundle import anomalous_image, build_tiny_bundle, encode, normal_image

    from edge_detect.detector import Detector

    path, _ = build_tiny_bundle(tmp_path / "b", size=32)
    det = Detector(path)
    assert H.Heatmapper(det).source.startswith("default")  # the tiny bundle has no pixel_threshold
    rng = np.random.default_rng(7)
    # Calibrate the pixel threshold on normal maps, as the export does.
    normal_maps = np.stack([H.pixel_map(det.score(encode(normal_image(rng, 32))).error_map) for _ in range(16)])
    cal = H.calibrate_pixel_threshold(normal_maps, 0.999)["pixel_threshold"]
    hm = H.Heatmapper(det, pixel_threshold=cal)
    assert hm.source == "config"
    img = anomalous_image(rng, 32)
    big = np.asarray(Image.fromarray(img).resize((96, 64), Image.Resampling.NEAREST))  # a 96x64 source
    r = det.score(encode(big))
    ex = hm.explain(det.preprocess(encode(big)), r.error_map, H.source_size(encode(big)))
    assert Image.open(io.BytesIO(ex.heatmap_jpeg)).size == (32, 32)
    blob = np.argwhere(big > 200)
    (y0, x0), (y1, x1) = blob.min(0), blob.max(0)
    top = ex.regions[0]
    assert top.x <= x0 + 3 and top.y <= y0 + 2 and top.x + top.w >= x1 - 3 and top.y + top.h >= y1 - 2
    assert ex.regions_json()[0].keys() == {"x", "y", "w", "h", "peak", "area_px"}
    assert ex.stages_ms.keys() == {"map", "regions", "overlay", "jpeg"}
    assert sum(ex.stages_ms.values()) == pytest.approx(ex.ms, abs=0.05)
    calm = encode(normal_image(rng, 32))
    assert hm.explain(det.preprocess(calm), det.score(calm).error_map, (32, 32)).regions == []
