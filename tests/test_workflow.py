"""The demo workflow end to end under Snakemake, and its incrementality.

Runs in a copy of the workflow (so the repository's own results are untouched) with the shared
data as the mirror: the table must come out of real structures with real numbers; a rerun with
nothing changed must schedule nothing; changing one model's hyperparameter must schedule exactly
that model's training runs and the table.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import copy_workflow

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
TARGET = "table_toy_position"

pytestmark = pytest.mark.workflow


def snakemake(workdir: Path, *args: str, check: bool = True, target: str = TARGET) -> subprocess.CompletedProcess:
    command = [str(SNAKEMAKE), target, "--cores", "2", "--configfile", "config/demo.yaml", "config/test.yaml", *args]
    env = {k: v for k, v in os.environ.items() if k != "GEOPLM_MIRROR"}
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, env=env, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}")
    return result


def planned_jobs(workdir: Path, target: str = TARGET) -> dict[str, int]:
    """Rule -> job count of a dry run (empty when nothing is to be done)."""
    result = snakemake(workdir, "--dry-run", "--quiet", "rules", target=target)
    text = result.stdout + result.stderr
    counts = {}
    for line in text.splitlines():
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if match and match.group(1) != "total":
            counts[match.group(1)] = int(match.group(2))
    return counts


@pytest.fixture(scope="module")
def demo(shared_data, tmp_path_factory) -> Path:
    """A copy of the workflow with the demo run once; two GearNet models so a change to one can be
    seen to leave the other alone."""
    workdir = tmp_path_factory.mktemp("workflow")
    copy_workflow(workdir)
    demo_config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    second = dict(demo_config["models"]["gearnet"], hidden_dims=[32, 32])
    test_config = {
        "mirror": str(shared_data),
        "outdir": "",  # the workflow's own folder (the demo's is demo/)
        "models": {"gearnet_small": second},
        "tables": {"toy_position": dict(demo_config["tables"]["toy_position"], models=["gearnet", "gearnet_small"])},
    }
    (workdir / "config" / "test.yaml").write_text(yaml.safe_dump(test_config))
    snakemake(workdir)
    return workdir


def test_demo_table_from_real_structures(demo):
    table = pd.read_csv(demo / "results" / "tables" / "toy_position.csv")
    assert list(table["model"]) == ["gearnet", "gearnet", "gearnet_small", "gearnet_small"]
    assert list(table["node_features"]) == ["residue one-hot", "esm2_random_demo"] * 2
    accuracy = table["toy_absolute_position Accuracy mean"]
    rmse = table["toy_relative_position RMSE mean"]
    assert ((accuracy >= 0) & (accuracy <= 1)).all()
    assert (rmse > 0).all() and all(math.isfinite(v) for v in rmse)
    # Wu et al.'s toy-task numbers could not be found: the table says so instead of a number
    assert (table["toy_absolute_position Accuracy (published)"] == "not available").all()
    markdown = (demo / "results" / "tables" / "toy_position.md").read_text()
    assert "not available" in markdown and "| gearnet | residue one-hot |" in markdown


def test_demo_records_manifest_and_skipped(demo):
    manifest = pd.read_csv(demo / "resources" / "records" / "toy_demo" / "manifest.tsv", sep="\t")
    assert set(manifest["split"]) == {"train", "valid", "test"}
    assert manifest["id"].is_unique
    # 11as has two chains, 4hhb four: one record per chain
    assert (manifest["source_file"] == "11as.pdb").sum() == 2
    assert (manifest["source_file"] == "4hhb.cif").sum() == 4
    downloads = pd.concat(
        pd.read_csv(path, sep="\t") for path in sorted((demo / "resources" / "raw" / "demo_structures").glob("*.tsv"))
    )
    assert len(downloads) == 21 and set(downloads["origin"]) == {"mirror"}
    assert downloads["sha256"].str.fullmatch(r"[0-9a-f]{64}").all()
    skipped = pd.read_csv(demo / "resources" / "records" / "toy_demo" / "skipped.tsv", sep="\t")
    assert list(skipped.columns) == ["entry", "source_file", "reason"]


def test_embeddings_shared_by_sequence(demo):
    index = pd.concat(
        pd.read_csv(path, sep="\t")
        for path in (demo / "resources" / "embeddings" / "esm2_random_demo" / "index" / "toy_demo").glob("*.tsv")
    )
    # 4hhb's two alpha chains (A, C) share a sequence and therefore one embedding file
    by_id = dict(zip(index["id"], index["path"], strict=True))
    assert by_id["4hhb_A"] == by_id["4hhb_C"]
    assert index["path"].nunique() == index["sequence_hash"].nunique() < len(index)


def test_nothing_changed_schedules_nothing(demo):
    assert planned_jobs(demo) == {}


def test_changing_one_model_reruns_only_its_training_and_the_table(demo):
    config_path = demo / "config" / "test.yaml"
    original = config_path.read_text()
    changed = yaml.safe_load(original)
    changed["models"]["gearnet_small"]["hidden_dims"] = [48, 48]
    config_path.write_text(yaml.safe_dump(changed))
    try:
        jobs = planned_jobs(demo)
    finally:
        config_path.write_text(original)
    # 2 tasks x 2 node features for gearnet_small; nothing upstream, nothing of gearnet
    assert jobs == {"train_model": 4, "make_table": 1, TARGET: 1}


def test_changing_the_embedding_layer_reruns_embeddings_and_esm_runs(demo):
    config_path = demo / "config" / "test.yaml"
    original = config_path.read_text()
    changed = yaml.safe_load(original)
    changed["plms"] = {"esm2_random_demo": {"repr_layer": 1}}
    config_path.write_text(yaml.safe_dump(changed))
    try:
        jobs = planned_jobs(demo)
    finally:
        config_path.write_text(original)
    # 2 embedding shards; 2 tasks x 2 models with ESM features; table
    assert jobs == {"embed_esm": 2, "train_model": 4, "make_table": 1, TARGET: 1}


def test_fine_tuned_esm_gearnet_trains_on_the_checkpoint_not_the_embeddings(demo):
    """ESM-GearNet with ``freeze_esm: false`` loads the plm's ESM-2 checkpoint in its training jobs
    (no embedding job is needed), and a change to the plm's settings reruns those jobs too."""
    config_path = demo / "config" / "test.yaml"
    original = config_path.read_text()
    changed = yaml.safe_load(original)
    demo_config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    changed["models"]["esm_gearnet_finetune"] = demo_config["models"]["esm_gearnet_finetune"]
    changed["tables"]["toy_position"]["models"] = ["gearnet", "esm_gearnet_finetune"]
    try:
        config_path.write_text(yaml.safe_dump(changed))
        # 2 tasks with the ESM-2 only (ESM-GearNet needs a plm)
        assert planned_jobs(demo) == {"train_model": 2, "make_table": 1, TARGET: 1}
        snakemake(demo)
        table = pd.read_csv(demo / "results" / "tables" / "toy_position.csv")
        row = table[table["model"] == "esm_gearnet_finetune"]
        assert list(row["node_features"]) == ["esm2_random_demo"]
        assert (row["toy_relative_position RMSE mean"] > 0).all()
        run = demo / "results" / "train" / "toy_relative_position" / "esm_gearnet_finetune" / "esm2_random_demo"
        weights = torch.load(next(run.glob("*/seed*/model.pt")), weights_only=True)["model"]
        assert any(k.startswith("encoder.net.sequence_model.model.layers.") for k in weights)
        changed["plms"] = {"esm2_random_demo": {"repr_layer": 1}}
        config_path.write_text(yaml.safe_dump(changed))
        jobs = planned_jobs(demo)
        # 2 embedding shards and 2 gearnet runs with ESM features; the 2 fine-tuning runs; table
        assert jobs == {"embed_esm": 2, "train_model": 4, "make_table": 1, TARGET: 1}
    finally:
        config_path.write_text(original)
    snakemake(demo)  # the table of the original config again


