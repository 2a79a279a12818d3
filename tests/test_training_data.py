"""Dataset layouts, reproducible splits, skipped files and the data errors (tiny generated data only)."""

from __future__ import annotations

import gzip
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import write_idx_file, write_mvtec
from PIL import Image

from edge_detect.preprocess import Preprocess
from training.data import DataError, Dataset, load_dataset, read_idx, rebuild_splits

PRE = Preprocess((16, 16), "gray")


def test_mvtec_layout_split_masks_and_skipped_files(mvtec_dir, caplog):
    ds = load_dataset(str(mvtec_dir), seed=3)
    assert ds.spec["layout"] == "mvtec"
    # 40 normals + 2 bad files listed; test/good exists so no normals are taken for the test.
    assert ds.counts() == {"train": 38, "val": 4, "test": 16, "calib": 0}
    with caplog.at_level(logging.WARNING):
        splits = rebuild_splits(ds.spec, PRE)
    assert splits.summary["counts"]["skipped"] == 2
    assert {Path(f).name for f in splits.summary["skipped_files"]} == {"truncated.png", "notes.txt"}
    assert "truncated.png" in caplog.text and "notes.txt" in caplog.text  # a warning names each file
    assert len(splits.x_train) + len(splits.x_val) == 40
    assert splits.x_train.dtype == np.float32 and splits.x_train.shape[1:] == (16, 16, 1)
    assert 0.0 <= splits.x_train.min() and splits.x_train.max() <= 1.0
    assert splits.y_test.tolist().count(1) == 8 and set(splits.test_kinds) == {"good", "square"}
    assert splits.masks_test.shape == (16, 16, 16) and splits.masks_test[splits.y_test == 1].any(axis=(1, 2)).all()
    assert not splits.masks_test[splits.y_test == 0].any()


def test_a_defect_without_a_readable_mask_has_unknown_pixels(tmp_path, caplog):
    root = write_mvtec(tmp_path / "m", n_train=10, bad_files=False)
    (root / "ground_truth/square/000_mask.png").unlink()
    (root / "ground_truth/square/001_mask.png").write_bytes(b"not a png")
    with caplog.at_level(logging.WARNING):
        splits = rebuild_splits(load_dataset(str(root)).spec, PRE)
    names = [Path(it.source).name for it in splits.items_test]
    unknown = {names[i] for i in np.nonzero(~splits.masks_known)[0]}
    assert {names[i] for i in np.nonzero(splits.y_test == 1)[0]} - unknown == {f"{i:03d}.png" for i in range(2, 8)}
    assert len(unknown) == 2 and splits.masks_known[splits.y_test == 0].all()
    assert "001_mask.png" in caplog.text  # the unreadable mask is named, the image is still scored


def test_split_is_reproducible_from_the_spec(mvtec_dir):
    a = load_dataset(str(mvtec_dir), seed=1)
    b = Dataset.from_spec(a.spec)  # what export does with run.json's dataset block
    assert [it.source for it in a.items("val")] == [it.source for it in b.items("val")]
    c = load_dataset(str(mvtec_dir), seed=2)
    assert [it.source for it in a.items("val")] != [it.source for it in c.items("val")]
    x, kept, skipped = a.arrays("val", PRE)
    assert len(x) == len(kept) and all(isinstance(it.source, str) for it in kept)


def test_folders_layout_holds_out_test_normals(tmp_path):
    root = write_mvtec(tmp_path / "m", n_train=30, bad_files=False)
    ds = load_dataset(str(root / "train/good"), anomalies=str(root / "test/square"), test_fraction=0.2, seed=0)
    assert ds.spec["layout"] == "folders"
    test = ds.items("test")
    assert sum(it.label == 0 for it in test) == 6 and sum(it.label == 1 for it in test) == 8
    assert len(ds.items("train")) + len(ds.items("val")) == 24
    assert not {it.source for it in test} & {it.source for it in ds.items("train")}


