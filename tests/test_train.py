"""Training loop: toy-task labels, cached graphs, determinism, resume after an interruption."""

from __future__ import annotations

import json

import pytest
import torch

from geoplm import atomic, esm, graph, steps, structure, train
from geoplm.errors import GeoplmError
from geoplm.tasks.position import position_labels

AF = ["AF-P76011-F1-model_v4.pdb", "AF-Q9Y5P2-F1-model_v4.pdb", "AF-A0A1W2PQ64-F1-model_v4.pdb"]
PDB = ["11as.pdb", "1orc.pdb", "103l.pdb", "2olx.pdb", "1lds.pdb"]


def losses_only(metrics: dict) -> list[dict]:
    """The per-epoch history without the throughput keys (times differ between runs)."""
    return [{k: v for k, v in record.items() if k not in train.TIMING_KEYS} for record in metrics["history"]]


def test_position_labels_match_the_reference():
    # GGNN_Meets_PLM gvp/atom3d.py TOYDataset: arange(n) and min(i, n - i)
    assert position_labels("absolute_position", 5).tolist() == [0, 1, 2, 3, 4]
    assert position_labels("relative_position", 5).tolist() == [0.0, 1.0, 2.0, 2.0, 1.0]
    with pytest.raises(Exception, match="unknown position task kind"):
        position_labels("secondary_structure", 5)


@pytest.fixture(scope="module")
def dataset(shared_data, tmp_path_factory):
    """Records, manifest and cached graphs of 8 real structures (9 chains)."""
    root = tmp_path_factory.mktemp("train")
    records = [r for name in AF for r in structure.parse_structure(shared_data / "alphafold" / name)]
    records += [r for name in PDB for r in structure.parse_structure(shared_data / "pdb" / name)]
    structure.save_shard(records, root / "0000.pt")
    rows = [steps.manifest_row(record, "0000") for record in records]
    splits = steps.assign_splits([r["id"] for r in rows], {"train": 0.6, "valid": 0.2, "test": 0.2}, 0)
    for row in rows:
        row["split"] = splits[row["id"]]
    steps.write_tsv(root / "manifest.tsv", rows, steps.MANIFEST_COLUMNS)
    steps.build_graphs(root / "0000.pt", root / "graphs.pt", {})
    return root, records


def test_cached_graphs_pack_to_the_graph_built_on_the_batch(dataset):
    _, records = dataset
    cached = graph.build_record_graphs(records)
    inputs = [graph.record_graph_inputs(r) for r in records]
    packed = graph.pack_graphs(
        [p for p, _ in inputs], [t for _, t in inputs], [cached[r["id"]]["edge_list"] for r in records], 7
    )
    sizes = torch.tensor([len(p) for p, _ in inputs])
    direct = graph.build_gearnet_graph(
        torch.cat([p for p, _ in inputs]),
        torch.cat([t for _, t in inputs]),
        torch.repeat_interleave(torch.arange(len(records)), sizes),
    )
    assert torch.equal(packed.edge_list, direct.edge_list)
    assert torch.allclose(packed.edge_feature, direct.edge_feature)
    assert packed.edge_feature.shape[1] == 59


TASK = {"kind": "relative_position", "epochs": 3, "batch_size": 2, "lr": 1e-3}
MODEL = {"type": "gearnet", "hidden_dims": [16, 16], "short_cut": True, "batch_norm": True, "concat_hidden": True}


def run(root, out, task=TASK, model=MODEL, **options):
    return train.run(
        task,
        model,
        root / "manifest.tsv",
        [root / "0000.pt"],
        [],
        seed=0,
        metrics_path=out / "metrics.json",
        checkpoint_path=out / "model.pt",
        graphs=[root / "graphs.pt"],
        graph_settings={},
        **options,
    )


