"""Accelerator delegate plugins up to the hardware boundary: config validation, what each passes to
LiteRT's load_delegate, and the CPU fallback (or refusal) when the library or the model doesn't fit.

No accelerator is attached here, so every real load fails; that failure is what is tested.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edge_detect.delegates import DelegateUnavailable, delegate_from_dict
from edge_detect.delegates.edgetpu import EdgeTpuDelegate
from edge_detect.delegates.external import ExternalDelegate
from edge_detect.delegates.gpu import GpuDelegate
from edge_detect.runtime import AcceleratorRequired, interpreter_backend
from edge_detect.validate import ConfigError

MISSING_LIB = "/nonexistent/edge-detect-test/libdelegate.so"


@pytest.mark.parametrize("table, cls, name, options", [
    ({"type": "edgetpu"}, EdgeTpuDelegate, "edgetpu", {}),
    ({"type": "edgetpu", "device": "usb:1"}, EdgeTpuDelegate, "edgetpu:usb:1", {"device": "usb:1"}),
    ({"type": "edgetpu", "device": ":0"}, EdgeTpuDelegate, "edgetpu::0", {"device": ":0"}),
    ({"type": "gpu"}, GpuDelegate, "gpu", {"precision_loss_allowed": "1"}),
    ({"type": "gpu", "precision_loss_allowed": False}, GpuDelegate, "gpu", {"precision_loss_allowed": "0"}),
    ({"type": "external", "library_path": "/usr/lib/libvx_delegate.so",
      "options": {"backends": "GpuAcc", "n": 2, "fp16": True}},
     ExternalDelegate, "external:libvx_delegate.so", {"backends": "GpuAcc", "n": "2", "fp16": "true"}),
])
def test_each_plugin_builds_from_its_toml_table(table, cls, name, options):
    d = delegate_from_dict(table, "model.accelerator")
    assert type(d) is cls and d.name == name and d.delegate_options() == options


def test_variants_each_accelerator_prefers():
    assert delegate_from_dict({"type": "edgetpu"}).preferred_variants() == ("int8_edgetpu",)
    assert delegate_from_dict({"type": "gpu"}).preferred_variants() == ("float16", "float32")
    ext = {"type": "external", "library_path": "x.so"}
    assert delegate_from_dict(ext).preferred_variants() == ("int8",)
    assert delegate_from_dict({**ext, "variant": "int8_io"}).preferred_variants() == ("int8_io",)


@pytest.mark.parametrize("table, message", [
    ({"type": "npu"}, "model.accelerator.type: must be one of edgetpu, external, gpu, got 'npu'"),
    ({}, "model.accelerator.type: must be one of edgetpu, external, gpu, got nothing"),
    ({"type": "edgetpu", "speed": 1}, "model.accelerator.speed: unknown key (known: device, library_path)"),
    ({"type": "edgetpu", "device": 1}, "model.accelerator.device: must be a string, got 1"),
    ({"type": "edgetpu", "device": "usb0"}, "model.accelerator.device: must be usb, pci, usb:N, pci:N or :N, "
                                            "got 'usb0'"),
    ({"type": "gpu", "precision_loss_allowed": "yes"},
     "model.accelerator.precision_loss_allowed: must be a boolean, got 'yes'"),
    ({"type": "external"}, "model.accelerator.library_path: required for an external delegate"),
    ({"type": "external", "library_path": "x.so", "options": "a=b"},
     "model.accelerator.options: must be a table of "),  # of strings, integers, numbers or booleans
    ({"type": "external", "library_path": "x.so", "options": {"a": [1]}}, "model.accelerator.options: must be"),
])
def test_bad_accelerator_tables_name_the_key(table, message):
    with pytest.raises(ConfigError) as e:
        delegate_from_dict(table, "model.accelerator")
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_every_problem_of_an_accelerator_table_is_reported_at_once():
    with pytest.raises(ConfigError) as e:
        delegate_from_dict({"type": "edgetpu", "device": "usb0", "speed": 1, "library_path": 2}, "model.accelerator")
    assert e.value.errors == [
        "model.accelerator.speed: unknown key (known: device, library_path)",
        "model.accelerator.library_path: must be a string, got 2",
        "model.accelerator.device: must be usb, pci, usb:N, pci:N or :N, got 'usb0'",
    ]


def test_a_missing_delegate_library_is_one_line_from_the_real_runtime():
    _, _, load_delegate = interpreter_backend()
    for d in (EdgeTpuDelegate(library_path=MISSING_LIB), GpuDelegate(library_path=MISSING_LIB),
              ExternalDelegate(library_path=MISSING_LIB)):
        with pytest.raises(DelegateUnavailable) as e:
            d.load(load_delegate)
        msg = str(e.value)
        assert msg.startswith(f"{d.name}: cannot load {MISSING_LIB} (") and "\n" not in msg


@pytest.fixture(scope="module")
def fake_delegate(build_native) -> str:
    """tests/native/fake_delegate.c: a real delegate library without hardware (see its header)."""
    return str(build_native("fake_delegate.c", "-shared", "-fPIC"))


def test_a_library_that_is_no_delegate_is_one_line_and_never_reaches_litert():
    # LiteRT itself would raise AttributeError here and print a traceback from Delegate.__del__.
    _, _, load_delegate = interpreter_backend()
    with pytest.raises(DelegateUnavailable, match=r"^external:libm\.so\.6: libm\.so\.6 is not a TFLite delegate "
                                                  r"library \(no tflite_plugin_create_delegate\)$"):
        ExternalDelegate(library_path="libm.so.6").load(load_delegate)


def test_the_delegates_own_reason_reaches_the_message(fake_delegate):
    """As libedgetpu without a stick: the library loads, the delegate says why it can't start."""
    _, _, load_delegate = interpreter_backend()
    d = ExternalDelegate(library_path=fake_delegate, options={"fail": "no Edge TPU found on usb:0"})
    with pytest.raises(DelegateUnavailable) as e:
        d.load(load_delegate)
    assert str(e.value) == f"external:fake_delegate: cannot load {fake_delegate} (no Edge TPU found on usb:0)"


