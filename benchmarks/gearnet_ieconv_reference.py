"""Produce tests/fixtures/torchdrug_gearnet_ieconv.pt: reference outputs of the GearNet repository's
``GearNetIEConv`` (torchdrug 0.2.1) for tests/test_gearnet_ieconv.py.

Run once, in the torchdrug environment (benchmarks/torchdrug_env.sh), from the repository root, with the
GearNet repository's ``gearnet/`` package checked out *outside* this repository::

    bash benchmarks/torchdrug_env.sh /work/tdenv
    mkdir -p /tmp/gearnet_ref && git -C /work/.mirror/DeepGraphLearning+GearNet/repo archive \\
        28bf75f5dfb6cd7b9bf4394d153a87f69bddf1a6 gearnet | tar -x -C /tmp/gearnet_ref
    /work/tdenv/bin/python benchmarks/gearnet_ieconv_reference.py --gearnet /tmp/gearnet_ref \\
        [--data /work/shared/data] [--out tests/fixtures/torchdrug_gearnet_ieconv.pt]

Nothing here is imported by the tests (they only ``torch.load(..., weights_only=True)`` the fixture), so CI needs
neither torchdrug nor the GearNet repository.

What it does (CPU, float32):

1. The graph of benchmarks/torchdrug_reference.py (``Protein.from_pdb``, ``view="residue"``, torchdrug's
   ``GraphConstruction`` with GearNet's node / edge layers and ``edge_feature="gearnet"``) on :data:`PROTEINS`,
   packed into one batch in that order.
2. ``gearnet.model.GearNetIEConv`` (DeepGraphLearning/GearNet @ :data:`GEARNET_COMMIT`) in the configurations of
   :data:`MODEL_CONFIG`: the Fold3D YAMLs at small width (GearNet-IEConv, GearNet-Edge-IEConv, the Fold GearNet-Edge
   = ``use_ieconv`` off) plus one without embedding, batch / layer norm and concatenation, with mean readout.
   Weights from ``torch.manual_seed``; batch-norm running statistics and affine parameters and the layer-norm
   affine parameters are randomised so that none is an identity. Eval-mode forward on ``graph.node_feature``
   (21-d residue one-hot).
3. The reference's IEConv edge feature (``get_ieconv_edge_feature``) on the packed batch.

Fixture layout (plain tensors / dicts / lists / str / int / float / bool / None only):

* ``meta``: versions, seed, commits, file names, this script's name.
* ``config``: name -> ``GearNetIEConv`` keyword arguments; ``state_dict``: name -> the reference state dict.
* ``proteins``: one dict per protein (in batch order), local node indices: ``file``, ``num_residues``,
  ``node_position`` (N, 3) float32 (Cα, Å), ``residue_type`` (N,) long (torchdrug: unknown = glycine 0),
  ``node_feature_index`` (N,) long (hot column of the 21-d input, 20 = unknown), ``edge_list`` (E, 3) int32
  sorted by (relation, node_out, node_in), ``ieconv_feature`` (E, 7) float32 in that edge order: the columns
  ``[t (3), r (3), delta]`` of the reference's 14-d edge feature (the other 7 are ``1 - 2|.|`` of these; the
  script asserts it), and per model name ``{"node_feature": (N, D), "graph_feature": (D,)}``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from fixture_io import write_fixture
from torchdrug_reference import graph_construction, load_proteins

#: DeepGraphLearning/GearNet commit of ``gearnet/model.py`` and ``gearnet/layer.py``.
GEARNET_COMMIT = "28bf75f5dfb6cd7b9bf4394d153a87f69bddf1a6"
#: Two AlphaFold models and one X-ray chain (84-194 residues), all accepted by torchdrug_reference.py.
PROTEINS = (
    "alphafold/AF-P76011-F1-model_v4.pdb",
    "alphafold/AF-A0A1W2PQ64-F1-model_v4.pdb",
    "pdb/2J9H-A.pdb",
)
SEED = 0
_FOLD = dict(
    input_dim=21,
    embedding_dim=32,
    hidden_dims=[32, 32],
    num_relation=7,
    batch_norm=True,
    concat_hidden=True,
    short_cut=True,
    readout="sum",
    layer_norm=True,
    dropout=0.2,
)
MODEL_CONFIG = {
    "gearnet_ieconv": dict(_FOLD, use_ieconv=True),
    "gearnet_edge_ieconv": dict(_FOLD, edge_input_dim=59, num_angle_bin=8, use_ieconv=True),
    "gearnet_edge": dict(_FOLD, edge_input_dim=59, num_angle_bin=8, use_ieconv=False),
    "gearnet_ieconv_plain": dict(
        input_dim=21,
        embedding_dim=0,
        hidden_dims=[32, 16],
        num_relation=7,
        batch_norm=False,
        concat_hidden=False,
        short_cut=True,
        readout="mean",
        layer_norm=False,
        dropout=0.2,
        use_ieconv=True,
    ),
}


def build_models(gearnet_dir: Path) -> dict:
    sys.path.insert(0, str(gearnet_dir))
    from gearnet.model import GearNetIEConv

    result = {}
    for index, (name, config) in enumerate(MODEL_CONFIG.items()):
        torch.manual_seed(SEED + index)
        model = GearNetIEConv(**config)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm1d):
                    module.running_mean.normal_(0.0, 0.5)
                    module.running_var.uniform_(0.5, 2.0)
                    module.weight.normal_(1.0, 0.2)
                    module.bias.normal_(0.0, 0.2)
                    module.num_batches_tracked.fill_(10)
                elif isinstance(module, torch.nn.LayerNorm):
                    module.weight.normal_(1.0, 0.2)
                    module.bias.normal_(0.0, 0.2)
        result[name] = model.eval()
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/work/shared/data", type=Path)
    parser.add_argument("--gearnet", default="/tmp/gearnet_ref", type=Path, help="folder holding gearnet/model.py")
    parser.add_argument("--out", default="tests/fixtures/torchdrug_gearnet_ieconv.pt", type=Path)
    args = parser.parse_args(argv)
    if not (args.gearnet / "gearnet" / "model.py").is_file():
        parser.error(f"{args.gearnet}/gearnet/model.py not found (see the module docstring)")

    import torch_cluster
    import torchdrug

    torch.set_num_threads(1)
    batch = load_proteins([args.data / p for p in PROTEINS])
    graph = graph_construction()(batch)
    assert graph.num_relation == 7 and graph.batch_size == len(PROTEINS)
    # delta of the IEConv feature is an atom2residue difference: for these Cα graphs, the packed node index
    assert torch.equal(graph.atom2residue, torch.arange(graph.num_node, device=graph.atom2residue.device))
    nets = build_models(args.gearnet)
    input = graph.node_feature.float()
    with torch.no_grad():
        outputs = {name: model(graph, input) for name, model in nets.items()}
        ieconv = nets["gearnet_ieconv"].get_ieconv_edge_feature(graph)
    assert ieconv.shape == (int(graph.num_edge), 14)
    torch.testing.assert_close(ieconv[:, 7:], 1 - 2 * ieconv[:, :7].abs(), rtol=0, atol=0)

    node_feature = graph.node_feature.float()
    node_feature_index = node_feature.argmax(dim=1)
    assert torch.equal(node_feature, torch.nn.functional.one_hot(node_feature_index, 21).float())

    num_nodes, num_edges = graph.num_nodes.tolist(), graph.num_edges.tolist()
    edge2graph = graph.node2graph[graph.edge_list[:, 1]]
    proteins = []
    for b, name in enumerate(PROTEINS):
        n0, n = sum(num_nodes[:b]), num_nodes[b]
        e0, e = sum(num_edges[:b]), num_edges[b]
        assert bool((edge2graph[e0 : e0 + e] == b).all())
        edges = graph.edge_list[e0 : e0 + e].clone()
        edges[:, :2] -= n0
        key = (edges[:, 2] * n + edges[:, 1]) * n + edges[:, 0]
        order = torch.argsort(key)
        entry = {
            "file": name,
            "num_residues": n,
            "node_position": graph.node_position[n0 : n0 + n].float().clone(),
            "residue_type": graph.residue_type[n0 : n0 + n].long().clone(),
            "node_feature_index": node_feature_index[n0 : n0 + n].clone(),
            "edge_list": edges[order].to(torch.int32),
            "ieconv_feature": ieconv[e0 : e0 + e][order][:, :7].clone(),
        }
        for model_name, out in outputs.items():
            entry[model_name] = {
                "node_feature": out["node_feature"][n0 : n0 + n].clone(),
                "graph_feature": out["graph_feature"][b].clone(),
            }
        proteins.append(entry)
        summary = ", ".join(f"|{k}| {float(v['graph_feature'][b].abs().max()):.3f}" for k, v in outputs.items())
        print(f"{name}: {n} residues, {e} edges; graph features {summary}")

    fixture = {
        "meta": {
            "script": "benchmarks/gearnet_ieconv_reference.py",
            "gearnet_commit": GEARNET_COMMIT,
            "torchdrug": str(torchdrug.__version__),
            "torch": str(torch.__version__),
            "torch_cluster": str(torch_cluster.__version__),
            "python": sys.version.split()[0],
            "seed": SEED,
        },
        "config": {name: dict(config) for name, config in MODEL_CONFIG.items()},
        "state_dict": {name: {k: v.clone() for k, v in net.state_dict().items()} for name, net in nets.items()},
        "proteins": proteins,
    }
    write_fixture(fixture, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