def test_training_is_deterministic_and_learns(dataset, tmp_path):
    root, _ = dataset
    first = run(root, tmp_path / "a")
    second = run(root, tmp_path / "b")
    assert losses_only(first) == losses_only(second) and first["test"] == second["test"]
    losses = [h["train_loss"] for h in first["history"]]
    assert losses[-1] < losses[0]
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["test"]["rmse"] == first["test"]["rmse"]
    assert not (tmp_path / "a" / "model.pt.resume.pt").exists()


def test_interrupted_run_resumes_where_it_stopped(dataset, tmp_path, monkeypatch):
    root, _ = dataset
    clean = run(root, tmp_path / "clean")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed after training")

    with monkeypatch.context() as patch:
        patch.setattr(atomic, "write_json", crash)
        with pytest.raises(KeyboardInterrupt):
            run(root, tmp_path / "crashed")
    resume = tmp_path / "crashed" / "model.pt.resume.pt"
    assert resume.exists() and not (tmp_path / "crashed" / "metrics.json").exists()
    resumed = run(root, tmp_path / "crashed")  # no epoch is trained again: identical history
    assert losses_only(resumed) == losses_only(clean) and resumed["test"] == clean["test"]
    # other settings: the resume file is ignored and training starts over
    run(root, tmp_path / "crashed", dict(TASK, epochs=1))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "other_shapes"])
def test_unreadable_resume_file_is_set_aside_and_training_starts_over(dataset, tmp_path, monkeypatch, caplog, damage):
    """A damaged ``model.pt.resume.pt`` (truncated, not a torch file, or weights of other shapes) does not block
    training: it is moved to ``model.pt.resume.pt.unreadable`` with a warning naming it, and the run starts over
    with the uninterrupted run's result."""
    root, _ = dataset
    clean = run(root, tmp_path / "clean")
    out = tmp_path / "damaged"

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed after training")

    with monkeypatch.context() as patch:
        patch.setattr(atomic, "write_json", crash)
        with pytest.raises(KeyboardInterrupt):
            run(root, out)
    resume = out / "model.pt.resume.pt"
    data = resume.read_bytes()
    if damage == "truncated":
        resume.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        resume.write_bytes(b"not a checkpoint\n" * 10)
    else:
        saved = torch.load(resume, weights_only=True)
        saved["model"] = {key: value.reshape(-1)[:1] for key, value in saved["model"].items()}
        torch.save(saved, resume)
    with caplog.at_level("WARNING", logger="geoplm.train"):
        again = run(root, out)
    assert losses_only(again) == losses_only(clean) and again["test"] == clean["test"]
    aside = out / "model.pt.resume.pt.unreadable"
    assert aside.exists() and not resume.exists()
    assert any(str(resume) in r.getMessage() and str(aside) in r.getMessage() for r in caplog.records)


def test_absolute_position_ignores_residues_beyond_the_classes(dataset, tmp_path):
    root, _ = dataset
    task = {"kind": "absolute_position", "num_classes": 64, "epochs": 1, "batch_size": 4, "lr": 1e-3}
    metrics = run(root, tmp_path, task)
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    assert metrics["test"]["residues_beyond_classes"] > 0  # chains longer than 64 Cα residues


def test_gearnet_edge_trains_through_the_same_loop(dataset, tmp_path):
    root, _ = dataset
    model = dict(MODEL, num_angle_bin=8)
    metrics = run(root, tmp_path / "edge", dict(TASK, epochs=1), model)
    plain = run(root, tmp_path / "plain", dict(TASK, epochs=1))
    assert metrics["num_parameters"] > plain["num_parameters"]  # the edge layers exist
    assert metrics["test"]["rmse"] > 0


@pytest.fixture(scope="module")
def esm_index(dataset, tmp_path_factory):
    """ESM-2 embeddings of the dataset through the real path: a tiny random fair-esm checkpoint."""
    root, _ = dataset
    work = tmp_path_factory.mktemp("esm")
    checkpoint = work / "esm2_t2_tiny.pt"
    steps.build_random_esm(checkpoint, {"num_layers": 2, "embed_dim": 32, "attention_heads": 4, "seed": 0})
    index = work / "index" / "0000.tsv"
    steps.embed_records(root / "0000.pt", checkpoint, index, work / "store", "tiny", {"repr_layer": 2})
    return index


