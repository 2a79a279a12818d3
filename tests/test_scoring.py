"""Reconstruction scores and error maps, against cases whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from edge_detect.scoring import (
    ReconstructionScorer,
    VoteScorer,
    box_filter,
    normalise,
    reconstruction_scores,
    scorer_from_dict,
    ssim_map,
)


def _naive_box(x: np.ndarray, k: int) -> np.ndarray:
    r = k // 2
    p = np.pad(x, ((0, 0), (r, r), (r, r)), mode="reflect")
    out = np.zeros_like(x, dtype=np.float64)
    for i in range(x.shape[1]):
        for j in range(x.shape[2]):
            out[:, i, j] = p[:, i : i + k, j : j + k].mean(axis=(1, 2))
    return out


@pytest.mark.parametrize("k", [1, 3, 5, 7])
def test_box_filter_matches_naive(k):
    x = np.random.default_rng(k).random((2, 11, 9)).astype(np.float32)
    assert np.allclose(box_filter(x, k), _naive_box(x, k), atol=1e-6)


def test_box_filter_rejects_even_size():
    with pytest.raises(ValueError, match="odd"):
        box_filter(np.zeros((1, 5, 5), np.float32), 4)


def test_mse_mae_known_values():
    x = np.zeros((2, 4, 4, 1), np.float32)
    y = np.full_like(x, 0.5)
    s, m = reconstruction_scores(x, y, "mse")
    assert np.allclose(s, 0.25) and m.shape == (2, 4, 4)
    s, _ = reconstruction_scores(x, y, "mae")
    assert np.allclose(s, 0.5)


@pytest.mark.parametrize("method", ["mse", "mae", "ssim", "max_smooth"])
def test_perfect_reconstruction_scores_zero(method):
    x = np.random.default_rng(0).random((3, 16, 16, 3)).astype(np.float32)
    s, m = reconstruction_scores(x, x.copy(), method)
    assert np.allclose(s, 0.0, atol=1e-5) and np.allclose(m, 0.0, atol=1e-5)


def test_ssim_matches_direct_window_formula():
    rng = np.random.default_rng(3)
    a = rng.random((1, 12, 12, 1)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1).astype(np.float32)
    s = ssim_map(a, b, win=7)
    i, j = 6, 5  # an interior pixel: its 7x7 window needs no padding
    wa, wb = a[0, i - 3 : i + 4, j - 3 : j + 4, 0].astype(np.float64), b[0, i - 3 : i + 4, j - 3 : j + 4, 0]
    mua, mub = wa.mean(), wb.mean()
    va, vb = wa.var(ddof=1), wb.var(ddof=1)
    cab = ((wa - mua) * (wb - mub)).sum() / (wa.size - 1)
    c1, c2 = 0.01**2, 0.03**2
    want = (2 * mua * mub + c1) * (2 * cab + c2) / ((mua**2 + mub**2 + c1) * (va + vb + c2))
    assert s[0, i, j] == pytest.approx(want, abs=1e-5)


def test_max_smooth_catches_small_defect_that_mean_washes_out():
    rng = np.random.default_rng(1)
    x = rng.random((2, 64, 64, 1)).astype(np.float32)
    recon = np.clip(x + rng.normal(0, 0.05, x.shape), 0, 1).astype(np.float32)  # ordinary reconstruction noise
    recon[1, 30:34, 30:34, 0] = 1.0 - x[1, 30:34, 30:34, 0]  # a 4x4 px defect the model "failed" to reproduce
    mse, _ = reconstruction_scores(x, recon, "mse")
    ms, maps = reconstruction_scores(x, recon, "max_smooth", smooth=5)
    assert ms[1] / ms[0] > 2 * (mse[1] / mse[0])
    assert np.unravel_index(maps[1].argmax(), maps[1].shape) in {(r, c) for r in range(29, 35) for c in range(29, 35)}


def test_shape_mismatch_and_unknown_method():
    with pytest.raises(ValueError, match="must both be"):
        reconstruction_scores(np.zeros((1, 4, 4, 1)), np.zeros((1, 4, 4, 3)))
    with pytest.raises(ValueError, match="scoring.method"):
        reconstruction_scores(np.zeros((1, 4, 4, 1)), np.zeros((1, 4, 4, 1)), "psnr")


def test_normalise_maps_center_to_zero_and_threshold_to_one():
    assert normalise(0.2, threshold=0.5, center=0.2) == pytest.approx(0.0)
    assert normalise(0.5, threshold=0.5, center=0.2) == pytest.approx(1.0)
    assert normalise(0.8, threshold=0.5, center=0.2) == pytest.approx(2.0)
    assert normalise(np.array([0.5]), threshold=0.5, center=0.9)[0] == pytest.approx(1.0)  # degenerate stats


def test_scorer_round_trip_and_errors():
    sc = ReconstructionScorer(method="max_smooth", smooth=7)
    back = scorer_from_dict(sc.to_dict())
    assert isinstance(back, ReconstructionScorer) and back.smooth == 7 and back.method == "max_smooth"
    with pytest.raises(ValueError, match="scoring.kind"):
        scorer_from_dict({"kind": "telepathy"})
    with pytest.raises(ValueError, match="scoring.method"):
        scorer_from_dict({"kind": "reconstruction", "method": "psnr"})


def _vote_case():
    """Three members of a 1-channel 4x4 input; member i misses every pixel by e[i] on image 0 and by
    f[i] on image 1, so member i's MSE is e[i]**2 (f[i]**2) and its ratio to threshold t[i] is known."""
    x = np.full((2, 4, 4, 1), 0.5, np.float32)
    e, f, t = [0.1, 0.2, 0.3], [0.3, 0.1, 0.2], [0.01, 0.01, 0.04]
    y = np.concatenate([x + np.array([ei, fi], np.float32)[:, None, None, None] for ei, fi in zip(e, f)], axis=3)
    ratios = np.array([[ei**2 / ti, fi**2 / ti] for ei, fi, ti in zip(e, f, t)])  # (member, image)
    return x, y, t, ratios


