"""Shared pytest fixtures."""

from __future__ import annotations

import importlib
import json
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


def recorded_run(
    record_dir: str,
    run: str = "geoplm.train.train_run",
    crash_after: int | None = None,
    save_replica: bool = False,
    **kwargs,
) -> dict:
    """``run(**kwargs)`` (``geoplm.train.train_run``, or ``geoplm.pretraining.run.pretrain_run``) as
    ``geoplm.distributed.launch`` starts it on every process of the data-parallel tests (target
    ``"conftest.recorded_run"``), recording in ``record_dir/rank<r>.json`` the files this process wrote and what
    each evaluation gathered (the split's size, each gathered example's classes in order); with ``crash_after``,
    process 0 fails right after writing the resume file of that epoch (a job killed mid-training); with
    ``save_replica``, the encoder weights this process's DDP replica ended with go to ``record_dir/rank<r>.pt``."""
    import torch

    from geoplm import atomic, distributed, train

    module, name = run.rsplit(".", 1)
    function = getattr(importlib.import_module(module), name)
    rank = int(os.environ.get("RANK", "0"))
    writes: list[str] = []
    evaluations: list[dict] = []
    replicas: list[torch.nn.Module] = []
    save, dump, evaluate, wrap = atomic.torch_save, atomic.write_json, train.evaluate_split, distributed.data_parallel

    def torch_save(obj, target):
        writes.append(Path(target).name)
        save(obj, target)
        if crash_after is not None and str(target).endswith(".resume.pt") and obj["state"]["epoch"] == crash_after:
            raise RuntimeError(f"killed after epoch {crash_after}")

    def write_json(target, obj):
        writes.append(Path(target).name)
        dump(target, obj)

    def evaluate_split(task, net, examples):
        scores, gathered = evaluate(task, net, examples)
        classes = [row.nonzero().flatten().tolist() for row in gathered["target"]]
        evaluations.append({"size": len(examples), "classes": classes})
        return scores, gathered

    def data_parallel(net, device):
        replicas.append(net)
        return wrap(net, device)

    atomic.torch_save, atomic.write_json = torch_save, write_json
    train.evaluate_split, distributed.data_parallel = evaluate_split, data_parallel
    try:
        return function(**kwargs)
    finally:
        atomic.torch_save, atomic.write_json = save, dump
        train.evaluate_split, distributed.data_parallel = evaluate, wrap
        Path(record_dir, f"rank{rank}.json").write_text(json.dumps({"writes": writes, "evaluations": evaluations}))
        if save_replica and replicas:
            torch.save(replicas[0].encoder.state_dict(), Path(record_dir, f"rank{rank}.pt"))