WU_MODELS = {
    "gvp": ({"type": "gvp", "node_dims": [8, 4], "edge_dims": [8, 1], "num_layers": 2}, {"kind": "radius"}),
    "egnn": ({"type": "egnn", "hidden_dim": 8, "num_layers": 2}, {"kind": "knn", "k": 10}),
    "molformer": ({"type": "molformer", "num_layers": 1, "embed_dim": 8, "num_heads": 2}, {"kind": "radius"}),
}


@pytest.mark.parametrize("name", sorted(WU_MODELS))
@pytest.mark.parametrize("with_esm", [False, True], ids=["one-hot", "esm"])
def test_wu_models_train_with_and_without_esm(dataset, esm_index, tmp_path, name, with_esm):
    """GVP-GNN, EGNN and Molformer train through the same loop on Cα graphs (Wu et al.); with ESM-2 the
    embedding replaces the residue-type input (no embedding module, the first layer is ESM-wide)."""
    root, _ = dataset
    model, graph_settings = WU_MODELS[name]
    metrics = train.run(
        dict(TASK, epochs=2),
        model,
        root / "manifest.tsv",
        [root / "0000.pt"],
        [esm_index] if with_esm else [],
        seed=0,
        metrics_path=tmp_path / "metrics.json",
        checkpoint_path=tmp_path / "model.pt",
        graph_settings=graph_settings,
    )
    assert metrics["node_input_dim"] == (32 if with_esm else 21)
    assert metrics["test"]["rmse"] > 0 and len(metrics["history"]) == 2
    weights = torch.load(tmp_path / "model.pt", weights_only=True)["model"]
    embedding = [k for k in weights if "embed" in k and k.endswith("weight") and weights[k].ndim == 2]
    if name == "egnn":  # GGNN_Meets_PLM's EGNN: no input layer; ESM-2-wide (32 here) layers, or the hidden width
        assert not [k for k in weights if "embedding_in" in k or "embedding_out" in k]
        width = 32 if with_esm else 8
        assert weights["encoder.net.layers.0.node_mlp.2.weight"].shape == (width, width)
        assert ("encoder.embed.weight" in weights) != with_esm
    if name in ("gvp", "molformer"):
        # the residue-type embedding exists only without ESM: the PLM vector replaces it
        assert bool([k for k in embedding if "net.embed" in k]) != with_esm


@pytest.mark.parametrize("fusion", ["parallel", "cross"])
def test_esm_gearnet_fusions_train_on_stored_embeddings(dataset, esm_index, tmp_path, fusion):
    """ESM-GearNet parallel / cross fusion (Zhang et al. 2023) trains through the loop: the GearNet view
    reads the residue one-hot (21), the ESM view the stored ESM-2 rows; the encoder outputs both."""
    root, _ = dataset
    model = {"type": "esm_gearnet", "fusion": fusion, "hidden_dims": [16, 16], "cross_dim": 16}
    metrics = train.run(
        dict(TASK, epochs=2),
        model,
        root / "manifest.tsv",
        [root / "0000.pt"],
        [esm_index],
        seed=0,
        metrics_path=tmp_path / "metrics.json",
        checkpoint_path=tmp_path / "model.pt",
        graphs=[root / "graphs.pt"],
        graph_settings={},
    )
    weights = torch.load(tmp_path / "model.pt", weights_only=True)["model"]
    first = [
        k for k in weights if k.startswith("encoder.net.structure_model.layers.0.") and k.endswith("linear.weight")
    ]
    assert first and weights[first[0]].shape[1] == 21 * 7  # one-hot input, 7 relations
    assert metrics["test"]["rmse"] > 0
    with pytest.raises(Exception, match="esm_gearnet"):
        train.run(TASK, model, root / "manifest.tsv", [root / "0000.pt"], [], seed=0, metrics_path=tmp_path / "m.json")


