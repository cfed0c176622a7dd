"""ugafl's own inference and training paths against a plain torch loop on the same model, batches,
optimiser and precision: patches per second of each and their ratio (the target is 0.9: ugafl's
code around the network should cost at most a tenth of what the network itself can do).

Rows:

* `infer: uncertainty pass` -- `PlainForward(model, cfg, max_batch)(x)`, the call the uncertainty
  engine makes on every batch of tiles (one plain pass; the other methods are T or M of them), with
  the sub-batch the engine uses on the device, against `model.eval(); with torch.no_grad(),
  torch.autocast(...): softmax(model(x))` on the same batch. The plain loop runs with mixed
  precision where ugafl uses it elsewhere (fp16 autocast on CUDA, as common/inference.py does; none
  on a CPU, as everywhere in ugafl). The uncertainty methods call the network without autocast, so
  on CUDA this row compares ugafl's fp32 pass with a plain fp16 one; the row below separates the
  cost of precision from the cost of the code.
* `infer: uncertainty pass, plain loop in fp32` (CUDA only) -- the same, with the plain loop at
  ugafl's precision: the overhead of the code alone.
* `train: site fine-tune (train_anchored)` -- common.anchored_training.train_anchored, the site's
  anchored recipe (bf16 autocast on CUDA, batch 8 crops of 128 px, AdamW, cosine schedule, the
  batch Dice + CE loss, proximal term mu = 0.01), one call of N steps per run (N: the steps of a
  site's round on 5 corrected patches, 40) on synthetic corrected patches and anchors, against a
  plain loop with the same model, loss, optimiser, schedule, proximal term, batch and precision.
* `train: central recipe (train_segmentation)` -- common.training.train_segmentation (central
  training and the sites' "plain" recipe: fp16 autocast + GradScaler on CUDA, batch 16 crops of
  128 px, AdamW, one-cycle schedule, Dice + CE), against the same plain loop with GradScaler.

The plain training loop trains on a few batches made beforehand by ugafl's own sampling and
augmentation and kept on the device: what a loop whose batches come from DataLoader workers ahead
of the GPU would see. ugafl's loops make each batch in the training thread (crop sampling and MONAI
augmentation on the CPU) and include, per call, the set-up (optimiser, crop centres); the JSON gives
the time a step spends making its batch (`batch_making_s_per_step`, timed on its own), so a missed
ratio says whether the batch making or the rest is the cause.

Timing: a warm-up call of each path first (kernel choice, allocator), then `--repeats` timed runs
of each, ugafl and plain alternating; inference runs are sized from one timed batch so that a row's
runs take about `--seconds`; `torch.cuda.synchronize()` closes every timed run on CUDA; the figure
is the median run. ugafl's training calls set cuDNN's deterministic flag (MONAI's set_determinism);
the flags are put back after each call so that the plain loop runs with torch's defaults.

All figures from a CPU are CPU figures: autocast is off there, in ugafl and in the plain loop.

    python benchmarks/gpu_throughput.py [--device auto|cpu|cuda] [--arch unet|dynunet] [--seconds 10]
                                        [--repeats 5] [--paths infer,anchored,central] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ugafl.common import anchored_training  # noqa: E402
from ugafl.common.anchored_training import AnchoredConfig, train_anchored  # noqa: E402
from ugafl.common.correction_patch import CORRECTION_PATCH_UM  # noqa: E402
from ugafl.common.losses import make_loss  # noqa: E402
from ugafl.common.model import ModelConfig, build_model  # noqa: E402
from ugafl.common.training import TrainConfig, train_segmentation  # noqa: E402
from ugafl.common.uncertainty_engine import margin_for  # noqa: E402
from ugafl.common.uncertainty_methods import CPU_MAX_BATCH, GPU_MAX_BATCH, PlainForward  # noqa: E402

TARGET = 0.9
SITE_BATCH, SITE_CROP = 8, 128  # client.round.local_training: LOCAL_BATCH, LOCAL_CROP_PX
SITE_PATCHES = 5  # corrected patches a site trains on after one round (the demo's budget)
SITE_LR, SITE_MU = 1e-3, 0.01  # the demo's [federation] lr and proximal_mu (FederationSettings' mu)
ENGINE_BATCH = 16  # the uncertainty engine's batch of tiles (run_uncertainty / slide_uncertainty)


def pick(requested: str) -> torch.device:
    """`auto`: CUDA when torch sees a GPU, else the CPU (said so); `cuda` without one: exit 2."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        print(f"note: CUDA is not available to this torch ({torch.__version__}); measuring on the CPU", flush=True)
        return torch.device("cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"gpu_throughput.py: --device {requested}, but CUDA is not available to this torch "
                         f"({torch.__version__}, built with CUDA {torch.version.cuda}); use --device cpu for CPU figures")
    return torch.device(requested)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Cudnn:
    """Saves torch.backends.cudnn's deterministic/benchmark flags and puts them back on exit."""

    def __enter__(self) -> "Cudnn":
        self.flags = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
        return self

    def __exit__(self, *exc) -> None:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = self.flags


