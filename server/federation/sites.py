"""The round's only view of the network: "send this to these sites, give me their replies". The
ServerApp implements it over Flower's Grid; a test implements it with sites in the same process.
Only model arrays and scalar config values go out; only arrays and scalar metrics come back."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

Scalar = int | float | str | bool


@dataclass(frozen=True)
class Reply:
    """One site's answer to one message. `error` is set (and the rest empty) when the site failed."""

    site: int
    metrics: dict[str, float]
    arrays: dict[str, np.ndarray] | None = None
    error: str | None = None


class Sites(Protocol):
    """The federation's sites, as the coordinator's round sees them."""

    def wait_for(self, count: int) -> list[int]:
        """The ids of the sites connected once at least `count` are (waits for them)."""

    def send(self, message_type: str, arrays: Mapping[str, np.ndarray], config: Mapping[str, Scalar],
             sites: list[int], on_reply: Callable[[Reply], Reply] | None = None) -> list[Reply]:
        """Send one message of `message_type` ("query", "train" or "evaluate") to each of `sites`;
        their replies (an error reply for a site that failed or did not answer in time), each
        passed through `on_reply` as soon as it is received (the round keeps updates on disk)."""
