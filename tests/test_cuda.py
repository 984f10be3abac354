"""The CUDA path: graphs, every encoder of the model zoo, ESM-2 embedding and training on a GPU.

Skipped where no CUDA device is visible (CI has none); run on a GPU machine with ``pytest tests/test_cuda.py``.
Each check compares the GPU against the CPU on the same real structures and the same weights.
"""

from __future__ import annotations

import pytest
import torch

from geoplm import graph, inputs, steps, structure, train
from geoplm.models.zoo import build_encoder

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

AF = ["AF-P76011-F1-model_v4.pdb", "AF-Q9Y5P2-F1-model_v4.pdb", "AF-A0A1W2PQ64-F1-model_v4.pdb"]
GEARNET = {"type": "gearnet", "hidden_dims": [16, 16], "short_cut": True, "batch_norm": True, "concat_hidden": True}
CDCONV = {"embedding_dim": 8, "hidden_dims": [16, 24], "cutoffs": [8.0, 12.0], "kernel_dims": [8]}
#: name -> (model entry, graph settings, whether the node input is an ESM-2 embedding)
ENCODERS = {
    "gearnet": (GEARNET, {}, False),
    "gearnet_edge": (dict(GEARNET, num_angle_bin=8), {}, False),
    "gearnet_edge_ieconv": (
        {"type": "gearnet_ieconv", "embedding_dim": 16, "hidden_dims": [16, 16], "num_angle_bin": 8},
        {},
        False,
    ),
    "esm_gearnet_serial": (GEARNET, {}, True),
    "esm_gearnet_parallel": ({"type": "esm_gearnet", "fusion": "parallel", "hidden_dims": [16, 16]}, {}, True),
    "esm_gearnet_cross": (
        {"type": "esm_gearnet", "fusion": "cross", "hidden_dims": [16, 16], "cross_dim": 16},
        {},
        True,
    ),
    "cdconv": ({"type": "cdconv", **CDCONV}, {}, False),
    "esm_cdconv_parallel": ({"type": "esm_cdconv", "fusion": "parallel", **CDCONV}, {}, True),
    "gvp": ({"type": "gvp", "node_dims": [8, 4], "edge_dims": [8, 1], "num_layers": 2}, {"kind": "radius"}, True),
    "gvp_esmgearnet": (
        {"type": "gvp_esmgearnet", "node_dims": [8, 4], "edge_dims": [8, 1], "num_layers": 2},
        {"kind": "radius", "radius": 10.0, "max_num_neighbors": 32},
        True,
    ),
    "egnn": ({"type": "egnn", "hidden_dim": 8, "num_layers": 2}, {"kind": "knn", "k": 10}, False),
    "molformer": ({"type": "molformer", "num_layers": 1, "embed_dim": 8, "num_heads": 2}, {"kind": "radius"}, True),
}
ESM_DIM = 32


@pytest.fixture(scope="module")
def records(shared_data):
    return [r for name in AF for r in structure.parse_structure(shared_data / "alphafold" / name)]


def test_graphs_built_from_cuda_tensors_equal_the_cpu_graphs(records):
    examples = [inputs.InputLoader()(record) for record in records]
    position = torch.cat([e.position for e in examples])
    residue_type = torch.cat([e.residue_type for e in examples])
    node2graph = torch.repeat_interleave(torch.arange(len(examples)), torch.tensor([e.num_nodes for e in examples]))
    cpu = graph.build_gearnet_graph(position, residue_type, node2graph)
    gpu = graph.build_gearnet_graph(position.cuda(), residue_type.cuda(), node2graph.cuda())
    assert gpu.edge_list.is_cuda and gpu.edge_feature.is_cuda
    assert torch.equal(cpu.edge_list, gpu.edge_list.cpu())
    torch.testing.assert_close(cpu.edge_feature, gpu.edge_feature.cpu())
    line_cpu, line_gpu = graph.spatial_line_graph(cpu), graph.spatial_line_graph(gpu)
    assert torch.equal(line_cpu.edge_list, line_gpu.edge_list.cpu())
    for fn, arg in ((graph.knn_graph, 10), (graph.radius_graph, 8.0)):
        edges = fn(position.cuda(), arg, node2graph.cuda())
        assert edges.is_cuda and torch.equal(edges.cpu(), fn(position, arg, node2graph))


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_encoder_on_cuda_matches_cpu(records, name):
    """Forward output and parameter gradients of every zoo encoder agree between CPU and GPU."""
    spec, settings, plm = ENCODERS[name]
    examples = [inputs.InputLoader()(record) for record in records]
    generator = torch.Generator().manual_seed(0)
    if plm:
        for example in examples:
            example.node_feature = torch.randn(example.num_nodes, ESM_DIM, generator=generator)
    torch.manual_seed(0)
    encoder, _ = build_encoder(spec, ESM_DIM if plm else 21, plm=plm)
    encoder.eval()  # running batch-norm statistics, no dropout: the same function on both devices
    node_feature = torch.cat([e.node_feature for e in examples])
    results = []
    for device in ("cpu", "cuda"):
        encoder.to(device).zero_grad()
        out = encoder(inputs.make_graph(examples, device, settings), node_feature.to(device))["node_feature"]
        out.square().mean().backward()
        grads = {k: p.grad.detach().cpu().clone() for k, p in encoder.named_parameters() if p.grad is not None}
        results.append((out.detach().cpu(), grads))
    (cpu_out, cpu_grads), (gpu_out, gpu_grads) = results
    torch.testing.assert_close(gpu_out, cpu_out, rtol=1e-4, atol=1e-4 * float(cpu_out.abs().max()))
    assert cpu_grads.keys() == gpu_grads.keys() and cpu_grads
    for key, grad in cpu_grads.items():
        torch.testing.assert_close(gpu_grads[key], grad, rtol=1e-3, atol=1e-3 * float(grad.abs().max()) + 1e-7)


