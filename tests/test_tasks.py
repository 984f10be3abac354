"""The task layer on real structures: every task learns (its training loss falls and its metric on the training
split reaches a clear level when a small real subset is overfitted), and the pieces the references define --
test-set identity cutoffs, target normalisation, per-target metrics, mutation sites and windows, truncation,
the loop's evaluation interval, schedulers and selection -- behave as specified."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from geoplm import config as geoplm_config
from geoplm import inputs, metrics, structure
from geoplm.datasets.chains import read_shard
from geoplm.datasets.labels import read_chain_list
from geoplm.errors import ConfigError, GeoplmError
from geoplm.tasks import TASKS, get_task
from geoplm.tasks.pairs import mutation_window
from geoplm.train import fit

SMALL_GEARNET = {"type": "gearnet", "hidden_dims": [64, 64], "short_cut": True, "batch_norm": False}
REPO = Path(__file__).resolve().parents[1]


def chains_table(shared_data: Path) -> pd.DataFrame:
    return pd.read_csv(shared_data / "chains" / "CHAINS.tsv", sep="\t", dtype=str, keep_default_na=False)


def labelled_records(shared_data: Path, task: str, label_dir: str, extra=(), **options) -> list[dict]:
    """Records of the ``labelled_chains`` reader on the mirror's chains with the real (or given) label files."""
    table = chains_table(shared_data)
    other = table[~table["identified_by"].str.startswith(("file name", "HEADER"))]
    chain_map = dict(zip(other["file"], other["pdb_chain"], strict=True))
    files = sorted(p for p in (shared_data / "chains").iterdir() if p.name != "CHAINS.tsv")
    labels = sorted((shared_data / "labels" / label_dir).iterdir()) if label_dir else []
    records, _ = read_shard([*files, *labels, *extra], 0, 1, {"task": task, "chain_map": chain_map, **options}, "skip")
    return records


def shortest(records: list[dict], n: int) -> list[dict]:
    return sorted(records, key=lambda r: (len(r["sequence"]), r["id"]))[:n]


def overfit(task_spec: dict, records: list[dict], tmp_path: Path, model=SMALL_GEARNET, seed=0, **loader) -> dict:
    """Train on ``records`` and evaluate on the same records (valid = test = train): the training-split metric."""
    task = get_task(task_spec, "t")
    examples = task.build_examples(records, {r["id"]: "train" for r in records}, task.input_loader(**loader))
    train = examples["train"]
    splits = {"train": train, "valid": train, **{name: train for name in task.test_splits}}
    return fit(task, model, splits, seed, tmp_path / "metrics.json", tmp_path / "model.pt", input_dim=21)


def train_losses(metrics_: dict) -> list[float]:
    return [h["train_loss"] for h in metrics_["history"]]


# --- registry and settings ------------------------------------------------------------------------------


def test_every_configured_task_builds_and_bad_settings_name_the_key():
    config = geoplm_config.load_config(REPO / "config" / "config.yaml")
    kinds = {spec["kind"] for spec in config["tasks"].values()}
    assert kinds <= set(TASKS)
    for name, spec in config["tasks"].items():
        get_task(spec, name)
    with pytest.raises(ConfigError, match="unknown task kind 'secondary'"):
        get_task({"kind": "secondary"}, "x")
    with pytest.raises(ConfigError, match=r"tasks\.ec\.num_angle_bin"):
        get_task(dict(config["tasks"]["ec"], num_angle_bin=8), "ec")
    with pytest.raises(ConfigError, match=r"tasks\.ec\.test_cutoff"):
        get_task(dict(config["tasks"]["ec"], test_cutoff=0.8), "ec")
    with pytest.raises(ConfigError, match=r"tasks\.ec\.optimizer"):
        get_task(dict(config["tasks"]["ec"], optimizer="lamb"), "ec")


# --- EC / GO (multi-label function) -------------------------------------------------------------------


@pytest.fixture(scope="module")
def ec_records(shared_data):
    return labelled_records(shared_data, "ec", "deepfri_EC_GO")


