"""Recipe: a model exported with `ugafl export --format torchscript` run in TIAToolbox 2.1.3's
SemanticSegmentor on a whole slide, configured from the export's own metadata (no ugafl import).

Run in the separate environment built by benchmarks/peers/setup_tiatoolbox.sh:

    ugafl export --model central.pt --format torchscript --out central.ts
    .venv-tia/bin/python benchmarks/peers/tiatoolbox_exported.py --slide SLIDE.tif --model central.ts \
        --out PROB.npy --json RESULT.json

Everything about the model comes from the `ugafl.json` extra file of the TorchScript: the working
resolution (mpp, µm/px) at which TIAToolbox reads the slide and writes the output, the patch size
(patch = stride, no overlap), the normalisation (x = (rgb - mean) / std on uint8 RGB), the class
names, the class channels and whether the output is logits (softmax) or log-probabilities (exp).

The slide is read through TIAToolbox's OpenSlideWSIReader (any format OpenSlide opens: generic
pyramidal TIFF, SVS, NDPI, MRXS ...; resolution from the file, --slide-mpp overrides it). TIAToolbox
2.1.3's WSIReader.open, which its patch dataset calls again for every patch, takes a generic
pyramidal `.tif`/`.tiff` (not SVS, OME or BigTIFF) for a flat image: a VirtualWSIReader that
decodes level 0 whole, finds no resolution in it and resamples every patch from level 0 (the
inputs then differ from the pyramid level's pixels by about one grey level, max 11 on a synthetic
slide). So for this one slide, WSIReader.open is routed to OpenSlideWSIReader (`--reader auto`
leaves TIAToolbox's choice alone).

Output: PROB.npy, float32 (H, W, K): the K class probabilities on TIAToolbox's grid at the model's
mpp, whose pixel (i, j) covers the level-0 box starting at (j, i) * mpp / slide_mpp; patches that
TIAToolbox skipped (off its tissue mask, Otsu at 1.25x; --no-tissue-mask predicts every patch) are 0.
The JSON has the metadata used, the grid, timings and summary numbers; it is also printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiatoolbox_segment import import_tiatoolbox  # noqa: E402  (the torchvision op shim, then tiatoolbox)

METADATA_FILE = "ugafl.json"
EXPORT_FORMAT = "ugafl-export/1"


def load_export(path: Path) -> tuple[torch.jit.ScriptModule, dict]:
    """The TorchScript module and its ugafl metadata; SystemExit when it is not a ugafl export."""
    extra = {METADATA_FILE: ""}
    net = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    try:
        meta = json.loads(extra[METADATA_FILE] or "null")
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise SystemExit(f"tiatoolbox_exported: {path}: no {METADATA_FILE} of format {EXPORT_FORMAT} in the TorchScript "
                         "file (export it with `ugafl export --format torchscript`)")
    return net.eval(), meta


def build_model(net: torch.nn.Module, meta: dict, ModelABC):
    """The exported network as a TIAToolbox model: uint8 HWC RGB in, K class probabilities out (NHWC)."""
    norm = meta["input"]["normalisation"]
    channels = meta["input"]["channels"]
    mean = np.asarray(norm["mean"], np.float32).reshape(channels, 1, 1)
    std = np.asarray(norm["std"], np.float32).reshape(channels, 1, 1)
    class_channels = list(meta["output"]["class_channels"])
    log_probabilities = meta["output"]["kind"] == "log-probabilities"

    class ExportedSegmenter(ModelABC):
        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.class_dict = dict(enumerate(meta["classes"]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        @staticmethod
        def preproc(image: np.ndarray) -> np.ndarray:
            # uint8 HWC RGB -> float32 CHW, normalised as the metadata says (ugafl: rgb / 255).
            chw = np.moveaxis(np.asarray(image)[..., :channels], -1, 0).astype(np.float32)
            return np.ascontiguousarray((chw - mean) / std)

        @staticmethod
        def postproc(image):
            return image.argmax(axis=-1)  # the class map ("predictions"); probabilities are kept too

        @staticmethod
        def infer_batch(model: torch.nn.Module, batch_data, *, device: str) -> np.ndarray:
            model.eval()
            x = torch.as_tensor(batch_data).to(device=device, dtype=torch.float32)
            with torch.inference_mode():
                out = model(x)[:, class_channels].float()
                prob = out.exp() if log_probabilities else torch.softmax(out, dim=1)
            return prob.permute(0, 2, 3, 1).contiguous().cpu().numpy()  # NHWC, C = classes

    return ExportedSegmenter().eval()


def route_slide_to_openslide(slide: Path) -> None:
    """Make TIAToolbox open `slide` (and only it) with OpenSlideWSIReader wherever it calls
    WSIReader.open (the engine, the patch dataset, the tissue mask)."""
    from tiatoolbox.wsicore.wsireader import OpenSlideWSIReader, WSIReader

    original = WSIReader.open
    target = slide.resolve()

    def open_slide(input_img, mpp=None, power=None, post_proc="auto", **kwargs):
        if isinstance(input_img, (str, Path)) and Path(input_img).resolve() == target:
            return OpenSlideWSIReader(target, mpp=mpp, power=power, post_proc=post_proc)
        return original(input_img, mpp=mpp, power=power, post_proc=post_proc, **kwargs)

    WSIReader.open = staticmethod(open_slide)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slide", type=Path, required=True)
    ap.add_argument("--model", type=Path, required=True, help="TorchScript file written by `ugafl export`")
    ap.add_argument("--out", type=Path, required=True, help="class probabilities, .npy float32 (H, W, K) at the model's mpp")
    ap.add_argument("--json", type=Path, help="result JSON (also printed)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--slide-mpp", type=float, default=None, help="override the slide's level-0 mpp")
    ap.add_argument("--no-tissue-mask", action="store_true", help="predict every patch (auto_get_mask=False)")
    ap.add_argument("--reader", choices=("openslide", "auto"), default="openslide",
                    help="openslide: read the slide through OpenSlide (default); auto: TIAToolbox's WSIReader.open")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--work-dir", type=Path, default=None, help="where tiatoolbox writes its zarr (default: temp)")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    net, meta = load_export(args.model)
    mpp, patch = float(meta["mpp"]), int(meta["patch_size"])
    t_import = time.perf_counter()
    tiatoolbox, shim, IOSegmentorConfig, SemanticSegmentor, ModelABC = import_tiatoolbox()
    import_s = time.perf_counter() - t_import
    from tiatoolbox.wsicore.wsireader import WSIReader

    if args.reader == "openslide":
        route_slide_to_openslide(args.slide)
    wsireader_kwargs = {"mpp": (args.slide_mpp, args.slide_mpp)} if args.slide_mpp else {}
    reader = WSIReader.open(args.slide, **wsireader_kwargs)
    if reader.info.mpp is None:
        raise SystemExit(f"tiatoolbox_exported: {args.slide}: no resolution in the file; pass --slide-mpp")
    grid_wh = [int(v) for v in reader.slide_dimensions(resolution=mpp, units="mpp")]

    segmentor = SemanticSegmentor(model=build_model(net, meta, ModelABC), batch_size=args.batch, num_workers=0,
                                  device="cpu", verbose=False)
    res = [{"units": "mpp", "resolution": mpp}]
    ioconfig = IOSegmentorConfig(input_resolutions=res, output_resolutions=res, patch_input_shape=(patch, patch),
                                 patch_output_shape=(patch, patch), stride_shape=(patch, patch))
    own_tmp = args.work_dir is None
    work = Path(tempfile.mkdtemp(prefix="tia_exported_")) if own_tmp else args.work_dir
    try:
        t0 = time.perf_counter()
        out = segmentor.run([args.slide], masks=None, ioconfig=ioconfig, patch_mode=False, save_dir=work / "out",
                            overwrite=True, output_type="zarr", device="cpu", auto_get_mask=not args.no_tissue_mask,
                            return_probabilities=True, wsireader_kwargs=wsireader_kwargs or None)
        wall_s = time.perf_counter() - t0
        import zarr

        group = zarr.open(str(out[next(iter(out))]), mode="r")
        prob = np.asarray(group["probabilities"][...], dtype=np.float32)
        prob = prob[..., None] if prob.ndim == 2 else prob
        patches = int(len(segmentor.dataloader.dataset.inputs))
    finally:
        if own_tmp:
            shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, np.ascontiguousarray(prob))

    tumour = meta["classes"].index("tumour") if "tumour" in meta["classes"] else None
    result = {
        "engine": "tiatoolbox.SemanticSegmentor.run(patch_mode=False)",
        "tiatoolbox": tiatoolbox.__version__,
        "torch": torch.__version__,
        "torchvision_ops_shim": shim,
        "model": str(args.model),
        "ugafl_version": meta["ugafl_version"],
        "source_sha256": meta["source_checkpoint"]["sha256"],
        "mpp": mpp,
        "patch": patch,
        "normalisation": meta["input"]["normalisation"]["formula"],
        "output_kind": meta["output"]["kind"],
        "classes": meta["classes"],
        "slide": str(args.slide),
        "reader": type(reader).__name__,
        "slide_mpp": [float(v) for v in reader.info.mpp],
        "level0_wh": [int(v) for v in reader.info.slide_dimensions],
        "tissue_mask": "off" if args.no_tissue_mask else "tiatoolbox auto_get_mask (Otsu, 1.25x)",
        "patches": patches,
        "wall_s": round(wall_s, 3),
        "import_s": round(import_s, 3),
        "out": str(args.out),
        "out_shape_hwk": [int(v) for v in prob.shape],
        "tiatoolbox_grid_hw": [grid_wh[1], grid_wh[0]],
        "predicted_fraction": round(float((prob.sum(axis=-1) > 0).mean()), 6),
        "tumour_fraction_ge_0_5": round(float((prob[..., tumour] >= 0.5).mean()), 6) if tumour is not None else None,
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
