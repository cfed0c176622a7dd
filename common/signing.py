"""Model signing: the coordinator signs every global model it sends and every checkpoint it keeps
with an Ed25519 key; a site runs a model only when a key it trusts signed exactly these weights.

What is signed is a small statement (canonical JSON): the SHA-256 of the model's arrays (their
names, dtypes, shapes and bytes, in name order), the round and the run. The same digest is
computed from a state dict in memory, from the arrays of a Flower message and from a checkpoint
file, so one signature covers the model however it travels.

Key files: the private key as unencrypted PKCS#8 PEM, written with mode 0600 and never
overwritten; the public key as SubjectPublicKeyInfo PEM. A key's fingerprint is
"ed25519:" + the first 16 hex digits of the SHA-256 of its raw 32 bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ugafl.common.atomic import atomic_write_bytes
from ugafl.common.errors import UgaflError
from ugafl.common.pki import write_private

STATEMENT_KIND = "ugafl-model-v1"


class SignatureError(UgaflError):
    """A model or checkpoint is unsigned, signed by an untrusted key, or does not match its signature."""


# ---------------------------------------------------------------------- keys

def generate_signing_key(private_path: str | Path, public_path: str | Path) -> str:
    """Create a key pair; refuses to overwrite either file. Returns the fingerprint."""
    private_path, public_path = Path(private_path), Path(public_path)
    for path in (private_path, public_path):
        if path.exists():
            raise UgaflError(f"{path}: already exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    write_private(private_path, pem)
    atomic_write_bytes(public_path, public_pem(key.public_key()))
    return fingerprint(key.public_key())


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _load_key(path: str | Path, load, kind: type, what: str):
    path = Path(path)
    try:
        key = load(path.read_bytes())
    except FileNotFoundError:
        raise SignatureError(f"{path}: {what} not found") from None
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{path}: not a {what} in PEM ({exc})") from None
    if not isinstance(key, kind):
        raise SignatureError(f"{path}: not an Ed25519 {what}")
    return key


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """The coordinator's signing key (unencrypted PKCS#8 PEM)."""
    return _load_key(path, lambda data: serialization.load_pem_private_key(data, password=None), Ed25519PrivateKey,
                     "model-signing private key")


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """A trusted model-signing public key (SubjectPublicKeyInfo PEM)."""
    return _load_key(path, serialization.load_pem_public_key, Ed25519PublicKey, "model-signing public key")


def fingerprint(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


# ---------------------------------------------------------------------- digest of a model

def model_digest(arrays: Mapping[str, Any]) -> str:
    """SHA-256 (hex) over the arrays' names, dtypes, shapes and little-endian C-order bytes, in name
    order. Accepts numpy arrays and torch tensors."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        value = arrays[name]
        if hasattr(value, "detach"):  # torch tensor
            value = value.detach().cpu().numpy()
        array = np.ascontiguousarray(value)
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        header = json.dumps([name, array.dtype.str.lstrip("<>|="), list(array.shape)]).encode()
        h.update(len(header).to_bytes(8, "little"))
        h.update(header)
        h.update(array.tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------- statements

def _canonical(statement: Mapping[str, Any]) -> bytes:
    return json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()


def sign_model(key: Ed25519PrivateKey, arrays: Mapping[str, Any], **fields: Any) -> dict:
    """A signed statement about `arrays` (plus `fields`, e.g. round=3, run="fed-demo"):
    {"statement": {...}, "key": fingerprint, "signature": base64}. JSON-ready."""
    statement = {"kind": STATEMENT_KIND, "model_sha256": model_digest(arrays), **fields}
    return {"statement": statement, "key": fingerprint(key.public_key()),
            "signature": base64.b64encode(key.sign(_canonical(statement))).decode()}


def verify_model(arrays: Mapping[str, Any], signed: Any, trusted: Iterable[Ed25519PublicKey], what: str) -> dict:
    """The statement, if a trusted key signed it and it names exactly these arrays; else
    SignatureError naming `what` (e.g. "global model of round 3")."""
    if not signed:
        raise SignatureError(f"{what}: unsigned; refusing to run a model the coordinator did not sign")
    if isinstance(signed, (str, bytes)):
        try:
            signed = json.loads(signed)
        except json.JSONDecodeError:
            raise SignatureError(f"{what}: malformed signature (not JSON)") from None
    if not isinstance(signed, dict) or not isinstance(signed.get("statement"), dict):
        raise SignatureError(f"{what}: malformed signature (no statement)")
    statement = signed["statement"]
    try:
        signature = base64.b64decode(str(signed.get("signature", "")), validate=True)
    except ValueError:
        raise SignatureError(f"{what}: malformed signature (not base64)") from None
    keys = {fingerprint(k): k for k in trusted}
    if not keys:
        raise SignatureError(f"{what}: no trusted model-signing key is configured")
    if not isinstance(signed.get("key"), str):
        raise SignatureError(f"{what}: malformed signature (its key is {signed.get('key')!r}, not a fingerprint)")
    key = keys.get(signed.get("key"))
    if key is None:
        raise SignatureError(f"{what}: signed by {signed.get('key')!r}, which is not a trusted key "
                             f"(trusted: {', '.join(sorted(keys))})")
    try:
        key.verify(signature, _canonical(statement))
    except InvalidSignature:
        raise SignatureError(f"{what}: the signature does not match its statement (tampered)") from None
    if statement.get("kind") != STATEMENT_KIND:
        raise SignatureError(f"{what}: signed statement is of kind {statement.get('kind')!r}, not {STATEMENT_KIND}")
    if statement.get("model_sha256") != model_digest(arrays):
        raise SignatureError(f"{what}: the weights differ from the ones the coordinator signed (tampered)")
    return statement


def write_signature(path: str | Path, signed: dict) -> Path:
    """Store a signed statement beside a checkpoint: PATH.sig (JSON)."""
    return atomic_write_bytes(Path(str(path) + ".sig"), json.dumps(signed, indent=1, sort_keys=True).encode())


def read_signature(path: str | Path) -> dict | None:
    sig = Path(str(path) + ".sig")
    if not sig.is_file():
        return None
    try:
        return json.loads(sig.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SignatureError(f"{sig}: malformed signature file") from None