def test_a_loaded_delegate_runs_the_model_and_is_reported(fake_delegate, tiny_bundle):
    import numpy as np

    from edge_detect.detector import Detector

    bundle, _ = tiny_bundle
    cpu = Detector(bundle)
    det = Detector(bundle, delegate=ExternalDelegate(library_path=fake_delegate, variant=cpu.variant))
    assert det.model.accelerator == "external:fake_delegate" and det.model.fallback is None
    # The fake delegate claims no op, so the scores are the CPU's to the bit.
    x = np.random.default_rng(0).random((2, *cpu.input_spec.shape[1:]), dtype=np.float32)
    np.testing.assert_array_equal(det.infer(x)[0], cpu.infer(x)[0])


def test_edgetpu_refuses_a_model_the_compiler_has_not_seen(tiny_bundle, tmp_path):
    bundle, _ = tiny_bundle
    model = next(Path(bundle).glob("*.tflite"))
    with pytest.raises(DelegateUnavailable, match="is not compiled for the Edge TPU"):
        EdgeTpuDelegate().check_model(str(model))
    compiled = tmp_path / "m_edgetpu.tflite"
    compiled.write_bytes(model.read_bytes() + b"edgetpu-custom-op")  # what the compiler leaves in the graph
    EdgeTpuDelegate().check_model(str(compiled))


def test_detector_falls_back_to_the_cpu_and_says_why(tiny_bundle, tmp_path):
    from edge_detect.detector import Detector

    bundle, _ = tiny_bundle
    det = Detector(bundle, delegate=GpuDelegate(library_path=MISSING_LIB))
    assert det.model.accelerator == "cpu"
    assert det.model.fallback.startswith(f"gpu: cannot load {MISSING_LIB} (")
    # The Edge TPU has no variant in this bundle: the default runs on the CPU, and the reason names the model.
    det = Detector(bundle, delegate=EdgeTpuDelegate())
    assert det.variant == det.bundle.default_variant() and "not compiled for the Edge TPU" in det.model.fallback


def test_require_accelerator_refuses_instead_of_falling_back(tiny_bundle):
    from edge_detect.detector import Detector

    bundle, _ = tiny_bundle
    with pytest.raises(AcceleratorRequired, match="require_accelerator is set, so not falling back to the CPU"):
        Detector(bundle, delegate=GpuDelegate(library_path=MISSING_LIB), require_accelerator=True)


def test_edgetpu_variant_without_its_delegate_is_refused(tiny_bundle, tmp_path):
    import json

    from edge_detect.bundle import BundleError, sha256_file
    from edge_detect.detector import Detector

    src, _ = tiny_bundle
    bundle = tmp_path / "b"
    shutil.copytree(src, bundle)
    m = json.loads((bundle / "manifest.json").read_text())
    base = m["default_variant"] if "default_variant" in m else next(iter(m["variants"]))
    v = dict(m["variants"][base], file="model_int8_edgetpu.tflite")
    shutil.copy(bundle / m["variants"][base]["file"], bundle / v["file"])
    m["variants"]["int8_edgetpu"] = v
    m["files"][v["file"]] = sha256_file(bundle / v["file"])
    (bundle / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="'int8_edgetpu' is compiled for the Edge TPU and runs only with its"):
        Detector(bundle, variant="int8_edgetpu")
