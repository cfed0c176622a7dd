"""Peer runner: TIAToolbox 2.1.3's SemanticSegmentor on one whole slide with our TorchScript UNet.

Run in the separate environment built by benchmarks/peers/setup_tiatoolbox.sh:

    .venv-tia/bin/python benchmarks/peers/tiatoolbox_segment.py --slide SLIDE.tif --model MODEL.pt \
        --mpp 2.0 --patch 256 --batch 8 --out OUT.npy --json RESULT.json

MODEL.pt: TorchScript, NCHW float RGB in [0, 1] -> 2 logit channels, class 1 = tumour. It is wrapped
as a tiatoolbox ModelABC (preproc uint8 HWC -> float32 CHW in [0, 1]; infer_batch -> softmax tumour
probability, NHW1) and run through SemanticSegmentor.run(patch_mode=False) at --mpp, patch = stride
= --patch (no overlap), on CPU. TIAToolbox's own tissue mask (Otsu at 1.25x, auto_get_mask) is on by
default, like our pipeline, which predicts tissue patches only; --no-tissue-mask predicts every patch.

Output: OUT.npy, float32 (H, W) tumour probability on TIAToolbox's grid at --mpp, whose pixel (i, j)
covers the level-0 box starting at (j, i) * mpp / slide_mpp (origin = slide origin), H x W =
reader.slide_dimensions(mpp) (see the JSON). Patches TIAToolbox skipped (off tissue) are 0.
The JSON has wall_s (the whole SemanticSegmentor.run call, including its zarr writing), patches,
patches_per_s, peak_rss_mb (VmHWM of this process: imports included) and more.

Compatibility note: tiatoolbox 2.1.3 caps torch<2.13/torchvision<0.28, and the only torchvision
built for torch 2.13.0 (0.28.0, PyPI's wheel is the +cu130 build) cannot load its compiled ops next
to torch 2.13.0+cpu (its _C.so needs libtorch_cuda.so), which makes a plain `import torchvision`
fail on an unguarded register_fake("torchvision::nms"). tiatoolbox.models imports torchvision, so
before importing it we declare the two op schemas torchvision registers fakes for (nms, qnms),
without kernels. torchvision.ops' compiled ops stay unusable; this path does not call them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

_TORCHVISION_SHIM_LIB = None  # keeps the schema-only torch.library alive


def _vm_hwm_mb() -> float:
    """Peak resident memory of this process (VmHWM), MB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def ensure_torchvision_importable() -> bool:
    """Make `import torchvision` work when its compiled ops cannot load; True if the shim was needed."""
    global _TORCHVISION_SHIM_LIB
    if "torchvision" in sys.modules:
        return False
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        raise SystemExit("tiatoolbox_segment: torchvision is not installed in this environment")
    so = Path(spec.origin).parent / "_C.so"
    try:
        torch.ops.load_library(str(so))
        return False
    except (OSError, ImportError):
        pass
    lib = torch.library.Library("torchvision", "FRAGMENT")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    _TORCHVISION_SHIM_LIB = lib
    return True


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def import_tiatoolbox():
    shim = ensure_torchvision_importable()
    import tiatoolbox
    from tiatoolbox import rcParam
    from tiatoolbox.models.engine.io_config import IOSegmentorConfig
    from tiatoolbox.models.engine.semantic_segmentor import SemanticSegmentor
    from tiatoolbox.models.models_abc import ModelABC

    rcParam["torch_compile_mode"] = "disable"  # CPU: tiatoolbox would skip torch.compile anyway
    return tiatoolbox, shim, IOSegmentorConfig, SemanticSegmentor, ModelABC