def test_class_folder_layout_with_chosen_normal_classes(tmp_path):
    rng = np.random.default_rng(0)
    for split, cls, n in (("train", "a", 6), ("train", "b", 6), ("test", "a", 2), ("test", "c", 3)):
        (tmp_path / split / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(tmp_path / split / cls / f"{i}.png")
    ds = load_dataset(str(tmp_path), normal_classes=["a"], seed=0)
    assert ds.spec["layout"] == "classes"
    assert {it.cls for it in ds.items("train") + ds.items("val")} == {"a"}
    assert sorted((it.kind, it.label) for it in ds.items("test")) == [("c", 1)] * 3 + [("good", 0)] * 2
    with pytest.raises(DataError, match="not found"):
        load_dataset(str(tmp_path), normal_classes=["zebra"])
    with pytest.raises(DataError, match="no train/ folder"):
        load_dataset(str(tmp_path / "test"), layout="classes")


def test_idx_layout_with_normal_label(idx_dir):
    ds = load_dataset(str(idx_dir), normal_classes=["1"], val_fraction=0.2, seed=0)
    assert ds.spec["layout"] == "idx"
    train = ds.items("train") + ds.items("val")
    assert len(train) == 30 and {it.cls for it in train} == {"1"}
    assert {it.kind for it in ds.items("test")} == {"good", "class_0", "class_7"}
    assert all(it.index >= 0 for it in train)  # addressable as (IDX file, index)
    x, _, skipped = ds.arrays("test", Preprocess((16, 16), "gray"))
    assert x.shape == (30, 16, 16, 1) and not skipped


def test_truncated_idx_is_a_data_error(tmp_path, idx_dir):
    data = gzip.open(idx_dir / "train-images-idx3-ubyte.gz").read()
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(data[: len(data) - 100])
    read_idx.cache_clear()
    with pytest.raises(DataError, match="truncated"):
        load_dataset(str(tmp_path))


def test_idx_labels_that_do_not_fit_the_images_are_a_data_error(tmp_path, idx_dir):
    """Not an IndexError traceback half-way through listing the items."""
    short, flat = tmp_path / "short", tmp_path / "flat"
    shutil.copytree(idx_dir, short)
    write_idx_file(short / "train-labels-idx1-ubyte.gz", np.ones(5, np.uint8))
    shutil.copytree(idx_dir, flat)
    write_idx_file(flat / "train-images-idx3-ubyte.gz", np.ones(60, np.uint8))
    read_idx.cache_clear()
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz: 5 labels for the 60 images"):
        load_dataset(str(short))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: not an images IDX file"):
        load_dataset(str(flat))
    with pytest.raises(DataError, match=r"normal class\(es\) \['9'\] not found in .*train-labels"):
        load_dataset(str(idx_dir), normal_classes=["9"])


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_dataset(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no training images"):
        load_dataset(str(tmp_path / "empty"))
    (tmp_path / "empty" / "notes.txt").write_text("not an image\n")
    with pytest.raises(DataError, match=r"no image files in .*empty \(only 1 other file\(s\), e\.g\. notes\.txt"):
        load_dataset(str(tmp_path / "empty"))
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "empty" / "a.png")
    with pytest.raises(DataError, match=r"only 1 training image\(s\) in .*empty: too few"):
        load_dataset(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="val_fraction"):
        load_dataset(str(tmp_path), val_fraction=1.5)


def _pngs(folder, n, start=0):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        Image.fromarray(np.full((8, 8), 10 * i % 256, np.uint8)).save(folder / f"{i:03d}.png")


def test_folder_listing_follows_linked_folders_and_names_what_it_cannot_read(tmp_path, caplog):
    root = tmp_path / "ok"
    _pngs(root, 20)
    _pngs(tmp_path / "elsewhere", 5, start=100)
    (root / "more").symlink_to(tmp_path / "elsewhere")  # followed, once
    (tmp_path / "elsewhere" / "loop").symlink_to(tmp_path / "elsewhere")  # a loop must end
    _pngs(root / ".thumbs", 3, start=200)  # a hidden folder is not data
    (root / "gone.png").symlink_to(tmp_path / "deleted.png")  # a broken link is named and counted
    (root / os.fsdecode(b"odd\xffname.png")).write_bytes((root / "000.png").read_bytes())  # not UTF-8
    ds = load_dataset(str(root))
    names = sorted(Path(it.source).name for part in ds.splits.values() for it in part)
    assert len(names) == 27 and "gone.png" in names and not any(n.startswith("2") for n in names)
    with caplog.at_level(logging.WARNING):
        splits = rebuild_splits(ds.spec, PRE)
    assert splits.summary["counts"]["skipped"] == 1 and "gone.png: no such file" in caplog.text
    assert len(splits.x_train) + len(splits.x_val) == 26 and len(splits.summary["content_sha256"]) == 64


def test_anomaly_folder_inside_the_data_folder_is_not_trained_on(tmp_path):
    root = tmp_path / "data"
    _pngs(root, 30)
    _pngs(root / "bad", 6, start=50)
    ds = load_dataset(str(root), anomalies=str(root / "bad"))
    normals = [it for part in ("train", "val") for it in ds.splits[part]]
    assert len(normals) + sum(it.label == 0 for it in ds.splits["test"]) == 30
    assert not any("/bad/" in it.source for it in normals) and sum(it.label for it in ds.splits["test"]) == 6


def test_data_that_is_an_image_file_or_was_moved_is_a_one_line_error(tmp_path):
    _pngs(tmp_path / "d", 12)
    with pytest.raises(DataError, match=r"000\.png is a file: DATA is a folder of images"):
        load_dataset(str(tmp_path / "d" / "000.png"))
    with pytest.raises(DataError, match=r"--anomalies .*/d is DATA itself"):
        load_dataset(str(tmp_path / "d"), anomalies=str(tmp_path / "d"))
    _pngs(tmp_path / "bad", 3)
    ds = load_dataset(str(tmp_path / "d"), anomalies=str(tmp_path / "bad"))
    shutil.move(tmp_path / "bad", tmp_path / "bad2")
    with pytest.raises(DataError, match=r"anomaly folder not found: .*/bad \(moved or deleted"):
        rebuild_splits(ds.spec, PRE)
    shutil.move(tmp_path / "d", tmp_path / "e")
    with pytest.raises(DataError, match=r"data not found: .*/d \(moved or deleted"):
        rebuild_splits(ds.spec, PRE)


def test_a_changed_data_folder_warns_that_the_split_is_drawn_again(tmp_path, caplog):
    from training.data import rebuild_run_splits

    _pngs(tmp_path / "d", 12)
    ds = load_dataset(str(tmp_path / "d"))
    info = {"dataset": ds.spec, "data_summary": rebuild_splits(ds.spec, PRE).summary}
    with caplog.at_level(logging.WARNING):
        rebuild_run_splits(info, PRE)
    assert "differ from those the run was trained on" not in caplog.text
    _pngs(tmp_path / "d", 1, start=40)
    with caplog.at_level(logging.WARNING):
        rebuild_run_splits(info, PRE)
    assert "differ from those the run was trained on" in caplog.text


def test_masks_any_nonzero_pixel_and_wrong_shapes_or_empty_ones_are_ignored(tmp_path, caplog):
    root = write_mvtec(tmp_path / "m", n_train=10, bad_files=False)
    gt = root / "ground_truth/square"
    m0 = np.asarray(Image.open(gt / "000_mask.png"))
    Image.fromarray((m0 > 0).astype(np.uint8)).save(gt / "000_mask.png")  # 0/1 values
    Image.fromarray(np.stack([m0, 0 * m0, 0 * m0], -1)).save(gt / "001_mask.png")  # red on black
    Image.fromarray(np.asarray(Image.open(gt / "002_mask.png"))[:16]).save(gt / "002_mask.png")  # half height
    Image.fromarray(0 * m0).save(gt / "003_mask.png")  # marks nothing
    Image.fromarray((m0 > 0).astype(np.uint16)).save(gt / "004_mask.png")  # 16-bit 0/1
    Image.fromarray(m0).convert("LA").save(gt / "005_mask.png")  # opaque
    with caplog.at_level(logging.WARNING):
        splits = rebuild_splits(load_dataset(str(root)).spec, PRE)
    names = [Path(it.source).name for it in splits.items_test]
    by_name = {(names[i], splits.y_test[i]): i for i in range(len(names))}
    for n in ("000.png", "001.png", "004.png", "005.png"):
        i = by_name[(n, 1)]
        assert splits.masks_known[i] and splits.masks_test[i].any() and not splits.masks_test[i].all(), n
    assert not splits.masks_known[by_name[("002.png", 1)]] and not splits.masks_known[by_name[("003.png", 1)]]
    assert "002_mask.png: its 32x16 px do not have the shape" in caplog.text
    assert "003_mask.png: it marks no defect pixel" in caplog.text


def test_corrupt_idx_headers_are_data_errors(tmp_path):
    header = bytes([0, 0, 8, 3]) + b"".join(int(d).to_bytes(4, "big") for d in (2**31, 2**31, 2**31))
    (tmp_path / "huge").mkdir()
    (tmp_path / "huge" / "train-images-idx3-ubyte").write_bytes(header + bytes(100))
    write_idx_file(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((40, 0, 16), np.uint8))
    read_idx.cache_clear()
    with pytest.raises(DataError, match=r"truncated IDX file \(100 of 9903520314283042199192993792 bytes\)"):
        load_dataset(str(tmp_path / "huge"))
    with pytest.raises(DataError, match="images of 0x16 px"):
        load_dataset(str(tmp_path))
    write_idx_file(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((40, 8, 8), np.uint8))
    read_idx.cache_clear()
    with pytest.raises(DataError, match=r"--normal-classes needs labels: no \*idx1-ubyte\[\.gz\] labels file in"):
        load_dataset(str(tmp_path), normal_classes=["1"])


def test_a_mask_of_another_resolution_is_cropped_in_image_px(tmp_path):
    from training.data import Item, load_masks

    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "img.png")
    small = np.zeros((32, 32), np.uint8)
    small[20:28, 20:28] = 255  # image px 40..56
    Image.fromarray(small).save(tmp_path / "img_mask.png")
    items = [Item(str(tmp_path / "img.png"), label=1, kind="dent", mask=str(tmp_path / "img_mask.png"))]
    masks, known = load_masks(items, Preprocess((32, 32), "gray", roi=(32, 32, 32, 32)))
    assert known[0] and masks[0, 8:24, 8:24].all() and masks[0].sum() == 16 * 16
    masks, known = load_masks(items, Preprocess((32, 32), "gray", roi=(0, 0, 32, 32)))
    assert not known[0]  # the defect lies outside this crop: nothing to measure pixels on


