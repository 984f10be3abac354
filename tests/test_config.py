"""Configuration: schema validation, keys by model type / task kind / graph kind, cross-references, YAML errors;
every error names the key path (and the file and line) and reaches the user without a traceback."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from geoplm import config as geoplm_config
from geoplm.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config"
SNAKEMAKE = Path(sys.executable).parent / "snakemake"


@pytest.fixture
def demo() -> dict:
    full = geoplm_config.merge(
        geoplm_config.read_yaml(CONFIG / "sources.yaml"), geoplm_config.read_yaml(CONFIG / "config.yaml")
    )
    demo = geoplm_config.read_yaml(CONFIG / "demo.yaml")
    return geoplm_config.merge(full, demo)  # Snakemake's recursive --configfile merge


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
        (lambda c: c.update(unknown_key=1), "unknown_key"),
        (lambda c: c["sources"]["demo_structures"].update(shard=3), "sources.demo_structures.shard"),
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
        (lambda c: c["tables"]["toy_position"].update(models=["gearnet", "nope"]), "tables.toy_position.models.1"),
        (lambda c: c["tables"]["toy_position"].update(plms=["none", "esm2_nope"]), "tables.toy_position.plms.1"),
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
    with pytest.raises(ConfigError, match=r"tables\.wu_docking\.rows\.2\.pretrain': no pretrained entry named 'mae'"):
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


# --- every entry by its type / kind, on real files: the message names the file, line, key path and the known keys


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _load_error(*files: Path) -> str:
    with pytest.raises(ConfigError) as error:
        geoplm_config.load_config(CONFIG / "config.yaml", *files)
    return str(error.value)


@pytest.mark.parametrize(
    ("override", "line", "key", "reason"),
    [
        # GearNet would train at the paper's 512 x 6 with hiden_dims ignored
        ("models:\n  gearnet:\n    hiden_dims: [32, 32]\n", 3, "models.gearnet.hiden_dims", "for type 'gearnet'"),
        # Molformer(**options) would die with a TypeError at training time
        ("models:\n  wu_molformer: {num_head: 2}\n", 2, "models.wu_molformer.num_head", "for type 'molformer'"),
        ("tasks:\n  wu_mqa:\n    epoch: 3\n", 3, "tasks.wu_mqa.epoch", "for task kind 'regression'"),
        # a key of another graph kind (radius belongs to gearnet and radius graphs, not knn)
        ("graphs:\n  wu_knn: {radius: 8.0}\n", 2, "graphs.wu_knn.radius", "for graph kind 'knn'"),
        ("plms:\n  esm2_t6_8M_UR50D:\n    repr_layr: 6\n", 3, "plms.esm2_t6_8M_UR50D.repr_layr", "unknown key"),
    ],
)
def test_unknown_key_names_file_line_key_and_the_known_keys(tmp_path, override, line, key, reason):
    message = _load_error(_write(tmp_path / "override.yaml", override))
    assert message.startswith(f"{tmp_path / 'override.yaml'}, line {line}: config key '{key}': unknown key"), message
    assert reason in message and "(known: " in message


def test_unknown_key_lists_the_keys_of_its_type(tmp_path):
    message = _load_error(_write(tmp_path / "o.yaml", "models:\n  gearnet:\n    hiden_dims: [32, 32]\n"))
    known = message.split("(known: ")[1].rstrip(")").split(", ")
    assert "hidden_dims" in known and "num_angle_bin" in known and "cutoffs" not in known
    message = _load_error(_write(tmp_path / "o.yaml", "tasks:\n  wu_mqa: {num_classes: 3}\n"))
    assert "tasks.wu_mqa.num_classes': unknown key for task kind 'regression'" in message


def test_misspelled_key_in_a_demo_override_is_caught(tmp_path):
    """config/demo.yaml's entries are partial overrides, merged into config/config.yaml's before the check."""
    demo = CONFIG / "demo.yaml"
    override = _write(tmp_path / "more.yaml", "models:\n  wu_gvp: {node_dim: [16, 4]}\n")
    message = _load_error(demo, override)
    assert message.startswith(f"{override}, line 2: config key 'models.wu_gvp.node_dim': unknown key for type 'gvp'")


def test_the_builders_reject_what_the_config_check_rejects():
    """Training builds the encoder from the same entry: the zoo's builders check the same key sets
    (:data:`geoplm.models.zoo.MODEL_KEYS`), so a misspelled key never trains silently or dies with a TypeError."""
    from geoplm.models.zoo import ENCODERS, MODEL_KEYS, build_encoder

    assert set(ENCODERS) <= set(MODEL_KEYS)
    for kind in ENCODERS:
        with pytest.raises(ConfigError, match=rf"models\.m: keys \['hiden_dims'\] do not apply to type '{kind}'"):
            build_encoder({"type": kind, "hiden_dims": [32]}, 16, plm=True, name="m")


@pytest.mark.parametrize(
    ("override", "line", "key", "reason"),
    [
        (
            "tables:\n  wu_mqa:\n    rows:\n      - {model: wu_gvp, plm: esm2_nope}\n",
            4,
            "tables.wu_mqa.rows.0.plm",
            "no plm named 'esm2_nope'",
        ),
        ("datasets:\n  psr: {source: nowhere}\n", 2, "datasets.psr.source", "no source named 'nowhere'"),
        (
            "tables:\n  wu_mqa:\n    columns:\n      - {task: wu_mqa_typo, metric: spearman}\n",
            4,
            "tables.wu_mqa.columns.0.task",
            "no task named 'wu_mqa_typo'",
        ),
        ("tasks:\n  wu_mqa: {dataset: psr_typo}\n", 2, "tasks.wu_mqa.dataset", "no dataset named 'psr_typo'"),
        ("models:\n  wu_gvp: {graph: wu_rbal}\n", 2, "models.wu_gvp.graph", "no graph named 'wu_rbal'"),
        ("pretrained:\n  dips: {task: docking_dipz}\n", 2, "pretrained.dips.task", "no task named 'docking_dipz'"),
    ],
)
def test_missing_name_names_file_line_and_key(tmp_path, override, line, key, reason):
    message = _load_error(_write(tmp_path / "override.yaml", override))
    assert message.startswith(f"{tmp_path / 'override.yaml'}, line {line}: config key '{key}': {reason} (known: ")


def test_plm_needs_one_of_checkpoint_and_random_init(tmp_path):
    override = "plms:\n  esm2_t6_8M_UR50D:\n    random_init: {num_layers: 1, embed_dim: 8, attention_heads: 2}\n"
    message = _load_error(_write(tmp_path / "o.yaml", override))
    assert "config key 'plms.esm2_t6_8M_UR50D': has both checkpoint and random_init" in message


@pytest.mark.parametrize(
    ("text", "where", "reason"),
    [
        (
            "models:\n  gearnet:\n    hidden_dims: [32, 32\n  x: 1\n",
            "line 4, column 4",
            "while parsing a flow sequence at line 3",
        ),
        ("models:\n\tgearnet: {}\n", "line 2, column 1", "YAML indents with spaces, not tabs"),
        (
            "models:\n  gearnet:\n    hidden_dims: [32]\n    hidden_dims: [64]\n",
            "line 4, column 5",
            "the key 'hidden_dims' is given twice in one mapping (first at line 3",
        ),
    ],
)
def test_yaml_error_names_file_and_line(tmp_path, text, where, reason):
    broken = _write(tmp_path / "broken.yaml", text)
    message = _load_error(broken)
    assert message.startswith(f"{broken}, {where}: invalid YAML: ") and reason in message, message
    with pytest.raises(ConfigError, match="a config file is a mapping"):
        geoplm_config.read_yaml(_write(tmp_path / "list.yaml", "- a\n- b\n"))


def test_schema_and_code_agree_on_every_types_keys():
    """config/schema.yaml lists, for models, tasks and graphs, the union of the keys the code accepts per type /
    kind (geoplm.models.zoo.MODEL_KEYS, geoplm.tasks.task_settings, geoplm.config.graph_keys), and the same types."""
    from geoplm.graph import GRAPH_KINDS
    from geoplm.models.zoo import MODEL_KEYS
    from geoplm.tasks import TASKS, task_settings

    schema = yaml.safe_load((CONFIG / "schema.yaml").read_text())["properties"]
    models = schema["models"]["additionalProperties"]
    assert set(models["properties"]) == set().union(*MODEL_KEYS.values())
    assert set(models["properties"]["type"]["enum"]) == set(MODEL_KEYS)
    tasks = schema["tasks"]["additionalProperties"]
    assert set(tasks["properties"]) == set().union(*(task_settings(kind) for kind in TASKS))
    assert set(tasks["properties"]["kind"]["enum"]) == set(TASKS) and set(tasks["required"]) <= set(tasks["properties"])
    graphs = schema["graphs"]["additionalProperties"]
    assert set(graphs["properties"]) == set().union(*(geoplm_config.graph_keys(kind) for kind in GRAPH_KINDS))
    assert set(graphs["properties"]["kind"]["enum"]) == set(GRAPH_KINDS)
    assert not [key for key, spec in graphs["properties"].items() if "default" in spec]  # each kind has its own


# --- under Snakemake: the message, no traceback


def _workflow_copy(tmp_path: Path) -> Path:
    """The workflow in ``tmp_path`` (linked), with its own copy of config/ to break."""
    for name in ("Snakefile", "rules", "scripts", "envs", "src", "profiles"):
        (tmp_path / name).symlink_to(REPO / name)
    (tmp_path / "config").mkdir()
    for path in CONFIG.glob("*.yaml"):
        (tmp_path / "config" / path.name).write_text(path.read_text())
    return tmp_path


def _dry_run(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "GEOPLM_MIRROR"}
    command = [str(SNAKEMAKE), "-n", "table_wu_mqa", *args]
    return subprocess.run(command, cwd=workdir, capture_output=True, text=True, env=env, timeout=300)


def test_snakemake_dry_run_stops_on_a_misspelled_key_without_traceback(tmp_path):
    workdir = _workflow_copy(tmp_path)
    _write(workdir / "typo.yaml", "models:\n  wu_gvp:\n    num_layer: 3\n")
    result = _dry_run(workdir, "--configfile", "typo.yaml")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert (
        "geoplm: invalid config: typo.yaml, line 3: config key 'models.wu_gvp.num_layer': unknown key for type 'gvp' "
        "(known: d_max, dropout, edge_dims, embed_dim, graph, node_dims, num_layers, num_rbf, type)"
    ) in output
    assert "Traceback" not in output and 'File "' not in output


def test_snakemake_names_file_and_line_of_a_yaml_error_in_the_workflow_config(tmp_path):
    workdir = _workflow_copy(tmp_path)
    config = workdir / "config" / "config.yaml"
    lines = config.read_text().splitlines()
    number = next(i for i, line in enumerate(lines) if line.strip() == "label: scores.gdt_ts")
    lines[number] = lines[number].replace("label: scores.gdt_ts", "label: [scores.gdt_ts")
    config.write_text("\n".join(lines) + "\n")
    result = _dry_run(workdir)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert f"geoplm: invalid config: config/config.yaml, line {number + 2}, column " in output, output
    assert f"while parsing a flow sequence at line {number + 1}" in output
    assert "Traceback" not in output and 'File "' not in output


def test_check_config_command(tmp_path, capsys):
    """`geoplm check-config` checks files as the workflow does; a broken --configfile (which Snakemake reads before
    the workflow, with a message naming neither file nor line) is located here."""
    from geoplm.cli import main

    assert main(["check-config", str(CONFIG / "config.yaml"), str(CONFIG / "demo.yaml")]) == 0
    assert "valid" in capsys.readouterr().out
    broken = _write(tmp_path / "broken.yaml", "models:\n  gearnet: {hidden_dims: [32, 32}\n")
    assert main(["check-config", str(CONFIG / "config.yaml"), str(broken)]) == 2
    assert f"geoplm check-config: {broken}, line 2, column " in capsys.readouterr().err


def test_outdir_puts_every_output_under_its_folder():
    """The demo writes under demo/ (config/demo.yaml): a full run never sees its outputs as stale."""
    assert geoplm_config.output_prefix({}) == "" and geoplm_config.output_prefix({"outdir": "."}) == ""
    assert geoplm_config.output_prefix({"outdir": "demo/"}) == "demo/"
    assert geoplm_config.read_yaml(CONFIG / "demo.yaml")["outdir"] == "demo"
    for bad in ("/tmp/out", "../elsewhere"):
        with pytest.raises(ConfigError, match="outdir"):
            geoplm_config.output_prefix({"outdir": bad})
