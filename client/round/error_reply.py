"""What a site sends when it cannot answer a message: a fixed category and an error id, nothing
else. Error texts name slides, files and paths; they stay at the site, in its log and in
WORKSPACE/federation/errors.jsonl under the id, where its IT staff can find them from the id the
coordinator shows."""

from __future__ import annotations

import traceback
import uuid
from pathlib import Path

from ugafl.client.round.records import FEDERATION_DIR, append_jsonl
from ugafl.common.errors import ConfigError, UgaflError
from ugafl.common.log import get_logger
from ugafl.common.signing import SignatureError
from ugafl.common.wire_pack import WireError

log = get_logger("site_errors")

# the categories a coordinator may see, most specific first
CATEGORIES: tuple[tuple[type[BaseException], str], ...] = (
    (SignatureError, "model refused"),
    (WireError, "model refused"),  # the message's packed arrays are not what a coordinator writes
    (ConfigError, "site configuration"),
    (UgaflError, "site data"),
    (BaseException, "internal error"),
)


def category_of(error: BaseException) -> str:
    return next(name for kind, name in CATEGORIES if isinstance(error, kind))


def errors_path(workspace: Path) -> Path:
    return workspace / FEDERATION_DIR / "errors.jsonl"


def error_reply(error: BaseException, message_type: str, workspace: Path | None = None) -> str:
    """The reason sent to the coordinator for `error`; the detail is logged (and appended to the
    workspace's errors.jsonl when the site's workspace is known) under a fresh error id."""
    error_id = uuid.uuid4().hex[:12]
    category = category_of(error)
    detail = f"{type(error).__name__}: {error}"
    log.error("error id %s (%s) answering %s: %s", error_id, category, message_type, detail,
              exc_info=not isinstance(error, UgaflError))
    if workspace is not None:
        try:
            append_jsonl(errors_path(workspace), {"id": error_id, "category": category, "message": message_type,
                                                  "detail": detail, "traceback": traceback.format_exception(error)})
        except OSError as failed:  # the log line above still holds the detail
            log.error("error id %s: could not be recorded in %s: %s", error_id, errors_path(workspace), failed)
    return f"ugafl site error: {category}; error id {error_id}; the detail is in the site's log"