def test_ec_learns_fmax_when_overfitting_16_chains(ec_records, tmp_path):
    records = shortest(ec_records, 16)
    spec = {"kind": "multilabel", "dataset": "ec", "epochs": 30, "batch_size": 4, "lr": 3e-3, "num_mlp_layer": 2}
    result = overfit(spec, records, tmp_path)
    losses = train_losses(result)
    assert losses[-1] < 0.2 * losses[0]
    assert result["test"]["f1_max"] >= 0.9 and result["test"]["auprc_micro"] >= 0.9
    assert result["num_classes"] == 538 and result["test"]["proteins"] == 16
    # the best epoch is the one of highest validation Fmax (here the training chains)
    valid = [h["valid_f1_max"] for h in result["history"]]
    assert result["best_epoch"] == max(range(len(valid)), key=lambda i: (valid[i], -i))


def test_ec_test_cutoff_keeps_the_test_chains_flagged_at_that_identity(ec_records):
    tests = [r for r in ec_records if r["split"] == "test"]
    flags = {r["id"]: r["labels"]["test_identity"] for r in tests}
    loader = inputs.InputLoader()
    for cutoff in (0.3, 0.95):
        task = get_task({"kind": "multilabel", "dataset": "ec", "epochs": 1, "batch_size": 1, "lr": 1e-3,
                         "test_cutoff": cutoff}, "ec")  # fmt: skip
        kept = {e.id for e in task.build_examples(tests, {r["id"]: "test" for r in tests}, loader)["test"]}
        key = str(round(cutoff * 100))
        assert kept == {chain for chain, flag in flags.items() if flag[key]}
    assert any(flag["95"] and not flag["30"] for flag in flags.values())  # the cutoff makes a difference here


def go_annotation_file(path: Path, labelled: list[str], listed: list[str]) -> Path:
    """A DeepFRI GO annotation file with terms the test chooses: 4 molecular-function terms over the ``labelled``
    chains; every other chain of DeepFRI's GO lists (``listed``) is annotated with no term."""
    terms = ["GO:0003824", "GO:0005488", "GO:0016787", "GO:0046872"]
    lines = [
        "### GO-terms (molecular_function)", "\t".join(terms),
        "### GO-names (molecular_function)", "\t".join(["catalytic", "binding", "hydrolase", "metal ion"]),
        "### GO-terms (biological_process)", "GO:0008150",
        "### GO-terms (cellular_component)", "GO:0005575",
        "### PDB-chain\tGO-terms (molecular_function)\tGO-terms (biological_process)\tGO-terms (cellular_component)",
    ]  # fmt: skip
    for i, chain in enumerate(labelled):
        picked = ",".join(terms[j] for j in range(4) if (i >> j) & 1 or j == i % 4)
        lines.append(f"{chain}\t{picked}\tGO:0008150\t")
    lines += [f"{chain}\t\t\t" for chain in sorted(set(listed) - set(labelled))]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_go_path_on_real_chains_with_written_labels(shared_data, tmp_path):
    """GO has no labelled sample in the mirror: real chains with GO splits, labels written here, through the
    reader and the multi-label task."""
    table = chains_table(shared_data)
    chains = list(table[table["GO_split"] != ""]["pdb_chain"])
    go_lists = [p for p in (shared_data / "labels" / "deepfri_EC_GO").iterdir() if p.name.startswith("nrPDB-GO")]
    listed = [c for p in go_lists if p.suffix == ".txt" for c in read_chain_list(p)]
    annotation = go_annotation_file(tmp_path / "nrPDB-GO_2019.06.18_annot.tsv", chains, listed)
    records = labelled_records(shared_data, "go_mf", "", extra=[annotation, *go_lists])
    assert records and all(r["labels"]["num_classes"] == 4 for r in records)
    spec = {"kind": "multilabel", "dataset": "go_mf", "epochs": 25, "batch_size": 4, "lr": 3e-3, "num_mlp_layer": 2}
    result = overfit(spec, shortest(records, 12), tmp_path)
    assert train_losses(result)[-1] < 0.5 * train_losses(result)[0]
    assert result["test"]["f1_max"] >= 0.9


# --- Fold / Reaction (classification) ---------------------------------------------------------------------


def test_fold_learns_and_reports_every_test_split(shared_data, tmp_path):
    records = shortest(labelled_records(shared_data, "fold", "fold_HomologyTAPE"), 16)
    assert len({r["labels"]["target"] for r in records}) > 4  # several folds
    spec = {
        "kind": "classification", "dataset": "fold", "epochs": 30, "batch_size": 4, "lr": 3e-3,
        "mlp_batch_norm": True, "mlp_dropout": 0.0, "test_splits": ["test_fold", "test_family"],
    }  # fmt: skip
    result = overfit(spec, records, tmp_path)
    assert train_losses(result)[-1] < 0.2 * train_losses(result)[0]
    assert set(result["splits"]) == {"valid", "test_fold", "test_family"}
    assert result["splits"]["test_fold"]["accuracy"] >= 0.9 and result["num_classes"] == 1195
    assert result["test"] == result["splits"]["test_fold"]


