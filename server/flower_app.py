"""The Flower ServerApp: translates the coordinator's plain round (`server.federation.rounds`)
into Flower messages. `GridSites` is the round's `Sites` over Flower's Grid; everything else, from
aggregation to signed checkpoints, is plain code that never imports Flower."""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from ugafl.common.log import configure, get_logger
from ugafl.common.wire_pack import WireError, pack_arrays, unpack_arrays
from ugafl.server.federation.rounds import run_federation
from ugafl.server.federation.settings import FederationSettings
from ugafl.server.federation.sites import Reply, Scalar

log = get_logger("server_app")
POLL_S = 1.0  # how often to look for sites still connecting
REPLY_POLL_S = 0.25  # how often to ask the SuperLink for replies (Grid.send_and_receive waits 3 s between)
PULL_BATCH = 8  # replies asked for per pull: at most this many sites' weights are in memory before on_reply


def to_reply(msg: Message, node: int | None = None) -> Reply:
    """A site's Flower reply as the round sees it (`node`: the site it answers for; an error the
    SuperLink made on a site's behalf comes from the SuperLink, not the site)."""
    node = int(msg.metadata.src_node_id) if node is None else node
    if msg.has_error():
        return Reply(node, {}, None, str(msg.error.reason))
    content = msg.content
    metrics = {k: float(v) for k, v in content["metrics"].items()} if "metrics" in content else {}
    if "arrays" not in content:
        return Reply(node, metrics, None)
    try:
        arrays = unpack_arrays({k: v.numpy() for k, v in content["arrays"].items()})
    except WireError as error:
        return Reply(node, {}, None, f"malformed reply: {error}")
    return Reply(node, metrics, arrays)


class GridSites:
    """`Sites` over Flower's Grid: one message per site, replies in site order. Replies are pulled
    every REPLY_POLL_S, PULL_BATCH sites at a time, and each is handed to `on_reply` as it arrives."""

    def __init__(self, grid: Grid, timeout_s: float):
        self.grid = grid
        self.timeout_s = timeout_s

    def wait_for(self, count: int) -> list[int]:
        while len(nodes := sorted(int(n) for n in self.grid.get_node_ids())) < count:
            log.info("waiting for sites to connect: %d connected, %d needed", len(nodes), count)
            time.sleep(POLL_S)
        return nodes

    def send(self, message_type: str, arrays: Mapping[str, np.ndarray], config: Mapping[str, Scalar],
             sites: list[int], on_reply: Callable[[Reply], Reply] | None = None) -> list[Reply]:
        packed = pack_arrays(arrays)  # a few objects on Flower's wire instead of one per tensor
        content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in packed.items()}),
                              "config": ConfigRecord(dict(config))})
        messages = [Message(content=content, message_type=message_type, dst_node_id=n) for n in sites]
        waiting = set(self.grid.push_messages(messages))
        sent_to = {m.metadata.message_id: int(m.metadata.dst_node_id) for m in messages}  # ids set when pushed
        del messages, content, packed
        replies: list[Reply] = []
        deadline = time.monotonic() + self.timeout_s
        while waiting:
            arrived = False
            for batch in _batches(sorted(waiting), PULL_BATCH):
                for msg in self.grid.pull_messages(batch):
                    waiting.discard(msg.metadata.reply_to_message_id)
                    reply = to_reply(msg, sent_to.get(msg.metadata.reply_to_message_id))
                    replies.append(on_reply(reply) if on_reply is not None else reply)
                    arrived = True
            if not waiting or time.monotonic() >= deadline:
                break
            if not arrived:
                time.sleep(REPLY_POLL_S)
        answered = {r.site for r in replies}
        replies += [Reply(n, {}, None, "no reply before the timeout") for n in sites if n not in answered]
        return sorted(replies, key=lambda r: r.site)


def _batches(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def make_server_app(overrides: dict | None = None) -> ServerApp:
    """The ServerApp; `overrides` (settings by their run config names) win over the run config."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        configure()  # our INFO lines beside Flower's, in the SuperLink's log stream
        settings = FederationSettings.from_run_config({**dict(context.run_config), **(overrides or {})})
        run_federation(GridSites(grid, settings.timeout_s), settings)

    return app


def simulate(client_app, overrides: dict, num_sites: int, cpus_per_site: float = 1.0,
             log_file: str | Path | None = None) -> None:
    """Run this ServerApp with `client_app` (the sites' ClientApp, built by the caller) on Flower's
    simulation engine (Ray, from `ugafl[simulation]`), one virtual SuperNode per site; returns when
    the run has finished. With `log_file`, Flower's and Ray's own output (Flower's log, Ray's, and
    what the sites' processes print, which Ray forwards to this one) is appended to that file
    instead of the terminal; our own package logs keep their handlers."""
    from flwr.simulation import run_simulation

    with _engine_output_to(log_file):
        run_simulation(server_app=make_server_app(overrides), client_app=client_app, num_supernodes=num_sites,
                       backend_config={"client_resources": {"num_cpus": cpus_per_site, "num_gpus": 0.0},
                                       "init_args": {"include_dashboard": False, "log_to_driver": True}})


@contextmanager
def _engine_output_to(log_file: str | Path | None) -> Iterator[None]:
    """While inside: Flower's console handler writes to LOG_FILE, and so does everything written to
    sys.stdout and sys.stderr (Ray's driver log and the sites' output Ray forwards). None: nothing
    changes."""
    if log_file is None:
        yield
        return
    from flwr.common.logger import FLOWER_LOGGER, ConsoleHandler

    if not get_logger().handlers:
        configure()  # what the ServerApp's main does, now: its handler is to write to the terminal, not LOG_FILE
    path = Path(log_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8", buffering=1) as stream:
        consoles = [h for h in FLOWER_LOGGER.handlers if isinstance(h, ConsoleHandler)]
        to_file = ConsoleHandler(timestamps=True, colored=False, stream=stream)
        to_file.setLevel(min((h.level for h in consoles), default=logging.INFO))
        for handler in consoles:
            FLOWER_LOGGER.removeHandler(handler)
        FLOWER_LOGGER.addHandler(to_file)
        try:
            with redirect_stdout(_PlainText(stream, sys.stdout)), redirect_stderr(_PlainText(stream, sys.stderr)):
                yield
        finally:
            FLOWER_LOGGER.removeHandler(to_file)
            for handler in consoles:
                FLOWER_LOGGER.addHandler(handler)


class _PlainText:
    """Text written to `stream` without terminal colour codes (Ray colours the sites' prefixes,
    Flower its levels), standing in for `replaced` (sys.stdout or sys.stderr). Its file descriptor
    is the replaced stream's: Ray points Python's faulthandler at sys.stderr, and a hard crash
    belongs on the terminal, not in a file that is closed afterwards."""

    _COLOUR = re.compile(r"\x1b\[[0-9;]*m")

    def __init__(self, stream, replaced) -> None:
        self._stream = stream
        self._replaced = replaced

    def write(self, text: str) -> int:
        return self._stream.write(self._COLOUR.sub("", text))

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._replaced.fileno()

    def __getattr__(self, name: str):  # encoding, errors, closed, ...: the file's
        return getattr(self._stream, name)


app = make_server_app()
