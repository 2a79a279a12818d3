
# --- MQTT broker fixture (delivery: outbox / publisher / subscribe tests) -------------------------
import pytest as _pytest  # noqa: E402


@_pytest.fixture
def mosquitto(tmp_path_factory):
    """A running Mosquitto on a free loopback port; ``.stop()`` / ``.start()`` simulate an outage.

    Fails (never skips) when mosquitto is missing: CI installs it, and a silent skip would hide
    the delivery tests.
    """
    from edge_detect.broker import Mosquitto, find_mosquitto

    if find_mosquitto() is None:
        _pytest.fail("mosquitto is not installed: run 'sudo apt-get install mosquitto' (CI installs it)")
    # Persistent, so a stop/start keeps sessions and queued messages as a real broker restart does.
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"), persistent=True, max_queued=100_000)
    broker.start()
    yield broker
    broker.stop()


# --- native helpers (tests/native/*.c), compiled once per session ---------------------------------
@_pytest.fixture(scope="session")
def build_native(tmp_path_factory):
    """``build(source_name, *cc_args)`` -> path of the output compiled from tests/native/SOURCE.

    Fails (never skips) without a C compiler: ``make test`` installs gcc, and a skip would hide the
    service and delegate tests.
    """
    import shutil
    import subprocess
    from pathlib import Path

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        _pytest.fail("no C compiler: run 'sudo apt-get install gcc' (make test installs it)")
    out_dir = tmp_path_factory.mktemp("native")

    def build(source: str, *args: str) -> Path:
        out = out_dir / Path(source).stem
        src = Path(__file__).resolve().parent / "native" / source
        subprocess.run([cc, "-O2", *args, "-o", str(out), str(src)], check=True, timeout=120)
        return out

    return build


# --- the daemon's tests: a real tiny .tflite bundle, built once per session -----------------------
@_pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """(bundle dir, threshold) of a 32x32 gray autoencoder; see tests/tiny_bundle.py."""
    from tiny_bundle import build_tiny_bundle

    return build_tiny_bundle(tmp_path_factory.mktemp("tiny") / "bundle", size=32)


# --- training: tiny generated datasets (never /work/shared, never a download) ---------------------
def _normal_image(rng, size: int):
    """A smooth horizontal gradient with mild noise: an easy 'good part' an autoencoder learns fast."""
    import numpy as np

    base = np.tile(np.linspace(60, 190, size), (size, 1))
    return np.clip(base + rng.normal(0, 3, (size, size)), 0, 255).astype("uint8")