# --- PSR (regression) -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def casp_records(shared_data):
    from geoplm.datasets.casp import read_shard as read_casp

    files = sorted((shared_data / "casp" / "T0980s1").iterdir())
    records, _ = read_casp(files, 0, 1, {"require_labels": True, "target": "T0980s1"}, "skip")
    return records


def test_psr_regression_normalises_targets_and_learns(casp_records, tmp_path):
    models = [r for r in casp_records if r.get("role") == "model"]
    assert len(models) == 15
    spec = {"kind": "regression", "dataset": "casp", "epochs": 40, "batch_size": 4, "lr": 3e-3,
            "label": "gdt_ts", "group_pattern": r"T\d{4}"}  # fmt: skip
    result = overfit(spec, casp_records, tmp_path)  # the native has no GDT-TS: left out
    gdt = torch.tensor([r["labels"]["gdt_ts"] for r in models], dtype=torch.float64)
    checkpoint = torch.load(tmp_path / "model.pt", weights_only=True)
    assert checkpoint["task_state"]["target_mean"] == pytest.approx(float(gdt.mean()))
    assert checkpoint["task_state"]["target_std"] == pytest.approx(float(gdt.std()))  # unbiased, as torchdrug
    assert result["test"]["examples"] == 15 and result["test"]["groups"] == 1  # "T0980" from the pattern
    assert train_losses(result)[-1] < 0.2 * train_losses(result)[0]
    assert result["test"]["spearman"] >= 0.9
    # one target: the per-target mean is that target's correlation
    assert result["test"]["per_target_spearman"] == pytest.approx(result["test"]["spearman"])
    assert result["test"]["first_rank_loss"] >= 0.0


WU_MQA_MODELS = {  # config/config.yaml's wu_* models at test widths, on their graphs
    "wu_gvp": ({"type": "gvp", "node_dims": [16, 4], "edge_dims": [16, 1], "num_layers": 2},
               {"kind": "radius", "radius": 8.0, "max_num_neighbors": 32}, {}),
    "wu_egnn": ({"type": "egnn", "hidden_dim": 16, "num_layers": 2},
                {"kind": "radius", "radius": 8.0, "max_num_neighbors": 32}, {}),
    "wu_molformer": ({"type": "molformer", "embed_dim": 16, "num_layers": 1, "num_heads": 4,
                      "readout": "padded_mean"}, {"kind": "none"}, {"head_hidden_factor": 1, "head_xavier_init": True}),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(WU_MQA_MODELS))
def test_wu_mqa_learns_with_wu_heads(casp_records, tmp_path, name):
    """Wu et al.'s MQA task (config/config.yaml ``wu_mqa``): raw GDT-TS (no normalisation), Wu et al.'s head on
    the readout of GVP-GNN, EGNN and Molformer (its ``Generator3D``: hidden width D, Xavier weights, the mean
    over the padded length); on the CASP sample's 15 models the training loss falls and the training-split
    Spearman is high."""
    config = geoplm_config.load_config(REPO / "config" / "config.yaml")
    model, graph_settings, head = WU_MQA_MODELS[name]
    spec = dict(config["tasks"]["wu_mqa"], dataset="casp", label="gdt_ts", group_pattern=r"T\d{4}", epochs=80,
                batch_size=4, lr=3e-3, scheduler=None, patience=None, **head)  # fmt: skip
    task = get_task(spec, "wu_mqa")
    examples = task.build_examples(casp_records, {r["id"]: "train" for r in casp_records}, task.input_loader())
    train = examples["train"]
    result = fit(task, model, {"train": train, "valid": train, "test": train}, 0, tmp_path / "m.json",
                 tmp_path / "model.pt", input_dim=21, graph_settings=graph_settings)  # fmt: skip
    checkpoint = torch.load(tmp_path / "model.pt", weights_only=True)
    assert checkpoint["task_state"] == {"target_mean": 0.0, "target_std": 1.0}  # raw GDT-TS
    width = {"wu_gvp": 16, "wu_egnn": 16, "wu_molformer": 16}[name]
    factor = head.get("head_hidden_factor", 2)
    assert checkpoint["model"]["head.0.net.0.weight"].shape == (factor * width, width)
    assert checkpoint["model"]["head.0.net.3.weight"].shape == (1, factor * width)
    losses = train_losses(result)
    assert sum(losses[-10:]) / 10 < 0.25 * losses[0]  # the last epochs' mean (EGNN's loss is noisy)
    assert result["test"]["spearman"] >= 0.8 and result["test"]["examples"] == 15


