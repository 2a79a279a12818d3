"""The shared preprocessing: colour modes, ROI, JPEG draft decoding and every kind of bad input."""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from edge_detect.preprocess import ImageError, Preprocess


def _png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, "PNG")
    return buf.getvalue()


def test_gray_png_to_tensor(tmp_path):
    arr = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))  # 32x32 horizontal ramp
    path = tmp_path / "ramp.png"
    Image.fromarray(arr).save(path)
    x = Preprocess((16, 16), resize="area")(path)
    assert x.shape == (16, 16, 1) and x.dtype == np.float32
    # box resize of a ramp averages neighbouring columns: left edge dark, right edge bright, rows identical
    assert x[0, 0, 0] == pytest.approx((0 + 8) / 2 / 255, abs=1e-6)
    assert x[0, -1, 0] == pytest.approx((240 + 248) / 2 / 255, abs=1e-6)
    assert np.allclose(x[0], x[-1])


def test_rgb_and_gray_conversion_of_same_image():
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    data = _png_bytes(rgb)
    xr = Preprocess((8, 8), color="rgb")(data)
    xg = Preprocess((8, 8), color="gray")(data)
    assert xr.shape == (8, 8, 3) and np.allclose(xr[..., 0], 1.0) and np.allclose(xr[..., 1:], 0.0)
    # ITU-R 601-2 luma, as PIL's convert("L") uses: 299/1000 of red
    assert np.allclose(xg, round(255 * 299 / 1000) / 255, atol=1 / 255)


def test_roi_crops_before_resize():
    arr = np.zeros((40, 40), np.uint8)
    arr[10:20, 20:30] = 200
    x = Preprocess((5, 5), roi=(20, 10, 10, 10), resize="nearest")(arr)
    assert np.allclose(x, 200 / 255)


def test_roi_outside_image_is_an_error():
    with pytest.raises(ImageError, match="outside"):
        Preprocess((4, 4), roi=(30, 30, 20, 20))(np.zeros((40, 40), np.uint8))


def test_scale_and_offset():
    x = Preprocess((2, 2), scale=2 / 255, offset=-1.0)(np.full((2, 2), 255, np.uint8))
    assert np.allclose(x, 1.0)


def test_jpeg_draft_decode_close_to_full_decode():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:480, 0:640]
    img = (127 + 100 * np.sin(xx / 37.0) * np.cos(yy / 23.0) + rng.normal(0, 3, (480, 640))).clip(0, 255)
    buf = io.BytesIO()
    Image.fromarray(img.astype(np.uint8)).save(buf, "JPEG", quality=92)
    data = buf.getvalue()
    fast = Preprocess((60, 80), draft=True)
    full = Preprocess((60, 80), draft=False)
    opened = Image.open(io.BytesIO(data))
    opened.draft("L", (80, 60))
    assert opened.size[0] < 640, "draft mode should decode at a reduced DCT scale"
    assert np.abs(fast(data) - full(data)).mean() < 0.02


def test_draft_with_roi_uses_source_coordinates():
    arr = np.zeros((400, 400), np.uint8)
    arr[200:400, 200:400] = 255
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95)
    x = Preprocess((10, 10), roi=(200, 200, 200, 200), draft=True)(buf.getvalue())
    assert x.mean() > 0.95


def test_sixteen_bit_image_keeps_top_byte():
    buf = io.BytesIO()
    Image.fromarray(np.full((4, 4), 0x8000, np.uint16)).save(buf, "PNG")  # a 16-bit sensor frame
    assert Image.open(io.BytesIO(buf.getvalue())).mode.startswith("I")
    x = Preprocess((4, 4))(buf.getvalue())
    assert np.allclose(x, 0x80 / 255)


def _png16(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint16)).save(buf, "PNG")
    return buf.getvalue()


def test_twelve_bit_camera_frames_need_bit_depth_12(monkeypatch, caplog):
    import edge_detect.preprocess as pp

    monkeypatch.setattr(pp, "_warned", set())
    frame = _png16(np.array([[0, 16, 2048, 4095]]))  # Mono12 values in a 16-bit PNG
    x12 = Preprocess((1, 4), bit_depth=12)(frame)[0, :, 0]
    assert x12 * 255 == pytest.approx([0, 1, 128, 255])
    assert not caplog.records
    # Read as full-range 16-bit, the frame keeps 16 grey levels: one warning names the fix, once.
    x16 = Preprocess((1, 4))(frame)[0, :, 0]
    assert x16 * 255 == pytest.approx([0, 0, 8, 15])
    Preprocess((1, 4))(frame)
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and "16-bit image peaks at 4095" in msgs[0] and "16 grey levels" in msgs[0]
    assert "--bit-depth 12" in msgs[0]


