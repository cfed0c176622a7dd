"""The variants live in registries with their names in one place: selection strategies,
aggregation strategies, patch scorings, training losses and annotators. Unknown names are refused
with the known ones listed, the coordinator refuses an unknown selection before any site starts,
and our plain aggregation gives exactly what Flower's strategies of the same names give."""

from __future__ import annotations

import numpy as np
import pytest

from ugafl.common.errors import ConfigError
from ugafl.server.federation.aggregation import AGGREGATIONS, AggregationParams, weighted_metrics
from ugafl.server.federation.settings import FederationSettings

BASE = {"central-checkpoint": "c.pt", "out-dir": "out", "signing-key": "k"}


def test_the_coordinator_refuses_unknown_names_before_any_site_starts():
    for key, bad, known in [("selection", "most-uncertain", "stochastic-batch, top-k, random"),
                            ("aggregation", "krum", "fedavg, fedprox, fedmedian, fedtrimmedavg")]:
        with pytest.raises(ConfigError, match=f"^run config {key}: expected one of {known}, got '{bad}'$"):
            FederationSettings.from_run_config({**BASE, key: bad})


def test_unknown_names_list_the_known_ones():
    from ugafl.client.round.annotators import get_annotator
    from ugafl.common.losses import make_loss
    from ugafl.common.patch_scoring import patch_scoring
    from ugafl.common.selection import Candidates, select

    with pytest.raises(ConfigError, match="unknown training loss 'focal'; one of dice-ce, batch-dice-ce"):
        make_loss("focal")
    with pytest.raises(ConfigError, match="unknown patch scoring 'sum'; one of mean, paper"):
        patch_scoring("sum")
    with pytest.raises(ConfigError, match="unknown annotator 'robot'; known: person, simulated"):
        get_annotator("robot")
    with pytest.raises(ValueError, match="unknown selection strategy 'best'; choose one of stochastic-batch, top-k, random"):
        select(Candidates.empty(), "best", 1, 0)


def test_the_simulated_annotator_is_a_plug_in_the_product_does_not_import():
    from ugafl.client.round.annotators import get_annotator
    from ugafl.simulations.annotator import simulated_annotator

    assert get_annotator("simulated") is simulated_annotator
    assert get_annotator("person")(None, None, 0) == 0


class _Reply:
    """What Flower's strategies read of a reply message: its content, and that it is no error
    (a Message outside a run cannot be built; the records are Flower's own)."""

    def __init__(self, content, node: int):
        from types import SimpleNamespace

        self.content = content
        self.metadata = SimpleNamespace(src_node_id=node)

    def has_error(self) -> bool:
        return False


def _replies(arrays: list[dict[str, np.ndarray]], weights: list[float]):
    from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

    return [_Reply(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in a.items()}),
                               "metrics": MetricRecord({"num-examples": w, "loss": float(i)})}), i + 1)
            for i, (a, w) in enumerate(zip(arrays, weights))]


@pytest.mark.parametrize("name", ["fedavg", "fedmedian", "fedtrimmedavg"])
def test_plain_aggregation_equals_flowers(name):
    from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg

    rng = np.random.default_rng(4)
    updates = [{"w": rng.normal(size=(3, 5)).astype(np.float32), "b": rng.normal(size=7).astype(np.float32)}
               for _ in range(5)]
    weights = [3.0, 1.0, 7.0, 2.0, 5.0]
    flower = {"fedavg": FedAvg(), "fedmedian": FedMedian(), "fedtrimmedavg": FedTrimmedAvg(beta=0.2)}[name]
    arrays, metrics = flower.aggregate_train(1, _replies(updates, weights))
    ours = AGGREGATIONS[name](updates, weights, AggregationParams(trim_beta=0.2))
    for key, value in arrays.items():
        assert np.array_equal(ours[key], value.numpy()), key
        assert ours[key].dtype == value.numpy().dtype
    assert weighted_metrics([{"num-examples": w, "loss": float(i)} for i, w in enumerate(weights)],
                            weights) == pytest.approx({k: v for k, v in dict(metrics).items() if k != "num-examples"})


def test_trimmed_mean_cuts_the_extremes():
    updates = [{"w": np.array([v], np.float32)} for v in (1.0, 2.0, 3.0, 4.0, 1000.0)]
    assert AGGREGATIONS["fedtrimmedavg"](updates, [1.0] * 5, AggregationParams(trim_beta=0.2))["w"][0] == 3.0
    assert AGGREGATIONS["fedmedian"](updates, [1.0] * 5, AggregationParams())["w"][0] == 3.0
    assert AGGREGATIONS["fedavg"](updates, [1.0] * 5, AggregationParams())["w"][0] == pytest.approx(202.0)


@pytest.mark.parametrize("idle_sites", ["keep", "skip"])
def test_a_site_with_nothing_new_keeps_the_global_model_in_its_vote_or_is_left_out(idle_sites: str) -> None:
    from ugafl.server.federation.rounds import aggregate
    from ugafl.server.federation.settings import FederationSettings
    from ugafl.server.federation.sites import Reply

    reference = {"w": np.zeros((2, 2), np.float32)}
    moved = {"w": np.full((2, 2), 0.5, np.float32)}
    replies = [Reply(0, {"num-examples": 10.0, "site-weight": 1.0}, moved),
               Reply(1, {"num-examples": 0.0, "site-weight": 0.0}, None),  # nothing new
               Reply(2, {}, None, "Node Unavailable")]  # an error is never a vote
    settings = FederationSettings(central_checkpoint="-", out_dir="-", signing_key="-", idle_sites=idle_sites)
    out = aggregate(1, replies, reference, settings)
    assert out.accepted == 1 and out.idle == (1 if idle_sites == "keep" else 0)
    np.testing.assert_allclose(out.arrays["w"], 0.25 if idle_sites == "keep" else 0.5)
    by_examples = aggregate(1, replies, reference, FederationSettings(
        central_checkpoint="-", out_dir="-", signing_key="-", idle_sites=idle_sites, weighting="examples"))
    np.testing.assert_allclose(by_examples.arrays["w"], 0.5)  # weighted by examples, an idle site weighs 0 anyway


def test_the_simulations_memo_of_central_training_depends_on_every_key_of_the_local_recipe() -> None:
    from ugafl.server.federation.rounds import local_recipe
    from ugafl.simulations.in_process import MEMO_KEYS

    settings = FederationSettings(central_checkpoint="-", out_dir="-", signing_key="-")
    assert set(local_recipe(settings)) <= set(MEMO_KEYS)