def timed(run: Callable[[int], None], n: int, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    run(n)
    sync(device)
    return time.perf_counter() - t0


def compare(name: str, ugafl: Callable[[int], None], plain: Callable[[int], None], per_unit: int, device: torch.device,
            repeats: int, budget_s: float = 0.0, units: int | None = None, max_units: int = 100_000) -> dict:
    """Patches/s of `ugafl(n)` and `plain(n)` (n units of `per_unit` patches each): a warm-up call
    of each, then `repeats` alternating timed runs of n units; medians. n is `units`, or sized
    from one timed unit of each so that all runs take about `budget_s`."""
    ugafl(1)
    plain(1)
    if units is None:
        probe = max(timed(ugafl, 1, device), timed(plain, 1, device), 1e-6)
        units = max(1, min(max_units, int(budget_s / (2 * repeats) / probe)))
    n = units
    runs: dict[str, list[float]] = {"ugafl": [], "plain": []}
    for r in range(repeats):
        order = (("ugafl", ugafl), ("plain", plain)) if r % 2 == 0 else (("plain", plain), ("ugafl", ugafl))
        for label, fn in order:
            runs[label].append(n * per_unit / timed(fn, n, device))
    u, p = statistics.median(runs["ugafl"]), statistics.median(runs["plain"])
    return {"path": name, "ugafl_patches_s": u, "plain_patches_s": p, "ratio": u / p, "target": TARGET,
            "met": u / p >= TARGET, "units_per_run": n, "patches_per_unit": per_unit,
            "ugafl_runs": runs["ugafl"], "plain_runs": runs["plain"]}


def amp_dtype(device: torch.device, dtype: torch.dtype) -> dict:
    """torch.autocast keyword arguments: `dtype` on CUDA, off on a CPU (as everywhere in ugafl)."""
    return {"device_type": device.type, "dtype": dtype, "enabled": device.type == "cuda"}


def precision(device: torch.device, dtype: torch.dtype) -> str:
    return {torch.float16: "fp16 autocast", torch.bfloat16: "bf16 autocast"}[dtype] if device.type == "cuda" else "fp32"


# ---------------------------------------------------------------- inference

def inference_rows(cfg: ModelConfig, device: torch.device, batch: int, tile: int, budget_s: float, repeats: int) -> list[dict]:
    torch.manual_seed(0)
    model = build_model(cfg).to(device).eval()
    max_batch = GPU_MAX_BATCH if device.type == "cuda" else CPU_MAX_BATCH  # as method_from_models picks it
    method = PlainForward(model, cfg, max_batch)
    x = torch.rand(batch, 3, tile, tile, device=device)
    c = cfg.num_classes

    def ugafl(n: int) -> None:
        for _ in range(n):
            method(x)

    def plain_loop(amp: bool) -> Callable[[int], None]:
        def run(n: int) -> None:
            model.eval()
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16, enabled=amp and device.type == "cuda"):
                for _ in range(n):
                    torch.softmax(model(x)[:, :c].float(), dim=1)
        return run

    common = {"batch": batch, "input_px": tile, "ugafl_sub_batch": max_batch, "ugafl_precision": "fp32"}
    rows = [{**compare("infer: uncertainty pass", ugafl, plain_loop(True), batch, device, repeats, budget_s),
             **common, "plain_precision": precision(device, torch.float16)}]
    if device.type == "cuda":
        rows.append({**compare("infer: uncertainty pass, plain loop in fp32", ugafl, plain_loop(False), batch, device,
                               repeats, budget_s), **common, "plain_precision": "fp32"})
    return rows


# ---------------------------------------------------------------- training data

