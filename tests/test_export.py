"""`ugafl export`: each format is loaded by the tool it is for (plain torch, onnxruntime, MONAI's
bundle API), gives the checkpoint's own outputs within 1e-4 on the same input, and carries the
metadata a foreign tool needs; bad input is refused with one line, exit code 2 and nothing
written; and, where TIAToolbox runs beside the pinned torch, the recipe runs an exported model in
TIAToolbox's SemanticSegmentor on a synthetic slide and gives our numbers."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ugafl.common.checkpoint import save_checkpoint
from ugafl.common.errors import UgaflError
from ugafl.common.export import FORMATS, METADATA_FILE, ExportError, export_model, is_ugafl_bundle
from ugafl.common.model import ModelConfig, build_model, to_input

ROOT = Path(__file__).resolve().parents[1]
UGAFL = Path(sys.executable).with_name("ugafl")
TIA_PYTHON = ROOT / ".venv-tia" / "bin" / "python"
TOLERANCE = 1e-4
TINY = ModelConfig(channels=(8, 16, 32), patch_size=64, mpp=2.0)
# loading an export with plain torch is the point here; torch 2.13 deprecates torch.jit
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.load` is deprecated:DeprecationWarning")


@dataclass(frozen=True)
class Tiny:
    path: Path
    cfg: ModelConfig
    model: torch.nn.Module


def _make(folder: Path, name: str, cfg: ModelConfig) -> Tiny:
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    path = folder / f"{name}.pt"
    save_checkpoint(path, model, cfg)
    return Tiny(path, cfg, model)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Tiny]:
    folder = tmp_path_factory.mktemp("ckpts")
    return {
        "unet": _make(folder, "unet", TINY),
        "dynunet": _make(folder, "dynunet", ModelConfig(arch="dynunet", dynunet_filters=(8, 16, 32), patch_size=64, mpp=1.0)),
        "edue": _make(folder, "edue", ModelConfig(channels=(8, 16, 32), patch_size=64, disagreement_head=True)),
        "ensemble": _make(folder, "ensemble", ModelConfig(channels=(8, 16, 32), patch_size=64, members=2)),
    }


def _input(shape=(3, 3, 96, 128)) -> torch.Tensor:
    """Not the export's own shapes (batch 1, 64 px): batch and size must be free."""
    return torch.rand(shape, generator=torch.Generator().manual_seed(7))