@pytest.mark.parametrize("values, bit_depth, needle", [
    ([0, 1500], 16, "--bit-depth 12"),  # a dim 12-bit frame still suggests the camera's 12, not 11
    ([0, 9000], 16, "--bit-depth 14"),  # Mono14 read as 16-bit: 36 grey levels
    ([0, 65535], 12, "clipped to white; if the camera writes more bits, train with edge-train fit --bit-depth 16"),
    ([0, 5000], 12, "--bit-depth 14"),  # a depth cameras write, not 13
    ([0, 40000], 16, None),  # a full-range frame: nothing to say
    ([0, 900], 10, None),
])
def test_bit_depth_warnings(monkeypatch, caplog, values, bit_depth, needle):
    import edge_detect.preprocess as pp

    monkeypatch.setattr(pp, "_warned", set())
    Preprocess((1, 2), bit_depth=bit_depth)(_png16(np.array([values])))
    msgs = [r.getMessage() for r in caplog.records]
    assert (needle in msgs[0] if needle else not msgs), msgs


def test_sixteen_bit_colour_is_read_at_its_top_byte_and_said_so(monkeypatch, caplog):
    import edge_detect.preprocess as pp

    monkeypatch.setattr(pp, "_warned", set())
    # A 48-bit RGB PNG by hand (Pillow cannot write one): every channel 0x1234.
    raw = b"".join(b"\x00" + b"\x12\x34" * 3 * 2 for _ in range(2))
    ihdr = struct.pack(">IIBBBBB", 2, 2, 16, 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    x = Preprocess((2, 2), "rgb", bit_depth=12)(png)
    assert x * 255 == pytest.approx(np.full((2, 2, 3), 0x12))
    assert "bit_depth 12 applies to 16-bit gray images only" in caplog.text
    caplog.clear()
    Preprocess((2, 2), "rgb")(png)  # the default expects nothing else
    assert not caplog.records


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "empty"),
        (b"this is not an image at all", "not a readable image"),
    ],
)
def test_bad_bytes(data, match):
    with pytest.raises(ImageError, match=match):
        Preprocess((8, 8))(data)


def test_zero_byte_file_and_missing_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match="empty file"):
        Preprocess((8, 8))(tmp_path / "empty.jpg")
    with pytest.raises(ImageError, match="no such file"):
        Preprocess((8, 8))(tmp_path / "missing.jpg")


def test_a_fifo_or_a_folder_is_refused_without_reading(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")  # opening it to read would block until a writer came
    with pytest.raises(ImageError, match="not a regular file"):
        Preprocess((8, 8))(tmp_path / "pipe.png")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(ImageError, match="not a regular file"):
        Preprocess((8, 8))(tmp_path / "dir.png")


def test_truncated_jpeg():
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64), np.uint8)).save(buf, "JPEG")
    with pytest.raises(ImageError, match="decode"):
        Preprocess((8, 8), draft=False)(buf.getvalue()[: len(buf.getvalue()) // 2])


def _png_claiming_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge canvas: the classic decompression bomb."""
    data = bytearray(_png_bytes(np.zeros((8, 8), np.uint8)))
    ihdr = 8 + 8  # signature, then length + type of the IHDR chunk
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


@pytest.mark.parametrize("side", [9_000, 100_000])  # 81 Mpx (warning zone) and 10 Gpx (error zone)
def test_decompression_bomb_refused(side):
    with pytest.raises(ImageError, match="decompression bomb"):
        Preprocess((8, 8))(_png_claiming_size(side, side))


def test_unsupported_mode_and_bad_arrays():
    with pytest.raises(ImageError, match="mode"):
        Preprocess((4, 4))(Image.new("F", (4, 4)))
    with pytest.raises(ImageError, match="uint8"):
        Preprocess((4, 4))(np.zeros((4, 4), np.float32))
    with pytest.raises(ImageError, match="neither gray nor RGB"):
        Preprocess((4, 4))(np.zeros((4, 4, 2), np.uint8))


def test_config_round_trip_and_validation():
    p = Preprocess((32, 48), color="rgb", roi=(1, 2, 30, 40), resize="bicubic", scale=0.5, offset=-1.0, draft=False)
    assert Preprocess.from_dict(p.to_dict()) == p
    assert p.shape == (32, 48, 3)
    assert p.with_roi(None).roi is None and p.with_roi([0, 0, 5, 5]).roi == (0, 0, 5, 5)
    assert Preprocess.from_dict({"size": [8, 8], "bit_depth": 12}).bit_depth == 12
    assert Preprocess.from_dict({"size": [8, 8]}).bit_depth == 16  # bundles written before the key
    assert "bit_depth" not in Preprocess((8, 8)).to_dict()  # ... which still load on devices that predate it
    for bad in ({"color": "cmyk"}, {"resize": "magic"}, {"roi": (0, 0, 0, 5)}, {"bit_depth": 17}, {"bit_depth": True}):
        with pytest.raises(ValueError, match="preprocess"):
            Preprocess((8, 8), **bad)


def test_batch_stacks():
    arrs = [np.full((6, 6), v, np.uint8) for v in (0, 51, 255)]
    b = Preprocess((3, 3)).batch(arrs)
    assert b.shape == (3, 3, 3, 1)
    assert np.allclose(b[:, 0, 0, 0], [0, 0.2, 1.0])