def test_a_file_name_with_a_newline_stays_on_one_warning_line(tmp_path, caplog):
    from training.data import Item, load_items

    (tmp_path / "a\nb.txt").write_text("x")
    with caplog.at_level(logging.WARNING):
        load_items([Item(str(tmp_path / "a\nb.txt"))], PRE)
    assert len(caplog.records) == 1 and "\n" not in caplog.records[0].getMessage()
    assert "a\\nb.txt" in caplog.records[0].getMessage()


def test_which_copy_of_a_linked_folder_is_listed_does_not_depend_on_disk_order(tmp_path, monkeypatch):
    from training.data import list_files

    _pngs(tmp_path / "r" / "m", 3)
    _pngs(tmp_path / "shared", 3, start=10)
    for name in ("z_link", "a_link"):
        (tmp_path / "r" / name).symlink_to(tmp_path / "shared")
    first = list_files(tmp_path / "r")
    real_scandir = os.scandir

    class Reversed:  # os.scandir's iterator, entries in the opposite order
        def __init__(self, path):
            with real_scandir(path) as it:
                self.entries = list(it)[::-1]

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def __iter__(self):
            return self

        def __next__(self):
            if not self.entries:
                raise StopIteration
            return self.entries.pop(0)

    monkeypatch.setattr(os, "scandir", Reversed)
    assert list_files(tmp_path / "r") == first and len(first) == 6
    assert {p.parent.name for p in first} == {"m", "a_link"}