def _reference(tiny: Tiny, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return tiny.model(x).numpy()


def _check_metadata(meta: dict, tiny: Tiny, fmt: str) -> None:
    cfg = tiny.cfg
    assert meta["format"] == "ugafl-export/1" and meta["exported_as"] == fmt
    assert meta["mpp"] == cfg.mpp and meta["mpp_unit"] == "µm/px"
    assert meta["patch_size"] == cfg.patch_size
    assert meta["input"]["channels"] == 3 and meta["input"]["channel_order"] == ["R", "G", "B"]
    assert meta["input"]["layout"] == "NCHW" and meta["input"]["size_multiple"] == 4
    norm = meta["input"]["normalisation"]
    assert norm["formula"] == "x = rgb / 255" and norm["mean"] == [0.0] * 3 and norm["std"] == [255.0] * 3
    # the stated normalisation is what ugafl feeds its model
    rgb = np.random.default_rng(0).integers(0, 256, (1, 5, 5, 3), dtype=np.uint8)
    stated = (np.moveaxis(rgb, -1, 1).astype(np.float32) - np.reshape(norm["mean"], (1, 3, 1, 1))) / np.reshape(norm["std"], (1, 3, 1, 1))
    assert np.allclose(stated, to_input(rgb).numpy(), atol=1e-7)
    assert meta["num_classes"] == 2 and meta["classes"] == ["background", "tumour"]
    assert meta["output"]["kind"] == ("log-probabilities" if cfg.members > 1 else "logits")
    assert meta["output"]["class_channels"] == [0, 1]
    assert meta["output"]["channels"] == (3 if cfg.disagreement_head else 2)
    assert ("extra_channels" in meta["output"]) == cfg.disagreement_head
    assert meta["ugafl_version"] == importlib_metadata.version("ugafl")
    assert meta["source_checkpoint"]["sha256"] == hashlib.sha256(tiny.path.read_bytes()).hexdigest()
    assert meta["source_checkpoint"]["file"] == tiny.path.name
    assert ModelConfig.from_dict(meta["model_config"]) == cfg


def test_the_registry_holds_the_three_formats():
    assert list(FORMATS) == ["torchscript", "onnx", "monai-bundle"]


# ------------------------------------------------------------------------------------------
# each format, loaded by its own tool


def test_torchscript_loads_with_plain_torch_and_gives_our_outputs(ckpts, tmp_path):
    tiny = ckpts["unet"]
    out = tmp_path / "model.ts"
    result = export_model(tiny.path, out, "torchscript")
    assert result.path == out and result.max_abs_diff <= TOLERANCE
    x = _input()
    np.save(tmp_path / "x.npy", x.numpy())
    # a fresh interpreter that imports neither ugafl nor MONAI
    code = ("import json, sys, numpy as np, torch\n"
            "extra = {'ugafl.json': ''}\n"
            "net = torch.jit.load(sys.argv[1], map_location='cpu', _extra_files=extra).eval()\n"
            "with torch.no_grad():\n"
            "    y = net(torch.from_numpy(np.load(sys.argv[2])))\n"
            "np.save(sys.argv[3], y.numpy())\n"
            "assert not any(m.split('.')[0] in ('ugafl', 'monai') for m in sys.modules), 'imported ugafl or monai'\n"
            "print(extra['ugafl.json'].decode())\n")
    run = subprocess.run([sys.executable, "-c", code, str(out), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    diff = float(np.abs(np.load(tmp_path / "y.npy") - _reference(tiny, x)).max())
    print(f"torchscript max abs diff {diff:.3g}")
    assert diff <= TOLERANCE
    meta = json.loads(run.stdout)
    _check_metadata(meta, tiny, "torchscript")
    assert meta == result.metadata


def test_onnx_runs_in_onnxruntime_with_free_batch_and_size(ckpts, tmp_path):
    import onnxruntime

    tiny = ckpts["unet"]
    out = tmp_path / "model.onnx"
    export_model(tiny.path, out, "onnx")
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    x = _input()
    diff = float(np.abs(session.run(None, {"image": x.numpy()})[0] - _reference(tiny, x)).max())
    print(f"onnx max abs diff {diff:.3g}")
    assert diff <= TOLERANCE
    props = session.get_modelmeta().custom_metadata_map
    _check_metadata(json.loads(props[METADATA_FILE]), tiny, "onnx")
    assert props["mpp"] == "2.0" and props["patch_size"] == "64" and props["in_channels"] == "3"
    assert props["classes"] == "background,tumour" and props["num_classes"] == "2"
    assert props["normalisation"] == "x = rgb / 255" and props["output"] == "logits"
    assert props["source_sha256"] == hashlib.sha256(tiny.path.read_bytes()).hexdigest()


def test_monai_bundle_loads_with_monais_bundle_api(ckpts, tmp_path):
    import monai.bundle
    from monai.bundle import ConfigParser

    tiny = ckpts["unet"]
    out = tmp_path / "tumour_bundle"
    export_model(tiny.path, out, "monai-bundle")
    for name in ("configs/metadata.json", "configs/inference.json", "models/model.pt", "models/model.ts", "docs/README.md"):
        assert (out / name).is_file(), name
    x = _input()
    with pytest.warns(UserWarning):  # MONAI warns whenever a bundle's config is parsed
        net = monai.bundle.load(out.name, bundle_dir=tmp_path, workflow_type="inference", device="cpu", progress=False)
    net.eval()
    with torch.no_grad():
        diff_pt = float(np.abs(net(x).numpy() - _reference(tiny, x)).max())
    ts, ts_meta, _ = monai.bundle.load(out.name, bundle_dir=tmp_path, load_ts_module=True, device="cpu")
    with torch.no_grad():
        diff_ts = float(np.abs(ts(x).numpy() - _reference(tiny, x)).max())
    print(f"monai-bundle max abs diff: network_def + model.pt {diff_pt:.3g}, model.ts {diff_ts:.3g}")
    assert diff_pt <= TOLERANCE and diff_ts <= TOLERANCE
    meta = json.loads((out / "configs" / "metadata.json").read_text(encoding="utf-8"))
    assert ts_meta == meta
    _check_metadata(meta["ugafl"], tiny, "monai-bundle")
    fmt = meta["network_data_format"]
    assert fmt["inputs"]["image"]["num_channels"] == 3 and fmt["inputs"]["image"]["spatial_shape"] == [64, 64]
    assert fmt["inputs"]["image"]["value_range"] == [0, 1]
    assert fmt["outputs"]["pred"]["num_channels"] == 2
    assert fmt["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "tumour"}
    # the config's preprocessing is ugafl's normalisation, its inferer works on our patch size
    parser = ConfigParser()
    parser.read_config(str(out / "configs" / "inference.json"))
    rgb = np.random.default_rng(1).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    pre = parser.get_parsed_content("preprocessing")({"image": np.moveaxis(rgb[0], -1, 0)})["image"]
    assert torch.equal(torch.as_tensor(np.asarray(pre)), to_input(rgb)[0])
    assert list(parser.get_parsed_content("inferer").roi_size) == [64, 64]
    assert is_ugafl_bundle(out)


# ------------------------------------------------------------------------------------------
# the other model kinds


def _run_export(fmt: str, out: Path, x: torch.Tensor) -> np.ndarray:
    """The export at `out` run on `x` by the tool it is for."""
    if fmt == "torchscript":
        with torch.no_grad():
            return torch.jit.load(str(out), map_location="cpu")(x).numpy()
    if fmt == "onnx":
        import onnxruntime

        return onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})[0]
    import monai.bundle

    with pytest.warns(UserWarning):
        net = monai.bundle.load(out.name, bundle_dir=out.parent, workflow_type="inference", device="cpu", progress=False)
    with torch.no_grad():
        return net.eval()(x).numpy()


# (an EDUE bundle is made in test_a_forced_bundle_replaces_the_previous_one_whole)
@pytest.mark.parametrize("kind, fmt", [("dynunet", "onnx"), ("dynunet", "monai-bundle"), ("edue", "torchscript"),
                                       ("ensemble", "onnx")])
def test_dynunet_edue_and_ensembles_export_with_their_meaning(ckpts, tmp_path, kind, fmt):
    tiny = ckpts[kind]
    out = tmp_path / f"{kind}_{fmt}"
    result = export_model(tiny.path, out, fmt)
    x = _input((2, 3, 64, 96))
    theirs = _run_export(fmt, out, x)
    diff = float(np.abs(theirs - _reference(tiny, x)).max())
    print(f"{kind} {fmt} max abs diff {diff:.3g}")
    assert diff <= TOLERANCE and result.max_abs_diff <= TOLERANCE
    meta = result.metadata
    assert meta["mpp"] == tiny.cfg.mpp and meta["model_config"]["arch"] == tiny.cfg.arch
    assert meta["output"]["kind"] == ("log-probabilities" if kind == "ensemble" else "logits")
    assert theirs.shape[1] == meta["output"]["channels"]
    if kind == "edue":
        assert meta["output"]["channels"] == 3 and "0.25 * sigmoid" in meta["output"]["extra_channels"]["2"]
    if kind == "ensemble":  # as the metadata says: exp of the output is the members' mean softmax
        with torch.no_grad():
            mean_softmax = torch.stack([torch.softmax(m(x), 1) for m in tiny.model.members]).mean(0).numpy()
        assert np.allclose(np.exp(theirs), mean_softmax, atol=1e-4)


def test_an_ensemble_is_refused_as_a_bundle_naming_what_works(ckpts, tmp_path):
    out = tmp_path / "ens_bundle"
    with pytest.raises(ExportError, match=r"ensemble of 2 members.*ensemble-m0\.pt.*--format torchscript or onnx"):
        export_model(ckpts["ensemble"].path, out, "monai-bundle")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------
# the output path: checked first, never half-written, replaced only with force


def test_an_existing_output_is_refused_unless_forced(ckpts, tmp_path):
    tiny = ckpts["unet"]
    out = tmp_path / "model.ts"
    out.write_bytes(b"precious")
    with pytest.raises(ExportError, match="already exists; pass --force"):
        export_model(tiny.path, out, "torchscript")
    assert out.read_bytes() == b"precious"
    export_model(tiny.path, out, "torchscript", force=True)
    assert torch.jit.load(str(out)) is not None
    with pytest.raises(ExportError, match="is the checkpoint being exported"):
        export_model(tiny.path, tiny.path, "torchscript", force=True)
    folder = tmp_path / "somefolder"
    (folder / "configs").mkdir(parents=True)
    (folder / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not a bundle exported by ugafl; not replacing it"):
        export_model(tiny.path, folder, "monai-bundle", force=True)
    with pytest.raises(ExportError, match="is a folder"):
        export_model(tiny.path, folder, "onnx", force=True)
    assert (folder / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ts", "somefolder"]


def test_a_forced_bundle_replaces_the_previous_one_whole(ckpts, tmp_path):
    out = tmp_path / "b"
    export_model(ckpts["unet"].path, out, "monai-bundle")
    (out / "stale.txt").write_text("from before")
    export_model(ckpts["edue"].path, out, "monai-bundle", force=True)
    assert not (out / "stale.txt").exists()
    meta = json.loads((out / "configs" / "metadata.json").read_text(encoding="utf-8"))
    assert meta["ugafl"]["source_checkpoint"]["file"] == "edue.pt"
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_a_failing_export_leaves_nothing_behind(ckpts, tmp_path, monkeypatch, fmt):
    spec = FORMATS[fmt]

    def broken(source, meta, tmp):
        if spec.folder:
            (tmp / "configs").mkdir()
            (tmp / "configs" / "metadata.json").write_text("{}")
        else:
            tmp.write_bytes(b"half")
        raise ExportError("simulated failure while writing")

    monkeypatch.setitem(FORMATS, fmt, type(spec)(write=broken, folder=spec.folder, needs=spec.needs, refuse=spec.refuse))
    with pytest.raises(ExportError, match="simulated failure"):
        export_model(ckpts["unet"].path, tmp_path / "out", fmt)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------
# the command


def test_cli_export_succeeds_with_one_line_and_clean_stderr(ckpts, tmp_path):
    out = tmp_path / "model.onnx"
    run = subprocess.run([str(UGAFL), "export", "--model", str(ckpts["unet"].path), "--format", "onnx", "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    assert run.stdout.startswith(f"wrote {out} (onnx; 2.0 µm/px, 64 px patches, output logits;")
    assert out.is_file() and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


@pytest.mark.parametrize("case, expected", [
    ("missing-checkpoint", "no such checkpoint"),
    ("unknown-format", "unknown export format 'safetensors'; one of torchscript, onnx, monai-bundle"),
    ("missing-parent", "output folder does not exist"),
    ("existing-output", "already exists; pass --force to replace it"),
    ("not-a-checkpoint", "not a readable checkpoint"),
])
def test_cli_errors_are_one_line_exit_2_and_write_nothing(ckpts, tmp_path, case, expected):
    from ugafl.cli.main import cli

    model, fmt, out = ckpts["unet"].path, "torchscript", tmp_path / "out" / "model.ts"
    (tmp_path / "out").mkdir()
    if case == "missing-checkpoint":
        model = tmp_path / "absent.pt"
    elif case == "unknown-format":
        fmt = "safetensors"
    elif case == "missing-parent":
        out = tmp_path / "nowhere" / "model.ts"
    elif case == "existing-output":
        out.write_text("keep")
    elif case == "not-a-checkpoint":
        model = tmp_path / "junk.pt"
        model.write_text("not torch")
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    result = CliRunner().invoke(cli, ["export", "--model", str(model), "--format", fmt, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: ") and expected in result.stderr
    assert "Traceback" not in result.output
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    assert isinstance(result.exception, SystemExit)


def test_cli_help_names_every_format():
    from ugafl.cli.main import cli

    text = CliRunner().invoke(cli, ["export", "--help"]).output
    assert all(name in text for name in FORMATS)
    assert issubclass(ExportError, UgaflError)


# ------------------------------------------------------------------------------------------
# TIAToolbox


@pytest.mark.slow
def test_tiatoolbox_runs_the_exported_model_on_a_synthetic_slide(ckpts, tmp_path):
    """The recipe of docs/export_tiatoolbox.md: TIAToolbox reads the slide's 2.0 µm/px level and
    runs the exported TorchScript, configured only from its metadata; every patch's class
    probabilities equal ugafl's model's on the same pixels."""
    if not TIA_PYTHON.exists():
        pytest.skip(f"no TIAToolbox environment at {TIA_PYTHON} (make it with benchmarks/peers/setup_tiatoolbox.sh)")
    from conftest import write_synthetic_tiff

    from ugafl.common.slide import open_slide

    tiny = ckpts["unet"]
    slide = write_synthetic_tiff(tmp_path / "slide.tiff")  # 0.5 µm/px, levels 0.5, 1, 2, 4
    model = tmp_path / "model.ts"
    export_model(tiny.path, model, "torchscript")
    run = subprocess.run([str(TIA_PYTHON), str(ROOT / "benchmarks" / "peers" / "tiatoolbox_exported.py"),
                          "--slide", str(slide.path), "--model", str(model), "--out", str(tmp_path / "prob.npy"),
                          "--json", str(tmp_path / "result.json"), "--threads", "2"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["tiatoolbox"] == "2.1.3" and result["reader"] == "OpenSlideWSIReader"
    assert result["mpp"] == 2.0 and result["patch"] == 64 and result["slide_mpp"] == [0.5, 0.5]
    prob = np.load(tmp_path / "prob.npy")
    assert prob.shape == (384, 512, 2)  # the slide at 2.0 µm/px, both classes
    with open_slide(slide.path) as s:
        pixels = s.read_region((0, 0), s.dimensions, 2.0)
    predicted = 0
    worst = 0.0
    for y in range(0, 384, 64):
        for x in range(0, 512, 64):
            theirs = prob[y:y + 64, x:x + 64]
            if not theirs.any():
                continue  # off TIAToolbox's tissue mask: not predicted
            with torch.no_grad():
                ours = torch.softmax(tiny.model(to_input(pixels[None, y:y + 64, x:x + 64])), 1)[0].permute(1, 2, 0).numpy()
            worst = max(worst, float(np.abs(theirs - ours).max()))
            predicted += 1
    print(f"tiatoolbox: {predicted} of 48 patches predicted, max abs diff {worst:.3g}")
    assert predicted == result["patches"] and 12 <= predicted < 48  # the tissue ellipse, not the glass
    assert worst <= TOLERANCE
