"""The model's arrays packed for Flower's wire: one flat array per dtype and an index.

Flower's deployment engine moves a message as one object per Array (and per 5 MB chunk of one),
each pulled by the SuperNode, or pushed to the SuperLink, in its own authenticated request. A
UNet's ~100 tensors made ~130 requests per message, which took 3.5-5.7 s on loopback for 6.5 MB
(benchmarks/round_profile.py); packed, a message is a handful of objects.

    packed:<dtype>   1-D array: every tensor of that dtype, flattened, in order
    packed-index     uint8 array of UTF-8 JSON: [[name, dtype, shape, offset], ...]

The index covers every element of every flat array exactly once, so nothing else can ride along;
`unpack_arrays` checks that, with the dtypes and shapes, before anything is used, and gives views
into the flat arrays (no copy). Arrays that are not packed (an older peer, a test's message) pass
through unchanged. NumPy only: the ClientApp process imports this without torch."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

import numpy as np

from ugafl.common.errors import UgaflError

PREFIX = "packed:"
INDEX = "packed-index"
DTYPES = frozenset({"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"})
MAX_INDEX_BYTES = 4 * 2**20


class WireError(UgaflError):
    """A message's arrays are not a well-formed packing."""


def pack_arrays(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`arrays` (name -> array) as flat arrays per dtype and the index (see the module)."""
    groups: dict[str, list[np.ndarray]] = {}
    index, offsets = [], {}
    for name, array in arrays.items():
        a = np.asarray(array)
        dtype = str(a.dtype)
        if dtype not in DTYPES:
            raise WireError(f"array {name!r}: dtype {dtype} cannot be sent")
        groups.setdefault(dtype, []).append(a.reshape(-1))
        index.append([str(name), dtype, [int(n) for n in a.shape], offsets.get(dtype, 0)])
        offsets[dtype] = offsets.get(dtype, 0) + a.size
    out = {PREFIX + dtype: np.concatenate(parts) for dtype, parts in groups.items()}
    out[INDEX] = np.frombuffer(json.dumps(index, separators=(",", ":")).encode(), dtype=np.uint8)
    return out


def is_packed(arrays: Mapping[str, object]) -> bool:
    return INDEX in arrays


def unpack_arrays(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """name -> array from a packing (views into its flat arrays); unpacked arrays as they are.
    WireError unless the packing is exactly what `pack_arrays` writes."""
    if not is_packed(arrays):
        return dict(arrays)
    flats = {k[len(PREFIX):]: np.asarray(v) for k, v in arrays.items() if k != INDEX}
    if any(not k.startswith(PREFIX) for k in arrays if k != INDEX):
        raise WireError(f"packed arrays with others beside them: {sorted(k for k in arrays if k != INDEX)[:3]}")
    raw = np.asarray(arrays[INDEX])
    if raw.dtype != np.uint8 or raw.ndim != 1 or raw.size > MAX_INDEX_BYTES:
        raise WireError("the packed index is not a UTF-8 byte array of at most 4 MiB")
    try:
        index = json.loads(raw.tobytes().decode())
    except (UnicodeDecodeError, ValueError) as error:
        raise WireError(f"the packed index is not JSON: {error}") from None
    if not isinstance(index, list):
        raise WireError("the packed index is not a list")
    out: dict[str, np.ndarray] = {}
    used = {dtype: 0 for dtype in flats}
    for entry in index:
        name, dtype, shape, offset = _entry(entry)
        flat = flats.get(dtype)
        if flat is None or str(flat.dtype) != dtype or flat.ndim != 1:
            raise WireError(f"array {name!r}: no flat {dtype} array holds it")
        if name in out:
            raise WireError(f"array {name!r} is listed twice")
        size = math.prod(shape)
        if offset != used[dtype] or offset + size > flat.size:
            raise WireError(f"array {name!r}: elements {offset}..{offset + size} do not follow on in its flat array")
        out[name] = flat[offset:offset + size].reshape(shape)
        used[dtype] = offset + size
    short = {dtype: (used[dtype], flats[dtype].size) for dtype in flats if used[dtype] != flats[dtype].size}
    if short:
        raise WireError(f"flat arrays hold elements no array names: {short}")
    return out


def _entry(entry: object) -> tuple[str, str, list[int], int]:
    ok = (isinstance(entry, list) and len(entry) == 4 and isinstance(entry[0], str) and entry[0]
          and entry[1] in DTYPES and isinstance(entry[2], list) and len(entry[2]) <= 8
          and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in entry[2])
          and isinstance(entry[3], int) and not isinstance(entry[3], bool) and entry[3] >= 0)
    if not ok:
        raise WireError(f"a packed index entry is not [name, dtype, shape, offset]: {str(entry)[:80]}")
    return entry[0], entry[1], entry[2], entry[3]
