"""A federated run's settings: the Flower run config (keys spelled with '-', `local-steps`) and the
`[federation]` section of the config files (spelled with '_', `local_steps`), one typed model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Annotated, Any, ClassVar

from pydantic import Field

from ugafl.common.config import FieldProblem, NonEmpty, build_section, one_of
from ugafl.common.anchored_training import LOCAL_TRAININGS
from ugafl.common.losses import LOSS_NAMES
from ugafl.common.patch_scoring import PATCH_SCORING_NAMES
from ugafl.common.selection import SELECTION_NAMES
from ugafl.common.correction_patch import CORRECTION_PATCH_UM
from ugafl.common.uncertainty_methods import METHODS
from ugafl.server.federation.aggregation import AGGREGATION_NAMES, WEIGHTINGS

Count = Annotated[int, Field(ge=1)]
Positive = Annotated[float, Field(gt=0)]


@dataclass(frozen=True)
class FederationSettings:
    """Run settings; Flower run config keys are these names with '-' for '_'. The defaults are
    deploy/flower_app/pyproject.toml's [tool.flwr.app.config] (where the three paths are "")."""

    RENAMED: ClassVar[dict[str, str]] = {"strategy": "aggregation"}

    central_checkpoint: NonEmpty
    out_dir: NonEmpty
    signing_key: NonEmpty
    num_rounds: Count = 3
    aggregation: Annotated[str, one_of(AGGREGATION_NAMES)] = "fedavg"  # see aggregation.AGGREGATIONS
    proximal_mu: Annotated[float, Field(ge=0)] = 0.01  # sent to sites as the proximal term (and fedprox's)
    trim_beta: Annotated[float, Field(ge=0, lt=0.5)] = 0.2  # fedtrimmedavg: share cut at each end
    weighting: Annotated[str, one_of(WEIGHTINGS)] = "sites"  # "sites" (one vote each) or "examples" (by example count)
    max_examples: Count = 1000  # "examples": a site's reported count is capped at this
    # central differential privacy, Flower's fixed clipping (server.federation.privacy): each
    # update's change clipped to this L2 norm (0: off), and Gaussian noise of
    # dp_noise_multiplier * dp_clip_norm / votes on the aggregate; needs weighting = "sites"
    dp_clip_norm: Annotated[float, Field(ge=0)] = 0.0
    dp_noise_multiplier: Annotated[float, Field(ge=0)] = 0.0
    # a site with nothing new this round: "keep" (one vote per site: its vote is the global model
    # as it was) or "skip" (left out of the average); see rounds.aggregate
    idle_sites: Annotated[str, one_of(("keep", "skip"))] = "keep"
    selection: Annotated[str, one_of(SELECTION_NAMES)] = "stochastic-batch"  # see common.selection.SELECTIONS
    budget: Count = 5  # patches queued per site per round
    # class-aware selection: this share of the budget goes to patches where the model predicts tumour
    # (chosen by the same strategy), the rest to all (client.queue.fill.with_tumour_reserve)
    tumour_reserve: Annotated[float, Field(ge=0, le=1)] = 0.0
    patch_um: Positive = CORRECTION_PATCH_UM  # side of a corrected patch, µm (the paper's 1024 µm)
    patch_scoring: Annotated[str, one_of(PATCH_SCORING_NAMES)] = "mean"  # see common.patch_scoring.PATCH_SCORINGS
    method: Annotated[str, one_of(METHODS)] = "tta"  # uncertainty method the sites use
    passes: Count = 4
    # how a site fine-tunes (client.round.local_training): "anchored" (corrected crops mixed with
    # its own tissue under the global model's soft labels) or "plain" (the corrected patches alone)
    local_training: Annotated[str, one_of(LOCAL_TRAININGS)] = "anchored"
    local_steps: Count = 100  # plain: steps per round; anchored: at most this many
    local_epochs: Positive = 2.0  # anchored: passes over the corrected area per round
    local_loss: Annotated[str, one_of(LOSS_NAMES)] = "batch-dice-ce"  # see common.losses.LOSSES
    stain_augmentation: bool = False  # sites jitter the H&E stains of their training crops (common.stain)
    anchor_share: Annotated[float, Field(ge=0, lt=1)] = 0.5  # anchored: share of each batch from unlabelled tissue
    anchor_crops: Annotated[int, Field(ge=0)] = 64  # anchored: unlabelled crops given soft labels per round
    lr: Positive = 1e-3  # measured best on the training split (docs/results/tuning)
    # the acceptance gate (server.federation.gate): keep a round's aggregate only if the sites'
    # held-out corrections and the central validation do not get worse by more than these
    gate: bool = True
    gate_held_drop: Annotated[float, Field(ge=0)] = 0.0
    gate_val_drop: Annotated[float, Field(ge=0)] = 0.01
    seed: int = 0
    min_nodes: Count = 2
    norm_factor: Positive = 10.0
    eval_data: str = ""  # dataset folder for server-side evaluation ("" = none)
    eval_centres: str = "RUMC"  # comma-separated centres of eval_data to evaluate every round
    run_name: NonEmpty = "federated"
    timeout_s: Positive = 3600.0  # how long a round waits for the sites, s

    @staticmethod
    def from_run_config(run_config: Mapping[str, Any], at: str = "run config") -> FederationSettings:
        """From a Flower run config (either spelling of a key); ConfigError naming `at` and the key."""
        return build_section(FederationSettings, run_config, at, dashes=True)

    @staticmethod
    def from_section(section: Mapping[str, Any], at: str, **given: Any) -> FederationSettings:
        """From a config file's [federation] section (`at`: `FILE [federation]`), with `given` (what
        the caller sets itself, such as the run's paths) over it."""
        return build_section(FederationSettings, {**section, **given}, at)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self) -> None:
        """FieldProblem for differential-privacy settings that do not hold together."""
        if self.dp_noise_multiplier > 0 and self.dp_clip_norm == 0:
            raise FieldProblem("dp_noise_multiplier", "needs dp_clip_norm > 0 (the noise is scaled by the clipping norm)")
        if self.dp_clip_norm > 0 and self.weighting != "sites":
            raise FieldProblem("dp_clip_norm", 'needs weighting = "sites" (the noise assumes one equal vote per site)')