def _defect_image(rng, size: int):
    """A normal image with a bright square 'defect'; returns (image, mask)."""
    import numpy as np

    img = _normal_image(rng, size)
    mask = np.zeros((size, size), "uint8")
    s = max(3, size // 4)
    y, x = rng.integers(0, size - s, 2)
    img[y : y + s, x : x + s] = 255
    mask[y : y + s, x : x + s] = 255
    return img, mask


def write_mvtec(root, size: int = 32, n_train: int = 40, n_test_good: int = 8, n_defect: int = 8,
                bad_files: bool = True, seed: int = 0):
    """An MVTec AD layout of gray PNGs: train/good, test/good, test/square (+ ground_truth masks).

    bad_files adds a truncated PNG and a text file to train/good, which loading must skip and count.
    """
    from pathlib import Path

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(root)
    for d in ("train/good", "test/good", "test/square", "ground_truth/square"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        Image.fromarray(_normal_image(rng, size)).save(root / "train/good" / f"{i:03d}.png")
    for i in range(n_test_good):
        Image.fromarray(_normal_image(rng, size)).save(root / "test/good" / f"{i:03d}.png")
    for i in range(n_defect):
        img, mask = _defect_image(rng, size)
        Image.fromarray(img).save(root / "test/square" / f"{i:03d}.png")
        Image.fromarray(mask).save(root / "ground_truth/square" / f"{i:03d}_mask.png")
    if bad_files:
        good = (root / "train/good" / "000.png").read_bytes()
        (root / "train/good" / "truncated.png").write_bytes(good[: len(good) // 2])
        (root / "train/good" / "notes.txt").write_text("not an image\n")
    return root


def write_idx_file(path, arr) -> None:
    """One gzip IDX file of unsigned bytes: images (N, H, W) or labels (N,), as MNIST ships them."""
    import gzip
    from pathlib import Path

    import numpy as np

    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    Path(path).write_bytes(gzip.compress(header + np.asarray(arr, np.uint8).tobytes()))


def write_idx(root, n_train: int = 60, n_test: int = 30, size: int = 16, seed: int = 0):
    """MNIST-style gzip IDX files: label 1 = a vertical bar (normal), labels 0/7 = other shapes."""
    from pathlib import Path

    import numpy as np

    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)

    def digit(label: int):
        a = np.zeros((size, size), np.uint8)
        c = size // 2 + int(rng.integers(-1, 2))
        if label == 1:
            a[2:-2, c - 1 : c + 1] = 255
        elif label == 7:
            a[2:4, 3:-3] = 255
            a[2:-2, c : c + 2] = 255
        else:
            a[3:-3, 3:5] = a[3:-3, -5:-3] = a[3:5, 3:-3] = a[-5:-3, 3:-3] = 255
        return a

    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.array([1 if i % 2 == 0 else (0, 7)[(i // 2) % 2] for i in range(n)], np.uint8)
        write_idx_file(root / f"{prefix}-images-idx3-ubyte.gz", np.stack([digit(int(v)) for v in labels]))
        write_idx_file(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def write_shared_data(root, n_images: int = 24, n_digits: int = 120, seed: int = 0):
    """A tiny stand-in for ../shared/data, with its folder and file names, for the bench smoke tests.

    mnist/ (28x28 IDX, labels 1, 0, 7), fashion-mnist-dev/ (28x28 IDX of filled blocks),
    casting/train/{ok_front,def_front} (64x64 gray JPEGs; defects carry a bright square) and
    brickwork-cracks/{Negative,Positive} (64x64 RGB JPEGs). n_images per image folder.
    """
    from pathlib import Path

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(root)
    write_idx(root / "mnist", n_train=n_digits, n_test=n_digits // 2, size=28, seed=seed)
    fashion = root / "fashion-mnist-dev"
    fashion.mkdir(parents=True, exist_ok=True)
    blocks = np.zeros((n_digits // 2, 28, 28), np.uint8)
    for b in blocks:
        y, x = rng.integers(2, 12, 2)
        b[y : y + 14, x : x + 14] = rng.integers(120, 255)
    write_idx_file(fashion / "images-idx3-ubyte.gz", blocks)
    write_idx_file(fashion / "labels-idx1-ubyte.gz", np.zeros(len(blocks), np.uint8))
    folders = {"casting/train/ok_front": lambda: _normal_image(rng, 64),
               "casting/train/def_front": lambda: _defect_image(rng, 64)[0],
               "brickwork-cracks/Negative": lambda: np.stack([_normal_image(rng, 64)] * 3, -1)[:, ::-1],
               "brickwork-cracks/Positive": lambda: np.stack([_defect_image(rng, 64)[0]] * 3, -1)[:, ::-1]}
    for sub, make in folders.items():
        (root / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n_images):
            Image.fromarray(np.ascontiguousarray(make())).save(root / sub / f"{i:05d}.jpeg", quality=95)
    return root


@_pytest.fixture(scope="session")
def shared_data_tiny(tmp_path_factory):
    """A tiny generated tree with ../shared/data's layout; see write_shared_data. Treat it as read-only."""
    return write_shared_data(tmp_path_factory.mktemp("shared") / "data")


@_pytest.fixture
def mvtec_dir(tmp_path):
    """A tiny MVTec-layout folder (32x32 gray PNGs, one truncated PNG and one text file among the normals)."""
    return write_mvtec(tmp_path / "mvtec")


@_pytest.fixture
def idx_dir(tmp_path):
    """Tiny MNIST-style gzip IDX files, 16x16, labels 1 (normal), 0 and 7."""
    return write_idx(tmp_path / "idx")
