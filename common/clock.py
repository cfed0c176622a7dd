"""Time stamps shared by both sides."""

from __future__ import annotations

from datetime import datetime, timezone


def utc_now() -> str:
    """UTC ISO 8601 with microseconds; all stamps share the format, so they sort as strings."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")
