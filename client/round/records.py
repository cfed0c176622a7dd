"""A site's own record of its part in the federation, kept in its workspace (never sent):

- WS/federation/ledger.jsonl: one line per message handled: the model that came in (digest,
  round, run, the key that signed it), the update that went out (digest, examples) and which
  corrected patches were used;
- WS/federation/outbox.jsonl: a description of every reply sent (array names, shapes, digest;
  metric values), which the privacy tests read;
- WS/federation/refusals.jsonl: every model or app the site refused, and why;
- WS/federation/model/current.pt (+ current.json): the newest verified global model, which the
  inbox watcher uses to precompute uncertainty for new slides between rounds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ugafl.common.clock import utc_now
from ugafl.common.log import get_logger

if TYPE_CHECKING:  # torch only for the annotation: the ClientApp's error path loads without it
    import torch

log = get_logger("site")
FEDERATION_DIR = "federation"


def append_jsonl(path: Path, entry: Mapping[str, Any]) -> None:
    """Append one JSON line stamped with the time (UTC), flushed to disk before returning."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"at": utc_now(), **entry}, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict]:
    """The entries of a record; a torn last line (a crash mid-write) is skipped."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def ledger_path(workspace: Path) -> Path:
    return workspace / FEDERATION_DIR / "ledger.jsonl"


def refusals_path(workspace: Path) -> Path:
    return workspace / FEDERATION_DIR / "refusals.jsonl"


def record_message(workspace: Path, message_type: str, run_id: int, round_: int, signed: Mapping[str, Any],
                   update_sha256: str | None, metrics: Mapping[str, float], patch_ids: list[int] | None = None) -> None:
    """One line of the ledger: what came in (the signed statement), what went out."""
    statement = signed.get("statement", {})
    append_jsonl(ledger_path(workspace), {
        "type": message_type, "run": run_id, "round": round_,
        "model_in": {"sha256": statement.get("model_sha256"), "round": statement.get("round"),
                     "run": statement.get("run"), "signed_by": signed.get("key")},
        "update_out": None if update_sha256 is None else {"sha256": update_sha256,
                                                          "examples": metrics.get("num-examples", 0.0)},
        "metrics": dict(metrics), **({} if patch_ids is None else {"corrected_patches_used": sorted(patch_ids)})})


def record_refusal(workspace: Path, what: str, reason: str) -> None:
    log.error("refused %s: %s", what, reason)
    append_jsonl(refusals_path(workspace), {"what": what, "reason": reason})


def model_dir(workspace: Path) -> Path:
    return workspace / FEDERATION_DIR / "model"


def keep_model(workspace: Path, model: torch.nn.Module, cfg, signed: Mapping[str, Any], method: str,
               passes: int, patch_um: float) -> None:
    """Store the verified global model as the site's current one (once per version), with how
    the round scores slides (method, passes, correction patch side in µm)."""
    from ugafl.common.atomic import atomic_write_text
    from ugafl.common.checkpoint import save_checkpoint

    folder = model_dir(workspace)
    current = current_model_info(workspace)
    sha = signed["statement"]["model_sha256"]
    if current and current.get("signed", {}).get("statement", {}).get("model_sha256") == sha and \
            (current.get("method"), current.get("passes"), current.get("patch_um")) == (method, passes, patch_um):
        return
    save_checkpoint(folder / "current.pt", model, cfg)
    atomic_write_text(folder / "current.json", json.dumps({"signed": dict(signed), "method": method, "passes": passes, "patch_um": patch_um,
                                                           "version": sha[:12]}, indent=1))


def current_model_info(workspace: Path) -> dict | None:
    path = model_dir(workspace) / "current.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        return None


def outbox_path(workspace: Path) -> Path:
    return workspace / FEDERATION_DIR / "outbox.jsonl"


def describe_reply(metrics: Mapping[str, float], arrays: Mapping[str, Any] | None) -> dict:
    """Every record of a reply, as the site's outbox keeps it: for the arrays their names, dtypes,
    shapes and digest; for the metrics their values. Record names and types are the ones the reply
    travels as (a MetricRecord "metrics", an ArrayRecord "arrays")."""
    from ugafl.common.signing import model_digest

    out: dict = {"metrics": {"type": "MetricRecord", "values": dict(metrics)}}
    if arrays is not None:
        out["arrays"] = {"type": "ArrayRecord", "arrays": {k: [str(a.dtype), list(a.shape)] for k, a in arrays.items()},
                         "sha256": model_digest(arrays)}
    return out


def record_reply(workspace: Path, message_type: str, round_: int, records: Mapping[str, Any]) -> None:
    """Append what this site sent in one reply (each record described, see `describe_reply`) to
    WS/federation/outbox.jsonl, the site's own record of everything that left it."""
    append_jsonl(outbox_path(workspace), {"type": message_type, "round": round_, "records": dict(records)})