def test_padded_mean_readout_is_molformers_generator_mean():
    """``readout(kind="padded_mean")`` is GGNN_Meets_PLM's ``Generator3D`` mean: each protein's residue sum over
    the batch's padded length (``mean(x * mask, dim=1)`` on ``(B, L_max, D)``)."""
    from geoplm.graph import readout

    torch.manual_seed(0)
    lengths = [5, 3, 8]
    node = torch.randn(sum(lengths), 4, dtype=torch.float64)
    node2graph = torch.repeat_interleave(torch.arange(3), torch.tensor(lengths))
    padded = torch.zeros(3, max(lengths), 4, dtype=torch.float64)
    mask = torch.zeros(3, max(lengths), dtype=torch.float64)
    for b, chunk in enumerate(node.split(lengths)):
        padded[b, : len(chunk)] = chunk
        mask[b, : len(chunk)] = 1
    expected = torch.mean(padded * mask.unsqueeze(-1), dim=1)
    torch.testing.assert_close(readout(node, node2graph, 3, "padded_mean"), expected, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(readout(node, node2graph, 3, "mean"), expected)
    with pytest.raises(ValueError, match="padded_mean"):
        readout(node, node2graph, 3, "max")


# --- PPI (interface residues, Wu et al.) -------------------------------------------------------------------


@pytest.fixture(scope="module")
def dips_records(shared_data):
    from geoplm.datasets import docking

    files = sorted(path for path in (shared_data / "dips").rglob("*") if path.is_file())
    records, _ = docking.read_dips_shard(files, 0, 1, {}, "skip")
    return records


def test_interface_labels_are_calpha_contacts_below_the_cutoff(dips_records):
    """Wu et al.'s PPI labels on the mirror's DIPS pairs: a residue is positive when its Cα is within 8 Å of a Cα
    of the partner chain (checked pair by pair against a brute-force double loop); each pair is one example
    whose target holds both chains' residues, in order."""
    from geoplm.tasks.interface import interface_labels

    task = get_task({"kind": "interface_residues", "dataset": "dips", "epochs": 1, "batch_size": 2, "lr": 1e-3,
                     "roles": ["ligand_complex", "receptor_complex"]}, "p")  # fmt: skip
    split_of = {r["id"]: "train" for r in dips_records}
    examples = task.build_examples(dips_records, split_of, task.input_loader())["train"]
    assert len(examples) == 8 and all(len(e.proteins) == 2 for e in examples)
    for example in examples[:3]:
        a, b = example.proteins
        expected = [float(any(float((x - y).norm()) < 8.0 for y in b.position)) for x in a.position] + [
            float(any(float((y - x).norm()) < 8.0 for x in a.position)) for y in b.position
        ]
        assert example.target.tolist() == expected
        assert 0 < example.target.sum() < len(example.target)  # bound pairs have an interface, not all of it
    label_a, label_b = interface_labels(torch.zeros(1, 3), torch.tensor([[7.99, 0, 0], [8.0, 0, 0]]), 8.0)
    assert label_a.tolist() == [1.0] and label_b.tolist() == [1.0, 0.0]


def test_wu_ppi_learns_interface_residues(dips_records, tmp_path):
    """config/config.yaml's ``wu_ppi`` (Wu et al.'s loop and head, unshuffled batches) on the 8 real DIPS pairs
    with GVP-GNN: the training loss falls and the training-split AUROC is far above chance (0.5)."""
    config = geoplm_config.load_config(REPO / "config" / "config.yaml")
    spec = dict(config["tasks"]["wu_ppi"], dataset="dips", epochs=100, batch_size=4, lr=1e-2, scheduler=None,
                patience=None, roles=["ligand_complex", "receptor_complex"])  # fmt: skip
    task = get_task(spec, "wu_ppi")
    assert task.settings["shuffle"] is False
    examples = task.build_examples(dips_records, {r["id"]: "train" for r in dips_records}, task.input_loader())
    train = examples["train"]
    model, graph_settings, _ = WU_MQA_MODELS["wu_gvp"]
    result = fit(task, model, {"train": train, "valid": train, "test": train}, 0, tmp_path / "m.json",
                 tmp_path / "model.pt", input_dim=21, graph_settings=graph_settings)  # fmt: skip
    losses = train_losses(result)
    assert sum(losses[-5:]) / 5 < 0.8 * losses[0]
    assert result["test"]["auroc"] >= 0.8
    assert result["test"]["residues"] == sum(len(e.target) for e in train)


# --- MSP (mutation pairs) ---------------------------------------------------------------------------------


def mutant(record: dict, position: int, residue: str, item: str, label: str) -> list[dict]:
    """A wild-type / mutant record pair of one real chain: the mutant differs in one residue's type only (the
    coordinates are the wild type's, as a point mutation's model would nearly be)."""
    wild = dict(record, id=f"{item}_original", group=item, role="original_atoms", labels={"label": label})
    sequence = record["sequence"][:position] + residue + record["sequence"][position + 1 :]
    mutated = dict(wild, id=f"{item}_mutated", role="mutated_atoms", sequence=sequence)
    return [wild, mutated]


@pytest.fixture(scope="module")
def msp_records(shared_data):
    """Pairs on real chains; the label is whether the mutant residue is hydrophobic (written by the test)."""
    names = ("1orc.pdb", "103l.pdb", "1dix.pdb")
    chains = [r for name in names for r in structure.parse_structure(shared_data / "pdb" / name)]
    records = []
    for i in range(16):
        chain = chains[i % len(chains)]
        position = 5 + 7 * i % (len(chain["sequence"]) - 10)
        residue = "LIVFAMWC"[i % 8] if i % 2 else "DEKRNQSH"[i % 8]
        records += mutant(chain, position, residue, f"pair{i}", "1" if i % 2 else "0")
    return records


def test_msp_pairs_learn_from_the_mutated_residues(msp_records, tmp_path):
    spec = {"kind": "mutation_pair", "dataset": "msp", "epochs": 30, "batch_size": 4, "lr": 3e-3}
    result = overfit(spec, msp_records, tmp_path)
    assert result["test"]["pairs"] == 16
    assert train_losses(result)[-1] < 0.5 * train_losses(result)[0]
    assert result["test"]["auroc"] >= 0.9


def test_msp_site_mask_window_and_missing_partner(msp_records):
    task = get_task({"kind": "mutation_pair", "dataset": "msp", "epochs": 1, "batch_size": 1, "lr": 1e-3,
                     "truncate": 40}, "msp")  # fmt: skip
    pair = msp_records[:2]
    examples = task.build_examples(pair, {r["id"]: "train" for r in pair}, task.input_loader())["train"]
    (example,) = examples
    wild, mut = example.proteins
    assert wild.num_nodes == mut.num_nodes == 40  # cut to the window
    sites = torch.nonzero(wild.residue_type != mut.residue_type).flatten().tolist()
    assert len(sites) == 1
    # TruncateProteinPair: start = min(m - 20, L - 40) for the first mutated residue m
    position = 5
    assert mutation_window(torch.arange(100) == 70, 100, 40) == (50, 90)
    assert mutation_window(torch.arange(100) == 95, 100, 40) == (60, 100)
    assert mutation_window(torch.arange(100) == 3, 100, 40) == (0, 40)
    assert sites == [position]  # residue 5 of the chain is inside the window [0, 40)
    lonely = task.build_examples(pair[:1], {pair[0]["id"]: "train"}, task.input_loader())
    assert lonely["train"] == []  # no mutant: left out


# --- inputs: truncation ------------------------------------------------------------------------------------


def test_truncation_cuts_the_record_before_graph_and_esm_rows(shared_data, tmp_path):
    (record,) = structure.parse_structure(shared_data / "alphafold" / "AF-Q9Y5P2-F1-model_v4.pdb")
    length = len(record["sequence"])
    rows = torch.arange(length * 3, dtype=torch.float32).reshape(length, 3)
    path = tmp_path / "emb.pt"
    torch.save({"representations": {2: rows}}, path)
    loader = inputs.InputLoader(embeddings={record["id"]: str(path)}, max_length=50, esm_inputs=True)
    protein = loader(record)
    assert protein.num_nodes == 50 and protein.length == 50 and protein.edge_list is None
    assert torch.equal(protein.node_feature, rows[:50])
    assert protein.esm_input[0] == record["sequence"][:50]
    full = inputs.InputLoader()(record)
    assert torch.equal(protein.position, full.position[:50])
    randomly = inputs.InputLoader(max_length=50, random_start=True, rng=__import__("random").Random(3))(record)
    start = int(torch.nonzero((full.position == randomly.position[0]).all(1))[0])
    assert start > 0 and torch.equal(randomly.position, full.position[start : start + 50])
    with pytest.raises(GeoplmError, match="outside"):
        inputs.truncate_record(record, 50, length)


# --- the loop: evaluation interval, schedulers, selection --------------------------------------------------


def test_loop_eval_interval_step_scheduler_and_last_weights(ec_records, tmp_path):
    records = shortest(ec_records, 6)
    spec = {
        "kind": "multilabel", "dataset": "ec", "epochs": 5, "batch_size": 3, "lr": 1e-2, "optimizer": "sgd",
        "momentum": 0.9, "scheduler": {"type": "step", "step_size": 2, "gamma": 0.5}, "eval_interval": 2,
        "test_weights": "last",
    }  # fmt: skip
    result = overfit(spec, records, tmp_path)
    evaluated = [h["epoch"] for h in result["history"] if "valid_loss" in h]
    assert evaluated == [1, 3, 4]  # every 2 epochs and after the last
    assert [h["lr"] for h in result["history"]] == [1e-2, 1e-2, 5e-3, 5e-3, 2.5e-3]
    last_valid = [h for h in result["history"] if "valid_loss" in h][-1]
    assert result["valid"]["loss"] == pytest.approx(last_valid["valid_loss"])  # last weights, not the best


def test_plateau_scheduler_steps_with_the_selection_metric(ec_records, tmp_path):
    """GearNet's ReduceLROnPlateau(factor 0.6, patience 5) in torch's default mode "min", stepped with the
    validation Fmax: the learning rate falls once Fmax has failed to *decrease* for more than 5 evaluations."""
    records = shortest(ec_records, 4)
    spec = {
        "kind": "multilabel", "dataset": "ec", "epochs": 9, "batch_size": 4, "lr": 1e-3,
        "scheduler": {"type": "plateau", "factor": 0.6, "patience": 1, "mode": "max"},
    }  # fmt: skip
    result = overfit(spec, records, tmp_path)
    values = [h["valid_f1_max"] for h in result["history"]]
    lrs = [h["lr"] for h in result["history"]]
    best, bad, lr, expected = -math.inf, 0, 1e-3, []
    for value in values:  # torch's rule, mode max, threshold 1e-4 relative
        expected.append(lr)
        if value > best * (1 + 1e-4):
            best, bad = value, 0
        else:
            bad += 1
        if bad > 1:
            lr, bad = lr * 0.6, 0
    assert lrs == pytest.approx(expected)


def test_metrics_module_is_what_the_tasks_report(ec_records, tmp_path):
    records = shortest(ec_records, 6)
    spec = {"kind": "multilabel", "dataset": "ec", "epochs": 2, "batch_size": 3, "lr": 1e-3}
    task = get_task(spec, "ec")
    split = task.build_examples(records, {r["id"]: "train" for r in records}, task.input_loader())["train"]
    result = fit(task, SMALL_GEARNET, {"train": split, "valid": split, "test": split}, 0,
                 tmp_path / "m.json", tmp_path / "m.pt", input_dim=21)  # fmt: skip
    from geoplm.train import evaluate_split

    net = task.build_model(SMALL_GEARNET, 21, False)
    net.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True)["model"])
    scores, gathered = evaluate_split(task, net, split)
    assert scores["f1_max"] == pytest.approx(metrics.f1_max(gathered["pred"], gathered["target"]))
    assert scores["f1_max"] == pytest.approx(result["test"]["f1_max"])


