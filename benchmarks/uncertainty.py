"""Speed of the uncertainty methods on the default model (CPU unless --device cuda).

Prints, for each method: patches per second on patches held in memory, the cost ratio to one
plain forward pass on the same patches, and over a whole synthetic slide the ratio of wall time
(reading, measures, stitching included) to pure model compute time. Weights don't change speed,
so freshly initialised models of the default architecture are used; a slide is generated unless
--slide is given.

    python benchmarks/uncertainty.py [--slide PATH] [--patches 64] [--passes 8] [--members 5]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ugafl.common.model import ModelConfig, build_model, pick_device  # noqa: E402
from ugafl.common.slide import open_slide  # noqa: E402
from ugafl.common.uncertainty_engine import slide_uncertainty  # noqa: E402
from ugafl.common.uncertainty_methods import CPU_MAX_BATCH, GPU_MAX_BATCH, Edue, Ensemble, McDropout, PlainForward, Tta  # noqa: E402


def methods(cfg: ModelConfig, passes: int, members: int, device) -> dict:
    torch.manual_seed(0)
    base = build_model(cfg).to(device)
    edue_cfg = replace(cfg, disagreement_head=True)
    mb = GPU_MAX_BATCH if device.type == "cuda" else CPU_MAX_BATCH
    return {
        "plain": PlainForward(base, cfg, mb),
        "mc_dropout": McDropout(build_model(cfg).to(device), cfg, passes, mb),
        "tta": Tta(base, cfg, passes, mb),
        "ensemble": Ensemble([build_model(cfg).to(device) for _ in range(members)], cfg, mb),
        "edue": Edue(build_model(edue_cfg).to(device), edue_cfg, mb),
    }


def patches_per_second(method, patches: torch.Tensor, batch: int, repeats: int = 2) -> float:
    method(patches[:batch])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(0, len(patches), batch):
            method(patches[i : i + batch])
        if patches.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return len(patches) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slide", type=Path, default=None)
    parser.add_argument("--patches", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--passes", type=int, default=8)
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--arch", default="unet", choices=["unet", "dynunet"])
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = pick_device(args.device)
    cfg = ModelConfig(arch=args.arch)
    slide_path = args.slide
    tmp = None
    if slide_path is None:
        from ugafl.simulations.synth import SlideSpec, SynthConfig, generate_slide

        tmp = tempfile.TemporaryDirectory()
        rec = generate_slide(Path(tmp.name), SynthConfig(), SlideSpec("RUMC", 0, "test", "macro"))
        slide_path = Path(tmp.name) / rec.path
    patches = torch.rand(args.patches, 3, cfg.patch_size, cfg.patch_size, device=device)
    print(f"device {device.type}, {torch.get_num_threads()} threads, model {cfg.arch}, {args.patches} patches of "
          f"{cfg.patch_size} px, batch {args.batch}, T={args.passes}, M={args.members}, slide {slide_path.name}")
    print(f"{'method':<11} {'patches/s':>10} {'cost vs plain':>14} {'slide patches':>13} {'wall s':>8} {'compute s':>10} {'wall/compute':>13}")
    table = methods(cfg, args.passes, args.members, device)
    plain_rate = None
    for name, method in table.items():
        rate = patches_per_second(method, patches, args.batch)
        plain_rate = plain_rate or rate
        with open_slide(slide_path) as slide:
            res = slide_uncertainty(method, slide, batch_size=args.batch, device=device)
        t = res.timing
        print(f"{name:<11} {rate:>10.1f} {plain_rate / rate:>13.2f}x {t.patches:>13d} {t.wall_s:>8.2f} {t.compute_s:>10.2f} "
              f"{t.wall_s / t.compute_s:>12.2f}x")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
