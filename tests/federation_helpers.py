"""Shared set-up for the federation tests: a small synthetic dataset and a briefly trained central
model (about 40 s on 2 cores), and the privacy check over the sites' outboxes."""

from __future__ import annotations

import json
from pathlib import Path

from ugafl.common.model import ModelConfig
from ugafl.common.training import TrainConfig


SMALL_CENTRES = ("RUMC", "UMCU", "CWZ", "RST")
SMALL_MODEL = ModelConfig(channels=(8, 16, 32))


def small_federation(root: Path, centres: tuple[str, ...], model: ModelConfig) -> tuple[Path, Path]:
    """(data dir, central checkpoint): 3 slides per centre and a central model of 40 steps."""
    from ugafl.common.central_bank import CentralConfig
    from ugafl.server.central_training import train_central
    from ugafl.simulations.synth import SynthConfig, generate_dataset

    manifest = generate_dataset(root / "data", SynthConfig(slides_per_centre=3, centres=centres, seed=3))
    central = root / "central.pt"
    train_central(manifest.root, central, model, TrainConfig(steps=40, batch_size=8, crop=96),
                  CentralConfig(patches_per_slide=30, bank_patch_size=128), device="cpu", progress=False)
    return manifest.root, central


def check_outboxes(site_workspaces: list[Path], central: Path, data: Path, roots: list[Path]) -> list[dict]:
    """Every reply every site recorded: only a MetricRecord of floats and (train) an ArrayRecord
    with exactly the model's names, dtypes and shapes; no slide names, no paths. Returns them."""
    from ugafl.common.checkpoint import load_checkpoint
    from ugafl.common.manifest import load_manifest
    from ugafl.common.wire import unique_state

    expected = {k: [str(v.dtype).replace("torch.", ""), list(v.shape)]
                for k, v in unique_state(load_checkpoint(central).model).items()}
    forbidden = [Path(s.path).stem for s in load_manifest(data).slides] + [str(r) for r in roots] + ["/"]
    entries = []
    for ws in site_workspaces:
        for line in (ws / "federation" / "outbox.jsonl").read_text().splitlines():
            entry = json.loads(line)
            records = entry["records"]
            assert set(records) <= {"metrics", "arrays"} and records["metrics"]["type"] == "MetricRecord", entry
            assert all(isinstance(v, float) for v in records["metrics"]["values"].values()), records["metrics"]
            if "arrays" in records:
                assert entry["type"] == "train"
                assert records["arrays"]["type"] == "ArrayRecord" and records["arrays"]["arrays"] == expected
            text = json.dumps(records)
            for word in forbidden:
                assert word not in text, (ws, entry["type"], word)
            entries.append({**entry, "workspace": ws})
    return entries
