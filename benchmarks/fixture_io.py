"""What the reference scripts (``*_reference.py``, run in the torchdrug environment of ``torchdrug_env.sh``) share:
writing the fixture the tests read."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch


def plain_config(config: Mapping) -> dict:
    """A model configuration as the fixture stores it: a plain dict, list values copied."""
    return {key: (list(value) if isinstance(value, list) else value) for key, value in config.items()}


def write_fixture(fixture: Mapping, out: Path) -> None:
    """Save ``fixture`` to ``out`` (its folder created), check that ``torch.load(out, weights_only=True)`` reads it
    back, as the tests load it, and print its size.

    Raises:
        pickle.UnpicklingError: the fixture holds something ``weights_only`` loading refuses.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(dict(fixture), out)
    torch.load(out, weights_only=True)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.3f} MB)")
