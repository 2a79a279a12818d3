"""The model bundle: one directory (or one .tar.gz for shipping) that describes itself.

Layout::

    BUNDLE/
      manifest.json        schema: edge_detect/schemas/manifest.schema.json
      model_float32.tflite model_int8.tflite ...   one file per variant
      reference.npy ...    arrays a scorer needs (embeddings)

``manifest.files`` holds a SHA-256 for every other file, so a signature over
manifest.json covers the whole bundle.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, TypeVar, Union

import numpy as np

from . import __version__
from .atomic import atomic_path
from .oneline import first_line, os_error
from .preprocess import Preprocess
from .scoring import Scorer, scorer_from_dict

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)
MANIFEST = "manifest.json"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")
# Variants in the order the device prefers them on a plain CPU.
CPU_PREFERENCE = ("int8", "float32", "dynamic", "float16", "int8_io")
_REQUIRED = ("schema_version", "name", "version", "family", "model", "created", "preprocess", "scoring",
             "calibration", "variants", "files")
_OBJECTS = ("model", "preprocess", "scoring", "calibration", "variants", "files")


class BundleError(Exception):
    """A bundle the device must refuse. The message says which check failed."""


def sha256_file(path: Union[str, Path], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Bundle:
    """A loaded, verified bundle directory."""

    path: Path
    manifest: Dict[str, Any]
    _arrays: Dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # loaded so far, by name

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def variants(self) -> Dict[str, dict]:
        return self.manifest["variants"]

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess.from_dict(self.manifest["preprocess"])

    @property
    def arrays(self) -> Dict[str, np.ndarray]:
        """Every reference array in the bundle (e.g. normal embeddings), by name; each loaded once."""
        return {k: self.array(k) for k in self.manifest.get("arrays", {})}

    def array(self, name: str) -> np.ndarray:
        """The numeric array ``name``; BundleError naming its .npy file if that holds anything else."""
        if name not in self._arrays:
            self._arrays[name] = load_npy(self.path, self.manifest["arrays"][name]["file"])
        return self._arrays[name]

    def variant_arrays(self, variant: Optional[str] = None) -> Dict[str, np.ndarray]:
        """The arrays the scorer reads with ``variant``, by the name the scorer knows them by.

        A variant may map a name to its own copy (``variants.<v>.arrays``): an int8 model's
        embeddings are compared with references embedded by that int8 model, so the quantisation
        error they share cancels. Only these arrays are loaded.
        """
        own = self.variants[variant].get("arrays") if variant in self.variants else None
        names = own if own is not None else {k: k for k in self.manifest.get("arrays", {})}
        return {k: self.array(v) for k, v in names.items()}

    def scorer(self, variant: Optional[str] = None) -> Scorer:
        return scorer_from_dict(self.manifest["scoring"], self.variant_arrays(variant))

    def calibration(self, variant: str) -> Dict[str, Any]:
        """Threshold and normal-score statistics for a variant (its own, if export recalibrated it)."""
        return {**self.manifest["calibration"], **self.variants[variant].get("calibration", {})}

    def model_path(self, variant: str) -> Path:
        if variant not in self.variants:
            raise BundleError(f"bundle {self.path} has no variant {variant!r}; it has {sorted(self.variants)}")
        return self.path / self.variants[variant]["file"]

    def model_sha256(self, variant: str) -> str:
        return self.manifest["files"][self.variants[variant]["file"]]

    def default_variant(self) -> str:
        v = self.manifest.get("default_variant")
        if v in self.variants:
            return v
        for v in CPU_PREFERENCE:
            if v in self.variants:
                return v
        return next(iter(self.variants))


def load_npy(bundle: Path, name: str) -> np.ndarray:
    """The numeric array in the bundle's file ``name``. Raises BundleError naming the file.

    allow_pickle stays off: unpickling runs code, and numpy's advice to turn it on is the wrong
    one for a device reading a bundle, so its messages are reworded here.
    """
    f = bundle / name
    why = ""
    try:
        with open(f, "rb") as fh:
            if fh.read(len(np.lib.format.MAGIC_PREFIX)) != np.lib.format.MAGIC_PREFIX:
                why = "no .npy header"  # numpy would take it for pickled data
            else:
                fh.seek(0)
                arr = np.load(fh, allow_pickle=False)
                if arr.dtype.kind not in "biuf":
                    why = f"dtype {arr.dtype}"
    except OSError as e:
        raise BundleError(f"{bundle}: cannot read {os_error(e, name)}") from None
    except EOFError:
        why = "no data after the header"
    except ValueError as e:
        why = "object (pickled) data" if "pickle" in str(e) else first_line(e)
    if why:
        raise BundleError(f"{bundle}: {name} is not a numeric .npy array ({why})")
    return arr


def check_manifest(m: Mapping[str, Any], where: str = MANIFEST) -> None:
    """Structural checks the device can afford without jsonschema. Raises BundleError."""
    if not isinstance(m, dict):
        raise BundleError(f"{where}: not a JSON object")
    version = m.get("schema_version")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise BundleError(
            f"{where}: unknown schema_version {version!r} (this edge-detect {__version__} reads "
            f"{', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))})"
        )
    missing = [k for k in _REQUIRED if k not in m]
    if missing:
        raise BundleError(f"{where}: missing key(s) {', '.join(missing)}")
    # Wrong JSON types would otherwise surface as a TypeError deep in the loader or the detector.
    for k in _OBJECTS:
        _expect(m, k, dict, where)
    _expect(m, "default_variant", str, where, required=False)
    _expect(m, "arrays", dict, where, required=False)
    if not m["variants"]:
        raise BundleError(f"{where}: variants is empty")
    for name, v in m["variants"].items():
        _expect(m["variants"], name, dict, where, f"variants.{name}")
        for k in ("file", "input", "output"):
            if k not in v:
                raise BundleError(f"{where}: variants.{name}.{k} is missing")
        _expect(v, "file", str, where, f"variants.{name}.file")
        for k in ("input", "output"):
            _expect(v, k, dict, where, f"variants.{name}.{k}")
            _expect(v[k], "shape", list, where, f"variants.{name}.{k}.shape")
            _expect(v[k], "dtype", str, where, f"variants.{name}.{k}.dtype")
            _expect(v[k], "quantization", list, where, f"variants.{name}.{k}.quantization", required=False)
        _expect(v, "arrays", dict, where, f"variants.{name}.arrays", required=False)
        _expect(v, "calibration", dict, where, f"variants.{name}.calibration", required=False)
        if v["file"] not in m["files"]:
            raise BundleError(f"{where}: variants.{name}.file {v['file']!r} has no entry in files")
        for role, arr in v.get("arrays", {}).items():
            if arr not in m.get("arrays", {}):
                raise BundleError(f"{where}: variants.{name}.arrays.{role} names {arr!r}, which is not in arrays")
    try:
        Preprocess.from_dict(m["preprocess"])
    except (TypeError, ValueError, KeyError) as e:
        raise BundleError(f"{where}: preprocess: {e}") from None
    thresholds = {"calibration": m["calibration"].get("threshold")}
    for name, v in m["variants"].items():
        if "threshold" in v.get("calibration", {}):
            thresholds[f"variants.{name}.calibration"] = v["calibration"]["threshold"]
    for key, threshold in thresholds.items():
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool):
            raise BundleError(f"{where}: {key}.threshold must be a number")


def _expect(d: Mapping[str, Any], key: str, kind: type, where: str, name: str = "",
            required: bool = True) -> None:
    """Refuse ``d[key]`` unless it is a ``kind`` (a JSON object, string or array)."""
    if key not in d:
        if required:
            raise BundleError(f"{where}: {name or key} is missing")
        return
    if not isinstance(d[key], kind):
        raise BundleError(f"{where}: {name or key} must be {_JSON_TYPES[kind]}, got {_json_type(d[key])}")


_JSON_TYPES = {dict: "an object", str: "a string", list: "an array"}


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return _JSON_TYPES.get(type(value), "null" if value is None else type(value).__name__)


def verify_files(path: Path, manifest: Mapping[str, Any]) -> None:
    """Every listed file exists and hashes to its SHA-256; no file is missing from the list."""
    for name, digest in manifest["files"].items():
        f = path / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise BundleError(f"bundle {path}: file name {name!r} escapes the bundle")
        if not f.is_file():
            raise BundleError(f"bundle {path}: {name} is missing")
        actual = sha256_file(f)
        if actual != digest:
            raise BundleError(f"bundle {path}: SHA-256 of {name} does not match the manifest (tampered or truncated)")


def load_bundle(path: Union[str, Path], verify: bool = True, extract_to: Optional[Path] = None) -> Bundle:
    """Load a bundle directory or archive. With ``verify``, refuse it unless every check passes."""
    path = Path(path)
    if path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES):
        archive = path
        path = unpack(path, extract_to or Path(tempfile.mkdtemp(prefix="edge-detect-bundle-")))
        try:
            return _load_dir(path, verify)
        except BundleError as e:
            # Name the archive the user gave, not the temporary folder it was unpacked into.
            raise as_shown(e, path, str(archive)) from None
    return _load_dir(path, verify)


_E = TypeVar("_E", bound=Exception)


def as_shown(e: _E, folder: Union[str, Path], shown: Optional[str] = None) -> _E:
    """``e`` (same type) worded as "SHOWN: why" for the bundle read from ``folder``: ``folder`` in the
    message becomes ``shown`` (default: ``folder`` itself), and a message naming neither gets the
    prefix. The one place that names a bundle the way the user gave it."""
    name, text = shown if shown is not None else str(folder), str(e)
    if name != str(folder):
        text = _path_in(str(folder)).sub(lambda _: name, text)
    if not _path_in(name).search(text):
        text = f"{name}: {text}"
    return e if text == str(e) else type(e)(text)


def _path_in(path: str) -> re.Pattern:
    """``path`` as a whole path in a message, or a path's start (``PATH/manifest.json``); never
    inside another word (``b`` in ``bundle``)."""
    return re.compile(r"(?<![^\s'\"(])" + re.escape(path) + r"(?![^\s/:'\"),])")


def read_json(path: Path) -> Any:
    """The parsed JSON file; a ValueError naming it when it is not valid JSON or not UTF-8."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def read_manifest(path: Union[str, Path]) -> Dict[str, Any]:
    """The checked manifest of a bundle directory or archive: no file hashed, nothing unpacked.

    Cheap enough for ``check-config``; only ``load_bundle`` verifies the files. Raises BundleError.
    """
    path = Path(path)
    if path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES):
        manifest = read_archive_manifest(path)
        check_manifest(manifest, f"{path}: {MANIFEST}")
        return manifest
    return _dir_manifest(path)