def site_data(rng: np.random.Generator, patches: int, patch_px: int, anchors: int, crop: int):
    """Tissue-coloured corrected patches with a round tumour each (so crops find a border), and
    anchor crops with soft targets: what a site trains on, synthetic (weights do not change speed)."""
    colour = np.array([205, 130, 175], np.float32)
    images = np.clip(colour + rng.normal(0, 25, (patches, patch_px, patch_px, 3)), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:patch_px, :patch_px]
    masks = np.stack([((yy - patch_px / 2) ** 2 + (xx - patch_px / 2 + 20 * i) ** 2 < (patch_px / 4) ** 2)
                      for i in range(patches)]).astype(np.uint8)
    anchor_images = np.clip(colour + rng.normal(0, 25, (anchors, crop, crop, 3)), 0, 255).astype(np.uint8)
    anchor_probs = rng.random((anchors, crop, crop)).astype(np.float32)
    return images, masks, anchor_images, anchor_probs


def plain_train_loop(model: torch.nn.Module, device: torch.device, batches: list[tuple[torch.Tensor, torch.Tensor]],
                     loss_name: str, lr: float, weight_decay: float, schedule: str, total_steps: int,
                     dtype: torch.dtype, scaler: bool, mu: float, num_classes: int) -> Callable[[int], None]:
    """A plain torch training loop on batches already on the device, with ugafl's loss, AdamW,
    schedule, precision and proximal term; `run(n)` trains n steps."""
    loss_fn = make_loss(loss_name)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    if schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=total_steps)
    else:
        sched = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=total_steps, pct_start=0.1)
    grad_scaler = torch.amp.GradScaler("cuda", enabled=scaler and device.type == "cuda")
    ref = {k: v.detach().clone() for k, v in model.named_parameters()} if mu > 0 else None
    state = {"i": 0}

    def run(n: int) -> None:
        model.train()
        for _ in range(n):
            x, y = batches[state["i"] % len(batches)]
            state["i"] += 1
            optimiser.zero_grad(set_to_none=True)
            with torch.autocast(**amp_dtype(device, dtype)):
                out = model(x)
            loss = loss_fn(out[:, :num_classes].float(), y)
            if ref is not None:
                loss = loss + mu / 2 * sum(((w - ref[k]) ** 2).sum() for k, w in model.named_parameters())
            grad_scaler.scale(loss).backward()
            grad_scaler.step(optimiser)
            grad_scaler.update()
            if sched.last_epoch + 1 < total_steps:  # one schedule for the whole benchmark, never past its end
                sched.step()
    return run


# ---------------------------------------------------------------- training

def anchored_row(cfg: ModelConfig, device: torch.device, steps: int, repeats: int, patch_px: int, crop: int) -> dict:
    rng = np.random.default_rng(0)
    images, masks, anchors, probs = site_data(rng, SITE_PATCHES, patch_px, 64, crop)
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    reference = {k: v.detach().clone() for k, v in model.named_parameters()}
    base = AnchoredConfig(epochs=1e6, max_steps=1, batch_size=SITE_BATCH, crop=crop, anchor_share=0.5,
                          lr=SITE_LR, proximal_mu=SITE_MU, loss="batch-dice-ce", seed=0)
    seed = {"s": 0}

    def ugafl(n: int) -> None:
        seed["s"] += 1
        with Cudnn():
            train_anchored(model, images, masks, anchors, probs, replace(base, max_steps=n, seed=seed["s"]), cfg.mpp,
                           device, reference=reference, num_classes=cfg.num_classes)

    # The plain loop's batches: ugafl's own sampling and augmentation, made once, kept on the device.
    x, y = make_anchored_batches(base, images, masks, anchors, probs, cfg.mpp, 4)
    batches = [(a.to(device), b.to(device)) for a, b in zip(x, y)]
    torch.manual_seed(0)
    plain_model = build_model(cfg).to(device)
    plain = plain_train_loop(plain_model, device, batches, base.loss, base.lr, base.weight_decay, "cosine", 10**6,
                             torch.bfloat16, False, base.proximal_mu, cfg.num_classes)
    row = compare("train: site fine-tune (train_anchored)", ugafl, plain, SITE_BATCH, device, repeats, units=steps)
    t0 = time.perf_counter()
    centres = anchored_training._centres(images, masks, cfg.mpp)  # once per call: where crops may be centred
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    make_anchored_batches(base, images, masks, anchors, probs, cfg.mpp, max(3, steps), centres)
    making = (time.perf_counter() - t0) / max(3, steps)
    per_step = SITE_BATCH / row["ugafl_patches_s"]
    return {**row, "batch": SITE_BATCH, "input_px": crop, "ugafl_precision": precision(device, torch.bfloat16),
            "plain_precision": precision(device, torch.bfloat16), "batch_making_s_per_step": making,
            "batch_making_share": min(1.0, making / per_step), "setup_s_per_call": setup}


