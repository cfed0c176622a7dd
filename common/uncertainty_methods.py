"""Uncertainty methods behind one interface: each maps a batch of patches to M members'
per-pixel class probabilities, shape (M, B, C, H, W), in as few batched passes as it can.

- `ensemble`: M independently trained models, evaluated together with torch.func (vmap over
  stacked weights: one pass for all members);
- `mc_dropout`: T passes with dropout on, the T copies stacked into one batch;
- `tta`: T flips and 90° rotations, stacked into one batch and mapped back;
- `edue`: one pass of a model with a disagreement head; M = 1 and a per-pixel variance map."""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from ugafl.common.errors import ConfigError
from ugafl.common.model import ModelConfig, members_of

# Forward passes are cut into sub-batches of at most this many patches. On a CPU small batches
# stay in cache (UNet, 256 px, 2 threads: 50 patches/s at 4, 39 at 16, 14 at 64); a GPU wants more.
CPU_MAX_BATCH, GPU_MAX_BATCH = 8, 64
# The dihedral group of the square: (quarter turns, flip) pairs; identity first.
DIHEDRAL = [(k, f) for f in (False, True) for k in range(4)]


@dataclass
class MethodOutput:
    probs: torch.Tensor  # (M, B, C, H, W) softmax of each member
    variance: torch.Tensor | None = None  # (B, H, W) predicted raters' variance (edue only), 0..0.25


def _chunks(x: torch.Tensor, max_batch: int):
    for i in range(0, x.shape[0], max_batch):
        yield x[i : i + max_batch]


class UncertaintyMethod(ABC):
    """Base: `__call__(x)` with x float (B, 3, H, W) in [0, 1] returns a MethodOutput."""

    name = "base"
    passes = 1  # forward passes per patch, relative to one plain pass

    def __init__(self, cfg: ModelConfig, max_batch: int = CPU_MAX_BATCH):
        self.cfg = cfg
        self.max_batch = max_batch

    def _softmax(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits[:, : self.cfg.num_classes].float(), dim=1)

    @abstractmethod
    def __call__(self, x: torch.Tensor) -> MethodOutput:
        """M members' probabilities for the batch `x`."""


class McDropout(UncertaintyMethod):
    """T stochastic passes with only the dropout layers in training mode (norms stay in eval)."""

    name = "mc_dropout"

    def __init__(self, model: nn.Module, cfg: ModelConfig, passes: int = 8, max_batch: int = CPU_MAX_BATCH, seed: int = 0):
        super().__init__(cfg, max_batch)
        if not any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules()) or cfg.dropout <= 0:
            raise ConfigError(f"mc_dropout needs a model with dropout > 0 (this one has dropout={cfg.dropout})")
        # A private copy: switching dropout on must not make the caller's model (shared by other
        # methods or by plain inference) stochastic.
        self.model = copy.deepcopy(model).eval()
        for module in self.model.modules():
            if isinstance(module, nn.modules.dropout._DropoutNd):
                module.train()
        self.passes = passes
        self.seed = seed
        self._calls = 0

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> MethodOutput:
        b = x.shape[0]
        stacked = x.repeat(self.passes, 1, 1, 1)  # (T*B, ...): member-major
        # Dropout masks from a forked RNG seeded by (seed, call number): the same slide gives the
        # same map, and the caller's random state is left alone.
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed + self._calls)
            self._calls += 1
            out = torch.cat([self._softmax(self.model(chunk)) for chunk in _chunks(stacked, self.max_batch)])
        return MethodOutput(out.view(self.passes, b, *out.shape[1:]))


