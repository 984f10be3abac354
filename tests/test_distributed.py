"""Data-parallel training (geoplm.distributed): 2 CPU processes on gloo under torchrun, launched as a Snakemake job
launches them, follow the one-process run on the same global batch; evaluation gathers every example once;
process 0 alone writes; an interrupted 2-process run resumes to the uninterrupted one's result.

The model has no batch norm: torch's SyncBatchNorm needs CUDA, so on CPU batch norm statistics would be per
process (see geoplm.distributed)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from geoplm import distributed, steps, structure, train
from geoplm.datasets.chains import read_shard
from geoplm.errors import GeoplmError

# a graph-level task (EC, multi-label): its loss is a mean over the batch's examples, so a 2-process run on the
# same global batch has the one-process gradient; batch 3 over 7 training chains gives parts of 2 + 1 and, in the
# last batch, 1 + an empty part
TASK = {"kind": "multilabel", "dataset": "ec", "epochs": 3, "batch_size": 3, "lr": 3e-3, "num_mlp_layer": 2}
MODEL = {"type": "gearnet", "hidden_dims": [16, 16], "short_cut": True, "batch_norm": False, "concat_hidden": True}
SPLITS = {"train": 7, "valid": 5, "test": 2}


@pytest.fixture(scope="module")
def ec_dataset(shared_data, tmp_path_factory):
    """Records shard and manifest of the 14 shortest EC-labelled real chains (7 train, 5 valid, 2 test)."""
    root = tmp_path_factory.mktemp("ddp")
    table = pd.read_csv(shared_data / "chains" / "CHAINS.tsv", sep="\t", dtype=str, keep_default_na=False)
    labelled = table[table["EC_split"] != ""].copy()
    labelled["length"] = labelled["CA_residues"].astype(int)
    chosen = labelled.sort_values(["length", "file"]).drop_duplicates("file").head(18)
    other = table[~table["identified_by"].str.startswith(("file name", "HEADER"))]
    chain_map = dict(zip(other["file"], other["pdb_chain"], strict=True))
    files = [shared_data / "chains" / name for name in chosen["file"]]
    labels = sorted((shared_data / "labels" / "deepfri_EC_GO").iterdir())
    records, _ = read_shard([*files, *labels], 0, 1, {"task": "ec", "chain_map": chain_map}, "skip")
    records = sorted(records, key=lambda r: (len(r["sequence"]), r["id"]))[: sum(SPLITS.values())]
    assert len(records) == sum(SPLITS.values())
    structure.save_shard(records, root / "0000.pt")
    names = [name for name, count in SPLITS.items() for _ in range(count)]
    rows = [dict(steps.manifest_row(r, "0000"), split=split) for r, split in zip(records, names, strict=True)]
    steps.write_tsv(root / "manifest.tsv", rows, steps.MANIFEST_COLUMNS)
    return root


def arguments(root: Path, out: Path, task=TASK) -> dict:
    """train.train_run's arguments for a run writing to ``out``."""
    return {
        "task": task,
        "model": MODEL,
        "manifest": str(root / "manifest.tsv"),
        "records": [str(root / "0000.pt")],
        "embedding_indexes": [],
        "seed": 0,
        "metrics_path": str(out / "metrics.json"),
        "checkpoint_path": str(out / "model.pt"),
        "device": "cpu",
        "threads": 1,
        "graph_settings": {},
    }


TARGET = "conftest.recorded_run"  # every process records its writes and evaluations
TIMING = train.TIMING_KEYS


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if k not in TIMING} for record in history]


def weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "model.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def runs(ec_dataset, tmp_path_factory):
    """The same run on one process (here) and on 2 CPU processes (gloo, launched under torchrun)."""
    out = {}
    for name, nproc in (("one", 1), ("two", 2)):
        folder = tmp_path_factory.mktemp(name)
        metrics = distributed.launch(TARGET, {"record_dir": str(folder), **arguments(ec_dataset, folder)}, nproc)
        out[name] = (folder, metrics)
    return out


def test_two_processes_follow_one_process_on_the_same_global_batch(runs):
    (one_dir, one), (two_dir, two) = runs["one"], runs["two"]
    assert one["processes"] == 1 and two["processes"] == 2
    # the per-epoch training loss (and validation) history of the global batch, to float rounding
    assert len(two["history"]) == len(one["history"]) == TASK["epochs"]
    for a, b in zip(without_timing(one["history"]), without_timing(two["history"]), strict=True):
        assert a.keys() == b.keys()
        assert b == pytest.approx(a, rel=1e-5, abs=1e-7)
    assert one["history"][-1]["train_loss"] < one["history"][0]["train_loss"]
    assert all(h["proteins_per_second"] > 0 for h in two["history"])
    # the final weights
    a, b = weights(one_dir), weights(two_dir)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)
    # the metrics of every split, computed once on the whole gathered split
    assert two["splits"].keys() == one["splits"].keys() == {"valid", "test"}
    for split in one["splits"]:
        assert two["splits"][split] == pytest.approx(one["splits"][split], rel=1e-5, abs=1e-7)
    assert two["best_epoch"] == one["best_epoch"]


