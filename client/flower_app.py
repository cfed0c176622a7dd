"""The Flower ClientApp: translates Flower messages into the site's plain handlers
(`client.round.handlers`) and their replies back.

Which site this process serves comes from the SuperNode's node config: `site-config=PATH` (a
site TOML, see `SiteConfig`). In a simulation, Flower's node config holds `partition-id` instead
and the app made by `make_client_app(sim_sites=DIR)` uses DIR/<partition-id>/site.toml.

A reply carries exactly the handler's reply: its metrics as a MetricRecord "metrics", its arrays
(after training) as an ArrayRecord "arrays"; the handler has recorded both in the site's outbox.
A failure replies with Flower's error message whose reason is only a category and an error id
(client.round.error_reply); the detail stays in the site's log.

Where the site daemon runs the site's round worker (client.round.worker), the message is
forwarded to it and answered there, with torch and the handlers already loaded: Flower's
deployment engine starts one ClientApp process per message, and this module imports neither
torch nor MONAI until it has to answer a message itself (no worker listening). The handler is
told how long this process took from its start to the message (0 for the later messages of a
process that serves several, as in a simulation): the reply's `seconds-startup`.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Array, ArrayRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from ugafl.client.round.error_reply import error_reply
from ugafl.client.round.worker_link import WorkerLost, ask, socket_path
from ugafl.client.site_config import SiteConfig
from ugafl.common.errors import ConfigError
from ugafl.common.log import configure, get_logger
from ugafl.common.processes import age_s
from ugafl.common.wire_pack import pack_arrays, unpack_arrays

log = get_logger("client_app")
_served = 0  # messages this process has answered


def _site(context: Context, sim_sites: str | None) -> SiteConfig:
    configure()  # our INFO lines beside Flower's, in the SuperNode's log
    node = context.node_config
    if "site-config" in node:
        return SiteConfig.load(str(node["site-config"]))
    if sim_sites is not None and "partition-id" in node:
        return SiteConfig.load(Path(sim_sites) / str(int(node["partition-id"])) / "site.toml")
    raise ConfigError("the SuperNode has no site-config in its --node-config (site-config=PATH)")


CLIENT_APP_ERROR = ErrorCode.CLIENT_APP_RAISED_EXCEPTION


class WorkerError(Exception):
    """The site's round worker answered the message with an error reply (its reason)."""


def _answer(msg: Message, context: Context, sim_sites: str | None) -> Message:
    site = None
    try:
        site = _site(context, sim_sites)
        return _reply(msg, site)
    except WorkerError as error:  # already a category and an id, recorded by the worker
        reason = str(error)
    except Exception as error:  # noqa: BLE001 - every failure becomes a category and an id, nothing more
        if isinstance(error, WorkerLost):
            log.error("%s", error)
        reason = error_reply(error, msg.metadata.message_type, None if site is None else site.workspace)
    return Message(Error(code=CLIENT_APP_ERROR, reason=reason), reply_to=msg)


def _reply(msg: Message, site: SiteConfig) -> Message:
    global _served
    startup, _served = (age_s() if _served == 0 else 0.0), _served + 1
    arrays = unpack_arrays({k: v.numpy() for k, v in msg.content["arrays"].items()})
    config = dict(msg.content["config"].items())
    kind, run_id = msg.metadata.message_type, int(msg.metadata.run_id)
    reply = ask(socket_path(site.workspace), kind, arrays, config, run_id, startup)
    if reply is None:  # no worker: answered here (the handlers' imports take seconds)
        from ugafl.client.round.handlers import handle

        reply = handle(site, kind, arrays, config, run_id, startup)
    elif reply.error is not None:
        raise WorkerError(reply.error)
    content = RecordDict({"metrics": MetricRecord(reply.metrics)})
    if reply.arrays is not None:
        content["arrays"] = ArrayRecord({k: Array(v) for k, v in pack_arrays(reply.arrays).items()})
    return Message(content=content, reply_to=msg)


def make_client_app(sim_sites: str | None = None, mods: list | None = None) -> ClientApp:
    """The ClientApp; `mods` are Flower mods wrapped around every handler."""
    app = ClientApp(mods=mods or [])

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        return _answer(msg, context, sim_sites)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return _answer(msg, context, sim_sites)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return _answer(msg, context, sim_sites)

    return app


app = make_client_app()
