"""Atomic file output: a result is either absent or complete, never half-written.

Every writer in geoplm goes through :func:`atomic_path`: it yields a temporary path in the target's
directory and renames it over the target only when the block finished without an exception, so a
killed job leaves no truncated file that Snakemake (or a rerun) could take as done. Outputs get the
mode an ordinary ``open()`` would give them (``0666`` less the umask: ``0644`` under the usual ``022``),
not the ``0600`` of a temporary file; the temporary files a killed writer (SIGKILL) left beside a target
are removed by the next write of that target.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_MODE: int | None = None


def output_mode() -> int:
    """The permission bits of a new output: ``0o666`` less the process umask (read once)."""
    global _MODE
    if _MODE is None:
        mask = os.umask(0o022)
        os.umask(mask)
        _MODE = 0o666 & ~mask
    return _MODE


def remove_partial_files(target: str | os.PathLike) -> list[Path]:
    """Remove the temporary files :func:`atomic_path` writers of ``target`` left behind when killed
    (``.{name}.<random>[suffix].part`` beside it); return them."""
    target = Path(target)
    pattern = os.path.join(glob.escape(str(target.parent)), f".{glob.escape(target.name)}.*.part")
    removed = []
    for path in map(Path, glob.glob(pattern)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; move it onto ``target`` on success.

    Args:
        target: the final file path; its parent directory is created.
        suffix: suffix of the temporary file (some writers dispatch on it, e.g. ``.gz``).

    Raises:
        Whatever the block raises; the temporary file is removed and ``target`` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_partial_files(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix + ".part", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, output_mode())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(target: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``target`` atomically (UTF-8)."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON to ``target`` atomically."""
    write_text(target, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def torch_save(obj: Any, target: str | os.PathLike) -> None:
    """``torch.save`` ``obj`` to ``target`` atomically."""
    import torch

    with atomic_path(target) as tmp:
        torch.save(obj, tmp)