def _dir_manifest(path: Path) -> Dict[str, Any]:
    try:
        path.stat()
    except FileNotFoundError:  # a dangling ``current`` link too
        raise BundleError(f"{path}: no such file or directory") from None
    except OSError as e:
        raise BundleError(os_error(e, path)) from None
    mf = path / MANIFEST
    if not mf.is_file():
        raise BundleError(f"{path}: not a bundle (no {MANIFEST})")
    try:
        manifest = read_json(mf)
    except ValueError as e:
        raise BundleError(str(e)) from None
    check_manifest(manifest, str(mf))
    return manifest


def _load_dir(path: Path, verify: bool) -> Bundle:
    manifest = _dir_manifest(path)
    if verify:
        verify_files(path, manifest)
    return Bundle(path=path, manifest=manifest)


def write_bundle(
    out_dir: Union[str, Path],
    manifest: Dict[str, Any],
    files: Mapping[str, Union[str, Path, bytes]],
    arrays: Optional[Mapping[str, np.ndarray]] = None,
) -> Bundle:
    """Write a bundle atomically: build it beside ``out_dir``, then rename into place.

    ``files`` maps names in the bundle to source paths or bytes (the .tflite variants).
    ``arrays`` are saved as ``<name>.npy`` and listed under ``manifest["arrays"]``.
    ``files``, ``created``, ``schema_version`` and tool versions are filled in here.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it 0700; the device's service user must read the bundle
        for name, src in files.items():
            if isinstance(src, (bytes, bytearray)):
                (tmp / name).write_bytes(src)
            else:
                shutil.copyfile(src, tmp / name)
        m = dict(manifest)
        m["arrays"] = dict(m.get("arrays", {}))
        for name, arr in (arrays or {}).items():
            fname = f"{name}.npy"
            np.save(tmp / fname, np.ascontiguousarray(arr), allow_pickle=False)
            m["arrays"][name] = {"file": fname, "shape": list(arr.shape), "dtype": str(arr.dtype)}
        m["schema_version"] = SCHEMA_VERSION
        m.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        m.setdefault("tools", {})["edge_detect"] = __version__
        m["files"] = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.name != MANIFEST}
        check_manifest(m, f"{out_dir}/{MANIFEST}")
        (tmp / MANIFEST).write_text(json.dumps(m, indent=2, sort_keys=False) + "\n")
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_bundle(out_dir)


def pack(bundle_dir: Union[str, Path], archive: Union[str, Path]) -> Path:
    """The single-file form for shipping: a .tar.gz of the bundle directory's files (flat)."""
    bundle_dir, archive = Path(bundle_dir), Path(archive)
    load_bundle(bundle_dir)  # never ship a bundle that would be refused
    with atomic_path(archive) as tmp, tarfile.open(tmp, "w:gz") as tar:
        for p in sorted(bundle_dir.iterdir()):
            if p.is_file():
                tar.add(p, arcname=p.name)
    return archive


