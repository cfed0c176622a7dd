"""The Flower ClientApp: glue between Flower messages and `ugafl.client.site`.

Which site this process serves comes from the SuperNode's node config: `site-config=PATH` (a
site TOML, see `SiteConfig`). In a simulation, Flower's node config holds `partition-id` instead
and the app made by `make_client_app(sim_sites=DIR)` uses DIR/<partition-id>/site.toml.

Every reply carries only model arrays and scalar metrics (MetricRecord), and is appended to the
site's WS/federation/outbox.jsonl by `record_reply` before it is returned.
"""

from __future__ import annotations

import json
from pathlib import Path

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from ugafl.client import site as site_ops
from ugafl.client.site_record import keep_model, record_message, record_refusal
from ugafl.common.errors import UgaflError
from ugafl.common.log import configure, get_logger
from ugafl.common.signing import model_digest

log = get_logger("client_app")


def _site(context: Context, sim_sites: str | None) -> site_ops.SiteConfig:
    configure()  # our INFO lines beside Flower's, in the SuperNode's log
    node = context.node_config
    if "site-config" in node:
        return site_ops.SiteConfig.load(str(node["site-config"]))
    if sim_sites is not None and "partition-id" in node:
        return site_ops.SiteConfig.load(Path(sim_sites) / str(int(node["partition-id"])) / "site.toml")
    raise site_ops.ConfigError("the SuperNode has no site-config in its --node-config (site-config=PATH)")


def _model(msg: Message, site: site_ops.SiteConfig):
    """The verified global model; a model the site does not trust is recorded as refused and the
    error (naming the reason, not the site's files) is the reply."""
    config = msg.content["config"]
    arrays = {k: v.numpy() for k, v in msg.content["arrays"].items()}
    round_ = int(config["server-round"])
    what = f"global model of round {round_}"
    try:
        model, cfg, _ = site_ops.global_model(site, arrays, json.loads(str(config["model-config"])),
                                              str(config.get("model-signature", "")), what)
    except UgaflError as error:
        record_refusal(site.workspace, what, str(error))
        raise
    return model, cfg, config, round_, json.loads(str(config["model-signature"]))


def describe(content: RecordDict) -> dict:
    """Every record of a reply, as the site's outbox keeps it: for arrays their names, dtypes,
    shapes and digest; for metrics and configs their values."""
    out: dict = {}
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            arrays = {k: v.numpy() for k, v in record.items()}
            out[name] = {"type": "ArrayRecord", "arrays": {k: [str(a.dtype), list(a.shape)] for k, a in arrays.items()},
                         "sha256": model_digest(arrays)}
        else:
            out[name] = {"type": type(record).__name__, "values": {k: v for k, v in record.items()}}
    return out


def _reply(msg: Message, site: site_ops.SiteConfig, round_: int, signed: dict, metrics: dict[str, float],
           state: dict | None = None, patch_ids: list[int] | None = None) -> Message:
    content = RecordDict({"metrics": MetricRecord({k: float(v) for k, v in metrics.items()})})
    if state is not None:
        content["arrays"] = ArrayRecord(state)
    described = describe(content)
    site_ops.record_reply(site.workspace, msg.metadata.message_type, round_, described)
    record_message(site.workspace, msg.metadata.message_type, msg.metadata.run_id, round_, signed,
                   described["arrays"]["sha256"] if state is not None else None, metrics, patch_ids)
    return Message(content=content, reply_to=msg)


def make_client_app(sim_sites: str | None = None, mods: list | None = None) -> ClientApp:
    """The ClientApp; `mods` are Flower mods wrapped around every handler."""
    app = ClientApp(mods=mods or [])

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        site = _site(context, sim_sites)
        model, cfg, config, round_, signed = _model(msg, site)
        method, passes = str(config.get("method", "tta")), int(config.get("passes", 4))
        keep_model(site.workspace, model, cfg, signed, method, passes)  # for the inbox watcher between rounds
        metrics = site_ops.query(site, model, cfg, str(config["model-version"]), round_, str(config["strategy"]),
                                 int(config["budget"]), int(config["seed"]), method, passes)
        return _reply(msg, site, round_, signed, metrics)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        site = _site(context, sim_sites)
        model, cfg, config, round_, signed = _model(msg, site)
        state, _, metrics = site_ops.train(site, model, cfg, int(config["local-steps"]), float(config["proximal-mu"]),
                                           float(config["lr"]), int(config["seed"]) + round_)
        used = site_ops.trained_on(site.workspace) if state is not None and site.role != "central" else []
        return _reply(msg, site, round_, signed, metrics, state, used)  # nothing new: no arrays, zero examples

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        site = _site(context, sim_sites)
        model, _, _, round_, signed = _model(msg, site)
        return _reply(msg, site, round_, signed, site_ops.evaluate(site, model))

    return app


app = make_client_app()
