"""The pretraining stage: corpus streaming, GearNet's round-robin schedule, the runner's outputs and their use
downstream, and the config checks of ``pretraining`` / ``pretrained`` entries. The tasks' mechanics are in
``tests/test_pretraining_tasks.py`` and ``tests/test_siamdiff.py``."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from geoplm import config as geoplm_config
from geoplm.errors import ConfigError, GeoplmError
from geoplm.inputs import InputLoader
from geoplm.models.zoo import build_encoder
from geoplm.pretraining import PRETRAINING_TASKS, get_pretraining_task
from geoplm.pretraining.base import Corpus, round_robin
from geoplm.pretraining.run import corpus_members, pretrain_run
from geoplm.structure import parse_structure, save_shard
from geoplm.tasks.base import TaskModel
from geoplm.train import load_init, load_weights

REPO = Path(__file__).resolve().parents[1]

SMALL_EDGE = {
    "type": "gearnet",
    "hidden_dims": [16, 16],
    "num_angle_bin": 8,
    "short_cut": True,
    "batch_norm": True,
    "concat_hidden": True,
}

AFDB = [
    "AF-P76011-F1-model_v4.pdb",
    "AF-Q9Y5P2-F1-model_v4.pdb",
    "AF-Q96M98-F1-model_v4.pdb",
    "AF-Q96HM7-F1-model_v4.pdb",
    "AF-Q5T5X7-F1-model_v4.pdb",
]


@pytest.fixture(scope="module")
def corpus_files(shared_data, tmp_path_factory):
    """Two record shards of real AlphaFold DB models (3 + 2) and their manifest, as the workflow writes them."""
    root = tmp_path_factory.mktemp("corpus") / "afdb"
    root.mkdir()
    records = [parse_structure(shared_data / "alphafold" / name)[0] for name in AFDB]
    rows = []
    for shard, members in (("0000", records[:3]), ("0001", records[3:])):
        save_shard(members, root / f"{shard}.pt")
        rows += [{"id": r["id"], "split": "", "shard": shard} for r in members]
    pd.DataFrame(rows).to_csv(root / "manifest.tsv", sep="\t", index=False)
    return root / "manifest.tsv", [root / "0000.pt", root / "0001.pt"], [r["id"] for r in records]


def test_round_robin_is_gearnets_schedule():
    # script/pretrain.py: per block of save_interval epochs, every split in turn for that many epochs
    assert round_robin(10, 3, 5) == [0] * 5 + [1] * 5 + [2] * 5 + [0] * 5 + [1] * 5 + [2] * 5
    assert round_robin(7, 2, 5) == [0] * 5 + [1] * 5 + [0] * 2 + [1] * 2  # the last block shorter
    assert round_robin(1, 1, 5) == [0]
    with pytest.raises(GeoplmError, match="epochs_per_split"):
        round_robin(5, 2, 0)


def test_corpus_cuts_splits_and_holds_one_at_a_time(corpus_files):
    manifest, shards, ids = corpus_files
    members = corpus_members([manifest], shards)
    assert [len(m[1]) for m in members] == [3, 2]
    corpus = Corpus(members, InputLoader(), max_split_size=2, schedule=round_robin(2, 3, 1))
    assert corpus.num_splits == 3 and len(corpus) == 5 and corpus.ids == ids
    # the schedule: split 0, 1, 2, then again
    seen = [[e.id for e in corpus.examples(epoch)] for epoch in range(6)]
    assert seen == [ids[0:2], ids[2:4], ids[4:5]] * 2
    # only the split in use is held
    assert corpus._current[0] == 2 and len(corpus._current[1]) == 1
    with pytest.raises(GeoplmError, match="outside the pretraining schedule"):
        corpus.examples(6)


def test_corpus_names_a_manifest_record_missing_from_its_shard(corpus_files, tmp_path):
    manifest, shards, _ = corpus_files
    frame = pd.read_csv(manifest, sep="\t", dtype=str)
    frame.loc[0, "id"] = "AF-NOTTHERE-F1"
    bad = tmp_path / "manifest.tsv"
    frame.to_csv(bad, sep="\t", index=False)
    with pytest.raises(GeoplmError, match="shard 0000"):
        corpus_members([bad], shards)  # the shard beside this manifest is not among the records
    members = [(str(shards[0]), ["AF-NOTTHERE-F1"])]
    with pytest.raises(GeoplmError, match="AF-NOTTHERE-F1"):
        Corpus(members, InputLoader()).examples(0)
    with pytest.raises(GeoplmError, match="empty"):
        Corpus([], InputLoader())


def test_pretrain_run_writes_the_encoder_and_a_downstream_run_loads_it_strictly(corpus_files, tmp_path):
    manifest, shards, _ = corpus_files
    spec = {"kind": "distance_prediction", "corpus": ["afdb"], "epochs": 2, "batch_size": 2, "lr": 1e-3,
            "num_sample": 32, "max_split_size": 3, "epochs_per_split": 1, "truncate": 60}  # fmt: skip
    metrics = pretrain_run(
        spec, SMALL_EDGE, [manifest], shards, seed=0, encoder_path=tmp_path / "encoder.pt",
        metrics_path=tmp_path / "metrics.json", checkpoint_path=tmp_path / "model.pt", name="distance",
    )  # fmt: skip
    history = metrics["history"]
    # 2 splits x 2 epochs, round robin in blocks of 1: every pass trains, loss and throughput logged
    assert len(history) == 4 and metrics["corpus"] == {"proteins": 5, "splits": [3, 2], "passes": 4}
    assert all(h["proteins_per_second"] > 0 and h["peak_memory_mb"] > 0 for h in history)
    assert all(math.isfinite(h["train_loss"]) for h in history)  # learning: tests/test_pretraining_tasks.py
    assert json.loads((tmp_path / "metrics.json").read_text())["test"] is None
    encoder_state = torch.load(tmp_path / "encoder.pt", weights_only=True)
    # the encoder's state_dict alone, with GearNet's own keys (as the references save it); no head
    assert any(k.startswith("layers.0.") for k in encoder_state)
    assert not any(k.startswith("head") for k in encoder_state)
    torch.manual_seed(0)  # the run's seeded initialisation, before training
    encoder, _ = build_encoder(SMALL_EDGE, 21)
    assert set(encoder_state) == set(encoder.state_dict())
    assert not torch.equal(encoder.state_dict()["layers.0.linear.weight"], encoder_state["layers.0.linear.weight"])

    # downstream: loaded strictly into a task model's encoder
    def task_model(spec):
        return TaskModel(build_encoder(spec, 21)[0], torch.nn.Linear(32, 3))

    net = task_model(SMALL_EDGE)
    source, weights = load_init(tmp_path / "encoder.pt", "encoder_state")
    load_weights(net, weights, source)
    assert torch.equal(net.encoder.layers[0].linear.weight, encoder_state["layers.0.linear.weight"])
    # another architecture is refused, naming the file
    bigger = task_model(dict(SMALL_EDGE, hidden_dims=[16, 16, 16]))
    with pytest.raises(GeoplmError, match="encoder.pt.*missing"):
        load_weights(bigger, weights, source)
    with pytest.raises(GeoplmError, match="not a pretraining run"):
        load_init(tmp_path / "metrics.json", "encoder_state")


def test_pretrain_run_resumes_with_identical_results(corpus_files, tmp_path, monkeypatch):
    manifest, shards, _ = corpus_files
    spec = {"kind": "attribute_masking", "corpus": ["afdb"], "epochs": 2, "batch_size": 2, "lr": 1e-3,
            "truncate": 50, "truncate_random": True}  # fmt: skip

    def run(folder: Path):
        folder.mkdir(exist_ok=True)
        outputs = {f"{key}_path": folder / f"{key}.{ext}" for key, ext in (("encoder", "pt"), ("metrics", "json"))}
        return pretrain_run(spec, SMALL_EDGE, [manifest], shards, seed=1, name="attr",
                            checkpoint_path=folder / "model.pt", **outputs)  # fmt: skip

    whole = run(tmp_path / "whole")
    # the same run, killed during its second pass, then rerun: it continues from the resume state
    from geoplm.pretraining.base import PretrainingTask

    original = PretrainingTask.batches

    def interrupted(self, examples, batch_size, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return original(self, examples, batch_size, epoch)

    monkeypatch.setattr(PretrainingTask, "batches", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "resumed")
    assert (tmp_path / "resumed" / "model.pt.resume.pt").exists() and not (tmp_path / "resumed" / "encoder.pt").exists()
    monkeypatch.setattr(PretrainingTask, "batches", original)
    resumed = run(tmp_path / "resumed")
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in whole["history"]]
    a = torch.load(tmp_path / "whole" / "encoder.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "encoder.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pretraining_entries_are_checked_by_kind_and_reference():
    config = geoplm_config.load_config(REPO / "config" / "config.yaml")
    geoplm_config.check_config(config)
    assert set(config["pretraining"]) >= {"gearnet_mc", "gearnet_attr", "esm_siamdiff"}
    assert {e["kind"] for e in config["pretraining"].values()} == set(PRETRAINING_TASKS)
    bad = copy.deepcopy(config)
    bad["pretraining"]["gearnet_mc"]["mask_rte"] = 0.1
    with pytest.raises(ConfigError, match="pretraining.gearnet_mc.mask_rte"):
        geoplm_config.check_config(bad)
    bad = copy.deepcopy(config)
    bad["pretraining"]["gearnet_mc"]["corpus"] = ["afdb_v3"]
    with pytest.raises(ConfigError, match="pretraining.gearnet_mc.corpus.0.*no dataset named 'afdb_v3'"):
        geoplm_config.check_config(bad)
    bad = copy.deepcopy(config)
    bad["pretrained"]["mc"] = {"pretraining": "gearnet_mcc"}
    with pytest.raises(ConfigError, match="pretrained.mc.pretraining"):
        geoplm_config.check_config(bad)
    bad = copy.deepcopy(config)
    bad["pretrained"]["published_mc"] = {"published": "mc_gearnet"}
    with pytest.raises(ConfigError, match="no published checkpoint named 'mc_gearnet'"):
        geoplm_config.check_config(bad)
    # a model's own settings (the IEConv variant for Fold: batch 24 x 4, 100 epochs)
    ieconv = geoplm_config.pretraining_spec(config, "gearnet_mc", "gearnet_edge_ieconv")
    plain = geoplm_config.pretraining_spec(config, "gearnet_mc", "gearnet_edge")
    assert (ieconv["batch_size"], ieconv["epochs"]) == (96, 100) and (plain["batch_size"], plain["epochs"]) == (384, 50)
    assert "model_settings" not in plain
    # null settings of an anchor are dropped, and the task accepts the rest
    for name in config["pretraining"]:
        get_pretraining_task(geoplm_config.pretraining_spec(config, name, "gearnet_edge"), name)


def test_pretrained_rows_start_from_the_pretraining_encoder_or_the_published_file():
    config = geoplm_config.load_config(REPO / "config" / "config.yaml")
    job = {"task": "ec", "model": "gearnet_edge", "plm": "none", "pretrain": "mc", "seed": 0}
    assert geoplm_config.pretrain_start(config, job) == {
        "from": "pretraining", "pretraining": "gearnet_mc", "part": "encoder_state"
    }  # fmt: skip
    published = geoplm_config.pretrain_start(config, dict(job, pretrain="published_mc"))
    assert published == {"from": "published", "checkpoint": "mc_gearnet_edge.pth", "part": "published"}
    assert geoplm_config.pretrain_start(config, dict(job, pretrain="none")) is None
    jobs = geoplm_config.table_jobs(config, "gearnet_pretrained")
    # Fold runs only for the IEConv rows, EC / GO / Reaction only for GearNet-Edge
    assert {j["model"] for j in jobs if j["task"] == "fold"} == {"gearnet_edge_ieconv"}
    assert {j["model"] for j in jobs if j["task"] == "ec"} == {"gearnet_edge"}
    assert {j["pretrain"] for j in jobs} == {"none", "mc", "attr", "distance", "angle", "dihedral"} | {
        f"published_{p}" for p in ("mc", "attr", "distance", "angle", "dihedral", "fold_mc")
    }
    # the authors' Fold-tuned GearNet-Edge-IEConv (Zenodo 7723075) starts the Fold runs of its row only
    assert {j["task"] for j in jobs if j["pretrain"] == "published_fold_mc"} == {"fold"}
    fold_job = dict(job, task="fold", model="gearnet_edge_ieconv", pretrain="published_fold_mc")
    fold = geoplm_config.pretrain_start(config, fold_job)
    assert fold == {"from": "published", "checkpoint": "fold_mc_gearnet_edge_ieconv.pth", "part": "published"}


def test_two_process_pretraining_trains_one_encoder_and_process_0_writes(corpus_files, tmp_path):
    """Pretraining runs in the fine-tuning loop data-parallel: on 2 CPU processes (gloo, under torchrun, as a
    ``gpu=2`` job starts it) every step's gradient is all-reduced, so both replicas end with the same encoder;
    process 0 alone writes the encoder, metrics and resume state; each epoch logs the whole corpus split's throughput.
    Unlike a deterministic fine-tuning run (tests/test_distributed.py), the loss curve is not one process's: each
    process draws its own sampled edges (its torch generator seeded ``seed + rank``, as GearNet's scripts seed
    each GPU), so the test asks that both runs learn."""
    from geoplm import distributed

    manifest, shards, _ = corpus_files
    spec = {"kind": "distance_prediction", "corpus": ["afdb"], "epochs": 2, "batch_size": 4, "lr": 1e-3,
            "num_sample": 32, "truncate": 60}  # fmt: skip
    model = dict(SMALL_EDGE, batch_norm=False)  # CPU processes keep their own batch-norm statistics (no SyncBN)
    runs = {}
    for name, nproc in (("one", 1), ("two", 2)):
        folder = tmp_path / name
        folder.mkdir()
        kwargs = dict(spec=spec, model=model, manifests=[str(manifest)], records=[str(s) for s in shards], seed=0,
                      encoder_path=str(folder / "encoder.pt"), metrics_path=str(folder / "metrics.json"),
                      checkpoint_path=str(folder / "model.pt"), name="distance", threads=1)  # fmt: skip
        kwargs.update(record_dir=str(folder), run="geoplm.pretraining.run.pretrain_run", save_replica=True)
        runs[name] = distributed.launch("conftest.recorded_run", kwargs, nproc)
    two = tmp_path / "two"
    writes = {r: json.loads((two / f"rank{r}.json").read_text())["writes"] for r in (0, 1)}
    assert {"encoder.pt", "metrics.json"} <= set(writes[0]) and writes[1] == []
    replicas = [torch.load(two / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    written = torch.load(two / "encoder.pt", weights_only=True)
    assert set(replicas[0]) == set(written)
    for key, value in written.items():
        assert torch.equal(replicas[0][key], value) and torch.equal(replicas[1][key], value), key
    torch.manual_seed(0)  # the run's seeded initialisation, before training
    initial = build_encoder(model, 21)[0].state_dict()
    assert not torch.equal(written["layers.0.linear.weight"], initial["layers.0.linear.weight"])  # it trained
    one, both = runs["one"]["history"], runs["two"]["history"]
    assert len(one) == len(both) == 2
    assert all(h["proteins_per_second"] > 0 and math.isfinite(h["train_loss"]) for h in both)
    for history in (one, both):  # both learn (distance regression from random weights: the loss falls fast)
        assert history[1]["train_loss"] < 0.7 * history[0]["train_loss"]
