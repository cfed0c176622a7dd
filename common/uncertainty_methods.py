"""Uncertainty methods behind one interface: each maps a batch of patches to M members'
per-pixel class probabilities, shape (M, B, C, H, W), in as few batched passes as it can.

- `ensemble`: M independently trained models, evaluated together with torch.func (vmap over
  stacked weights: one pass for all members);
- `mc_dropout`: T passes, each with its own dropout mask shared by every patch;
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


class _PassMasks(nn.Module):
    """Stands in for a dropout layer: multiplies by pass t's mask, one mask per pass and per
    activation shape (C, H, W), drawn once from (seed, pass, layer) and shared by every patch."""

    def __init__(self, p: float, seed: int, layer: int):
        super().__init__()
        self.p, self.seed, self.layer = p, seed, layer
        self.current = 0
        self._masks: dict[tuple, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = (self.current, tuple(x.shape[1:]), x.device, x.dtype)
        mask = self._masks.get(key)
        if mask is None:
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.current * 9_973 + self.layer) & 0x7FFFFFFF)
            keep = torch.rand(x.shape[1:], generator=gen) >= self.p
            mask = self._masks[key] = (keep.to(x.dtype) / (1.0 - self.p)).to(x.device)
        return x * mask


class McDropout(UncertaintyMethod):
    """T stochastic passes: T dropout masks (T sub-networks), each drawn once and used for every
    patch, with the norms in eval. Drawing fresh masks for every patch costs 1.5 plain passes per
    pass on a CPU (the random numbers, not the network); shared masks make a pass cost one, and
    make a patch's map independent of its batch and of the order in which patches come."""

    name = "mc_dropout"

    def __init__(self, model: nn.Module, cfg: ModelConfig, passes: int = 8, max_batch: int = CPU_MAX_BATCH, seed: int = 0):
        super().__init__(cfg, max_batch)
        if not any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules()) or cfg.dropout <= 0:
            raise ConfigError(f"mc_dropout needs a model with dropout > 0 (this one has dropout={cfg.dropout})")
        # A private copy: its dropout layers become mask layers, and the caller's model (shared by
        # other methods or by plain inference) stays as it is.
        self.model = copy.deepcopy(model).eval()
        self._layers: list[_PassMasks] = []
        for parent in list(self.model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.modules.dropout._DropoutNd) and child.p > 0:
                    layer = _PassMasks(child.p, seed, len(self._layers))
                    setattr(parent, name, layer)
                    self._layers.append(layer)
        self.model.eval()
        self.passes = passes
        self.seed = seed

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> MethodOutput:
        members = []
        for t in range(self.passes):
            for layer in self._layers:
                layer.current = t
            members.append(torch.cat([self._softmax(self.model(chunk)) for chunk in _chunks(x, self.max_batch)]))
        return MethodOutput(torch.stack(members))


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
    """M models of one architecture: on a GPU evaluated together (weights stacked, vmapped
    forward), on a CPU one after another over full sub-batches."""

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
        if x.device.type == "cpu":
            # On a CPU, vmap's sub-batches of max_batch // M patches (1 for M = 5) run far below the
            # speed of full ones (6.7 plain passes for M = 5, measured): one member at a time instead.
            members = [torch.cat([self._softmax(model(chunk)) for chunk in _chunks(x, self.max_batch)]) for model in self.models]
            return MethodOutput(torch.stack(members))
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