def make_anchored_batches(cfg: AnchoredConfig, images, masks, anchors, probs, mpp: float, n: int, centres=None):
    """n batches made as train_anchored makes them (its crop sampling and augmentation)."""
    from ugafl.common.augment import training_transforms

    rng = np.random.default_rng(cfg.seed)
    transforms = training_transforms(cfg.colour_augmentation)
    transforms.set_random_state(seed=cfg.seed)
    centres = centres if centres is not None else anchored_training._centres(images, masks, mpp)
    n_anchor = cfg.anchors_per_step(len(anchors) > 0)
    xs, ys = [], []
    for _ in range(n):
        xb, yb = anchored_training._batch(rng, images, masks, centres, anchors, probs, n_anchor, cfg, transforms)
        xs.append(xb)
        ys.append(yb)
    return xs, ys


def central_row(cfg: ModelConfig, device: torch.device, steps: int, repeats: int, patch_px: int, crop: int) -> dict:
    rng = np.random.default_rng(1)
    images, labels, _, _ = site_data(rng, 8, patch_px, 0, 1)
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    base = TrainConfig(steps=1, crop=crop, seed=0)
    seed = {"s": 0}

    def ugafl(n: int) -> None:
        seed["s"] += 1
        with Cudnn():
            train_segmentation(model, images, labels, replace(base, steps=n, seed=seed["s"]), device, progress=False,
                               num_classes=cfg.num_classes)

    from ugafl.common.augment import training_transforms
    from ugafl.common.training import _batch

    transforms = training_transforms(base.colour_augmentation)
    batches = []
    for _ in range(4):
        xb, yb, _v = _batch(rng, images, labels, base, transforms)
        batches.append((xb.to(device), yb.to(device)))
    torch.manual_seed(0)
    plain_model = build_model(cfg).to(device)
    plain = plain_train_loop(plain_model, device, batches, base.loss, base.lr, base.weight_decay, "onecycle", 10**6,
                             torch.float16, True, 0.0, cfg.num_classes)
    row = compare("train: central recipe (train_segmentation)", ugafl, plain, base.batch_size, device, repeats, units=steps)
    t0 = time.perf_counter()
    for _ in range(max(3, steps)):
        _batch(rng, images, labels, base, transforms)
    making = (time.perf_counter() - t0) / max(3, steps)
    per_step = base.batch_size / row["ugafl_patches_s"]
    return {**row, "batch": base.batch_size, "input_px": base.crop,
            "ugafl_precision": precision(device, torch.float16) + (" + GradScaler" if device.type == "cuda" else ""),
            "plain_precision": precision(device, torch.float16) + (" + GradScaler" if device.type == "cuda" else ""),
            "batch_making_s_per_step": making, "batch_making_share": min(1.0, making / per_step)}


# ---------------------------------------------------------------- report

def facts(device: torch.device, cfg: ModelConfig) -> dict:
    out = {"device": device.type, "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
           "threads": torch.get_num_threads(), "cores": os.cpu_count(), "arch": cfg.arch,
           "params": sum(p.numel() for p in build_model(cfg).parameters()),
           "cudnn_flags_at_start": {"deterministic": torch.backends.cudnn.deterministic,
                                    "benchmark": torch.backends.cudnn.benchmark}}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}", bf16=torch.cuda.is_bf16_supported())
    return out