def unpack(archive: Union[str, Path], dest: Union[str, Path]) -> Path:
    """Extract an archive made by ``pack`` into ``dest`` (flat regular files only)."""
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar.getmembers():
                name = member.name
                if not member.isfile() or "/" in name.strip("./") or name.startswith(("/", "..")):
                    raise BundleError(f"{archive}: unexpected archive member {name!r}")
                f = tar.extractfile(member)
                assert f is not None
                (dest / Path(name).name).write_bytes(f.read())
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        raise _damaged(archive, e) from None
    return dest


def _damaged(archive: Path, e: BaseException) -> BundleError:
    # A file that is no archive at all makes tarfile list each compression it tried, a line each.
    return BundleError(f"{archive}: damaged or truncated archive ({first_line(e).rstrip(':')})")


def read_archive_manifest(archive: Union[str, Path]) -> Dict[str, Any]:
    """The manifest of an archive without extracting the models (for listings). Raises BundleError."""
    archive = Path(archive)
    try:
        with tarfile.open(archive, "r:*") as tar:
            # Found by its normalised name, as unpack would place it: "./manifest.json" counts.
            member = next((m for m in tar.getmembers() if m.isfile() and posixpath.normpath(m.name) == MANIFEST),
                          None)
            f = tar.extractfile(member) if member is not None else None
            raw = f.read() if f is not None else None
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        raise _damaged(archive, e) from None
    if raw is None:
        raise BundleError(f"{archive}: not a bundle (no {MANIFEST})")
    try:
        return json.loads(raw.decode("utf-8"))
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise BundleError(f"{archive}: {MANIFEST}: not valid JSON ({e})") from None
