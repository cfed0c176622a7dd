"""Who corrects the queue. The product knows only that corrections arrive in the queue: a person
does it later, in the review app or QuPath (`person`, the default, does nothing during the round).
Other annotators are plug-ins, found by name in the `ugafl.annotators` entry-point group or
registered in-process (`register`); the simulations' `simulated` annotator is one. An annotator is
called right after the query queued patches and returns how many items it corrected; one that
reads a folder (the site config's `annotator_data`) says so with a `needs_data = True` attribute."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Protocol

from ugafl.common.errors import ConfigError

ENTRY_POINT_GROUP = "ugafl.annotators"


class Annotator(Protocol):
    def __call__(self, workspace: Path, data: Path | None, seed: int) -> int:
        """Correct open queue items of the site `workspace` (reading `data` if it needs any); the count."""


def _person(workspace: Path, data: Path | None, seed: int) -> int:
    return 0  # a pathologist corrects in their own time; nothing happens inside the round


_REGISTRY: dict[str, Annotator] = {"person": _person}


def register(name: str, annotator: Annotator) -> None:
    """Make `annotator` available under `name` in this process."""
    _REGISTRY[name] = annotator


def _plugins() -> dict[str, object]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def annotator_names() -> tuple[str, ...]:
    """Every annotator name a site config may use: the built-in, the registered and the plug-ins."""
    return tuple(dict.fromkeys([*_REGISTRY, *_plugins()]))


def needs_data(name: str) -> bool:
    """Whether the annotator `name` reads a folder (`annotator_data`): its `needs_data` attribute."""
    return bool(getattr(get_annotator(name), "needs_data", False))


def get_annotator(name: str) -> Annotator:
    """The annotator called `name`; ConfigError listing the known ones if there is none."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    plugin = _plugins().get(name)
    if plugin is None:
        raise ConfigError(f"unknown annotator {name!r}; known: {', '.join(annotator_names())}")
    annotator: Callable = plugin.load()
    _REGISTRY[name] = annotator
    return annotator