@pytest.mark.parametrize("fusion", ["serial", "cross"])
def test_esm_gearnet_fine_tunes_esm2_inside_the_model(dataset, esm_index, tmp_path, fusion):
    """``freeze_esm: false`` (ESM-GearNet's default): ESM-2 is loaded from its fair-esm checkpoint through
    the real path, reads each chain's sequence in every step and is fine-tuned at esm_lr_ratio x lr; the
    stored embeddings are not needed. With the ratio at 0 the ESM-2 weights stay exactly as loaded, so the
    ratio reaches the optimizer."""
    root, _ = dataset
    checkpoint = esm_index.parents[1] / "esm2_t2_tiny.pt"
    initial = esm.load_esm2(checkpoint)[0].state_dict()
    model = {"type": "esm_gearnet", "fusion": fusion, "freeze_esm": False, "hidden_dims": [16, 16], "cross_dim": 16}

    def fine_tune(out, **options):
        task = dict(TASK, epochs=2, batch_size=4)
        return run(root, out, task, dict(model, **options), esm_checkpoint=checkpoint, esm_settings={"repr_layer": 2})

    def esm_change(out):
        """Largest change of an ESM-2 weight in the saved model, and the saved weights."""
        weights = torch.load(out / "model.pt", weights_only=True)["model"]
        prefix = "encoder.net.sequence_model.model."
        tuned = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
        assert tuned.keys() == initial.keys()  # the whole ESM-2 is part of the fine-tuned model
        return max(float((tuned[k].float() - initial[k].float()).abs().max()) for k in tuned), weights

    metrics = fine_tune(tmp_path / "tuned")
    assert metrics["test"]["rmse"] > 0 and len(metrics["history"]) == 2
    changed, weights = esm_change(tmp_path / "tuned")
    assert changed > 0
    if fusion == "serial":  # GearNet reads the 32-d ESM-2 output: 32 x 7 relations
        first = next(k for k in weights if ".structure_model.layers.0." in k and k.endswith("linear.weight"))
        assert weights[first].shape[1] == 32 * 7
    fine_tune(tmp_path / "frozen", esm_lr_ratio=0.0)
    unchanged, _ = esm_change(tmp_path / "frozen")
    assert unchanged == 0.0
    with pytest.raises(Exception, match="checkpoint"):
        train.run(TASK, model, root / "manifest.tsv", [root / "0000.pt"], [], seed=0, metrics_path=tmp_path / "m.json")


def test_equidock_trains_through_train_model_with_and_without_esm(shared_data, tmp_path):
    """Docking (EquiDock) from the DB5.5 reader's records through train.run, with ESM-2 features
    from the store (random tiny ESM-2) and without."""
    from geoplm.datasets import get_reader

    files = sorted((shared_data / "db5").glob("[137]*_[rl]_b.pdb"))
    records, _ = get_reader("db5")(files, 0, 1, {"unbound": False}, "skip")
    groups = sorted({r["group"] for r in records})[:4]
    records = [r for r in records if r["group"] in groups]
    structure.save_shard(records, tmp_path / "0000.pt")
    split = dict(zip(groups, ["train", "train", "valid", "test"], strict=False))
    rows = [dict(steps.manifest_row(r, "0000"), split=split[r["group"]]) for r in records]
    steps.write_tsv(tmp_path / "manifest.tsv", rows, steps.MANIFEST_COLUMNS)
    checkpoint = tmp_path / "esm2_t2_tiny.pt"
    steps.build_random_esm(checkpoint, {"num_layers": 2, "embed_dim": 16, "attention_heads": 4, "seed": 0})
    steps.embed_records(
        tmp_path / "0000.pt", checkpoint, tmp_path / "index.tsv", tmp_path / "store", "t", {"repr_layer": 2}
    )
    task = {"kind": "docking", "epochs": 2, "batch_size": 2, "lr": 1e-3}
    model = {"type": "equidock", "hidden_dim": 8, "residue_emb_dim": 8, "n_layers": 2, "num_att_heads": 4}
    results = {}
    for name, indexes in (("none", []), ("esm", [tmp_path / "index.tsv"])):
        results[name] = train.run(
            task,
            model,
            tmp_path / "manifest.tsv",
            [tmp_path / "0000.pt"],
            indexes,
            seed=0,
            metrics_path=tmp_path / name / "metrics.json",
            checkpoint_path=tmp_path / name / "model.pt",
        )
        assert results[name]["test"]["complexes"] == 1
        assert results[name]["test"]["complex_rmsd_median"] > 0
    assert results["none"]["test"] != results["esm"]["test"]  # the ESM-2 input changes the model