class Tta(UncertaintyMethod):
    """T of the 8 flips/quarter-turns of each patch, predicted in one batch and mapped back."""

    name = "tta"

    def __init__(self, model: nn.Module, cfg: ModelConfig, passes: int = 8, max_batch: int = CPU_MAX_BATCH):
        super().__init__(cfg, max_batch)
        if not 2 <= passes <= len(DIHEDRAL):
            raise ConfigError(f"tta passes must be 2-{len(DIHEDRAL)} (the square's symmetries), got {passes}")
        self.model = model.eval()
        self.passes = passes
        self.transforms = DIHEDRAL[:passes]

    @staticmethod
    def _apply(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
        x = torch.flip(x, dims=(-1,)) if flip else x
        return torch.rot90(x, k, dims=(-2, -1))

    @staticmethod
    def _invert(y: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
        y = torch.rot90(y, -k, dims=(-2, -1))
        return torch.flip(y, dims=(-1,)) if flip else y

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> MethodOutput:
        b = x.shape[0]
        stacked = torch.cat([self._apply(x, k, f) for k, f in self.transforms])
        out = torch.cat([self._softmax(self.model(chunk)) for chunk in _chunks(stacked, self.max_batch)])
        members = [self._invert(out[i * b : (i + 1) * b], k, f) for i, (k, f) in enumerate(self.transforms)]
        return MethodOutput(torch.stack(members))


class Ensemble(UncertaintyMethod):
    """M models of one architecture, evaluated together: weights stacked, vmapped forward."""

    name = "ensemble"

    def __init__(self, models: list[nn.Module], cfg: ModelConfig, max_batch: int = CPU_MAX_BATCH):
        super().__init__(cfg, max_batch)
        if len(models) < 2:
            raise ConfigError(f"an ensemble needs at least 2 member models, got {len(models)}")
        self.models = [m.eval() for m in models]
        self.passes = len(models)
        from torch.func import functional_call, stack_module_state, vmap

        params, buffers = stack_module_state(self.models)
        base = copy.deepcopy(self.models[0]).to("meta")

        def one(p, b, x):
            return functional_call(base, (p, b), (x,))

        self._params, self._buffers = params, buffers
        self._forward = vmap(one, in_dims=(0, 0, None))

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> MethodOutput:
        outs = []
        step = max(1, self.max_batch // self.passes)
        for chunk in _chunks(x, step):
            logits = self._forward(self._params, self._buffers, chunk)  # (M, b, C', H, W)
            outs.append(torch.softmax(logits[:, :, : self.cfg.num_classes].float(), dim=2))
        return MethodOutput(torch.cat(outs, dim=1))


class Edue(UncertaintyMethod):
    """One pass of a model whose extra output channel predicts the raters' per-pixel variance."""

    name = "edue"

    def __init__(self, model: nn.Module, cfg: ModelConfig, max_batch: int = CPU_MAX_BATCH):
        super().__init__(cfg, max_batch)
        if not cfg.disagreement_head:
            raise ConfigError("edue needs a model trained with a disagreement head (train-central --edue)")
        self.model = model.eval()

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> MethodOutput:
        logits = torch.cat([self.model(chunk) for chunk in _chunks(x, self.max_batch)]).float()
        probs = torch.softmax(logits[:, : self.cfg.num_classes], dim=1)
        return MethodOutput(probs[None], variance=variance_from_logit(logits[:, self.cfg.num_classes]))


def variance_from_logit(logit: torch.Tensor) -> torch.Tensor:
    """The disagreement head's output mapped onto the range of a Bernoulli variance, 0..0.25."""
    return 0.25 * torch.sigmoid(logit)


class PlainForward(UncertaintyMethod):
    """One plain pass, M = 1: the cost baseline for benchmarks (no uncertainty to speak of)."""

    name = "plain"

    def __init__(self, model: nn.Module, cfg: ModelConfig, max_batch: int = CPU_MAX_BATCH):
        super().__init__(cfg, max_batch)
        self.model = model.eval()

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> MethodOutput:
        return MethodOutput(torch.cat([self._softmax(self.model(c)) for c in _chunks(x, self.max_batch)])[None])


def load_method(name: str, checkpoints: list, device: torch.device | str = "cpu", passes: int = 8) -> UncertaintyMethod:
    """The method `name` over checkpoint files (an ensemble takes all of them, the others one)."""
    from ugafl.common.checkpoint import load_checkpoint

    if name not in METHODS:
        raise ConfigError(f"unknown uncertainty method {name!r}; known: {', '.join(METHODS)}")
    if not checkpoints:
        raise ConfigError("no model checkpoint given")
    if name != "ensemble" and len(checkpoints) != 1:
        raise ConfigError(f"{name} takes one model checkpoint, got {len(checkpoints)} (only ensemble takes several, "
                          "or one that carries its members)")
    loaded = [load_checkpoint(path, device) for path in checkpoints]
    cfg = loaded[0].model_config
    for path, ckpt in zip(checkpoints, loaded):
        if ckpt.model_config != cfg:
            raise ConfigError(f"{path}: ensemble members must share one architecture and mpp")
    return method_from_models(name, [c.model for c in loaded], cfg, device, passes)


def method_from_models(name: str, models: list[nn.Module], cfg: ModelConfig, device: torch.device | str = "cpu",
                       passes: int = 8) -> UncertaintyMethod:
    """The method `name` over models already in memory (on `device`); `load_method` for files."""
    if name not in METHODS:
        raise ConfigError(f"unknown uncertainty method {name!r}; known: {', '.join(METHODS)}")
    if name != "ensemble" and len(models) != 1:
        raise ConfigError(f"{name} takes one model, got {len(models)} (only ensemble takes several)")
    if name == "ensemble" and len(models) == 1 and cfg.members > 1:  # one model carrying its members
        models, cfg = members_of(models[0]), replace(cfg, members=1)
    max_batch = GPU_MAX_BATCH if torch.device(device).type == "cuda" else CPU_MAX_BATCH
    return _BUILDERS[name](models, cfg, passes, max_batch)


# The methods by name, the one place their names live: each builds its method from the loaded models.
_BUILDERS: dict[str, Callable[[list[nn.Module], ModelConfig, int, int], UncertaintyMethod]] = {
    "ensemble": lambda models, cfg, passes, max_batch: Ensemble(models, cfg, max_batch),
    "mc_dropout": lambda models, cfg, passes, max_batch: McDropout(models[0], cfg, passes, max_batch),
    "tta": lambda models, cfg, passes, max_batch: Tta(models[0], cfg, passes, max_batch),
    "edue": lambda models, cfg, passes, max_batch: Edue(models[0], cfg, max_batch),
}
METHODS: tuple[str, ...] = tuple(_BUILDERS)
