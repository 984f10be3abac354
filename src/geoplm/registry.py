"""The look-up every registry of geoplm shares: a mapping of names to ``"module:attribute"`` strings, the module
imported on first use (task kinds :data:`geoplm.tasks.TASKS`, pretraining kinds
:data:`geoplm.pretraining.PRETRAINING_TASKS`, dataset readers :data:`geoplm.datasets.READERS`)."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from geoplm.errors import GeoplmError


def registered(
    registry: Mapping[str, str], key: str, what: str, error: type[GeoplmError], sort_known: bool = False
) -> Any:
    """The object registered as ``key`` in ``registry`` (its ``"module:attribute"`` imported).

    ``what`` names the registry in the error (``"task kind"``); ``sort_known`` lists the known names sorted
    rather than in registry order.

    Raises:
        error: an unknown ``key``, naming it and the known ones.
    """
    if key not in registry:
        known = sorted(registry) if sort_known else list(registry)
        raise error(f"unknown {what} '{key}' (known: {', '.join(known)})")
    module, name = registry[key].split(":")
    return getattr(importlib.import_module(module), name)