def test_esm_embeddings_and_training_on_cuda(records, tmp_path):
    """ESM-2 embeddings computed on the GPU equal the CPU ones; train.run on the GPU trains (loss falls) and
    writes a checkpoint that loads on the CPU."""
    structure.save_shard(records, tmp_path / "0000.pt")
    rows = [
        dict(steps.manifest_row(r, "0000"), split=s) for r, s in zip(records, ["train", "valid", "test"], strict=True)
    ]
    steps.write_tsv(tmp_path / "manifest.tsv", rows, steps.MANIFEST_COLUMNS)
    checkpoint = tmp_path / "esm2_tiny.pt"
    steps.build_random_esm(checkpoint, {"num_layers": 2, "embed_dim": ESM_DIM, "attention_heads": 4, "seed": 0})
    indexes = {}
    for device in ("cpu", "cuda"):
        indexes[device] = tmp_path / device / "index.tsv"
        steps.embed_records(
            tmp_path / "0000.pt", checkpoint, indexes[device], tmp_path / device / "store", "tiny",
            {"repr_layer": 2}, device=device,
        )  # fmt: skip
    cpu_index, gpu_index = (inputs.load_embedding_index([indexes[d]]) for d in ("cpu", "cuda"))
    for record in records:
        n = len(record["sequence"])
        torch.testing.assert_close(
            inputs.read_embedding(gpu_index[record["id"]], record["id"], n),
            inputs.read_embedding(cpu_index[record["id"]], record["id"], n),
            rtol=1e-4,
            atol=1e-4,
        )
    # the last run fine-tunes the ESM-2 inside ESM-GearNet (its checkpoint loaded, moved to the GPU)
    finetune = {"type": "esm_gearnet", "fusion": "serial", "freeze_esm": False, "hidden_dims": [16, 16]}
    runs = [(name, *ENCODERS[name]) for name in ("gearnet_edge", "esm_gearnet_cross", "gvp", "egnn", "molformer")]
    for name, spec, settings, plm in [*runs, ("esm_gearnet_finetune", finetune, {}, False)]:
        out = tmp_path / name
        metrics = train.run(
            {"kind": "absolute_position", "num_classes": 512, "epochs": 4, "batch_size": 1, "lr": 1e-2},
            spec,
            tmp_path / "manifest.tsv",
            [tmp_path / "0000.pt"],
            [indexes["cuda"]] if plm else [],
            seed=0,
            metrics_path=out / "metrics.json",
            checkpoint_path=out / "model.pt",
            graph_settings=settings,
            device="cuda",
            esm_checkpoint=checkpoint if spec is finetune else None,
            esm_settings={"repr_layer": 2},
        )
        assert metrics["device"] == "cuda", name
        losses = [h["train_loss"] for h in metrics["history"]]
        assert losses[-1] < losses[0], name
        weights = torch.load(out / "model.pt", map_location="cpu", weights_only=True)["model"]
        assert all(not w.is_cuda for w in weights.values())


def test_equidock_trains_on_cuda_like_on_cpu(shared_data, tmp_path):
    """EquiDock (docking task) through train.run on the GPU: the first epoch's loss equals the CPU run's
    (same seed, same weights), and the test complex RMSD is reported."""
    from geoplm.datasets import get_reader

    files = sorted((shared_data / "db5").glob("[137]*_[rl]_b.pdb"))
    records, _ = get_reader("db5")(files, 0, 1, {"unbound": False}, "skip")
    groups = sorted({r["group"] for r in records})[:3]
    records = [r for r in records if r["group"] in groups]
    structure.save_shard(records, tmp_path / "0000.pt")
    split = dict(zip(groups, ["train", "valid", "test"], strict=True))
    rows = [dict(steps.manifest_row(r, "0000"), split=split[r["group"]]) for r in records]
    steps.write_tsv(tmp_path / "manifest.tsv", rows, steps.MANIFEST_COLUMNS)
    task = {"kind": "docking", "epochs": 2, "batch_size": 1, "lr": 1e-3}
    model = {"type": "equidock", "hidden_dim": 8, "residue_emb_dim": 8, "n_layers": 2, "num_att_heads": 4}
    results = {}
    for device in ("cpu", "cuda"):
        results[device] = train.run(
            task,
            model,
            tmp_path / "manifest.tsv",
            [tmp_path / "0000.pt"],
            [],
            seed=0,
            metrics_path=tmp_path / device / "metrics.json",
            checkpoint_path=tmp_path / device / "model.pt",
            device=device,
        )
    cpu, gpu = results["cpu"], results["cuda"]
    assert gpu["test"]["complexes"] == 1 and gpu["test"]["complex_rmsd_median"] > 0
    assert gpu["history"][0]["train_loss"] == pytest.approx(cpu["history"][0]["train_loss"], rel=1e-3)
