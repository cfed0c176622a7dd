"""The signed round checkpoints of a federated run, which a restarted coordinator resumes from,
and the per-round metrics table.

Checkpoints: OUT/round-0000.pt is the central model the run started from, OUT/round-NNNN.pt the
global model after round N, each with OUT/round-NNNN.pt.sig, the coordinator's signed statement
(model digest, round, run, architecture). The signature is written last, after the round's
evaluation and its metrics row: it marks the round complete. A restarted run resumes after the newest round
whose checkpoint loads and whose signature verifies with the coordinator's key; later, broken or
unsigned files are left alone and logged. Metrics: OUT/rounds.csv, one row per round.
"""

from __future__ import annotations

import csv
import io
import re
import time
from pathlib import Path
from typing import Any

import torch

from ugafl.common.atomic import atomic_write_text
from ugafl.common.checkpoint import load_checkpoint, save_checkpoint
from ugafl.common.errors import CheckpointError, UgaflError
from ugafl.common.log import get_logger
from ugafl.common.model import ModelConfig
from ugafl.server.federation.settings import FederationSettings
from ugafl.common.wire import load_unique_state, unique_state
from ugafl.common.signing import (SignatureError, load_private_key, read_signature, sign_model, verify_model,
                                  write_signature)

log = get_logger("federation")

_ROUND_FILE = re.compile(r"^round-(\d{4})\.pt$")


def round_path(out_dir: str | Path, round_: int) -> Path:
    return Path(out_dir) / f"round-{round_:04d}.pt"


class RoundStore:
    """Signed round checkpoints and the metrics table of one run folder."""

    def __init__(self, settings: FederationSettings):
        self.settings = settings
        self.out = Path(settings.out_dir)
        self.key = load_private_key(settings.signing_key)
        self.public = self.key.public_key()

    def sign(self, state: dict[str, torch.Tensor], cfg: ModelConfig, round_: int) -> dict:
        """The signed statement for weights in `unique_state` form (as they travel)."""
        return sign_model(self.key, state, round=round_, run=self.settings.run_name, model_config=cfg.to_dict(),
                          issued=time.time())  # sites refuse a model older than the last they accepted

    def save(self, state: dict[str, torch.Tensor], cfg: ModelConfig, round_: int, metrics: dict[str, float]) -> tuple[Path, dict]:
        """Write round `round_`'s checkpoint, not yet signed; (path, its signed statement). Until
        `commit` writes the signature, a restart passes the file over and runs the round again."""
        from ugafl.common.model import build_model

        model = build_model(cfg)
        load_unique_state(model, state, f"round {round_} weights")
        path = round_path(self.out, round_)
        self.out.mkdir(parents=True, exist_ok=True)
        Path(str(path) + ".sig").unlink(missing_ok=True)  # a stale signature of an interrupted earlier attempt
        save_checkpoint(path, model, cfg, extra={"federated": {"round": round_, "run": self.settings.run_name,
                                                               "metrics": metrics}})
        return path, self.sign(unique_state(model), cfg, round_)

    def commit(self, path: Path, signed: dict) -> None:
        """The round is complete: its signature makes the checkpoint the one a restart resumes from."""
        write_signature(path, signed)

    def verified(self, path: Path) -> bool:
        """Whether a round checkpoint loads and its signature verifies with the coordinator's key."""
        try:
            verify_model(unique_state(load_checkpoint(path).model), read_signature(path), [self.public], str(path))
        except (CheckpointError, SignatureError):
            return False
        return True

    def start(self) -> tuple[int, dict[str, torch.Tensor], ModelConfig]:
        """(last completed round, its weights, architecture): the newest valid signed round, else
        round 0 made from the central checkpoint."""
        for path in sorted((p for p in self.out.glob("round-*.pt") if _ROUND_FILE.match(p.name)), reverse=True):
            round_ = int(_ROUND_FILE.match(path.name).group(1))
            try:
                ckpt = load_checkpoint(path)
                state = unique_state(ckpt.model)
                verify_model(state, read_signature(path), [self.public], str(path))
            except (CheckpointError, SignatureError) as error:
                log.warning("not resuming from %s: %s", path, error)
                continue
            log.info("resuming after round %d from %s", round_, path)
            self.truncate_metrics(round_)
            return round_, state, ckpt.model_config
        try:
            central = load_checkpoint(self.settings.central_checkpoint)
        except CheckpointError as error:
            raise UgaflError(f"central checkpoint: {error}") from None
        state = unique_state(central.model)
        self.commit(*self.save(state, central.model_config, 0, {}))
        self.truncate_metrics(0)
        return 0, state, central.model_config

    # ------------------------------------------------------------------ metrics table

    @property
    def metrics_path(self) -> Path:
        return self.out / "rounds.csv"

    def read_metrics(self) -> list[dict[str, str]]:
        if not self.metrics_path.is_file():
            return []
        return list(csv.DictReader(io.StringIO(self.metrics_path.read_text())))

    def truncate_metrics(self, last_round: int) -> None:
        self._write_rows([r for r in self.read_metrics() if int(r["round"]) <= last_round])

    def append_metrics(self, row: dict[str, Any]) -> None:
        self._write_rows(self.read_metrics() + [{k: ("" if v is None else v) for k, v in row.items()}])

    def _write_rows(self, rows: list[dict[str, Any]]) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        columns = list(dict.fromkeys(k for r in rows for k in r))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.metrics_path, buf.getvalue())
