"""Explainers: the one-pass U-Net trains, exports to int8 and runs in LiteRT; the explain CLI writes PNGs."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SIZE = 16


def _normals(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xx = np.mgrid[:SIZE, :SIZE][1] / SIZE
    base = 0.4 + 0.2 * np.sin(8 * xx)
    return np.clip(base[None, :, :, None] + rng.normal(0, 0.02, (n, SIZE, SIZE, 1)), 0, 1).astype(np.float32)


def _write_pngs(folder, x: np.ndarray) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(x):
        p = folder / f"img{i}.png"
        Image.fromarray((img[:, :, 0] * 255).round().astype(np.uint8), "L").save(p)
        paths.append(str(p))
    return paths


@pytest.fixture(scope="module")
def explainer_dir(tmp_path_factory):
    from edge_detect.preprocess import Preprocess
    from training.explain import OnePassConfig, fit_one_pass, representative_set, save_explainer

    out = tmp_path_factory.mktemp("explainer")
    x = _normals(24)
    model, summary = fit_one_pass(x, OnePassConfig(epochs=1, per_epoch=32, width=4, batch_size=8))
    save_explainer(out, model, Preprocess(size=(SIZE, SIZE)), summary, representative_set(x, 16))
    return out


@pytest.fixture(scope="module")
def metric_run(tmp_path_factory):
    """An untrained but complete metric run directory: the per-image path only needs a frozen F and C."""
    from training.explain import load_metric_embedder  # noqa: F401 - import check
    from training.metric import MetricConfig, embed, save_reference, write_run_config
    from training.metric_models import build_model

    run = tmp_path_factory.mktemp("metric")
    cfg = MetricConfig(width=4, embed_dim=8)
    model = build_model((SIZE, SIZE, 1), 2, "cnn", cfg.embed_dim, cfg.alpha, cfg.width)
    model.save(run / "model.keras")
    save_reference(run, embed(model, _normals(8)), None)
    write_run_config(run, cfg, {"input_shape": [SIZE, SIZE, 1]})
    return run


def test_unet_uses_only_edgetpu_mappable_ops_and_runs_int8(explainer_dir) -> None:
    from edge_detect.runtime import TFLiteModel, model_ops
    from training.explain import EXPLAINER_TFLITE, OnePass

    ops = {o["op"] for o in model_ops(explainer_dir / EXPLAINER_TFLITE)}
    assert ops <= {"CONV_2D", "MAX_POOL_2D", "RESIZE_NEAREST_NEIGHBOR", "CONCATENATION", "QUANTIZE",
                   "DEQUANTIZE"}, ops
    # The logit leaves the model and OnePass applies the sigmoid: no int8 LOGISTIC flattening small values.
    assert {"RESIZE_NEAREST_NEIGHBOR", "CONCATENATION"} <= ops and "LOGISTIC" not in ops
    m = TFLiteModel(explainer_dir / EXPLAINER_TFLITE)
    assert m.input.shape == (1, SIZE, SIZE, 1)
    tfl = OnePass(explainer_dir).explain(_normals(3, seed=5))
    keras_maps = OnePass(explainer_dir, use_tflite=False).explain(_normals(3, seed=5))
    assert tfl.shape == (3, SIZE, SIZE) and 0 <= tfl.min() and tfl.max() <= 1
    assert np.abs(tfl - keras_maps).max() < 0.1  # int8 tracks the float model


def test_dice_pools_over_the_batch_so_finding_the_defect_beats_saying_nothing() -> None:
    """The collapse of the one-pass explainer: with a per-image Dice, an empty-mask (normal) image
    made any leak expensive, and a constant ~0 map cost less than one that finds the defect."""
    from training.explain import _dice_bce

    y = np.zeros((2, 64, 64, 1), np.float32)
    y[1, 10:16, 10:16] = 1  # one normal image, one with a 6x6 px defect
    found = np.full_like(y, 0.05)  # leaks 0.05 everywhere, 0.9 on the defect
    found[1, 10:16, 10:16] = 0.9
    nothing = np.full_like(y, 1e-3)
    assert float(_dice_bce(y, found)) < float(_dice_bce(y, nothing)) - 0.05


@pytest.mark.slow
def test_one_pass_int8_localises_synthetic_anomalies(tmp_path) -> None:
    """Trained a few epochs on tiny generated normals, the int8 explainer must not be constant and
    must rank defect pixels above normal ones (pixel AUROC), as closely as the Keras model does."""
    from edge_detect.preprocess import Preprocess
    from training.explain import OnePass, OnePassConfig, fit_one_pass, representative_set, save_explainer
    from training.pixel_metrics import pixel_auroc
    from training.synthetic import synthesize

    x = _normals(32)
    model, summary = fit_one_pass(x, OnePassConfig(epochs=15, per_epoch=128, width=4, batch_size=8))
    save_explainer(tmp_path, model, Preprocess(size=(SIZE, SIZE)), summary, representative_set(x, 32))
    test = synthesize(_normals(12, seed=9), 12, seed=3)
    maps = OnePass(tmp_path).explain(test.images)
    keras_maps = OnePass(tmp_path, use_tflite=False).explain(test.images)
    assert maps.std() > 0.01, "constant explainer output"
    auc, keras_auc = pixel_auroc(maps, test.masks), pixel_auroc(keras_maps, test.masks)
    assert auc > 0.75 and abs(auc - keras_auc) < 0.03, (auc, keras_auc)
    assert maps[test.masks > 0].mean() > 2 * maps[test.masks == 0].mean()


def test_training_batch_targets_are_the_synthetic_masks() -> None:
    from training.explain import training_batch
    from training.synthetic import AnomalyGenerator

    x = _normals(8)
    xs, ys = training_batch(x, 10, AnomalyGenerator(), 0.5, seed=3)
    assert xs.shape == (10, SIZE, SIZE, 1) and ys.shape == (10, SIZE, SIZE, 1)
    assert all(ys[i].any() for i in range(5)) and not ys[5:].any()
    xs2, ys2 = training_batch(x, 10, AnomalyGenerator(), 0.5, seed=3)
    np.testing.assert_array_equal(xs, xs2)


def test_per_image_ano_unet_reconstructs(metric_run) -> None:
    from training.explain import AnoUnet, PerImageConfig, load_metric_embedder

    f, center, pre = load_metric_embedder(metric_run)
    assert pre.shape == (SIZE, SIZE, 1) and center.shape == (8,)
    x = _normals(1)[0]
    x[4:8, 4:8] = 1.0
    heat, y, info = AnoUnet(f, center, PerImageConfig(epochs=40, beta=1.0)).explain(x)
    assert heat.shape == (SIZE, SIZE) and y.shape == x.shape
    # G learns to copy the image: its error shrinks well below that of a constant guess.
    assert np.abs(x - y).mean() < np.abs(x - x.mean()).mean()
    assert info["seconds"] > 0


def test_explain_cli_one_pass_and_per_image_write_pngs(explainer_dir, metric_run, tmp_path) -> None:
    from training.explain import explain_command as explain
    imgs = _write_pngs(tmp_path / "in", _normals(2, seed=4))
    r = CliRunner().invoke(explain, [str(explainer_dir), *imgs, "--out", str(tmp_path / "o1")])
    assert r.exit_code == 0, r.output
    pngs = sorted((tmp_path / "o1").glob("*.png"))
    assert [p.name for p in pngs] == ["img0_one-pass.png", "img1_one-pass.png"]
    assert Image.open(pngs[0]).size == (2 * SIZE + 2, SIZE)
    r = CliRunner().invoke(explain, [str(metric_run), imgs[0], "--method", "per-image", "--epochs", "3",
                                     "--out", str(tmp_path / "o2")])
    assert r.exit_code == 0, r.output
    assert "peak |x-G(x)| " in r.output and "of full scale" in r.output and "99th percentile" in r.output
    assert (tmp_path / "o2" / "img0_per-image.png").is_file()


def test_cli_error_paths_are_one_line_exit_2(explainer_dir, tmp_path) -> None:
    from training.explain import explain_command as explain
    from training.explain import fit_explainer_command as fit
    imgs = _write_pngs(tmp_path / "in", _normals(1))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG truncated")
    cases = [
        (explain, [str(tmp_path / "nope"), imgs[0]], "no such run or explainer directory"),
        (explain, [str(explainer_dir), str(tmp_path / "missing.png")], "no such image"),
        (explain, [str(explainer_dir), str(bad)], "bad.png"),
        (explain, [str(explainer_dir), imgs[0], "--method", "per-image"], "metric run directory"),
        (explain, [str(tmp_path), imgs[0]], "no explainer.json"),
        (explain, [str(explainer_dir), imgs[0], "--epochs", "0"], "--epochs"),
        (explain, [str(explainer_dir), imgs[0], "--beta", "nan"], "--beta"),
        (fit, [str(tmp_path / "absent"), "--out", str(tmp_path / "e")], "no such folder"),
        (fit, [str(tmp_path / "in"), "--out", str(tmp_path / "e"), "--input-size", "10"], "multiple of 4"),
    ]
    (tmp_path / "empty").mkdir()
    cases.append((fit, [str(tmp_path / "empty"), "--out", str(tmp_path / "e")], "no readable images"))
    # A damaged explainer directory: its description or its model.
    for name, damage, msg in (("json", lambda d: (d / "explainer.json").write_text("{"), "explainer.json: not a valid"),
                              ("tflite", lambda d: (d / "explainer_int8.tflite").unlink(), "not a loadable TFLite")):
        d = tmp_path / f"damaged-{name}"
        shutil.copytree(explainer_dir, d)
        damage(d)
        cases.append((explain, [str(d), imgs[0]], msg))
    for cmd, args, msg in cases:
        r = CliRunner().invoke(cmd, args)
        assert r.exit_code == 2, (args, r.output)
        lines = [ln for ln in r.output.splitlines() if ln.strip() and not ln.startswith("warning: skipped")]
        assert len(lines) == 1 and lines[0].startswith("error:") and msg in lines[0], (args, r.output)


def test_heatmap_grid_png(tmp_path) -> None:
    from training.report import MIN_TILE_PX, heatmap_grid

    x = _normals(5)
    maps = np.zeros((5, SIZE, SIZE), np.float32)
    maps[:, 2:6, 2:6] = 1.0
    masks = maps > 0.5
    out = heatmap_grid(x, maps, 0.5, [f"s={i}" for i in range(5)], tmp_path / "grid.png", cols=3, masks=masks)
    img = np.asarray(Image.open(out))
    t = SIZE * -(-MIN_TILE_PX // SIZE)  # tiles enlarged by a whole factor to at least MIN_TILE_PX
    assert img.shape == (2 * (2 * t + 12 + 6), 3 * (t + 4), 3)
    assert (img == (0, 255, 0)).all(axis=2).any()  # mask outlines drawn
    with pytest.raises(ValueError, match="no images"):
        heatmap_grid(x[:0], maps[:0], 0.5, [], tmp_path / "e.png")


def _one_line_error(r, code: int = 2) -> str:
    """The single ``error:`` line of a failed command (warnings about skipped images aside)."""
    assert r.exit_code == code, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip() and not ln.startswith("warning: skipped")]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.output
    return lines[0]


def test_a_wrong_out_is_one_line_and_fit_explainer_checks_it_before_the_data(explainer_dir, tmp_path) -> None:
    from training.explain import explain_command as explain
    from training.explain import fit_explainer_command as fit

    imgs = _write_pngs(tmp_path / "in", _normals(1))
    (tmp_path / "gray.png").write_bytes(b"x")
    under_file = str(tmp_path / "gray.png" / "sub")
    line = _one_line_error(CliRunner().invoke(explain, [str(explainer_dir), imgs[0], "--out", under_file]))
    assert line.startswith("error: cannot use --out ") and "gray.png" in line and "Not a directory" in line
    if os.path.isdir("/proc/self"):  # Linux: a folder that exists but takes no new entries
        line = _one_line_error(CliRunner().invoke(explain, [str(explainer_dir), imgs[0], "--out", "/proc/nope"]))
        assert line.startswith("error: cannot use --out /proc/nope")
    # The data folder does not exist either: the --out error proves it came before the data load.
    line = _one_line_error(CliRunner().invoke(fit, [str(tmp_path / "absent"), "--out", under_file]))
    assert line.startswith("error: cannot use --out ") and "Not a directory" in line
    # A new --out is taken back when the data turns out to be wrong: no empty folders left behind.
    r = CliRunner().invoke(fit, [str(tmp_path / "absent"), "--out", str(tmp_path / "new" / "explainer")])
    assert "no such folder" in _one_line_error(r)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("option, value", [("--seed", "-1"), ("--limit", "0"), ("--limit", "-1"), ("--epochs", "0"),
                                           ("--per-epoch", "0"), ("--input-size", "4")])
def test_fit_explainer_numbers_out_of_range_are_one_line(tmp_path, option, value) -> None:
    """Through the edge-train group, as users run it: click's range check, one line, exit 2."""
    from training.cli import main

    _write_pngs(tmp_path / "in", _normals(2))
    r = CliRunner().invoke(main, ["fit-explainer", str(tmp_path / "in"), "--out", str(tmp_path / "e"), option, value])
    line = _one_line_error(r)
    assert option in line and value in line, line
    assert not (tmp_path / "e").exists()