def table(rows: list[dict]) -> str:
    lines = [f"{'path':<46} {'ugafl patch/s':>13} {'plain patch/s':>13} {'ratio':>6}  target {TARGET:g}",
             f"{'':<46} {'':>13} {'':>13} {'':>6}  " + "-" * 10]
    for r in rows:
        lines.append(f"{r['path']:<46} {r['ugafl_patches_s']:>13.1f} {r['plain_patches_s']:>13.1f} {r['ratio']:>6.2f}  "
                     f"{'met' if r['met'] else 'missed'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present, else the CPU), cpu or cuda")
    parser.add_argument("--arch", default="unet", choices=("unet", "dynunet"))
    parser.add_argument("--seconds", type=float, default=10.0, help="timed inference runs of a row take about this long")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each path (the median is reported)")
    parser.add_argument("--batch", type=int, default=ENGINE_BATCH, help="tiles per inference batch (the engine's)")
    parser.add_argument("--tile", type=int, default=None,
                        help="inference tile side, px (default: a site's 1024 µm patch plus the engine's margin)")
    parser.add_argument("--train-steps", type=int, default=None,
                        help="steps per timed training run (default: a site's round on 5 corrected patches)")
    parser.add_argument("--crop", type=int, default=SITE_CROP, help="training crop side, px")
    parser.add_argument("--patch-px", type=int, default=None, help="corrected patch side, px (default 1024 µm)")
    parser.add_argument("--paths", default="infer,anchored,central", help="which rows: infer, anchored, central")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    device = pick(args.device)
    cfg = ModelConfig(arch=args.arch)
    patch_px = args.patch_px or round(CORRECTION_PATCH_UM / cfg.mpp)  # a site's scored patch at the model's mpp
    if patch_px < args.crop:
        parser.error(f"--patch-px {patch_px} is smaller than --crop {args.crop}")
    tile = args.tile or patch_px + 2 * margin_for(patch_px)
    steps = args.train_steps or AnchoredConfig(crop=args.crop).steps(SITE_PATCHES, patch_px)
    notes = []
    if cfg.arch == "dynunet":
        step = 2 ** (len(cfg.dynunet_filters) - 1)
        if tile % step:
            rounded = math.ceil(tile / step) * step
            notes.append(f"dynunet needs sides divisible by {step}: the engine's {tile} px tiles fail in the network; "
                         f"measured at {rounded} px")
            tile = rounded
    paths = [p for p in args.paths.split(",") if p]
    unknown = set(paths) - {"infer", "anchored", "central"}
    if unknown:
        parser.error(f"--paths: unknown {sorted(unknown)} (infer, anchored, central)")
    info = facts(device, cfg)
    print(f"device {device.type}" + (f" ({info['gpu']}, capability {info['capability']})" if device.type == "cuda" else
                                     f" ({info['threads']} threads, {info['cores']} cores)")
          + f"; torch {info['torch']}; model {cfg.arch}, {info['params'] / 1e6:.1f} M parameters", flush=True)
    print(f"inference: batches of {args.batch} tiles of {tile} px, runs of about {args.seconds / args.repeats / 2:.1f} s; "
          f"training: runs of {steps} steps, crops of {args.crop} px; {args.repeats} timed runs of each path, "
          "medians", flush=True)
    rows: list[dict] = []
    started = time.perf_counter()
    for p in paths:
        if p == "infer":
            rows += inference_rows(cfg, device, args.batch, tile, args.seconds, args.repeats)
        elif p == "anchored":
            rows.append(anchored_row(cfg, device, steps, args.repeats, patch_px, args.crop))
        else:
            rows.append(central_row(cfg, device, steps, args.repeats, patch_px, args.crop))
        print(f"  measured {rows[-1]['path']}", flush=True)
    print()
    print(table(rows))
    for r in rows:
        if "batch_making_share" in r:
            print(f"  {r['path']}: {r['batch_making_s_per_step'] * 1e3:.1f} ms a step making the batch on the CPU "
                  f"({100 * r['batch_making_share']:.0f}% of ugafl's step)"
                  + (f"; {r['setup_s_per_call']:.2f} s a call finding crop centres" if "setup_s_per_call" in r else ""))
    if device.type == "cuda":
        print("  ugafl's uncertainty methods run the network in fp32 (no autocast); the plain loop's first row uses fp16")
    else:
        print("  CPU figures: autocast is off on a CPU in ugafl and in the plain loop alike (fp32 everywhere)")
    for n in notes:
        print(f"  note: {n}")
    report = {**info, "target": TARGET, "rows": rows, "notes": notes, "seconds": time.perf_counter() - started,
              "not_measured": ["common.inference.predict_slide (the evaluation's whole-slide prediction, fp16 "
                               "autocast on CUDA): its batch step sits inside the slide loop and cannot be called on a "
                               "batch of patches without changing it"]}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    bad = [r["path"] for r in rows if not (math.isfinite(r["ratio"]) and r["ratio"] > 0)]
    if bad:
        print(f"gpu_throughput.py: no finite ratio for {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