def test_wu_heads_of_the_configured_toy_and_mqa_tasks():
    """config/config.yaml's Wu et al. tasks build the references' heads: GVP-GNN / EGNN ``dense`` (D -> 2D -> C, a
    final ReLU for the relative position), Molformer's ``Generator3D`` (D -> D -> C, no ReLU, Xavier-uniform
    weights: bounded by sqrt(6 / (fan_in + fan_out)))."""
    config = geoplm_config.load_config(REPO / "config" / "config.yaml")
    d = 16
    expected = {  # task: (hidden width, outputs, final ReLU, Xavier)
        "toy_absolute_position": (2 * d, 9000, False, False),
        "toy_relative_position": (2 * d, 1, True, False),
        "toy_absolute_position_molformer": (d, 9000, False, True),
        "toy_relative_position_molformer": (d, 1, False, True),
        "wu_mqa": (2 * d, 1, False, False),
        "wu_mqa_molformer": (d, 1, False, True),
    }
    for name, (hidden, outputs, relu, xavier) in expected.items():
        torch.manual_seed(0)
        head = get_task(config["tasks"][name], name).head(d)
        layers = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
        assert [(lin.in_features, lin.out_features) for lin in layers] == [(d, hidden), (hidden, outputs)], name
        last = [m for m in head.modules() if isinstance(m, (torch.nn.Linear, torch.nn.ReLU))][-1]
        assert isinstance(last, torch.nn.ReLU if relu else torch.nn.Linear), name
        first = layers[0].weight
        bound = math.sqrt(6 / (d + hidden))
        assert first.abs().max() <= bound
        assert (first.abs().max() > 0.9 * bound) == xavier, name  # nn.Linear's default is bounded by 1 / sqrt(d)