PRETRAINED = "table_gearnet_pretrained"


@pytest.fixture(scope="module")
def pretrained_demo(shared_data, tmp_path_factory) -> Path:
    """A copy of the workflow with the demo's pretrained table run once for two of its pretraining tasks."""
    workdir = tmp_path_factory.mktemp("pretrain_workflow")
    copy_workflow(workdir)
    demo_config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    table = demo_config["tables"]["gearnet_pretrained"]
    test_config = {
        "mirror": str(shared_data),
        "outdir": "",
        "tasks": {"ec": {"epochs": 1, "truncate": 100}},
        "pretraining": {"demo_mc": {"epochs": 2}, "demo_distance": {"epochs": 2}},
        "tables": {"gearnet_pretrained": dict(table, rows=[r for r in table["rows"] if r.get("pretrain", "none") in
                                                           ("none", "mc", "distance")])},
    }  # fmt: skip
    (workdir / "config" / "test.yaml").write_text(yaml.safe_dump(test_config))
    snakemake(workdir, target=PRETRAINED)
    return workdir


def test_pretrained_rows_fine_tune_the_encoders_pretrained_on_alphafold_models(pretrained_demo):
    table = pd.read_csv(pretrained_demo / "results" / "tables" / "gearnet_pretrained.csv")
    assert list(table["pretraining"]) == ["none", "mc", "distance"]
    assert (table["ec Fmax mean"].between(0, 1)).all()
    # published values of the pretrained rows are the paper's rows for that task
    assert [float(v) for v in table["ec Fmax (published)"]] == [0.81, 0.874, 0.839]
    for name in ("demo_mc", "demo_distance"):
        folder = pretrained_demo / "results" / "pretrain" / "gearnet_edge" / "none" / name
        metrics = json.loads((folder / "metrics.json").read_text())
        # pretrained on the mirror's 25 AlphaFold DB v4 models, one pass per epoch, the loss falling
        assert metrics["corpus"]["proteins"] == 25 and len(metrics["history"]) == 2
        assert metrics["history"][-1]["train_loss"] < metrics["history"][0]["train_loss"]
        assert (folder / "encoder.pt").exists()
    run = pretrained_demo / "results" / "train" / "ec" / "gearnet_edge" / "none" / "mc" / "seed0" / "metrics.json"
    assert (
        "results/pretrain/gearnet_edge/none/demo_mc/encoder.pt (encoder_state)"
        in json.loads(run.read_text())["initialised_from"]
    )


def test_changing_a_pretraining_setting_reruns_it_and_only_the_runs_that_use_it(pretrained_demo):
    assert planned_jobs(pretrained_demo, PRETRAINED) == {}
    config_path = pretrained_demo / "config" / "test.yaml"
    original = config_path.read_text()
    changed = yaml.safe_load(original)
    changed["pretraining"]["demo_distance"]["num_sample"] = 32
    config_path.write_text(yaml.safe_dump(changed))
    try:
        jobs = planned_jobs(pretrained_demo, PRETRAINED)
    finally:
        config_path.write_text(original)
    assert jobs == {"pretrain_model": 1, "train_model": 1, "make_table": 1, PRETRAINED: 1}
