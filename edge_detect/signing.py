"""Ed25519 signatures over a bundle's manifest.json, so a device installs only bundles from a key it trusts.

What is signed: the exact bytes of ``manifest.json``. Its ``files`` section holds the SHA-256 of
every other file of the bundle, so verifying the signature and then the hashes
(:func:`edge_detect.bundle.verify_files`) covers every byte the device will load.

The signature lives beside the manifest as ``signature.ed25519`` (JSON: algorithm, key id,
base64 signature). It is deliberately *not* listed in ``manifest.files``: it signs the manifest,
so it cannot be hashed into it, and adding or replacing a signature must not change what was
signed. A device therefore treats it as the only file a bundle may carry outside the hash list
(:func:`edge_detect.update.BundleStore` copies nothing else that is unlisted).

Keys are PEM files: PKCS#8 for the private key (mode 0600, workstation only), SubjectPublicKeyInfo
for the public key (copied to each device's ``/etc/edge-detect/trusted-keys/``). The key id is the
first 16 hex digits of the SHA-256 of the raw 32-byte public key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Tuple, Union

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .atomic import write_atomic
from .bundle import MANIFEST, BundleError, as_shown

SIGNATURE = "signature.ed25519"
ALGORITHM = "ed25519"
PUBLIC_SUFFIX = ".pub.pem"
PRIVATE_SUFFIX = ".key.pem"


class SignatureError(BundleError):
    """A bundle without a valid signature from a trusted key. The message says which check failed."""


@dataclass(frozen=True)
class TrustedKey:
    """A public key the device accepts, with its id and the file it came from."""

    key: Ed25519PublicKey
    key_id: str
    source: str


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keypair(out_dir: Union[str, Path], name: str = "edge-detect-update") -> Tuple[Path, Path]:
    """Write ``NAME.key.pem`` (0600) and ``NAME.pub.pem`` into ``out_dir``; refuse to overwrite a key."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = out / f"{name}{PRIVATE_SUFFIX}", out / f"{name}{PUBLIC_SUFFIX}"
    for p in (priv_path, pub_path):
        if p.exists():
            raise FileExistsError(f"{p} exists; refusing to overwrite a key (pick another --name or directory)")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    # O_EXCL + 0600 from the start: the private key is never readable by others, even briefly.
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv_path, pub_path


def load_private_key(path: Union[str, Path]) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (ValueError, TypeError) as e:  # TypeError: the key is password-protected
        raise ValueError(f"{path}: not an unencrypted PEM private key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return key


def load_public_key(path: Union[str, Path]) -> TrustedKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except ValueError as e:
        raise ValueError(f"{path}: not a PEM public key ({e})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: not an Ed25519 public key")
    return TrustedKey(key, key_id(key), str(path))


def load_trusted_keys(paths: Iterable[Union[str, Path]]) -> List[TrustedKey]:
    """Public keys from files, or from every ``*.pem`` in a directory (``*.key.pem`` private keys are
    skipped, so a key directory made by ``keygen`` works too). Raises ValueError on a bad file."""
    keys: List[TrustedKey] = []
    for p in map(Path, paths):
        files = sorted(f for f in p.glob("*.pem") if not f.name.endswith(PRIVATE_SUFFIX)) if p.is_dir() else [p]
        for f in files:
            keys.append(load_public_key(f))
    return keys


def check_as_device(bundle_dir: Union[str, Path], trusted: Optional[List[TrustedKey]] = None, *,
                    shown: Optional[str] = None) -> None:
    """Refuse ``bundle_dir`` (BundleError "BUNDLE: why") unless a device's bundle store would install it:
    the store's own check (``update.check_installable``), so the workstation's cannot drift from it.
    shown: the name for the bundle in messages instead of ``bundle_dir``, e.g. the archive the user
    gave when ``bundle_dir`` is the temporary folder it was unpacked into."""
    from .update import check_installable  # update imports this module

    try:
        check_installable(Path(bundle_dir), trusted)
    except BundleError as e:
        raise as_shown(e, bundle_dir, shown) from None


def sign_bundle(bundle_dir: Union[str, Path], private_key: Union[str, Path, Ed25519PrivateKey]) -> Path:
    """Verify the bundle, then write ``signature.ed25519`` over its manifest.json. Returns the signature path."""
    bundle_dir = Path(bundle_dir)
    check_as_device(bundle_dir)  # never sign something a device would refuse anyway
    key = private_key if isinstance(private_key, Ed25519PrivateKey) else load_private_key(private_key)
    sig = key.sign((bundle_dir / MANIFEST).read_bytes())
    body = {"algorithm": ALGORITHM, "key_id": key_id(key.public_key()), "signed_file": MANIFEST,
            "signature": base64.b64encode(sig).decode()}
    return write_atomic(bundle_dir / SIGNATURE, json.dumps(body, indent=2) + "\n")


def verify_signature(bundle_dir: Union[str, Path], trusted: List[TrustedKey]) -> TrustedKey:
    """The trusted key that signed this bundle's manifest.json; raises SignatureError otherwise.

    Only the manifest is checked here; the caller verifies the file hashes (load_bundle).
    """
    bundle_dir = Path(bundle_dir)
    if not trusted:
        raise SignatureError("no trusted update keys are configured, so no bundle can be accepted")
    sig_path = bundle_dir / SIGNATURE
    if not sig_path.is_file():
        raise SignatureError(f"bundle is unsigned (no {SIGNATURE})")
    try:
        body = json.loads(sig_path.read_text())
        if body.get("algorithm") != ALGORITHM or body.get("signed_file") != MANIFEST:
            raise ValueError(f"algorithm {body.get('algorithm')!r} over {body.get('signed_file')!r}")
        sig = base64.b64decode(body["signature"], validate=True)
        kid = str(body.get("key_id", ""))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise SignatureError(f"{SIGNATURE} is malformed ({e})") from None
    manifest = (bundle_dir / MANIFEST).read_bytes()
    # Try the key the signature names first; the id is only a hint, the signature decides.
    for k in sorted(trusted, key=lambda t: t.key_id != kid):
        try:
            k.key.verify(sig, manifest)
            return k
        except InvalidSignature:
            continue
    if kid and kid not in {k.key_id for k in trusted}:
        raise SignatureError(f"signed by key {kid}, which is not trusted (trusted: "
                             f"{', '.join(k.key_id for k in trusted)})")
    raise SignatureError("signature does not match manifest.json (tampered, or signed by another key)")