# --- LBA (ligand binding affinity, Wu et al.) ----------------------------------------------------------------


@pytest.fixture(scope="module")
def lba_records(shared_data):
    """The mirror's PDBbind complexes with a pocket file (12 of 13), labelled by GIGN's -logK tables."""
    from geoplm.datasets.pdbbind import read_shard as read_pdbbind

    pdbbind = shared_data / "pdbbind"
    files = [p for p in sorted(pdbbind.iterdir()) if p.is_dir() and p.name != "oddt_mini_pdbbind"]
    files += sorted(pdbbind.glob("GIGN_*.csv"))
    labels = ["GIGN_train.csv", "GIGN_test2016.csv", "GIGN_test2019.csv"]
    records, skipped = read_pdbbind(files, 0, 1, {"labels": labels}, "skip")
    assert len(records) == 12 and [s["entry"] for s in skipped] == ["1a0q"]  # 1a0q has no pocket file
    return records


def lba_spec(**settings) -> dict:
    config = geoplm_config.load_config(REPO / "config" / "config.yaml")
    return dict(config["tasks"]["wu_lba"], dataset="pdbbind", label="neg_log_affinity", **settings)


def test_lba_complex_is_pocket_calpha_then_ligand_atoms_in_one_graph(lba_records):
    """Wu et al.'s LBA graph (GGNN_Meets_PLM LBATransform): the pocket's Cα then every ligand atom (hydrogens
    included; heavy atoms only with ``ligand_hydrogens: false``), the ligand atoms of node type 21 (a 22-wide
    one-hot), and the 8 Å r-ball of ``wu_rball`` joins pocket residues to ligand atoms."""
    from geoplm.inputs import pack
    from geoplm.tasks.affinity import LIGAND_TYPE, NUM_NODE_TYPES

    task = get_task(lba_spec(), "wu_lba")
    assert task.settings["head"] == "wu" and task.settings["normalization"] is False
    assert task.selection == {"metric": "loss", "mode": "min"} and task.settings["patience_resets"] is False
    split_of = {r["id"]: "train" for r in lba_records}
    examples = task.build_examples(lba_records, split_of, task.input_loader())["train"]
    heavy = get_task(lba_spec(ligand_hydrogens=False), "h").build_examples(lba_records, split_of, task.input_loader())
    assert len(examples) == 12
    for example, record, heavy_example in zip(examples, lba_records, heavy["train"], strict=True):
        (graph_input,) = example.proteins
        residues = int((~torch.isnan(record["backbone"][:, 1]).any(dim=-1)).sum())
        atoms = record["ligand"]["position_with_h"]
        assert graph_input.num_nodes == residues + len(atoms)
        assert heavy_example.proteins[0].num_nodes == residues + len(record["ligand"]["position"])
        assert torch.equal(graph_input.position[residues:], atoms)
        assert (graph_input.residue_type[residues:] == LIGAND_TYPE).all()
        assert (graph_input.residue_type[:residues] < LIGAND_TYPE).all()
        assert graph_input.node_feature.shape == (graph_input.num_nodes, NUM_NODE_TYPES)
        assert torch.equal(graph_input.node_feature.argmax(1), graph_input.residue_type)
        assert float(example.target) == pytest.approx(record["labels"]["neg_log_affinity"])
    assert task.input_dim(examples[0]) == NUM_NODE_TYPES
    config = geoplm_config.load_config(REPO / "config" / "config.yaml")
    batch = pack([examples[0].proteins[0]], "cpu", config["graphs"]["wu_rball"])
    edges = batch.graph.edge_list[:, :2].long()
    ligand_node = batch.graph.residue_type == LIGAND_TYPE
    crossing = ligand_node[edges[:, 0]] != ligand_node[edges[:, 1]]
    assert int(crossing.sum()) > 0
    lengths = (batch.graph.node_position[edges[:, 0]] - batch.graph.node_position[edges[:, 1]]).norm(dim=-1)
    assert float(lengths.max()) < 8.0