def test_links_never_leave_the_data_folder_and_one_file_is_listed_once(tmp_path):
    from training.data import list_files

    _pngs(tmp_path / "outside", 4, start=50)
    root = tmp_path / "d"
    _pngs(root, 6)
    (root / "up").symlink_to("..")  # would reach 'outside' and d itself again
    (root / "top").symlink_to("/")
    (root / "again.png").symlink_to(root / "000.png")  # the same image under a second name
    levels = [root / ("n/" * (i + 1)) for i in range(1100)]  # deeper than Python's recursion limit
    for d in levels:
        d.mkdir()
    (levels[-1] / "deep.png").write_bytes((root / "001.png").read_bytes())
    try:
        names = [p.name for p in list_files(root)]
    finally:  # shutil.rmtree (pytest's clean-up) recurses too, so take the tower down here
        (levels[-1] / "deep.png").unlink()
        for d in reversed(levels):
            d.rmdir()
    assert sorted(names) == ["000.png", "001.png", "002.png", "003.png", "004.png", "005.png", "deep.png"]


def test_data_inside_the_anomaly_folder_is_not_labelled_anomalous(tmp_path):
    _pngs(tmp_path / "all" / "good", 20)
    _pngs(tmp_path / "all" / "scratch", 4, start=60)
    ds = load_dataset(str(tmp_path / "all" / "good"), anomalies=str(tmp_path / "all"))
    bad = [it for it in ds.splits["test"] if it.label == 1]
    assert len(bad) == 4 and all("/scratch/" in it.source for it in bad)


