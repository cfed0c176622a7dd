"""The round's `Sites` with every site on this machine and no network: each message is the site's
plain handler (`client.round.handlers.handle`) called directly, in this process or, with
`workers` > 1, in a pool of worker processes that answer that many sites at a time (one torch
thread each, as Flower's engine runs them with one CPU per site). The same round code as Flower's
engine runs (server.federation.rounds), minus Ray's start-up and the serialisation, so a benchmark
of many short arms spends its time on the sites' work. Flower's engine stays the default of the
demo, and the Flower path has its own tests.

With `memo_dir`, the central site's train replies are kept there and reused: its training is a
deterministic function of the incoming weights, the round's training settings and the seed, so a
benchmark whose arms share the central model and seeds trains round 1 there once per seed (a
reused reply is not recorded again in the central site's outbox)."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path

import numpy as np

from ugafl.client.round.handlers import SiteReply, handle
from ugafl.client.site_config import SiteConfig
from ugafl.client.round.error_reply import error_reply
from ugafl.common.errors import UgaflError
from ugafl.common.log import get_logger
from ugafl.server.federation.sites import Reply, Scalar

log = get_logger("in_process")
_POOLS: dict[int, Executor] = {}


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _pool(workers: int) -> Executor:
    """A process pool of `workers` (kept for the next run: a worker's imports take seconds)."""
    if workers not in _POOLS:
        _POOLS[workers] = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                              initializer=_one_thread)
    return _POOLS[workers]


def _answer(site: SiteConfig, message_type: str, arrays: Mapping[str, np.ndarray], config: Mapping[str, Scalar],
            run_id: int) -> SiteReply | str:
    """The site's reply, or the error reason it would send (a worker returns errors as values; a
    bug that is not a UgaflError stops the simulation, as it should)."""
    try:
        return handle(site, message_type, arrays, config, run_id=run_id)
    except UgaflError as error:
        return error_reply(error, message_type, site.workspace)


# what a train reply depends on besides the weights: the round, the seed and the local recipe
MEMO_KEYS = ("model-config", "seed", "server-round", "local-training", "local-steps", "local-epochs", "lr",
             "proximal-mu", "anchor-share", "anchor-crops", "local-loss", "stain-augmentation", "gate")


def memo_key(site: SiteConfig, arrays: Mapping[str, np.ndarray], config: Mapping[str, Scalar]) -> str:
    """What the central site's train reply depends on: the weights, the settings and its data."""
    from ugafl.common.signing import model_digest

    text = json.dumps({"weights": model_digest(arrays), **{k: config.get(k) for k in MEMO_KEYS},
                       "data": str(site.central_data), "centre": site.central_centre, "trains": site.train},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _load_memo(path: Path) -> SiteReply | None:
    if not (path / "metrics.json").is_file():
        return None
    with np.load(path / "arrays.npz") as arrays:
        return SiteReply(json.loads((path / "metrics.json").read_text()), {k: arrays[k] for k in arrays.files})


def _save_memo(path: Path, reply: SiteReply) -> None:
    from ugafl.common.atomic import atomic_write_text

    path.mkdir(parents=True, exist_ok=True)
    np.savez(path / "arrays.npz", **(reply.arrays or {}))
    atomic_write_text(path / "metrics.json", json.dumps(reply.metrics))  # last: marks the entry complete


class InProcessSites:
    """Every site folder under `sites_dir` (`<id>/site.toml`), answered on this machine."""

    def __init__(self, sites_dir: Path, run_id: int = 0, workers: int = 1, memo_dir: Path | None = None):
        self.configs = {int(p.parent.name): SiteConfig.load(p) for p in sorted(Path(sites_dir).glob("*/site.toml"))}
        self.run_id = run_id
        self.workers = workers
        self.memo_dir = memo_dir

    def wait_for(self, count: int) -> list[int]:
        if len(self.configs) < count:
            raise UgaflError(f"{len(self.configs)} site folder(s), the round needs {count}")
        return sorted(self.configs)

    def reply(self, site: int, message_type: str, answer: SiteReply) -> Reply:
        """The reply as the coordinator receives it (a test can override this to make a site misbehave)."""
        return Reply(site, answer.metrics, answer.arrays)

    def send(self, message_type: str, arrays: Mapping[str, np.ndarray], config: Mapping[str, Scalar],
             sites: list[int], on_reply: Callable[[Reply], Reply] | None = None) -> list[Reply]:
        round_ = config.get("server-round", "?")
        for site in sites:
            log.info("round %s: site %d (%s): %s", round_, site, self.configs[site].name or "unnamed", message_type)
        memo: dict[int, Path] = {}
        if self.memo_dir is not None and message_type == "train":
            memo = {s: self.memo_dir / memo_key(self.configs[s], arrays, config) for s in sites
                    if self.configs[s].role == "central"}
        known = {s: reply for s, path in memo.items() if (reply := _load_memo(path)) is not None}
        todo = [s for s in sites if s not in known]
        if self.workers > 1 and len(todo) > 1:
            pool = _pool(self.workers)
            futures = [pool.submit(_answer, self.configs[s], message_type, dict(arrays), dict(config), self.run_id)
                       for s in todo]
            computed = dict(zip(todo, (f.result() for f in futures)))
        else:
            computed = {s: _answer(self.configs[s], message_type, arrays, config, self.run_id) for s in todo}
        for site, path in memo.items():
            if site in known:
                log.info("round %s: site %d: the same training was done before; its reply reused", round_, site)
            elif isinstance(computed[site], SiteReply):
                _save_memo(path, computed[site])
        answers = [known[s] if s in known else computed[s] for s in sites]
        replies = []
        for site, answer in zip(sites, answers):
            if isinstance(answer, str):  # as a SuperNode would: the error is the reply
                log.warning("round %s: site %d failed %s: %s", round_, site, message_type, answer)
                replies.append(Reply(site, {}, None, answer))
            else:
                replies.append(self.reply(site, message_type, answer))
        return [on_reply(r) for r in replies] if on_reply is not None else replies
