"""Training loop: toy-task labels, cached graphs, determinism, resume after an interruption."""

from __future__ import annotations

import json

import pytest
import torch

from geoplm import atomic, graph, steps, structure, train

AF = ["AF-P76011-F1-model_v4.pdb", "AF-Q9Y5P2-F1-model_v4.pdb", "AF-A0A1W2PQ64-F1-model_v4.pdb"]
PDB = ["11as.pdb", "1orc.pdb", "103l.pdb", "2olx.pdb", "1lds.pdb"]


def test_position_labels_match_the_reference():
    # GGNN_Meets_PLM gvp/atom3d.py TOYDataset: arange(n) and min(i, n - i)
    assert train.position_labels("absolute_position", 5).tolist() == [0, 1, 2, 3, 4]
    assert train.position_labels("relative_position", 5).tolist() == [0.0, 1.0, 2.0, 2.0, 1.0]
    with pytest.raises(Exception, match="unknown task kind"):
        train.position_labels("secondary_structure", 5)


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


def run(root, out, task=TASK, model=MODEL):
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
    )


def test_training_is_deterministic_and_learns(dataset, tmp_path):
    root, _ = dataset
    first = run(root, tmp_path / "a")
    second = run(root, tmp_path / "b")
    assert first["history"] == second["history"] and first["test"] == second["test"]
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
    assert resumed["history"] == clean["history"] and resumed["test"] == clean["test"]
    # other settings: the resume file is ignored and training starts over
    run(root, tmp_path / "crashed", dict(TASK, epochs=1))


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