def build_model(model_path: Path, ModelABC):
    class TorchScriptTumourSegmenter(ModelABC):
        """Our TorchScript UNet as a tiatoolbox model: 2 logits in, tumour probability out."""

        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net
            self.class_dict = {0: "background", 1: "tumour"}

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        @staticmethod
        def preproc(image: np.ndarray) -> np.ndarray:
            # uint8 HWC RGB -> float32 CHW in [0, 1] (the DataLoader stacks these to NCHW).
            return np.ascontiguousarray(np.moveaxis(image[..., :3], -1, 0), dtype=np.float32) / np.float32(255.0)

        @staticmethod
        def postproc(image):
            # WSI "predictions" = tumour mask at 0.5 (lazy dask); the probabilities are kept too.
            return image[..., 0] >= 0.5

        @staticmethod
        def infer_batch(model: torch.nn.Module, batch_data, *, device: str) -> np.ndarray:
            model.eval()
            x = torch.as_tensor(batch_data).to(device=device, dtype=torch.float32)
            with torch.inference_mode():
                prob = torch.softmax(model(x), dim=1)[:, 1:2]  # N,1,H,W tumour probability
            return prob.permute(0, 2, 3, 1).contiguous().cpu().numpy()  # NHWC, C=1

    net = torch.jit.load(str(model_path), map_location="cpu").eval()
    return TorchScriptTumourSegmenter(net).eval()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slide", type=Path)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--mpp", type=float, default=2.0, help="read and output resolution, um/px")
    ap.add_argument("--patch", type=int, default=256, help="patch side = stride (no overlap)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", type=Path, help="tumour probability map, .npy float32 HxW at --mpp")
    ap.add_argument("--json", type=Path, help="result JSON (also printed)")
    ap.add_argument("--no-tissue-mask", action="store_true", help="predict every patch (auto_get_mask=False)")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers (tiatoolbox default 0)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--slide-mpp", type=float, default=None, help="override the slide's level-0 mpp")
    ap.add_argument("--work-dir", type=Path, default=None, help="where tiatoolbox writes its zarr (default: temp)")
    ap.add_argument("--self-check", action="store_true", help="only import tiatoolbox and print versions")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    t_import = time.perf_counter()
    tiatoolbox, shim, IOSegmentorConfig, SemanticSegmentor, ModelABC = import_tiatoolbox()
    import_s = time.perf_counter() - t_import
    if args.self_check:
        import torchvision

        print(json.dumps({"tiatoolbox": tiatoolbox.__version__, "torch": torch.__version__,
                          "torchvision": torchvision.__version__, "torchvision_ops_shim": shim}))
        return 0
    for name in ("slide", "model", "out"):
        if getattr(args, name) is None:
            ap.error(f"--{name} is required")

    from tiatoolbox.wsicore.wsireader import WSIReader

    wsireader_kwargs = {"mpp": (args.slide_mpp, args.slide_mpp)} if args.slide_mpp else None
    reader = WSIReader.open(args.slide, **(wsireader_kwargs or {}))
    info = reader.info
    grid_wh = [int(v) for v in reader.slide_dimensions(resolution=args.mpp, units="mpp")]
    slide_info = {
        "reader": type(reader).__name__,
        "slide_mpp": [float(v) for v in info.mpp],
        "level0_wh": [int(v) for v in info.slide_dimensions],
        "level_downsamples": [float(v) for v in info.level_downsamples],
    }
    del reader

    model = build_model(args.model, ModelABC)
    segmentor = SemanticSegmentor(model=model, batch_size=args.batch, num_workers=args.workers,
                                  device="cpu", verbose=False)
    res = [{"units": "mpp", "resolution": args.mpp}]
    ioconfig = IOSegmentorConfig(
        input_resolutions=res,
        output_resolutions=res,
        patch_input_shape=(args.patch, args.patch),
        patch_output_shape=(args.patch, args.patch),
        stride_shape=(args.patch, args.patch),
    )

    own_tmp = args.work_dir is None
    work = Path(tempfile.mkdtemp(prefix="tia_seg_")) if own_tmp else args.work_dir
    save_dir = work / "out"
    try:
        rss_before = rss_mb()
        ru_children_before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        t0 = time.perf_counter()
        out = segmentor.run(
            [args.slide],
            masks=None,
            ioconfig=ioconfig,
            patch_mode=False,
            save_dir=save_dir,
            overwrite=True,
            output_type="zarr",
            device="cpu",
            auto_get_mask=not args.no_tissue_mask,
            return_probabilities=True,
            wsireader_kwargs=wsireader_kwargs,
        )
        wall_s = time.perf_counter() - t0
        # VmHWM belongs to this process's own memory map; ru_maxrss would carry the peak of the
        # process that started this one (Linux keeps it across exec).
        ru_self = _vm_hwm_mb()
        ru_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        patches = int(len(segmentor.dataloader.dataset.inputs))
        patches_all = int(len(getattr(segmentor.dataloader.dataset, "full_outputs", segmentor.dataloader.dataset.outputs)))

        import zarr

        zpath = out[next(iter(out))]
        group = zarr.open(str(zpath), mode="r")
        prob = np.asarray(group["probabilities"][...], dtype=np.float32)
        prob = prob[..., 0] if prob.ndim == 3 else prob
        args.out.parent.mkdir(parents=True, exist_ok=True)
        np.save(args.out, np.ascontiguousarray(prob, dtype=np.float32))
    finally:
        if own_tmp:
            shutil.rmtree(work, ignore_errors=True)

    w0, h0 = slide_info["level0_wh"]
    smpp = slide_info["slide_mpp"][0]
    result = {
        "engine": "tiatoolbox.SemanticSegmentor.run(patch_mode=False)",
        "tiatoolbox": tiatoolbox.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torchvision_ops_shim": shim,
        "slide": str(args.slide),
        **slide_info,
        "mpp": args.mpp,
        "patch": args.patch,
        "stride": args.patch,
        "batch": args.batch,
        "workers": args.workers,
        "tissue_mask": "tiatoolbox auto_get_mask (Otsu, 1.25x)" if not args.no_tissue_mask else "off",
        "wall_s": round(wall_s, 3),
        "patches": patches,
        "patches_in_grid": patches_all,
        "patches_per_s": round(patches / wall_s, 3) if wall_s > 0 else None,
        "peak_rss_mb": round(ru_self, 1),
        # ru_maxrss of the largest finished child; a child started while importing (not by
        # run()) shows up here already before the run, hence both numbers.
        "peak_rss_children_mb": round(ru_children, 1),
        "peak_rss_children_before_run_mb": round(ru_children_before, 1),
        "rss_before_run_mb": round(rss_before, 1),
        "import_s": round(import_s, 3),
        "out": str(args.out),
        "out_shape_hw": [int(prob.shape[0]), int(prob.shape[1])],
        "tiatoolbox_grid_hw": [grid_wh[1], grid_wh[0]],
        "ugafl_grid_hw": [max(1, round(h0 * smpp / args.mpp)), max(1, round(w0 * smpp / args.mpp))],
        "grid_origin": "level-0 (0, 0); pixel (i, j) starts at level-0 (j, i) * mpp / slide_mpp",
        "tumour_fraction_ge_0_5": round(float((prob >= 0.5).mean()), 6),
        "nonzero_fraction": round(float((prob > 0).mean()), 6),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    sys.exit(main())