def test_alpha_masks_and_unreadable_places_are_named(tmp_path, caplog):
    from training.data import Item, load_masks

    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "img.png")
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., :3] = 255  # white everywhere; only the alpha says where the defect is
    rgba[4:8, 4:8, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "img_mask.png")
    items = [Item(str(tmp_path / "img.png"), label=1, mask=str(tmp_path / "img_mask.png"))]
    masks, known = load_masks(items, Preprocess((16, 16), "gray"))
    assert known[0] and masks[0].sum() == 16 and masks[0, 4:8, 4:8].all()

    os.mkfifo(tmp_path / "train-images-idx3-ubyte")  # reading it would block
    read_idx.cache_clear()
    with pytest.raises(DataError, match="not a regular file"):
        load_dataset(str(tmp_path))

    cls = tmp_path / "cls"
    _pngs(cls / "train" / "a", 12)
    (cls / "train" / "b").symlink_to(tmp_path / "missing")
    with caplog.at_level(logging.WARNING):
        ds = load_dataset(str(cls), layout="classes")
    assert "train/b: a link to a missing folder" in caplog.text and ds.spec["layout"] == "classes"


def test_a_reason_that_quotes_a_file_name_stays_on_one_line(tmp_path, caplog):
    from training.data import Item, load_items

    (tmp_path / "e\nx.png").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        load_items([Item(str(tmp_path / "e\nx.png"))], PRE)
    msg = caplog.records[0].getMessage()
    assert "\n" not in msg and msg.count("e\\nx.png") == 2  # in the name and in the reason


def test_progress_bars_only_on_a_terminal(monkeypatch):
    import io

    from training.data import tqdm_class

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert tqdm_class() is None  # a log file would fill with carriage-return redraws
    monkeypatch.setattr("sys.stderr", Terminal())
    assert tqdm_class() is not None


def test_roi_check_fails_only_when_the_crop_fits_none_of_the_first_images(tmp_path):
    from edge_detect.preprocess import Preprocess
    from training.data import ROI_MISSES, DataError, Item, load_items

    def save(name, size):
        Image.fromarray(np.full((size, size), 128, np.uint8)).save(tmp_path / name)
        return Item(str(tmp_path / name))

    pre = Preprocess(size=(8, 8), roi=(0, 0, 20, 20))
    # Three small frames, then ones the crop fits: those three are bad files, skipped and named.
    items = [save(f"s{i}.png", 10) for i in range(3)] + [save(f"b{i}.png", 32) for i in range(2)]
    x, kept, skipped = load_items(items, pre, "train", roi_check=True)
    assert len(x) == 2 and kept == [3, 4] and sorted(skipped) == sorted(str(tmp_path / f"s{i}.png") for i in range(3))
    small = [save(f"t{i}.png", 10) for i in range(ROI_MISSES)]
    with pytest.raises(DataError, match=r"^--roi: roi \(0, 0, 20, 20\) lies outside the 10x10 px image"):
        load_items(small, pre, "train", roi_check=True)
    assert len(load_items(small, pre, "aux")[2]) == ROI_MISSES  # other splits: skipped, as any bad file
