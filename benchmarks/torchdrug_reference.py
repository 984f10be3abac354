"""Produce tests/fixtures/torchdrug_gearnet.pt: torchdrug 0.2.1 reference outputs for the parity tests.

Run once, in the torchdrug environment (benchmarks/torchdrug_env.sh), from the repository root::

    bash benchmarks/torchdrug_env.sh /work/tdenv
    /work/tdenv/bin/python benchmarks/torchdrug_reference.py \
        [--data /work/shared/data] [--out tests/fixtures/torchdrug_gearnet.pt]

Nothing here is imported by the tests: tests/test_gearnet_parity.py only reads the fixture (torch.load with
``weights_only=True``), so CI needs no torchdrug.

What it does, with torchdrug 0.2.1 only (CPU, float32):

1. ``data.Protein.from_pdb`` (RDKit) on a few real all-ATOM proteins (:data:`PROTEINS`; none has HETATM
   groups without a CA, which torchdrug's line-graph code rejects), ``view = "residue"``, packed into one
   ``PackedProtein``.
2. ``layers.GraphConstruction(node_layers=[AlphaCarbonNode()], edge_layers=[SequentialEdge(max_distance=2),
   SpatialEdge(radius=10.0, min_distance=5), KNNEdge(k=10, min_distance=5)], edge_feature="gearnet")``.
3. ``models.GearNet`` and GearNet-Edge (:data:`MODEL_CONFIG`), weights from ``torch.manual_seed``; batch-norm
   running statistics and affine parameters are randomised too, so the eval-mode batch norms are not
   identities. Eval-mode forward with ``input = graph.node_feature.float()`` (the 21-d residue one-hot; this
   is what GearNet's task code feeds the model).

Fixture layout (plain tensors / dicts / lists / str / int only):

* ``meta``: versions, seed, file names, this script's name.
* ``config``: the ``models.GearNet`` keyword arguments of both models.
* ``gearnet_state_dict`` / ``gearnet_edge_state_dict``: torchdrug state dicts (no prefix).
* ``proteins``: one dict per protein (in batch order) with local node indices:

  - ``file`` (relative to the data directory), ``num_residues`` (after ``AlphaCarbonNode``);
  - ``node_position`` (N, 3) float32: the Cα coordinates torchdrug used; ``residue_type`` (N,) long
    (torchdrug ``residue_type``, unknown residues are glycine = 0); ``node_feature_index`` (N,) long: the hot
    column of torchdrug's 21-d residue feature (20 = unknown);
  - ``edge_list`` (E, 3) int32 ``[node_in, node_out, relation]`` sorted by (relation, node_out, node_in),
    and the edge features in that order, stored losslessly but compactly: the script asserts that columns
    0:58 are four exact one-hot blocks (widths 20, 20, 7, 11) and stores their hot columns
    ``edge_feature_index`` (E, 4) int16 plus the last column ``edge_length`` (E,) float32;
  - ``line_graph_relation_count`` (8,) long and ``line_graph_key_sum`` (8,) long: per angle bin, the number
    of torchdrug line-graph edges and the sum of ``(k * N + j) * N + i`` over them (edge ``k -> j`` followed
    by edge ``j -> i``, local node indices): an order-independent signature of the spatial line graph;
  - ``gearnet`` / ``gearnet_edge``: ``node_feature`` (N, 96) and ``graph_feature`` (96,) float32.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from fixture_io import plain_config, write_fixture

#: Proteins (paths relative to the data directory): three AlphaFold models and one X-ray chain, all without
#: HETATM records, with 84-209 residues (keeps the fixture < 2 MB).
PROTEINS = (
    "alphafold/AF-P76011-F1-model_v4.pdb",
    "alphafold/AF-Q9Y5P2-F1-model_v4.pdb",
    "alphafold/AF-A0A1W2PQ64-F1-model_v4.pdb",
    "pdb/2J9H-A.pdb",
)
SEED = 0
MODEL_CONFIG = {
    "gearnet": dict(
        input_dim=21,
        hidden_dims=[32, 32, 32],
        num_relation=7,
        batch_norm=True,
        concat_hidden=True,
        short_cut=True,
        readout="sum",
    ),
    "gearnet_edge": dict(
        input_dim=21,
        hidden_dims=[32, 32, 32],
        num_relation=7,
        edge_input_dim=59,
        num_angle_bin=8,
        batch_norm=True,
        concat_hidden=True,
        short_cut=True,
        readout="sum",
    ),
}
EDGE_BLOCKS = (20, 20, 7, 11)  # one-hot blocks of edge_feature="gearnet", then the Cα-Cα distance


def graph_construction():
    from torchdrug import layers
    from torchdrug.layers import geometry

    return layers.GraphConstruction(
        node_layers=[geometry.AlphaCarbonNode()],
        edge_layers=[
            geometry.SequentialEdge(max_distance=2),
            geometry.SpatialEdge(radius=10.0, min_distance=5),
            geometry.KNNEdge(k=10, min_distance=5),
        ],
        edge_feature="gearnet",
    )


def load_protein(path):
    """A PDB file as GearNet's data pipeline reads it (``Protein.from_pdb`` with its features, residue view);
    None where RDKit cannot read it."""
    from torchdrug import data

    protein = data.Protein.from_pdb(str(path), atom_feature="position", bond_feature="length", residue_feature="symbol")
    if protein is not None:
        protein.view = "residue"
    return protein


def load_proteins(paths):
    from torchdrug import data

    return data.Protein.pack([load_protein(path) for path in paths])


def build_models():
    from torchdrug import models

    result = {}
    for name, config in MODEL_CONFIG.items():
        torch.manual_seed(SEED + (name == "gearnet_edge"))
        model = models.GearNet(**config)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm1d):
                    module.running_mean.normal_(0.0, 0.5)
                    module.running_var.uniform_(0.5, 2.0)
                    module.weight.normal_(1.0, 0.2)
                    module.bias.normal_(0.0, 0.2)
                    module.num_batches_tracked.fill_(10)
        result[name] = model.eval()
    return result


def compact_edge_feature(edge_feature):
    feature = edge_feature.float()
    indices, start = [], 0
    for width in EDGE_BLOCKS:
        block = feature[:, start : start + width]
        hot = block.argmax(dim=1)
        assert torch.equal(block, torch.nn.functional.one_hot(hot, width).float()), "not a one-hot block"
        indices.append(hot)
        start += width
    assert start == feature.shape[1] - 1
    return torch.stack(indices, dim=1).to(torch.int16), feature[:, -1].clone()


def line_graph_signature(graph, line_graph, num_bin, offset, size, edge_range):
    """Per angle bin count and key sum of the line-graph edges of one protein (local node indices)."""
    e0, e1 = edge_range
    edge_in, edge_out, relation = line_graph.edge_list.t()
    mask = (edge_out >= e0) & (edge_out < e1)
    edge_in, edge_out, relation = edge_in[mask], edge_out[mask], relation[mask]
    node_in, node_out = graph.edge_list[:, 0] - offset, graph.edge_list[:, 1] - offset
    k, j, i = node_in[edge_in], node_in[edge_out], node_out[edge_out]
    assert torch.equal(node_out[edge_in], j)
    key = (k * size + j) * size + i
    count = torch.bincount(relation, minlength=num_bin)
    key_sum = torch.zeros(num_bin, dtype=torch.long).index_add_(0, relation, key)
    return count, key_sum


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/work/shared/data", type=Path)
    parser.add_argument("--out", default="tests/fixtures/torchdrug_gearnet.pt", type=Path)
    args = parser.parse_args(argv)

    import rdkit
    import torch_cluster
    import torchdrug
    from torchdrug import layers

    torch.set_num_threads(1)
    batch = load_proteins([args.data / p for p in PROTEINS])
    graph = graph_construction()(batch)
    assert graph.num_relation == 7 and graph.batch_size == len(PROTEINS)
    nets = build_models()
    input = graph.node_feature.float()
    with torch.no_grad():
        outputs = {name: model(graph, input) for name, model in nets.items()}
        line_graph = layers.SpatialLineGraph(8)(graph)

    node_feature = graph.node_feature.float()
    node_feature_index = node_feature.argmax(dim=1)
    assert torch.equal(node_feature, torch.nn.functional.one_hot(node_feature_index, 21).float())

    num_nodes = graph.num_nodes.tolist()
    num_edges = graph.num_edges.tolist()
    node_offsets = [sum(num_nodes[:b]) for b in range(len(num_nodes))]
    edge_offsets = [sum(num_edges[:b]) for b in range(len(num_edges))]
    edge2graph = graph.node2graph[graph.edge_list[:, 1]]
    proteins = []
    for b, name in enumerate(PROTEINS):
        n0, n = node_offsets[b], num_nodes[b]
        e0, e = edge_offsets[b], num_edges[b]
        assert bool((edge2graph[e0 : e0 + e] == b).all())
        edges = graph.edge_list[e0 : e0 + e].clone()
        edges[:, :2] -= n0
        assert int(edges[:, :2].min()) >= 0 and int(edges[:, :2].max()) < n
        key = (edges[:, 2] * n + edges[:, 1]) * n + edges[:, 0]
        order = torch.argsort(key)
        feature_index, edge_length = compact_edge_feature(graph.edge_feature[e0 : e0 + e][order])
        count, key_sum = line_graph_signature(graph, line_graph, 8, n0, n, (e0, e0 + e))
        entry = {
            "file": name,
            "num_residues": n,
            "node_position": graph.node_position[n0 : n0 + n].float().clone(),
            "residue_type": graph.residue_type[n0 : n0 + n].long().clone(),
            "node_feature_index": node_feature_index[n0 : n0 + n].clone(),
            "edge_list": edges[order].to(torch.int32),
            "edge_feature_index": feature_index,
            "edge_length": edge_length,
            "line_graph_relation_count": count,
            "line_graph_key_sum": key_sum,
        }
        for model_name, out in outputs.items():
            entry[model_name] = {
                "node_feature": out["node_feature"][n0 : n0 + n].clone(),
                "graph_feature": out["graph_feature"][b].clone(),
            }
        proteins.append(entry)
        print(
            f"{name}: {n} residues, {e} edges, {int(count.sum())} line-graph edges, "
            f"graph feature |GearNet| {outputs['gearnet']['graph_feature'][b].abs().max():.3f}, "
            f"|GearNet-Edge| {outputs['gearnet_edge']['graph_feature'][b].abs().max():.3f}"
        )

    fixture = {
        "meta": {
            "script": "benchmarks/torchdrug_reference.py",
            "torchdrug": str(torchdrug.__version__),
            "torch": str(torch.__version__),
            "torch_cluster": str(torch_cluster.__version__),
            "rdkit": str(rdkit.__version__),
            "python": sys.version.split()[0],
            "seed": SEED,
        },
        "config": {name: plain_config(c) for name, c in MODEL_CONFIG.items()},
        "gearnet_state_dict": {k: v.clone() for k, v in nets["gearnet"].state_dict().items()},
        "gearnet_edge_state_dict": {k: v.clone() for k, v in nets["gearnet_edge"].state_dict().items()},
        "proteins": proteins,
    }
    write_fixture(fixture, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
