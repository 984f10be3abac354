"""Configuration: schema validation and cross-references, with errors naming the key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from geoplm import config as geoplm_config
from geoplm.errors import ConfigError

CONFIG = Path(__file__).resolve().parents[1] / "config"


@pytest.fixture
def demo() -> dict:
    full = yaml.safe_load((CONFIG / "config.yaml").read_text())
    demo = yaml.safe_load((CONFIG / "demo.yaml").read_text())
    return geoplm_config.merge(copy.deepcopy(full), demo)  # Snakemake's recursive --configfile merge


def test_full_config_is_valid():
    config = geoplm_config.load_config(CONFIG / "config.yaml")
    assert config["models"]["gearnet"]["hidden_dims"] == [512] * 6  # the paper's 6 x 512


def test_demo_merged_is_valid(demo):
    geoplm_config.validate_schema(demo)
    geoplm_config.check_references(demo)


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda c: c["tasks"]["toy_absolute_position"].update(epochs=0), "tasks.toy_absolute_position.epochs"),
        (lambda c: c["models"]["gearnet"].update(hidden_dims="512"), "models.gearnet.hidden_dims"),
        (lambda c: c.update(on_error="ignore"), "on_error"),
        (
            lambda c: c["sources"]["demo_structures"]["files"][0].update(checksum="md5:xyz"),
            "sources.demo_structures.files.0.checksum",
        ),
        (lambda c: c["plms"]["esm2_random_demo"].pop("repr_layer"), "plms.esm2_random_demo"),
        (lambda c: c.update(unknown_key=1), "(top level)"),
    ],
)
def test_schema_error_names_the_key(demo, edit, key):
    edit(demo)
    with pytest.raises(ConfigError) as error:
        geoplm_config.validate_schema(demo)
    assert f"'{key}'" in str(error.value)


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (
            lambda c: c["tasks"]["toy_absolute_position"].update(dataset="missing"),
            "tasks.toy_absolute_position.dataset",
        ),
        (lambda c: c["tables"]["toy_position"].update(models=["gearnet", "nope"]), "tables.toy_position.models"),
        (lambda c: c["tables"]["toy_position"].update(plms=["none", "esm2_nope"]), "tables.toy_position.plms"),
        (lambda c: c["datasets"]["toy_demo"].update(source="elsewhere"), "datasets.toy_demo.source"),
        (
            lambda c: c["plms"].update(
                random_plm={"random_init": {"num_layers": 1, "embed_dim": 8, "attention_heads": 2}, "repr_layer": 1}
            ),
            "plms.random_plm",
        ),
    ],
)
def test_dangling_reference_names_the_key(demo, edit, key):
    edit(demo)
    with pytest.raises(ConfigError) as error:
        geoplm_config.check_references(demo)
    assert f"'{key}'" in str(error.value)


def test_shards_partition_the_files(demo):
    files = demo["sources"]["demo_structures"]["files"]
    shards = geoplm_config.source_shards(demo, "demo_structures")
    parts = [geoplm_config.source_shard_files(demo, "demo_structures", s) for s in shards]
    assert [entry for part in parts for entry in part] == files
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_table_grid(demo):
    jobs = geoplm_config.table_jobs(demo, "toy_position")
    models = demo["tables"]["toy_position"]["models"]
    fusions = [m for m in models if demo["models"][m]["type"] == "esm_gearnet"]
    # 2 tasks x (models x 2 node features, less the fusions without ESM-2) x seeds
    assert fusions and len(jobs) == 2 * (2 * len(models) - len(fusions)) * len(demo["seeds"])
    assert {job["plm"] for job in jobs} == {"none", "esm2_random_demo"}
    assert not [job for job in jobs if job["model"] in fusions and job["plm"] == "none"]


def test_pretrained_rows_need_their_pretraining_run():
    """A table row with ``pretrain`` (Wu et al. Table 3: EquiDock pretrained on DIPS, fine-tuned on DB5.5) runs
    under results/train/{task}/{model}/{plm}/{pretrain}/...; the run it starts from is the ``pretrained`` entry's
    task with the same model, plm and seed, trained from scratch; names that do not exist are config errors."""
    full = geoplm_config.load_config(CONFIG / "config.yaml")
    jobs = geoplm_config.table_jobs(full, "wu_docking")
    pretrained = [job for job in jobs if job["pretrain"] != "none"]
    assert len(jobs) == 4 * len(full["seeds"]) and len(pretrained) == 2 * len(full["seeds"])
    assert {job["task"] for job in pretrained} == {"docking_db5_finetune"}
    start = geoplm_config.pretrain_run(full, pretrained[0])
    assert start == {**pretrained[0], "task": "docking_dips", "pretrain": "none"}
    assert geoplm_config.pretrain_run(full, jobs[0]) is None
    with pytest.raises(ConfigError, match="pretrain 'mae' is not an entry of 'pretrained'"):
        geoplm_config.pretrain_run(full, {**jobs[0], "pretrain": "mae"})
    broken = copy.deepcopy(full)
    broken["tables"]["wu_docking"]["rows"][2]["pretrain"] = "mae"
    with pytest.raises(ConfigError, match=r"tables\.wu_docking\.rows': no pretrained entry named 'mae'"):
        geoplm_config.check_references(broken)
    broken = copy.deepcopy(full)
    broken["pretrained"]["dips"]["task"] = "docking_dipz"
    with pytest.raises(ConfigError, match=r"pretrained\.dips\.task': no task named 'docking_dipz'"):
        geoplm_config.check_references(broken)


def test_default_target_takes_the_datasets_the_mirror_holds(shared_data, monkeypatch, tmp_path):
    """`snakemake --config mirror=...` prepares the datasets the mirror holds files of; without a
    mirror every dataset is a target."""
    monkeypatch.delenv("GEOPLM_MIRROR", raising=False)
    full = geoplm_config.load_config(CONFIG / "config.yaml")
    assert geoplm_config.available_datasets(full, tmp_path) == list(full["datasets"])
    chosen = geoplm_config.available_datasets(dict(full, mirror=str(shared_data)), tmp_path)
    assert {"db5_sample", "pdbbind_sample", "casp_sample", "ec_sample"} <= set(chosen)
    assert "afdb_v2" not in chosen and "ec" not in chosen  # proteome tarballs, EnzymeCommission.zip


@pytest.mark.parametrize("which", ["full", "demo"])
def test_every_model_entry_builds(which, demo, tmp_path):
    """Every ``models`` entry of the full config and of the demo merged over it builds through the zoo (or
    EquiDock): keys merged from both files must belong to the entry's type. ESM-2 inside a model is a tiny
    random ESM-2 here."""
    import torch

    from geoplm.config import NO_PLM, finetunes_esm, table_rows
    from geoplm.esm import load_esm2, write_random_esm2_checkpoint
    from geoplm.models.equidock import EquiDock
    from geoplm.models.zoo import build_encoder

    config = demo if which == "demo" else yaml.safe_load((CONFIG / "config.yaml").read_text())
    path, _ = write_random_esm2_checkpoint(tmp_path / "esm2_t2_tiny.pt", num_layers=2, embed_dim=16, seed=0)
    model, alphabet = load_esm2(path)
    with_plm = {m for table in config["tables"].values() for m, plm, _ in table_rows(table) if plm != NO_PLM}
    for name, spec in config["models"].items():
        if spec["type"] == "equidock":
            EquiDock(None, **{k: v for k, v in spec.items() if k != "type"})
            continue
        esm = (model, alphabet, {"repr_layer": 2}) if finetunes_esm(spec) else None
        plm = name in with_plm or spec["type"].startswith("esm")
        with torch.device("meta"):  # the paper's sizes need no memory to check
            encoder, width = build_encoder(spec, 16 if plm else 21, plm=plm, name=name, esm=esm)
        assert width > 0, name