def test_evaluation_gathers_every_example_once_and_process_0_alone_writes(runs):
    (one_dir, _), (two_dir, two) = runs["one"], runs["two"]
    single = json.loads((one_dir / "rank0.json").read_text())
    ranks = [json.loads((two_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
    # every evaluation (validation each epoch, then valid and test) on both processes: each example exactly once,
    # in the one-process order
    assert len(single["evaluations"]) == TASK["epochs"] + 2
    for rank in ranks:
        assert rank["evaluations"] == single["evaluations"]
        for evaluation in rank["evaluations"]:
            assert len(evaluation["classes"]) == evaluation["size"]
    assert [e["size"] for e in single["evaluations"][-2:]] == [SPLITS["valid"], SPLITS["test"]]
    # process 0 wrote the resume file every epoch, then the weights and the metrics; process 1 nothing
    assert (
        ranks[0]["writes"] == single["writes"] == ["model.pt.resume.pt"] * TASK["epochs"] + ["model.pt", "metrics.json"]
    )
    assert ranks[1]["writes"] == []
    assert sorted(p.name for p in two_dir.iterdir()) == ["metrics.json", "model.pt", "rank0.json", "rank1.json"]
    assert json.loads((two_dir / "metrics.json").read_text())["history"] == two["history"]


def test_interrupted_two_process_run_resumes_to_the_same_result(runs, ec_dataset, tmp_path):
    clean_dir, clean = runs["two"]
    options = {"record_dir": str(tmp_path), **arguments(ec_dataset, tmp_path)}
    with pytest.raises(GeoplmError, match="killed after epoch 1"):
        distributed.launch(TARGET, {**options, "crash_after": 1}, 2)
    resume = tmp_path / "model.pt.resume.pt"
    assert resume.exists() and not (tmp_path / "metrics.json").exists()
    saved = torch.load(resume, weights_only=True)["state"]
    assert saved["epoch"] == 1 and len(saved["rank_torch_rng"]) == 2
    resumed = distributed.launch(TARGET, options, 2)
    # epochs 1 and 2 trained after the restart: the uninterrupted run's history, weights and metrics exactly
    assert without_timing(resumed["history"]) == without_timing(clean["history"])
    assert resumed["splits"] == clean["splits"]
    a, b = weights(clean_dir), weights(tmp_path)
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert json.loads((tmp_path / "rank0.json").read_text())["writes"][0] == "model.pt.resume.pt"
    assert not resume.exists()


def test_shards_cover_the_batch_and_processes_count():
    batch = list(range(7))
    parts = [distributed.shard(batch, rank, 3) for rank in range(3)]
    assert parts == [[0, 1, 2], [3, 4], [5, 6]]
    assert [distributed.shard([0], rank, 2) for rank in range(2)] == [[0], []]
    assert distributed.world() == (0, 1) and distributed.is_main()
    assert distributed.gather({"a": 1}) == [{"a": 1}]
    assert distributed.processes(4, "cpu") == 1


def test_processes_from_the_environment_and_bad_targets(monkeypatch):
    monkeypatch.setenv(distributed.PROCESSES_ENV, "2")
    assert distributed.processes(1, "cpu") == 2
    monkeypatch.setenv(distributed.PROCESSES_ENV, "zero")
    with pytest.raises(GeoplmError, match="GEOPLM_PROCESSES"):
        distributed.processes(1, "cpu")
    with pytest.raises(GeoplmError, match="cannot launch 'geoplm.train.no_such_function'"):
        distributed.launch("geoplm.train.no_such_function", {}, 2)


def test_launch_job_shares_the_job_threads_among_its_processes(monkeypatch):
    """launch_job (rules train_model, pretrain_model) adds the device and the job's threads divided among its
    processes (at least one each) to the target's arguments."""
    monkeypatch.delenv(distributed.PROCESSES_ENV, raising=False)
    assert distributed.launch_job("builtins.dict", {"a": 1}, "cpu", 4, 6) == {"a": 1, "device": "cpu", "threads": 6}
    calls = []
    monkeypatch.setattr(distributed, "launch", lambda target, kwargs, nproc: calls.append((target, kwargs, nproc)))
    monkeypatch.setenv(distributed.PROCESSES_ENV, "4")
    distributed.launch_job("geoplm.train.train_run", {"a": 1}, "cpu", 1, 9)
    distributed.launch_job("geoplm.train.train_run", {"a": 1}, "cpu", 1, 2)
    assert [(kwargs["threads"], nproc) for _, kwargs, nproc in calls] == [(2, 4), (1, 4)]
    assert calls[0][1] == {"a": 1, "device": "cpu", "threads": 2}
