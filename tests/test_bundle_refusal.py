"""The device refuses a bad bundle with a message saying which check failed (library and CLI)."""

from __future__ import annotations

import json
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("tensorflow")

import tiny_export as tx  # noqa: E402

from edge_detect.bundle import BundleError, load_bundle, pack  # noqa: E402
from edge_detect.cli import main  # noqa: E402
from edge_detect.detector import Detector  # noqa: E402


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = tmp_path_factory.mktemp("refusal")
    res, imgs, _ = tx.export(root / "bundle", quant="int8", archive=True)
    image = tx.write_images(root / "img", imgs[:1])[0]
    return res.bundle.path, res.archive, image


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_manifest(bundle: Path, fn) -> None:
    mf = bundle / "manifest.json"
    m = json.loads(mf.read_text())
    fn(m)
    mf.write_text(json.dumps(m))


def refuse_cli(bundle: Path, image: Path, *args: str) -> str:
    r = CliRunner().invoke(main, ["score", str(bundle), str(image), *args])
    assert r.exit_code == 2, r.output
    line = r.output.strip().splitlines()[-1]
    assert line.startswith("error: bundle refused:")
    return line


def test_good_bundle_and_archive_load(good):
    path, archive, image = good
    assert load_bundle(path).name == "tiny"
    r = CliRunner().invoke(main, ["score", str(archive), str(image), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.splitlines()[-1])["variant"] == "int8"


def test_tampered_model_is_refused(good, tmp_path):
    path, _, image = good
    b = copy(path, tmp_path / "b")
    blob = bytearray((b / "model_int8.tflite").read_bytes())
    blob[len(blob) // 2] ^= 0x01
    (b / "model_int8.tflite").write_bytes(bytes(blob))
    with pytest.raises(BundleError, match=r"SHA-256 of model_int8\.tflite does not match the manifest"):
        load_bundle(b)
    assert "SHA-256 of model_int8.tflite does not match" in refuse_cli(b, image)


def test_truncated_model_is_refused(good, tmp_path):
    path, _, image = good
    b = copy(path, tmp_path / "b")
    f = b / "model_int8_io.tflite"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(BundleError, match=r"SHA-256 of model_int8_io\.tflite does not match.*truncated"):
        load_bundle(b)
    assert "model_int8_io.tflite does not match" in refuse_cli(b, image, "--variant", "int8_io")


def test_truncated_model_with_rehashed_manifest_is_still_refused(good, tmp_path):
    """A truncated file whose hash was (wrongly) refreshed still can't crash the device."""
    from edge_detect.bundle import sha256_file

    path, _, image = good
    b = copy(path, tmp_path / "b")
    f = b / "model_int8.tflite"
    f.write_bytes(f.read_bytes()[:1000])
    edit_manifest(b, lambda m: m["files"].__setitem__("model_int8.tflite", sha256_file(f)))
    with pytest.raises(BundleError, match=r"variants\.int8 is not a loadable TFLite model"):
        Detector(b, variant="int8")
    assert "is not a loadable TFLite model" in refuse_cli(b, image)


def test_missing_model_is_refused(good, tmp_path):
    path, _, image = good
    b = copy(path, tmp_path / "b")
    (b / "model_float32.tflite").unlink()
    assert "model_float32.tflite is missing" in refuse_cli(b, image)


def test_truncated_archive_is_refused(good, tmp_path):
    _, archive, image = good
    bad = tmp_path / "bundle.tar.gz"
    data = archive.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="damaged or truncated archive"):
        load_bundle(bad, extract_to=tmp_path / "x")
    assert "damaged or truncated archive" in refuse_cli(bad, image)


def test_wrong_shape_in_manifest_is_refused(good, tmp_path):
    path, _, image = good
    b = copy(path, tmp_path / "b")
    edit_manifest(b, lambda m: m["variants"]["int8"]["input"].__setitem__("shape", [1, 32, 32, 1]))
    load_bundle(b)  # hashes still match: manifest.json is not hashed by itself
    msg = r"variants\.int8\.input says float32\[1, 32, 32, 1\] but the model has float32\[1, 16, 16, 1\]"
    with pytest.raises(BundleError, match=msg):
        Detector(b, variant="int8")
    assert "variants.int8.input says float32[1, 32, 32, 1]" in refuse_cli(b, image)


def test_wrong_quantisation_in_manifest_is_refused(good, tmp_path):
    path, _, image = good
    b = copy(path, tmp_path / "b")
    edit_manifest(b, lambda m: m["variants"]["int8_io"]["input"].__setitem__("quantization", [0.5, 3]))
    assert "variants.int8_io.input.quantization does not match the model" in refuse_cli(
        b, image, "--variant", "int8_io")


def test_variant_naming_a_missing_reference_array_is_refused(good, tmp_path):
    path, _, image = good
    b = copy(path, tmp_path / "b")
    edit_manifest(b, lambda m: m["variants"]["int8"].__setitem__("arrays", {"reference": "reference_int8"}))
    msg = "variants.int8.arrays.reference names 'reference_int8', which is not in arrays"
    with pytest.raises(BundleError, match=msg):
        load_bundle(b)
    assert msg in refuse_cli(b, image)


def test_unknown_schema_version_is_refused(good, tmp_path):
    path, archive, image = good
    b = copy(path, tmp_path / "b")
    edit_manifest(b, lambda m: m.__setitem__("schema_version", 99))
    with pytest.raises(BundleError, match="unknown schema_version 99"):
        load_bundle(b)
    assert "unknown schema_version 99" in refuse_cli(b, image)
    # The same refusal through the archive form.
    arch = tmp_path / "v99.tar.gz"
    with pytest.raises(BundleError, match="unknown schema_version 99"):
        pack(b, arch)  # pack itself refuses to ship it


def test_refused_bundles_fail_the_json_schema_too(good):
    jsonschema = pytest.importorskip("jsonschema")
    path, _, _ = good
    schema = json.loads((Path(__file__).resolve().parents[1] / "edge_detect/schemas/manifest.schema.json").read_text())
    m = json.loads((path / "manifest.json").read_text())
    jsonschema.validate(m, schema)
    for mutate in (lambda m: m.__setitem__("schema_version", 99),
                   lambda m: m["files"].__setitem__("model_int8.tflite", "not-a-hash"),
                   lambda m: m["variants"]["int8"]["input"].__setitem__("dtype", "float64"),
                   lambda m: m.pop("calibration")):
        bad = json.loads(json.dumps(m))
        mutate(bad)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


@pytest.mark.parametrize("mutate, message", [
    (lambda m: m.__setitem__("variants", "int8"), "manifest.json: variants must be an object, got a string"),
    (lambda m: m["variants"].__setitem__("int8", 5), "variants.int8 must be an object, got a number"),
    (lambda m: m["variants"]["int8"].__setitem__("file", ["x"]), "variants.int8.file must be a string, got an array"),
    (lambda m: m["variants"]["int8"].__setitem__("input", 5), "variants.int8.input must be an object"),
    (lambda m: m["variants"]["int8"]["input"].__setitem__("quantization", 5),
     "variants.int8.input.quantization must be an array"),
    (lambda m: m.__setitem__("calibration", "high"), "calibration must be an object, got a string"),
    (lambda m: m["calibration"].__setitem__("threshold", True), "calibration.threshold must be a number"),
    (lambda m: m["variants"]["int8"].__setitem__("calibration", {"threshold": "x"}),
     "variants.int8.calibration.threshold must be a number"),
    (lambda m: m.__setitem__("scoring", 5), "scoring must be an object, got a number"),
    (lambda m: m.__setitem__("arrays", 5), "arrays must be an object, got a number"),
    (lambda m: m.__setitem__("default_variant", ["int8"]), "default_variant must be a string, got an array"),
    (lambda m: m["preprocess"].__setitem__("scale", "x"), "preprocess.scale must be a number, got 'x'"),
    (lambda m: m["scoring"].__setitem__("colour", 1), "unexpected keyword argument 'colour'"),
])
def test_manifest_with_wrong_types_is_refused_in_one_line(good, tmp_path, mutate, message):
    """A hand-edited manifest.json (it is not hashed itself) is refused, never a TypeError traceback."""
    path, _, image = good
    b = copy(path, tmp_path / "b")
    edit_manifest(b, mutate)
    assert message in refuse_cli(b, image)


def test_archive_errors_name_the_archive(good, tmp_path):
    """Not the temporary folder it was unpacked into, and one line for a file that is no archive at all."""
    path, _, image = good
    text = tmp_path / "notes.tar.gz"
    text.write_text("not an archive\n")
    assert refuse_cli(text, image) == f"error: bundle refused: {text}: damaged or truncated archive " \
                                      "(file could not be opened successfully)"
    no_manifest = tmp_path / "models.tar.gz"
    b = copy(path, tmp_path / "b")
    (b / "manifest.json").unlink()
    with tarfile.open(no_manifest, "w:gz") as tar:
        tar.add(b / "model_int8.tflite", arcname="model_int8.tflite")
    assert refuse_cli(no_manifest, image) == f"error: bundle refused: {no_manifest}: not a bundle (no manifest.json)"
    _, archive, _ = good
    assert f"bundle {archive} has no variant 'int4'" in refuse_cli(archive, image, "--variant", "int4")


def test_non_finite_threshold_override_is_refused(good):
    path, _, image = good
    r = CliRunner().invoke(main, ["score", str(path), str(image), "--threshold", "nan"])
    assert r.exit_code == 2 and r.output.strip() == "error: --threshold must be a finite number, got nan"


def knn_bundle(src: Path, dst: Path, k) -> Path:
    """``src``'s copy turned into a kNN bundle: the model's output (16x16 values, flattened) against 8
    stored reference rows, with ``scoring.k`` as given."""
    from edge_detect.bundle import sha256_file

    b = copy(src, dst)
    np.save(b / "reference.npy", np.random.default_rng(0).random((8, 256), dtype=np.float32))

    def to_knn(m):
        m["scoring"] = {"kind": "knn", "k": k}
        m["arrays"] = {"reference": {"file": "reference.npy", "shape": [8, 256], "dtype": "float32"}}
        m["files"]["reference.npy"] = sha256_file(b / "reference.npy")

    edit_manifest(b, to_knn)
    return b


@pytest.mark.parametrize("k", [0, -1, 5000, 2.5, None])
def test_knn_k_outside_the_reference_set_is_refused_at_load(good, tmp_path, k):
    """Not loaded and then a ValueError on every image: refused once, naming scoring.k."""
    path, _, image = good
    b = knn_bundle(path, tmp_path / "b", k)
    msg = f"scoring.k must be 1..8 (the reference set's size), got {k!r}"
    with pytest.raises(ValueError, match=re.escape(msg)):
        Detector(b, variant="int8")
    assert refuse_cli(b, image) == f"error: bundle refused: {b}: {msg}"


def test_knn_bundle_with_k_in_range_scores(good, tmp_path):
    path, _, image = good
    b = knn_bundle(path, tmp_path / "b", 8)  # k = N: every reference counts
    r = CliRunner().invoke(main, ["score", str(b), str(image), "--json"])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("damage, why", [
    pytest.param(lambda f: f.write_text("not an array\n"), "no .npy header", id="text"),
    pytest.param(lambda f: np.save(f, np.array([{"a": 1}], object), allow_pickle=True), "object (pickled) data",
                 id="object"),
    pytest.param(lambda f: np.save(f, np.array(["ab", "c"])), "dtype <U2", id="strings"),
    pytest.param(lambda f: f.write_bytes(f.read_bytes()[:200]), "Failed to read all data for array", id="truncated"),
])
def test_damaged_npy_with_rehashed_manifest_is_refused_naming_the_file(good, tmp_path, damage, why):
    """Not numpy's advice to load it with allow_pickle: the file and what is wrong with it."""
    from edge_detect.bundle import sha256_file

    path, _, image = good
    b = knn_bundle(path, tmp_path / "b", 3)
    damage(b / "reference.npy")
    edit_manifest(b, lambda m: m["files"].__setitem__("reference.npy", sha256_file(b / "reference.npy")))
    with pytest.raises(BundleError, match="reference.npy is not a numeric .npy array"):
        Detector(b, variant="int8")
    line = refuse_cli(b, image)
    assert line.startswith(f"error: bundle refused: {b}: reference.npy is not a numeric .npy array ({why}")
    assert "allow_pickle" not in line and "pickle.load" not in line