def test_png_names_are_unique_when_stems_collide() -> None:
    from training.explain import png_names

    assert png_names(["good/000.png", "crack/000.png", "crack/001.png"], "one-pass") == [
        "good_000_one-pass.png", "crack_000_one-pass.png", "001_one-pass.png"]
    # Same folder name higher up: as many parent folders as it takes.
    assert png_names(["x/good/0.png", "y/good/0.jpeg"], "m") == ["x_good_0_m.png", "y_good_0_m.png"]
    # A prefixed name may meet a real stem; folders that differ only in case still get two files.
    names = png_names(["a/img.png", "b/img.png", "a_img.png", "C/z.png", "c/z.png"], "m")
    assert len({n.lower() for n in names}) == 5, names


def test_explain_writes_colliding_stems_to_separate_pngs_and_expands_folders(explainer_dir, tmp_path) -> None:
    from training.explain import explain_command as explain

    good = _write_pngs(tmp_path / "good", _normals(2, seed=1))
    crack = _write_pngs(tmp_path / "crack", _normals(1, seed=2))
    out = tmp_path / "out"
    r = CliRunner().invoke(explain, [str(explainer_dir), str(tmp_path / "good"), crack[0], good[0], "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.glob("*.png")) == ["crack_img0_one-pass.png", "good_img0_one-pass.png",
                                                         "img1_one-pass.png"]
    lines = r.output.splitlines()
    assert len(lines) == 3  # the folder's two images, the crack; good/img0.png given twice is explained once
    assert f"{good[0]}: " in lines[0] and lines[0].endswith(str(out / "good_img0_one-pass.png"))
    assert f"{crack[0]}: " in lines[2] and lines[2].endswith(str(out / "crack_img0_one-pass.png"))
    # What the number is: a probability, and where the boxes start.
    assert "peak anomaly probability 0." in lines[0] and "boxes above 0.5" in lines[0]
    empty = tmp_path / "nothing"
    empty.mkdir()
    assert "a folder with no images" in _one_line_error(CliRunner().invoke(explain, [str(explainer_dir), str(empty)]))


def test_explain_skips_unreadable_images_and_exits_1(explainer_dir, tmp_path) -> None:
    """As edge-detect score: a bad file is a warning, the others are explained, exit 1 at the end."""
    from training.explain import explain_command as explain

    imgs = _write_pngs(tmp_path / "in", _normals(2))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG truncated")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    out = tmp_path / "out"
    r = CliRunner().invoke(explain, [str(explainer_dir), imgs[0], str(bad), str(empty), imgs[1],
                                   "--out", str(out)])
    assert r.exit_code == 1, r.output
    assert sorted(p.name for p in out.glob("*.png")) == ["img0_one-pass.png", "img1_one-pass.png"]
    err = r.stderr.splitlines()
    assert err[0].startswith(f"warning: skipped {bad}: not a readable image")
    assert err[1] == f"warning: skipped {empty}: empty file (0 bytes)"  # the path once, not twice
    assert err[2] == f"error: 2 of 4 images could not be read (skipped): {bad}, {empty}"
    assert len(r.stdout.splitlines()) == 2
    # One image, unreadable: nothing was explained, a plain one-line error, exit 2.
    line = _one_line_error(CliRunner().invoke(explain, [str(explainer_dir), str(empty), "--out", str(out)]))
    assert line == f"error: {empty}: empty file (0 bytes)"
    line = _one_line_error(CliRunner().invoke(explain, [str(explainer_dir), str(empty), str(bad), "--out", str(out)]))
    assert line == "error: none of the 2 images could be read"


def test_explain_says_which_method_fits_the_directory(explainer_dir, metric_run, tmp_path) -> None:
    from training.explain import explain_command as explain

    imgs = _write_pngs(tmp_path / "in", _normals(1))
    line = _one_line_error(CliRunner().invoke(explain, [str(metric_run), imgs[0], "--out", str(tmp_path / "o")]))
    assert "a metric run, not a one-pass explainer: add --method per-image" in line
    line = _one_line_error(CliRunner().invoke(explain, [str(explainer_dir), imgs[0], "--method", "per-image",
                                                        "--out", str(tmp_path / "o")]))
    assert "a one-pass explainer" in line and "leave out --method per-image" in line
    assert not (tmp_path / "o").exists()  # made for the PNGs, taken back when nothing could be explained


def test_fit_explainer_names_an_unreadable_input_not_out(tmp_path, monkeypatch) -> None:
    """Only --out's own errors say "cannot use --out"; a --foreign folder that cannot be read is named."""
    import training.explain as ex
    import training.synthetic as syn

    def unreadable(folder, **kw):
        raise PermissionError(13, "Permission denied", str(folder))

    monkeypatch.setattr(ex, "load_folder", lambda *a, **kw: _normals(4))
    monkeypatch.setattr(syn, "load_foreign", unreadable)
    out, foreign = tmp_path / "new" / "explainer", tmp_path / "pictures"
    foreign.mkdir()
    r = CliRunner().invoke(ex.fit_explainer_command, [str(tmp_path), "--out", str(out), "--foreign", str(foreign)])
    assert _one_line_error(r) == f"error: cannot read {foreign}: Permission denied"
    assert not (tmp_path / "new").exists()
