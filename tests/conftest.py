"""Shared pytest fixtures."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def shared_data_dir() -> Path:
    """The real test data folder: ``$GEOPLM_TEST_DATA``, else ``shared/data`` beside the repository.

    Skips the calling test (with the reason) where it is absent.
    """
    env = os.environ.get("GEOPLM_TEST_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"test data folder {path} not found: set GEOPLM_TEST_DATA")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real test data folder (see :func:`shared_data_dir`)."""
    return shared_data_dir()


def copy_workflow(workdir: Path) -> None:
    """Copy the workflow (``Snakefile``, ``rules``, ``scripts``, ``envs``, ``config``, ``profiles``, ``src``,
    ``report``) into the existing folder ``workdir``, as a fresh checkout has it, for the tests that run Snakemake
    there."""
    repo = Path(__file__).resolve().parents[1]
    for name in ("Snakefile", "rules", "scripts", "envs", "config", "profiles", "src", "report"):
        source = repo / name
        if source.is_dir():
            shutil.copytree(source, workdir / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, workdir / name)
