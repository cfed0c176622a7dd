"""The model packed for Flower's wire (common.wire_pack): a UNet's message becomes a few Flower
objects instead of one per tensor, unpacks to the same arrays (views, no copy), and a packing that
is anything but what we write (extra arrays, gaps, overlaps, wrong dtypes or shapes, a broken
index) is refused before use: at the coordinator as a failed reply, at a site as an error reply."""

from __future__ import annotations

import json

import numpy as np
import pytest
from types import SimpleNamespace

from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_descendant_object_ids

from ugafl.common.model import ModelConfig, build_model
from ugafl.common.wire import unique_state
from ugafl.common.wire_pack import INDEX, PREFIX, WireError, pack_arrays, unpack_arrays
from ugafl.server.flower_app import to_reply


@pytest.fixture(scope="module")
def unet() -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in unique_state(build_model(ModelConfig())).items()}


def objects(arrays: dict[str, np.ndarray]) -> int:
    """How many objects Flower moves for a message carrying `arrays` (one request each)."""
    record = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    return len(get_descendant_object_ids(record)) + 1


def test_a_unet_travels_as_a_few_objects_and_comes_back_the_same(unet):
    packed = pack_arrays(unet)
    assert set(packed) == {PREFIX + "float32", INDEX}
    assert objects(unet) > 90 and objects(packed) <= 6, (objects(unet), objects(packed))
    wire_bytes = sum(a.nbytes for a in packed.values())
    assert wire_bytes < 1.01 * sum(a.nbytes for a in unet.values())  # the index is small
    back = unpack_arrays(packed)
    assert list(back) == list(unet)
    for name, array in unet.items():
        assert back[name].dtype == array.dtype and back[name].shape == array.shape
        assert np.array_equal(back[name], array)
        assert np.shares_memory(back[name], packed[PREFIX + "float32"])  # views: no second copy of the model


def test_mixed_dtypes_scalars_and_empty_arrays():
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "steps": np.array(7, dtype=np.int64),
              "empty": np.zeros((0, 4), np.float32), "half": np.ones(3, np.float16), "flag": np.array([True])}
    back = unpack_arrays(pack_arrays(arrays))
    assert list(back) == list(arrays)
    for name, array in arrays.items():
        assert back[name].dtype == array.dtype and back[name].shape == array.shape and np.array_equal(back[name], array)


def test_unpacked_arrays_pass_through():
    arrays = {"a": np.ones(3, np.float32)}
    assert unpack_arrays(arrays).keys() == arrays.keys()


def test_an_object_array_cannot_be_packed():
    with pytest.raises(WireError, match="'o'.*cannot be sent|dtype object"):
        pack_arrays({"o": np.array([object()], dtype=object)})


def _index(entries) -> np.ndarray:
    return np.frombuffer(json.dumps(entries).encode(), np.uint8)


GOOD = {"packed:float32": np.arange(10, dtype=np.float32)}
HOSTILE = {
    "an array beside the packing": {**GOOD, "extra": np.ones(2, np.float32), INDEX: _index([["a", "float32", [10], 0]])},
    "elements no array names (smuggled)": {**GOOD, INDEX: _index([["a", "float32", [8], 0]])},
    "overlapping arrays": {**GOOD, INDEX: _index([["a", "float32", [6], 0], ["b", "float32", [6], 4]])},
    "a gap between arrays": {**GOOD, INDEX: _index([["a", "float32", [4], 0], ["b", "float32", [4], 6]])},
    "past the end": {**GOOD, INDEX: _index([["a", "float32", [12], 0]])},
    "a name twice": {**GOOD, INDEX: _index([["a", "float32", [5], 0], ["a", "float32", [5], 5]])},
    "a dtype the flat array is not": {**GOOD, INDEX: _index([["a", "float64", [10], 0]])},
    "a flat array of another dtype": {"packed:float32": np.arange(10, dtype=np.float64),
                                      INDEX: _index([["a", "float32", [10], 0]])},
    "an object dtype": {**GOOD, INDEX: _index([["a", "object", [10], 0]])},
    "a negative size": {**GOOD, INDEX: _index([["a", "float32", [-10], 0]])},
    "a boolean size": {**GOOD, INDEX: _index([["a", "float32", [True], 0]])},
    "an entry of the wrong form": {**GOOD, INDEX: _index([["a", "float32", [10]]])},
    "an empty name": {**GOOD, INDEX: _index([["", "float32", [10], 0]])},
    "an index that is not a list": {**GOOD, INDEX: _index({"a": 1})},
    "an index that is not JSON": {**GOOD, INDEX: np.frombuffer(b"\xff\xfe{", np.uint8)},
    "an index that is not bytes": {**GOOD, INDEX: np.zeros(3, np.float32)},
    "an oversized index": {**GOOD, INDEX: np.zeros(5 * 2**20, np.uint8)},
    "a 2-D flat array": {"packed:float32": np.zeros((2, 5), np.float32), INDEX: _index([["a", "float32", [10], 0]])},
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_packing_we_did_not_write_is_refused(case):
    with pytest.raises(WireError):
        unpack_arrays(HOSTILE[case])


class ReplyMessage:
    """A reply as to_reply reads it: Flower's own records (a Message outside a run cannot be built)."""

    def __init__(self, content: RecordDict, node: int):
        self.content, self.metadata = content, SimpleNamespace(src_node_id=node)

    def has_error(self) -> bool:
        return False


def test_the_coordinator_takes_a_malformed_reply_as_a_failed_site(unet):
    def reply_carrying(arrays):
        return ReplyMessage(RecordDict({"metrics": MetricRecord({"loss": 1.0}),
                                        "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()})}), 5)

    reply = to_reply(reply_carrying(pack_arrays(unet)))
    assert reply.site == 5 and reply.error is None and list(reply.arrays) == list(unet)
    reply = to_reply(reply_carrying(HOSTILE["elements no array names (smuggled)"]))
    assert reply.arrays is None and reply.metrics == {} and reply.error.startswith("malformed reply: ")