@pytest.mark.parametrize("name", ["wu_egnn", "wu_molformer"])
def test_wu_lba_learns_affinity_of_real_complexes(lba_records, tmp_path, name):
    """config/config.yaml's ``wu_lba`` (raw pK, MSE, Wu et al.'s head on the node mean) on the 12 real PDBbind
    complexes, EGNN and Molformer at test widths: the training loss falls and the training-split Pearson is
    high; the test metrics are LBA's (RMSE, Pearson, Spearman, Kendall)."""
    model, graph_settings, head = WU_MQA_MODELS[name]
    task = get_task(lba_spec(epochs=150, batch_size=4, lr=1e-2, scheduler=None, patience=None, **head), "wu_lba")
    train = task.build_examples(lba_records, {r["id"]: "train" for r in lba_records}, task.input_loader())["train"]
    result = fit(task, model, {"train": train, "valid": train, "test": train}, 0, tmp_path / "m.json",
                 tmp_path / "model.pt", input_dim=task.input_dim(train[0]), graph_settings=graph_settings)  # fmt: skip
    losses = train_losses(result)
    assert sum(losses[-10:]) / 10 < 0.1 * losses[0]
    assert result["test"]["pearson"] >= 0.9 and result["test"]["examples"] == 12
    pred_free = torch.tensor([r["labels"]["neg_log_affinity"] for r in lba_records], dtype=torch.float64)
    assert result["test"]["rmse"] < float(pred_free.std())  # better than predicting the mean
    assert {"rmse", "pearson", "spearman", "kendall"} <= set(result["test"])


