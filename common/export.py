"""Export a checkpoint's network for other tools: TorchScript (plain `torch.jit.load`), ONNX
(onnxruntime and friends) and a MONAI bundle (`monai.bundle.load`). Every export carries the same
metadata, so a tool that knows nothing of ugafl can feed the model correctly: the working
resolution (µm/px), the patch size, the input's channels and normalisation, the classes, what the
output means, ugafl's version and the source checkpoint's SHA-256.

Each export is checked before it is put in place: the written file is loaded back with the
format's own loader and run on a random batch beside the checkpoint's own model; more than a
rounding difference refuses the export. Nothing half-written is left behind: files go to a temp
name and are renamed, a bundle is built in a temp folder and renamed.

Formats live in `FORMATS` (name -> Format); `export_model` is the one entry point."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import shutil
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ugafl.common.atomic import atomic_write, fsync_dir, temp_path
from ugafl.common.checkpoint import load_checkpoint
from ugafl.common.errors import UgaflError
from ugafl.common.model import ModelConfig

EXPORT_FORMAT = "ugafl-export/1"
METADATA_FILE = "ugafl.json"  # TorchScript extra file / ONNX metadata_props key with the whole metadata
ONNX_OPSET = 17
INPUT_NAME = "image"
# An export whose reloaded outputs differ from the checkpoint's model by more than this (times the
# largest output magnitude, at least 1) is refused; float32 rounding gives about 1e-6 here.
VERIFY_TOLERANCE = 1e-3
VERIFY_BATCH = 2  # the check runs a batch of 2; the export itself is traced or scripted with 1
INSTALL_HINT = "pip install 'ugafl[export]'"


class ExportError(UgaflError):
    """An export cannot be made: unknown format, unusable output path, unsupported model kind,
    a missing optional package, or an export that does not reproduce the checkpoint's outputs."""


@dataclass(frozen=True)
class Source:
    """The checkpoint being exported: its network (eval mode, CPU) and where it came from."""

    path: Path
    sha256: str
    content_hash: str
    model: nn.Module
    cfg: ModelConfig


@dataclass(frozen=True)
class ExportResult:
    path: Path
    fmt: str
    metadata: dict
    max_abs_diff: float  # exported vs checkpoint model on the verification batch


@dataclass(frozen=True)
class Format:
    """One export format. `write(source, metadata, tmp)` writes the export to `tmp` (a file, or an
    existing empty folder when `folder`) and returns the max abs difference of the reloaded export
    against the source model. `refuse(cfg, checkpoint)` names why a model kind cannot be exported, or None."""

    write: Callable[[Source, dict, Path], float]
    folder: bool = False
    needs: tuple[str, ...] = ()  # importable modules the format needs (the `export` extra)
    refuse: Callable[[ModelConfig, Path], str | None] = field(default=lambda cfg, checkpoint: None)
    suffix: str = ""  # the usual file name ending, for the docs and messages


# ---------------------------------------------------------------------------------------------
# the entry point


def export_model(checkpoint: str | Path, out: str | Path, fmt: str, *, force: bool = False) -> ExportResult:
    """Export the network of `checkpoint` to `out` in format `fmt` (one of FORMATS).

    `out` must not exist unless `force`: then a file is replaced atomically, and a folder only when
    it is a bundle ugafl exported (never any other folder). ExportError (a UgaflError) for anything
    a user can fix, before any work is done where it can be known in advance."""
    checkpoint, out = Path(checkpoint), Path(out)
    spec = FORMATS.get(fmt)
    if spec is None:
        raise ExportError(f"unknown export format {fmt!r}; one of {', '.join(FORMATS)}")
    _check_output(out, spec, force, checkpoint)
    missing = [name for name in spec.needs if find_spec(name) is None]
    if missing:
        raise ExportError(f"{fmt} export needs {', '.join(missing)}: {INSTALL_HINT}")
    source = load_source(checkpoint)
    reason = spec.refuse(source.cfg, checkpoint)
    if reason:
        raise ExportError(f"{checkpoint}: cannot export as {fmt}: {reason}")
    meta = export_metadata(source, fmt)
    try:
        diff = _place_folder(out, spec, source, meta) if spec.folder else _place_file(out, spec, source, meta)
    except OSError as error:  # disk full, permissions, a folder that vanished: nothing was left behind
        raise ExportError(f"{out}: cannot be written: {error.strerror or error}") from None
    return ExportResult(path=out, fmt=fmt, metadata=meta, max_abs_diff=diff)


