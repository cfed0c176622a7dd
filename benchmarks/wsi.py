"""Whole slides of real size: time and memory of ugafl's slide pass for every uncertainty method,
beside what a user would otherwise pick (MONAI's WSI sliding-window inference, TIAToolbox's
semantic segmentor), on the same slide and model, at 1/16, 1/4 and the full size of a Camelyon
slide (100,000 x 200,000 px at 0.24 µm/px; written once by `ugafl synth --size` into --out).

For each size it prints, per method: tissue patches, wall time, pure model compute (the forward
passes only), their ratio, patches per second, the peak resident memory during the pass (sampled
every 20 ms from /proc; the process's own memory before the pass is printed too), and each
method's compute over T or M plain passes. Then the peers on the plain pass, at the pyramid level
nearest the model's mpp (1.92 µm/px) so that every tool reads the same pixels: wall time, peak
memory, ugafl's wall time over theirs, and, on the smallest size, the largest difference between
their tumour probability and ugafl's on the patches all of them computed.

Weights do not change speed: the models are freshly initialised (seed 0) unless --model is given.

    python benchmarks/wsi.py [--sizes 1/16,1/4,full] [--methods plain,tta,mc_dropout,ensemble,edue]
                             [--peers monai,tiatoolbox] [--out runs/wsi-bench] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ugafl.common.model import ModelConfig, build_model, pick_device  # noqa: E402
from ugafl.common.slide import open_slide  # noqa: E402
from ugafl.common.tiling import patch_grid  # noqa: E402
from ugafl.common.tissue import detect_tissue  # noqa: E402
from ugafl.common.uncertainty_engine import iter_uncertainty, margin_for, slide_uncertainty  # noqa: E402
from ugafl.common.uncertainty_methods import CPU_MAX_BATCH, GPU_MAX_BATCH, Edue, Ensemble, McDropout, PlainForward, Tta  # noqa: E402
from ugafl.simulations.real_size import SIZES, write_real_size_slide  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TIA_PYTHON = ROOT / ".venv-tia" / "bin" / "python"
PEER_MPP = 1.92  # level 3 of a 0.24 µm/px slide: every tool reads it without resampling


class PeakRss:
    """Peak resident memory (MB) of this process while the block runs, sampled from /proc."""

    def __init__(self, every_s: float = 0.02):
        self.every_s, self.peak_mb, self.start_mb = every_s, 0.0, 0.0
        self._stop = threading.Event()

    @staticmethod
    def now_mb() -> float:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self.now_mb())
            self._stop.wait(self.every_s)

    def __enter__(self) -> "PeakRss":
        self.start_mb = self.peak_mb = self.now_mb()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self.now_mb())


def make_methods(cfg: ModelConfig, names: list[str], passes: int, members: int, device, model_path: Path | None) -> dict:
    torch.manual_seed(0)
    if model_path is not None:
        from ugafl.common.checkpoint import load_checkpoint

        base = load_checkpoint(model_path, device).model
    else:
        base = build_model(cfg).to(device)
    mb = GPU_MAX_BATCH if device.type == "cuda" else CPU_MAX_BATCH
    builders = {
        "plain": lambda: PlainForward(base, cfg, mb),
        "tta": lambda: Tta(base, cfg, passes, mb),
        "mc_dropout": lambda: McDropout(base, cfg, passes, mb),
        "ensemble": lambda: Ensemble([base] + [build_model(cfg).to(device) for _ in range(members - 1)], cfg, mb),
        "edue": lambda: Edue(build_model(replace(cfg, disagreement_head=True)).to(device), replace(cfg, disagreement_head=True), mb),
    }
    return {name: builders[name]() for name in names}


def slide_for(size: str, out: Path) -> Path:
    path = out / f"RUMC_real_{size.replace('/', 'of')}.tif"
    if not (path.is_file() and path.with_name(path.name + ".json").is_file()):
        t0 = time.perf_counter()
        write_real_size_slide(path, SIZES[size], progress=True)
        print(f"  wrote {path.name} in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def run_ugafl(method, path: Path, batch: int, device, patch_px: int | None = None, margin_px: int | None = None) -> dict:
    p = patch_px or method.cfg.patch_size
    t = p + 2 * (margin_for(p) if margin_px is None else margin_px)
    method(torch.rand(2, 3, t, t, device=device))  # warm-up: first calls allocate and pick kernels
    with open_slide(path) as slide, PeakRss() as rss:
        t0 = time.perf_counter()
        res = slide_uncertainty(method, slide, batch_size=batch, device=device, patch_px=patch_px, margin_px=margin_px)
        wall = time.perf_counter() - t0
    t = res.timing
    return {"patches": t.patches, "wall_s": wall, "pass_wall_s": t.wall_s, "compute_s": t.compute_s,
            "rss_before_mb": rss.start_mb, "peak_rss_mb": rss.peak_mb}


def monai_plain(model: torch.nn.Module, cfg: ModelConfig, path: Path, batch: int, keep: set[tuple[int, int]], level: int,
                device) -> tuple[dict, np.ndarray]:
    """MONAI's WSI path: WSISlidingWindowSplitter (OpenSlide reader, one pyramid level, patches
    filtered to ours) -> PatchInferer -> AvgMerger (the whole level's output in memory)."""
    from monai.inferers import PatchInferer, WSISlidingWindowSplitter

    p = cfg.patch_size

    def tissue_patch(patch, location) -> bool:
        return (int(location[0]) // p, int(location[1]) // p) in keep

    splitter = WSISlidingWindowSplitter(patch_size=p, overlap=0, filter_fn=tissue_patch, reader="OpenSlide", level=level)
    inferer = PatchInferer(splitter=splitter, batch_size=batch,
                           preprocessing=lambda x: x.float().div(255.0),
                           postprocessing=lambda y: torch.softmax(y[:, : cfg.num_classes].float(), dim=1))
    model.eval()
    with PeakRss() as rss, torch.no_grad():
        t0 = time.perf_counter()
        out = inferer(str(path), model)
        wall = time.perf_counter() - t0
    prob = out[0, 1].cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)[0, 1]
    return {"patches": len(keep), "wall_s": wall, "rss_before_mb": rss.start_mb, "peak_rss_mb": rss.peak_mb}, prob


def tia_plain(model: torch.nn.Module, cfg: ModelConfig, path: Path, batch: int, work: Path) -> tuple[dict | None, np.ndarray | None, str]:
    if not TIA_PYTHON.is_file():
        return None, None, "not installed: bash benchmarks/peers/setup_tiatoolbox.sh"
    scripted = torch.jit.trace(model.eval().cpu(), torch.rand(1, 3, cfg.patch_size, cfg.patch_size))
    model_file, npy, result = work / "model.pt", work / "tia.npy", work / "tia.json"
    scripted.save(str(model_file))
    cmd = [str(TIA_PYTHON), str(ROOT / "benchmarks/peers/tiatoolbox_segment.py"), "--slide", str(path), "--model", str(model_file),
           "--mpp", str(cfg.mpp), "--patch", str(cfg.patch_size), "--batch", str(batch), "--out", str(npy), "--json", str(result),
           "--threads", str(torch.get_num_threads())]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        return None, None, f"failed (exit {run.returncode}): {run.stderr.strip().splitlines()[-1] if run.stderr.strip() else ''}"
    return json.loads(result.read_text()), np.load(npy), ""


def largest_difference(method, path: Path, prob: np.ndarray, p: int) -> tuple[float, int]:
    """max |p_ugafl - p_peer| over ugafl's patches (no margin: each patch predicted alone, as the peers do)."""
    worst, n = 0.0, 0
    with open_slide(path) as slide:
        tissue = detect_tissue(slide)
        patches = patch_grid(slide, method.cfg.mpp, p, tissue=tissue, min_tissue=0.1)
        scale = method.cfg.mpp / slide.mpp
        for res in iter_uncertainty(method, slide, patches, tissue, margin_px=0):
            for loc, mine in zip(res.locations, res.prob):
                y, x = round(loc.y / scale), round(loc.x / scale)
                theirs = prob[y : y + p, x : x + p]
                if theirs.shape == mine.shape:
                    worst, n = max(worst, float(np.abs(theirs - mine).max())), n + 1
    return worst, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1/16,1/4,full")
    parser.add_argument("--methods", default="plain,tta,mc_dropout,ensemble,edue")
    parser.add_argument("--peers", default="monai,tiatoolbox")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "wsi-bench")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--patch-um", type=float, default=1024.0, help="scored patch side, µm (a site's default)")
    parser.add_argument("--passes", type=int, default=8)
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--model", type=Path, default=None, help="a checkpoint (default: fresh weights, seed 0)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    device = pick_device(args.device)
    sizes = [s for s in args.sizes.split(",") if s]
    if len(sizes) > 1:  # one fresh process per size: memory of one size is not what an earlier one left
        report = {"sizes": {}}
        for size in sizes:
            with tempfile.TemporaryDirectory() as tmp:
                part = Path(tmp) / "size.json"
                argv = [a for a in sys.argv[1:]]
                for flag in ("--sizes", "--json"):
                    if flag in argv:
                        i = argv.index(flag)
                        del argv[i : i + 2]
                    argv = [a for a in argv if not a.startswith(flag + "=")]
                run = subprocess.run([sys.executable, __file__, *argv, "--sizes", size, "--json", str(part)])
                if run.returncode != 0:
                    raise SystemExit(f"wsi.py: size {size} failed (exit {run.returncode})")
                data = json.loads(part.read_text())
            report.update({k: v for k, v in data.items() if k != "sizes"})
            report["sizes"].update(data["sizes"])
            if args.json:
                args.json.write_text(json.dumps(report, indent=1))
        _memory_summary(report, sizes)
        return
    names = [m for m in args.methods.split(",") if m]
    peers = [p for p in args.peers.split(",") if p]
    cfg = ModelConfig()
    px = round(args.patch_um / cfg.mpp)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"device {device.type}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; model {cfg.arch} at {cfg.mpp} µm/px, "
          f"patches of {args.patch_um:g} µm ({px} px) + {margin_for(px)} px context a side; T={args.passes}, M={args.members}, "
          f"batch {args.batch}", flush=True)
    report: dict = {"device": device.type, "threads": torch.get_num_threads(), "sizes": {}}
    for size in sizes:
        path = slide_for(size, args.out)
        with open_slide(path) as slide:
            dims = slide.dimensions
        print(f"\n== {size}: {path.name}, {dims[0]} x {dims[1]} px at 0.24 µm/px", flush=True)
        print(f"{'method':<11} {'patches':>7} {'wall s':>8} {'compute s':>9} {'wall/comp':>9} {'patch/s':>8} "
              f"{'RSS before':>10} {'peak RSS':>9} {'cost':>14}", flush=True)
        rows: dict = {}
        methods = make_methods(cfg, names, args.passes, args.members, device, args.model)
        for name, method in methods.items():
            row = run_ugafl(method, path, args.batch, device, patch_px=px)
            rows[name] = row
            units = {"tta": args.passes, "mc_dropout": args.passes, "ensemble": args.members}.get(name, 1)
            cost = ""
            if "plain" in rows and name != "plain":
                ratio = row["compute_s"] / rows["plain"]["compute_s"]
                cost = f"{ratio:.2f} = {ratio / units:.2f}x{units}"
                row["cost_vs_plain"] = ratio
            print(f"{name:<11} {row['patches']:>7d} {row['wall_s']:>8.1f} {row['compute_s']:>9.1f} "
                  f"{row['wall_s'] / max(row['compute_s'], 1e-9):>9.3f} {row['patches'] / row['wall_s']:>8.1f} "
                  f"{row['rss_before_mb']:>9.0f}M {row['peak_rss_mb']:>8.0f}M {cost:>14}", flush=True)
        if "plain" in methods:
            bare = run_ugafl(methods["plain"], path, args.batch, device, patch_px=px, margin_px=0)
            rows["plain, no context"] = bare
            print(f"{'(no context)':<11} {bare['patches']:>7d} {bare['wall_s']:>8.1f} {bare['compute_s']:>9.1f} "
                  f"{bare['wall_s'] / max(bare['compute_s'], 1e-9):>9.3f}    -> blending with context costs "
                  f"{rows['plain']['compute_s'] / bare['compute_s']:.2f}x the compute, {rows['plain']['wall_s'] / bare['wall_s']:.2f}x "
                  f"the wall time (the limit is 1.3)", flush=True)
        peer_rows: dict = {}
        if peers:
            pcfg = replace(cfg, mpp=PEER_MPP)
            torch.manual_seed(0)
            model = build_model(pcfg).to(device).eval()
            plain = PlainForward(model, pcfg)
            with open_slide(path) as slide:
                tissue = detect_tissue(slide)
                patches = patch_grid(slide, pcfg.mpp, pcfg.patch_size, tissue=tissue, min_tissue=0.1)
                scale = pcfg.mpp / slide.mpp
                keep = {(round(q.x / scale) // pcfg.patch_size, round(q.y / scale) // pcfg.patch_size) for q in patches}
                level = slide.best_level_for(pcfg.mpp).index
            bare = run_ugafl(plain, path, args.batch, device, margin_px=0)
            peer_rows["ugafl plain"] = bare
            print(f"\n   plain pass, {pcfg.patch_size} px patches without context at {PEER_MPP} µm/px (pyramid level {level}), "
                  "as the peers run it", flush=True)
            print(f"   {'tool':<26} {'patches':>7} {'wall s':>8} {'patch/s':>8} {'peak RSS':>9} {'ugafl/this':>10} {'max |dp|':>9}",
                  flush=True)
            compare = size == sizes[0]
            for label, row in (("ugafl plain", bare),):
                print(f"   {label:<26} {row['patches']:>7d} {row['wall_s']:>8.1f} {row['patches'] / row['wall_s']:>8.1f} "
                      f"{row['peak_rss_mb']:>8.0f}M {'':>10} {'':>9}", flush=True)
            for peer in peers:
                with tempfile.TemporaryDirectory() as tmp:
                    if peer == "monai":
                        row, prob = monai_plain(model, pcfg, path, args.batch, keep, level, device)
                        note = ""
                    elif peer == "tiatoolbox":
                        row, prob, note = tia_plain(model, pcfg, path, args.batch, Path(tmp))
                    else:
                        raise SystemExit(f"--peers: unknown peer {peer!r} (monai, tiatoolbox)")
                if row is None:
                    print(f"   {peer:<26} {note}", flush=True)
                    peer_rows[peer] = {"note": note}
                    continue
                diff = ""
                if compare:
                    worst, n = largest_difference(plain, path, prob, pcfg.patch_size)
                    row["max_abs_diff"], row["compared_patches"] = worst, n
                    diff = f"{worst:.1e}"
                row["ugafl_over_peer"] = bare["wall_s"] / row["wall_s"]
                peer_rows[peer] = row
                print(f"   {peer:<26} {row['patches']:>7d} {row['wall_s']:>8.1f} {row['patches'] / row['wall_s']:>8.1f} "
                      f"{row['peak_rss_mb']:>8.0f}M {row['ugafl_over_peer']:>9.2f}x {diff:>9}", flush=True)
                del prob
        report["sizes"][size] = {"slide": path.name, "dimensions": dims, "methods": rows, "peers": peer_rows}
        if args.json:
            args.json.write_text(json.dumps(report, indent=1))


def _memory_summary(report: dict, sizes: list[str]) -> None:
    first, last = sizes[0], sizes[-1]
    print(f"\npeak RSS, {last} over {first} (each size in a fresh process, methods in the same order; the limit is 1.2):",
          flush=True)
    for name in report["sizes"][first]["methods"]:
        a, b = report["sizes"][first]["methods"][name], report["sizes"][last]["methods"].get(name)
        if b:
            print(f"  {name:<18} {b['peak_rss_mb'] / a['peak_rss_mb']:.2f}x ({a['peak_rss_mb']:.0f} -> {b['peak_rss_mb']:.0f} MB)")
    for name in report["sizes"][first]["peers"]:
        a, b = report["sizes"][first]["peers"][name], report["sizes"][last]["peers"].get(name)
        if b and "peak_rss_mb" in a and "peak_rss_mb" in b:
            print(f"  {name:<18} {b['peak_rss_mb'] / a['peak_rss_mb']:.2f}x ({a['peak_rss_mb']:.0f} -> {b['peak_rss_mb']:.0f} MB)")


if __name__ == "__main__":
    main()