@pytest.mark.parametrize("trainable", [True, False])
def test_lba_ligand_vector_is_added_to_the_ligand_rows_of_the_plm_features(lba_records, tmp_path, trainable):
    """With ESM-2 rows (stored in fair-esm's extract format), the pocket residues carry their rows and the
    ligand atoms zero rows plus the model's ligand vector (GGNN_Meets_PLM LBAModel: ``F.embedding(atoms,
    embed) + plm``); the vector is a trained parameter, or with ``ligand_embedding_trainable: false`` a fixed
    buffer as the reference's unregistered tensor."""
    from geoplm.tasks.affinity import LIGAND_TYPE

    index = {}
    for record in lba_records[:3]:
        path = tmp_path / f"{record['id']}.pt"
        torch.save({"representations": {2: torch.randn(len(record["sequence"]), 8)}}, path)
        index[record["id"]] = str(path)
    task = get_task(lba_spec(ligand_embedding_trainable=trainable), "wu_lba")
    loader = task.input_loader(embeddings=index)
    examples = task.build_examples(lba_records[:3], {r["id"]: "train" for r in lba_records[:3]}, loader)["train"]
    assert task.input_dim(examples[0]) == 8
    graph_input = examples[0].proteins[0]
    ligand_rows = graph_input.residue_type == LIGAND_TYPE
    assert (graph_input.node_feature[ligand_rows] == 0).all() and graph_input.node_feature[~ligand_rows].abs().sum() > 0
    model_spec, graph_settings, _ = WU_MQA_MODELS["wu_egnn"]
    model = task.build_model(model_spec, 8, plm=True)
    assert ("ligand_embedding" in dict(model.named_parameters())) is trainable
    assert ("ligand_embedding" in dict(model.named_buffers())) is not trainable
    seen = {}
    model.encoder.register_forward_pre_hook(lambda module, args: seen.update(feature=args[1]))
    task.bind("cpu", graph_settings)
    output = task.forward(model, examples[:1])
    feature = seen["feature"]
    torch.testing.assert_close(feature[~ligand_rows], graph_input.node_feature[~ligand_rows])
    torch.testing.assert_close(feature[ligand_rows], model.ligand_embedding.expand(int(ligand_rows.sum()), -1))
    output.sum().backward()
    grad = model.ligand_embedding.grad
    assert (grad is not None and float(grad.abs().sum()) > 0) is trainable