def load_source(checkpoint: Path) -> Source:
    """The checkpoint's model on the CPU in eval mode, with the file's SHA-256 (CheckpointError if
    the file is missing, unreadable or tampered with)."""
    ckpt = load_checkpoint(checkpoint, "cpu")  # refuses a missing file before hashing it
    return Source(path=checkpoint, sha256=file_sha256(checkpoint), content_hash=ckpt.content_hash,
                  model=ckpt.model.eval(), cfg=ckpt.model_config)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_output(out: Path, spec: Format, force: bool, checkpoint: Path) -> None:
    parent = out.parent
    if not parent.is_dir():
        raise ExportError(f"{parent}: output folder does not exist (create it first)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ExportError(f"{parent}: output folder is not writable")
    if out.exists() and checkpoint.exists() and out.resolve() == checkpoint.resolve():
        raise ExportError(f"{out}: is the checkpoint being exported; choose another output path")
    if not (out.exists() or out.is_symlink()):
        return
    if not force:
        raise ExportError(f"{out}: already exists; pass --force to replace it")
    if spec.folder:
        if not out.is_dir() or out.is_symlink():
            raise ExportError(f"{out}: exists and is not a folder; a bundle is a folder, not replacing it")
        if not is_ugafl_bundle(out):
            raise ExportError(f"{out}: is a folder that is not a bundle exported by ugafl; not replacing it")
    elif out.is_dir():
        raise ExportError(f"{out}: is a folder; give a file name for the {spec.suffix or 'exported'} file")


def is_ugafl_bundle(folder: Path) -> bool:
    """True when `folder` holds configs/metadata.json with ugafl's export metadata in it."""
    try:
        meta = json.loads((folder / "configs" / "metadata.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and isinstance(meta.get("ugafl"), dict) and meta["ugafl"].get("format") == EXPORT_FORMAT


def _place_file(out: Path, spec: Format, source: Source, meta: dict) -> float:
    result: list[float] = []
    atomic_write(out, lambda tmp: result.append(spec.write(source, meta, tmp)))
    return result[0]


def _place_folder(out: Path, spec: Format, source: Source, meta: dict) -> float:
    tmp = temp_path(out)
    tmp.mkdir()
    old: Path | None = None
    try:
        diff = spec.write(source, meta, tmp)
        for path in sorted(tmp.rglob("*")):
            if path.is_file():
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
        if out.exists():
            old = temp_path(out)
            os.replace(out, old)
        os.replace(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out.exists():
            os.replace(old, out)  # put the previous bundle back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return diff


# ---------------------------------------------------------------------------------------------
# metadata


def ugafl_version() -> str:
    try:
        return importlib_metadata.version("ugafl")
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def class_names(cfg: ModelConfig) -> list[str]:
    """Class 0 is background and class 1 tumour (the model factory's convention); any further
    classes have no names in ugafl's config and are numbered."""
    names = ["background", "tumour"]
    return names[: cfg.num_classes] + [f"class_{i}" for i in range(len(names), cfg.num_classes)]


def size_multiple(cfg: ModelConfig) -> int:
    """Input height and width must be multiples of this (the network's total downsampling)."""
    depth = len(cfg.channels) if cfg.arch == "unet" else len(cfg.dynunet_filters)
    return 2 ** (depth - 1)


def output_name(cfg: ModelConfig) -> str:
    return "log_probabilities" if cfg.members > 1 else "logits"


def export_metadata(source: Source, fmt: str) -> dict:
    """What every export carries (JSON-serialisable)."""
    cfg = source.cfg
    c = cfg.in_channels
    output: dict = {
        "name": output_name(cfg),
        "layout": "NCHW",
        "dtype": "float32",
        "channels": cfg.out_channels if cfg.members == 1 else cfg.num_classes,
        "spatial": "same height and width as the input",
        "class_channels": list(range(cfg.num_classes)),
    }
    if cfg.members > 1:
        output["kind"] = "log-probabilities"
        output["meaning"] = (f"log of the mean softmax of the ensemble's {cfg.members} members; "
                             "exp() or softmax over the channels gives the class probabilities")
    else:
        output["kind"] = "logits"
        output["meaning"] = "unnormalised class scores; softmax over channels 0..num_classes-1 gives the class probabilities"
    if cfg.disagreement_head:
        output["extra_channels"] = {str(cfg.num_classes): "EDUE disagreement head, a logit: the predicted raters' variance "
                                                          "is 0.25 * sigmoid(x), in 0..0.25"}
    return {
        "format": EXPORT_FORMAT,
        "exported_as": fmt,
        "ugafl_version": ugafl_version(),
        "torch_version": torch.__version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "source_checkpoint": {"file": source.path.name, "sha256": source.sha256, "content_hash": source.content_hash},
        "model_config": cfg.to_dict(),
        "task": "semantic segmentation of H&E whole-slide image patches (class 1 = tumour)",
        "mpp": cfg.mpp,
        "mpp_unit": "µm/px",
        "patch_size": cfg.patch_size,
        "patch_size_unit": "px at mpp",
        "input": {
            "name": INPUT_NAME,
            "layout": "NCHW",
            "dtype": "float32",
            "channels": c,
            "channel_order": ["R", "G", "B"][:c] if c <= 3 else [f"c{i}" for i in range(c)],
            "size_multiple": size_multiple(cfg),
            "normalisation": {
                "from": "RGB uint8, 0..255",
                "formula": "x = rgb / 255",
                "value_range": [0.0, 1.0],
                # the same as mean/std on the uint8 values: x = (rgb - mean) / std
                "mean": [0.0] * c,
                "std": [255.0] * c,
            },
        },
        "num_classes": cfg.num_classes,
        "classes": class_names(cfg),
        "output": output,
    }


# ---------------------------------------------------------------------------------------------
# verification


def _verification_batch(cfg: ModelConfig) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.rand((VERIFY_BATCH, cfg.in_channels, cfg.patch_size, cfg.patch_size), generator=generator)


def _compare(fmt: str, source: Source, x: torch.Tensor, got: np.ndarray | torch.Tensor) -> float:
    with torch.no_grad():
        want = source.model(x).float()
    got = torch.as_tensor(np.asarray(got) if not isinstance(got, torch.Tensor) else got).float()
    if tuple(got.shape) != tuple(want.shape):
        raise ExportError(f"{fmt} export gives output shape {tuple(got.shape)}, the checkpoint's model {tuple(want.shape)}")
    diff = float((got - want).abs().max())
    limit = VERIFY_TOLERANCE * max(1.0, float(want.abs().max()))
    if not diff <= limit:
        raise ExportError(f"{fmt} export does not reproduce the checkpoint's outputs (max abs difference {diff:.3g} "
                          f"> {limit:.3g}); nothing was written")
    return diff


@contextmanager
def _quiet_export_warnings() -> Iterator[None]:
    """torch 2.13 deprecates torch.jit and the TorchScript-based ONNX exporter, and warns about
    instance norm in eval mode and about shape checks the tracer freezes (MONAI's and torch's own
    argument checks; the export is checked at another batch size and the ONNX test at another
    patch size): expected here, so not shown to the user."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        for message in (r".*ONNX export mode is set to TrainingMode\.EVAL", r".*TorchScript type system doesn't support"):
            warnings.filterwarnings("ignore", message=message)
        yield


# ---------------------------------------------------------------------------------------------
# TorchScript


def script_model(source: Source) -> torch.jit.ScriptModule:
    with _quiet_export_warnings():
        return torch.jit.script(source.model)


def write_torchscript(source: Source, meta: dict, tmp: Path, extra_files: dict[str, str] | None = None) -> float:
    """torch.jit.script of the network (dropout and eval mode kept as in ugafl), the metadata as
    the extra file `ugafl.json`; `torch.jit.load(path, _extra_files={"ugafl.json": ""})` reads it."""
    scripted = script_model(source)
    files = {METADATA_FILE: json.dumps(meta, indent=1), **(extra_files or {})}
    with _quiet_export_warnings():
        torch.jit.save(scripted, str(tmp), _extra_files=files)
        loaded = torch.jit.load(str(tmp), map_location="cpu")
    x = _verification_batch(source.cfg)
    with torch.no_grad():
        return _compare("torchscript", source, x, loaded(x))


# ---------------------------------------------------------------------------------------------
# ONNX


def onnx_metadata_props(meta: dict) -> dict[str, str]:
    """The ONNX model's metadata_props: the whole metadata as JSON under `ugafl.json`, and the
    fields a tool most likely wants as flat strings."""
    return {
        METADATA_FILE: json.dumps(meta),
        "mpp": repr(meta["mpp"]),
        "mpp_unit": meta["mpp_unit"],
        "patch_size": str(meta["patch_size"]),
        "in_channels": str(meta["input"]["channels"]),
        "num_classes": str(meta["num_classes"]),
        "classes": ",".join(meta["classes"]),
        "normalisation": meta["input"]["normalisation"]["formula"],
        "output": meta["output"]["kind"],
        "ugafl_version": meta["ugafl_version"],
        "source_sha256": meta["source_checkpoint"]["sha256"],
    }


def write_onnx(source: Source, meta: dict, tmp: Path) -> float:
    """torch.onnx.export with the TorchScript-based exporter (`dynamo=False`: the dynamo exporter
    needs onnxscript, which this needs not), opset 17, batch, height and width dynamic; the
    metadata in metadata_props. Checked with onnxruntime on the CPU."""
    import onnx
    import onnxruntime

    cfg = source.cfg
    out_name = output_name(cfg)
    axes = {0: "batch", 2: "height", 3: "width"}
    buffer = io.BytesIO()
    example = torch.zeros((1, cfg.in_channels, cfg.patch_size, cfg.patch_size))
    with _quiet_export_warnings():
        torch.onnx.export(source.model, (example,), buffer, dynamo=False, opset_version=ONNX_OPSET,
                          input_names=[INPUT_NAME], output_names=[out_name],
                          dynamic_axes={INPUT_NAME: axes, out_name: axes})
    model = onnx.load_from_string(buffer.getvalue())
    model.doc_string = (f"ugafl {meta['ugafl_version']}: {meta['task']}; input RGB/255 at {meta['mpp']} µm/px, "
                        f"{meta['patch_size']} px patches; output {meta['output']['kind']}")
    for key, value in onnx_metadata_props(meta).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp))
    session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    x = _verification_batch(cfg)
    return _compare("onnx", source, x, session.run(None, {INPUT_NAME: x.numpy()})[0])


# ---------------------------------------------------------------------------------------------
# MONAI bundle


def network_def(cfg: ModelConfig) -> dict:
    """The MONAI config of the network `build_model(cfg)` makes (a single network). The export
    instantiates it from the written config and compares, so a drift from build_model is caught."""
    if cfg.arch == "unet":
        return {"_target_": "monai.networks.nets.UNet", "spatial_dims": 2, "in_channels": cfg.in_channels,
                "out_channels": cfg.out_channels, "channels": list(cfg.channels),
                "strides": [2] * (len(cfg.channels) - 1), "num_res_units": 2, "dropout": cfg.dropout}
    n = len(cfg.dynunet_filters)
    return {"_target_": "monai.networks.nets.DynUNet", "spatial_dims": 2, "in_channels": cfg.in_channels,
            "out_channels": cfg.out_channels, "kernel_size": [3] * n, "strides": [1] + [2] * (n - 1),
            "upsample_kernel_size": [2] * (n - 1), "filters": list(cfg.dynunet_filters), "norm_name": "instance",
            "dropout": cfg.dropout, "res_block": True}


def bundle_inference_config(cfg: ModelConfig) -> dict:
    """configs/inference.json: the network, and how ugafl feeds it (uint8 RGB scaled to 0..1,
    patches of patch_size with a Gaussian-weighted sliding window, softmax of the class channels)."""
    post = []
    if cfg.disagreement_head:
        post.append({"_target_": "monai.transforms.Lambdad", "keys": "pred",
                     "func": f"$lambda x: x[:{cfg.num_classes}]"})  # drop the disagreement channel
    post += [{"_target_": "monai.transforms.Activationsd", "keys": "pred", "softmax": True},
             {"_target_": "monai.transforms.AsDiscreted", "keys": "pred", "argmax": True}]
    return {
        "imports": ["$import torch"],
        "bundle_root": ".",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": network_def(cfg),
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "monai.transforms.Compose", "transforms": [
            {"_target_": "monai.transforms.EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
            {"_target_": "monai.transforms.ScaleIntensityRanged", "keys": "image", "a_min": 0, "a_max": 255,
             "b_min": 0.0, "b_max": 1.0}]},
        "inferer": {"_target_": "monai.inferers.SlidingWindowInferer", "roi_size": [cfg.patch_size, cfg.patch_size],
                    "sw_batch_size": 8, "overlap": 0.125, "mode": "gaussian"},
        "postprocessing": {"_target_": "monai.transforms.Compose", "transforms": post},
    }


def bundle_metadata(meta: dict) -> dict:
    """configs/metadata.json in MONAI's bundle layout, with ugafl's metadata under `ugafl`."""
    import monai

    p, c, k = meta["patch_size"], meta["input"]["channels"], meta["output"]["channels"]
    names = meta["classes"]
    out_def = {str(i): name for i, name in enumerate(names)}
    out_def.update(meta["output"].get("extra_channels", {}))
    return {
        "version": "0.1.0",
        "changelog": {"0.1.0": f"exported by ugafl {meta['ugafl_version']} from {meta['source_checkpoint']['file']}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {},
        "name": f"ugafl {meta['model_config']['arch']} tumour segmentation",
        "task": meta["task"],
        "description": (f"A ugafl segmentation network for RGB H&E patches at {meta['mpp']} µm/px, "
                        f"{p} px; input RGB/255 (0..1); output {meta['output']['kind']}."),
        "authors": "exported by ugafl",
        "copyright": "as the source checkpoint's",
        "intended_use": "research",
        "data_type": "RGB patches of whole-slide images",
        "image_classes": f"{c} channels ({', '.join(meta['input']['channel_order'])}), 0..1, at {meta['mpp']} µm/px",
        "label_classes": ", ".join(f"{i} {name}" for i, name in enumerate(names)),
        "pred_classes": ", ".join(f"{i} {name}" for i, name in enumerate(names)),
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "light microscopy (H&E)",
                                 "num_channels": c, "spatial_shape": [p, p], "dtype": "float32", "value_range": [0, 1],
                                 "is_patch_data": True,
                                 "channel_def": {str(i): ch for i, ch in enumerate(meta["input"]["channel_order"])}}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": k, "spatial_shape": [p, p],
                                 "dtype": "float32", "value_range": [], "is_patch_data": True, "channel_def": out_def}},
        },
        "ugafl": meta,
    }


def _bundle_readme(meta: dict) -> str:
    return "\n".join([
        f"# {meta['task']}",
        "",
        f"Exported by ugafl {meta['ugafl_version']} from `{meta['source_checkpoint']['file']}` "
        f"(SHA-256 {meta['source_checkpoint']['sha256']}).",
        "",
        f"- Resolution: {meta['mpp']} µm/px; patch size {meta['patch_size']} px; height and width multiples of "
        f"{meta['input']['size_multiple']}.",
        f"- Input: `image`, float32 NCHW, {meta['input']['channels']} channels RGB, `x = rgb / 255`.",
        f"- Output: `pred`, {meta['output']['kind']}: {meta['output']['meaning']}.",
        f"- Classes: {', '.join(f'{i} {n}' for i, n in enumerate(meta['classes']))}.",
        "",
        "Load: `monai.bundle.load(NAME, bundle_dir=PARENT, workflow_type='inference')` (the network with its",
        "weights), or `load_ts_module=True` for the TorchScript module; `configs/metadata.json` has the",
        "metadata above under `ugafl`.",
        "",
    ])


def refuse_bundle(cfg: ModelConfig, checkpoint: Path) -> str | None:
    if cfg.members > 1:
        return (f"it is an ensemble of {cfg.members} members, which a MONAI network config cannot describe; "
                f"export one member's checkpoint (train-central writes them beside it: {checkpoint.stem}-m0"
                f"{checkpoint.suffix} ...) or use --format torchscript or onnx, which carry the whole ensemble")
    return None


def write_monai_bundle(source: Source, meta: dict, folder: Path) -> float:
    """configs/metadata.json, configs/inference.json, models/model.pt (the state dict),
    models/model.ts (TorchScript with MONAI's `metadata.json` extra file) and docs/README.md.
    Checked by instantiating `network_def` from the written config with MONAI's ConfigParser and
    loading models/model.pt into it (strictly)."""
    from monai.bundle import ConfigParser

    cfg = source.cfg
    for sub in ("configs", "models", "docs"):
        (folder / sub).mkdir()
    bundle_meta = bundle_metadata(meta)
    inference = bundle_inference_config(cfg)
    (folder / "configs" / "metadata.json").write_text(json.dumps(bundle_meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (folder / "configs" / "inference.json").write_text(json.dumps(inference, indent=1) + "\n", encoding="utf-8")
    (folder / "docs" / "README.md").write_text(_bundle_readme(meta), encoding="utf-8")
    state = {k: v.detach().cpu().clone() for k, v in source.model.state_dict().items()}
    torch.save(state, folder / "models" / "model.pt")
    ts_diff = write_torchscript(source, meta, folder / "models" / "model.ts",
                                extra_files={"metadata.json": json.dumps(bundle_meta), "inference.json": json.dumps(inference)})
    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "inference.json"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = parser.get_parsed_content("network_def", instantiate=True)
    try:
        net.load_state_dict(torch.load(folder / "models" / "model.pt", map_location="cpu", weights_only=True))
    except RuntimeError as error:
        raise ExportError(f"monai-bundle export: the weights do not fit the bundle's network_def: "
                          f"{str(error).splitlines()[0]}") from None
    net.eval()
    x = _verification_batch(cfg)
    with torch.no_grad():
        pt_diff = _compare("monai-bundle", source, x, net(x))
    return max(pt_diff, ts_diff)


# ---------------------------------------------------------------------------------------------
# the registry: names in one place

FORMATS: dict[str, Format] = {
    "torchscript": Format(write=write_torchscript, suffix=".ts"),
    "onnx": Format(write=write_onnx, needs=("onnx", "onnxruntime"), suffix=".onnx"),
    "monai-bundle": Format(write=write_monai_bundle, folder=True, refuse=refuse_bundle),
}