def test_a_run_starts_from_a_finished_runs_weights(dataset, tmp_path):
    """``init_checkpoint`` (the workflow's ``pretrain``): a run with no epoch to train, started from another run's
    model.pt, evaluates exactly that run's weights; ``encoder`` takes the encoder only (the head starts afresh);
    weights of another architecture are refused, naming the file and the keys."""
    root, _ = dataset
    first = run(root, tmp_path / "a")
    source = tmp_path / "a" / "model.pt"
    again = run(root, tmp_path / "b", dict(TASK, epochs=0), init_checkpoint=source)
    assert again["test"] == first["test"] and again["initialised_from"] == f"{source} (model)"
    weights = torch.load(source, weights_only=True)["model"]
    started = torch.load(tmp_path / "b" / "model.pt", weights_only=True)["model"]
    assert started.keys() == weights.keys() and all(torch.equal(v, weights[k]) for k, v in started.items())
    encoder_only = run(root, tmp_path / "c", dict(TASK, epochs=0), init_checkpoint=source, init_part="encoder")
    saved = torch.load(tmp_path / "c" / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(saved[k], v) for k, v in weights.items() if k.startswith("encoder."))
    assert not all(torch.equal(saved[k], v) for k, v in weights.items() if k.startswith("head."))
    assert encoder_only["test"] != first["test"]
    wider = dict(MODEL, hidden_dims=[8, 8])
    with pytest.raises(GeoplmError, match=r"model\.pt \(model\): its weights do not fit model .*other shapes"):
        run(root, tmp_path / "d", dict(TASK, epochs=0), model=wider, init_checkpoint=source)
    with pytest.raises(GeoplmError, match="not a training run's model.pt"):
        run(root, tmp_path / "e", TASK, init_checkpoint=root / "manifest.tsv")


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_optimizer_steps_are_torchs_default_steps(optimizer):
    """``build_optimizer`` runs torch's multi-tensor implementation; its steps are bitwise those of the
    per-parameter loop torch uses by default on the CPU (the references' ``torch.optim.Adam(params, lr)``), with
    weight decay and momentum."""
    from geoplm.pretraining import get_pretraining_task

    task = get_pretraining_task(
        {"kind": "multiview_contrast", "lr": 1e-3, "optimizer": optimizer, "weight_decay": 1e-2, "momentum": 0.9}
    )
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(21, 64), torch.nn.BatchNorm1d(64), torch.nn.Linear(64, 8))
    twin = torch.nn.Sequential(torch.nn.Linear(21, 64), torch.nn.BatchNorm1d(64), torch.nn.Linear(64, 8))
    twin.load_state_dict(net.state_dict())
    start = [p.detach().clone() for p in net.parameters()]
    ours = train.build_optimizer(task, net)
    assert all(group["foreach"] for group in ours.param_groups)
    options = {"lr": 1e-3, "weight_decay": 1e-2, **({"momentum": 0.9} if optimizer == "sgd" else {})}
    reference = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[optimizer](
        twin.parameters(), foreach=False, **options
    )
    generator = torch.Generator().manual_seed(1)
    for _ in range(5):
        x = torch.randn(32, 21, generator=generator)
        for model, opt in ((net, ours), (twin, reference)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for a, b, before in zip(net.parameters(), twin.parameters(), start, strict=True):
        assert torch.equal(a, b) and not torch.equal(a, before)
