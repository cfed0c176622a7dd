"""Model signing: keys on disk, the digest of a model however it travels, and refusals of
unsigned, untrusted, tampered and malformed signatures."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from ugafl.common.errors import UgaflError
from ugafl.common.model import ModelConfig, build_model
from ugafl.common.signing import (SignatureError, generate_signing_key, load_private_key, load_public_key,
                                  model_digest, read_signature, sign_model, verify_model, write_signature)


@pytest.fixture
def keys(tmp_path: Path):
    fp = generate_signing_key(tmp_path / "signing.key", tmp_path / "signing.pub")
    return load_private_key(tmp_path / "signing.key"), load_public_key(tmp_path / "signing.pub"), fp


def small_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_model(ModelConfig(channels=(4, 8))).state_dict()


def test_keys_are_private_and_never_overwritten(tmp_path: Path, keys) -> None:
    _, _, fp = keys
    assert fp.startswith("ed25519:") and len(fp) == len("ed25519:") + 16
    assert stat.S_IMODE((tmp_path / "signing.key").stat().st_mode) == 0o600
    before = (tmp_path / "signing.key").read_bytes()
    with pytest.raises(UgaflError, match="already exists; refusing to overwrite"):
        generate_signing_key(tmp_path / "signing.key", tmp_path / "other.pub")
    assert (tmp_path / "signing.key").read_bytes() == before and not (tmp_path / "other.pub").exists()


def test_digest_is_the_same_for_tensors_and_arrays_and_sees_every_change() -> None:
    state = small_state()
    arrays = {k: v.numpy().copy() for k, v in state.items()}
    assert model_digest(state) == model_digest(arrays) == model_digest(dict(reversed(list(arrays.items()))))
    name = next(k for k, v in arrays.items() if v.dtype == np.float32 and v.size)
    changed = {**arrays, name: arrays[name].copy()}
    changed[name].flat[0] = np.nextafter(changed[name].flat[0], np.float32(1))  # one ulp
    assert model_digest(changed) != model_digest(arrays)
    assert model_digest({**arrays, name: arrays[name].astype(np.float64)}) != model_digest(arrays)
    assert model_digest({**arrays, name: arrays[name].reshape(-1)}) != model_digest(arrays)
    renamed = dict(arrays)
    renamed["x." + name] = renamed.pop(name)
    assert model_digest(renamed) != model_digest(arrays)


def test_a_signed_model_verifies_and_its_statement_comes_back(keys) -> None:
    private, public, fp = keys
    state = small_state()
    signed = json.loads(json.dumps(sign_model(private, state, round=3, run="r1")))  # survives JSON
    statement = verify_model(state, signed, [public], "global model of round 3")
    assert statement["round"] == 3 and statement["run"] == "r1" and signed["key"] == fp
    assert verify_model(state, json.dumps(signed), [public], "m")["round"] == 3  # as a string too


def refusals():
    return [
        ("unsigned", lambda s, signed, other: (s, None), "unsigned"),
        ("weights changed", lambda s, signed, other: ({**s, next(iter(s)): s[next(iter(s))] + 1}, signed), "weights differ"),
        ("statement changed", lambda s, signed, other: (s, {**signed, "statement": {**signed["statement"], "round": 4}}), "tampered"),
        ("untrusted key", lambda s, signed, other: (s, sign_model(other, s, round=3)), "not a trusted key"),
        ("signature garbage", lambda s, signed, other: (s, {**signed, "signature": "%%%"}), "not base64"),
        ("not JSON", lambda s, signed, other: (s, "{oops"), "not JSON"),
        ("no statement", lambda s, signed, other: (s, {"key": signed["key"]}), "no statement"),
    ]


@pytest.mark.parametrize("name, make, message", refusals(), ids=[r[0] for r in refusals()])
def test_refusals_name_the_model_and_the_reason(keys, name, make, message) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private, public, _ = keys
    state = small_state()
    arrays, signed = make(state, sign_model(private, state, round=3), Ed25519PrivateKey.generate())
    with pytest.raises(SignatureError, match=message) as raised:
        verify_model(arrays, signed, [public], "global model of round 3")
    assert str(raised.value).startswith("global model of round 3: ")


def test_no_trusted_key_is_refused(keys) -> None:
    private, _, _ = keys
    state = small_state()
    with pytest.raises(SignatureError, match="no trusted model-signing key"):
        verify_model(state, sign_model(private, state), [], "m")


def test_signature_files_beside_checkpoints(tmp_path: Path, keys) -> None:
    private, public, _ = keys
    state = small_state()
    ckpt = tmp_path / "round-0001.pt"
    assert read_signature(ckpt) is None
    write_signature(ckpt, sign_model(private, state, round=1))
    assert verify_model(state, read_signature(ckpt), [public], str(ckpt))["round"] == 1
    Path(str(ckpt) + ".sig").write_text("{broken")
    with pytest.raises(SignatureError, match="malformed signature file"):
        read_signature(ckpt)


def test_key_files_of_the_wrong_kind_are_refused(tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(SignatureError, match="junk.pem: not a model-signing public key"):
        load_public_key(tmp_path / "junk.pem")
    with pytest.raises(SignatureError, match="not found"):
        load_private_key(tmp_path / "missing.key")