@pytest.mark.parametrize("vote", [1, 2, 3])
def test_vote_score_is_the_vote_th_highest_member_ratio(vote):
    x, y, t, ratios = _vote_case()  # image 0: ratios 1, 4, 2.25; image 1: 9, 1, 1
    members = [{"kind": "reconstruction", "method": "mse"}] * 3
    sc = VoteScorer(members, t, vote)
    scores, maps = sc(x, y)
    want = np.sort(ratios, axis=0)[3 - vote]
    assert scores == pytest.approx(want, rel=1e-5)
    # Constant error maps: the smoothed map equals the score at every pixel.
    assert maps.shape == (2, 4, 4) and maps[:, 2, 2] == pytest.approx(want, rel=1e-5)
    # Above 1.0 exactly when at least `vote` members are above their own thresholds.
    assert list(scores > 1.0 + 1e-6) == [int((ratios[:, i] > 1.0 + 1e-6).sum()) >= vote for i in range(2)]


def test_vote_scorer_round_trip_variant_thresholds_and_errors():
    x, y, t, ratios = _vote_case()
    members = [{"kind": "reconstruction", "method": "mse"}] * 3
    d = VoteScorer(members, t, 0).to_dict()
    assert d["vote"] == 3 and d["method"] == "vote"  # 0 means all
    assert scorer_from_dict(d)(x, y)[0] == pytest.approx(np.min(ratios, axis=0), rel=1e-5)
    # A bundle variant's own thresholds (an array) win over the manifest's.
    own = scorer_from_dict(d, {"member_thresholds": np.array([0.02, 0.02, 0.08])})
    assert own(x, y)[0] == pytest.approx(np.min(ratios, axis=0) / 2, rel=1e-5)
    with pytest.raises(ValueError, match="at least 2 members"):
        VoteScorer(members[:1], t[:1])
    with pytest.raises(ValueError, match="scoring.thresholds"):
        VoteScorer(members, [0.01, 0.0, 0.04])
    with pytest.raises(ValueError, match="scoring.vote must be 1..3"):
        VoteScorer(members, t, 4)
    with pytest.raises(ValueError, match="needs 3 output channels"):
        VoteScorer(members, t)(x, y[..., :2])
    with pytest.raises(ValueError, match="unknown key"):
        scorer_from_dict({**d, "weights": [1, 2, 3]})
    for bad_vote in (None, True, 2.5, [2]):
        with pytest.raises(ValueError, match="scoring.vote must be an integer"):
            scorer_from_dict({**d, "vote": bad_vote})
    # A damaged (or newer) manifest's members: one line naming the member, not a traceback.
    for bad, needle in (([*members[:2], {"kind": "knn"}], r"members\[2\] must be a reconstruction"),
                        ([*members[:2], "mse"], r"members\[2\] must be"),
                        ([*members[:2], {"kind": "reconstruction", "gamma": 2}], r"members\[2\]: .*gamma")):
        with pytest.raises(ValueError, match=needle):
            scorer_from_dict({**d, "members": bad})


def test_vote_of_mixed_methods_smooths_each_member_like_its_own_heatmap():
    from edge_detect.scoring import pixel_map

    rng = np.random.default_rng(2)
    x, y = rng.random((4, 16, 16, 1), dtype=np.float32), rng.random((4, 16, 16, 3), dtype=np.float32)
    members = [{"kind": "reconstruction", "method": "mse"}, {"kind": "reconstruction", "method": "max_smooth",
               "smooth": 3}, {"kind": "reconstruction", "method": "mae", "smooth": 7}]
    t = [0.01, 0.02, 0.03]
    got_s, got_m = VoteScorer(members, t, 2)(x, y)
    s, m = zip(*(ReconstructionScorer(**{k: v for k, v in d.items() if k != "kind"})(x, y[..., i:i + 1])
                 for i, d in enumerate(members)))
    ratios = np.stack([si / ti for si, ti in zip(s, t)])
    maps = np.stack([pixel_map(mi, d["method"], d.get("smooth", 5)) / ti for mi, d, ti in zip(m, members, t)])
    assert got_s == pytest.approx(np.median(ratios, axis=0), rel=1e-5)  # 2 of 3: the middle one
    assert got_m == pytest.approx(np.median(maps, axis=0), rel=1e-5)
