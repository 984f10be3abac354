"""Produce tests/fixtures/esm_gearnet_gvp_reference.pt: ESM-GearNet's own ``GVPGNN`` on real proteins.

The reference model is DeepGraphLearning/ESM-GearNet @ bc90557bbf9ee2676e87b9fc84570aa126daa808
``gearnet/gvp.py`` (``GVPGNN``) and ``gearnet/gvp_layer.py``, imported from a temporary extraction of that
snapshot *outside* this repository (never committed here), on torchdrug 0.2.1. Run once, from the repository
root, in the torchdrug environment (``benchmarks/torchdrug_env.sh``) with torch_geometric importable
(``gvp_layer.py`` subclasses ``torch_geometric.nn.MessagePassing``; the torchdrug venv has no PyG, so install it
beside it, not into it)::

    /work/tdenv/bin/pip install --no-deps --target /tmp/pyg torch-geometric xxhash psutil
    /work/tdenv/bin/pip install --target /tmp/pyg requests aiohttp
    /work/tdenv/bin/python benchmarks/esm_gearnet_gvp_reference.py --pyg /tmp/pyg \
        [--mirror /work/.mirror/DeepGraphLearning+ESM-GearNet/repo] [--data /work/shared/data] \
        [--out tests/fixtures/esm_gearnet_gvp_reference.pt]

(``--reference DIR`` uses an existing extraction, the directory holding ``gearnet/``, instead of
``git archive HEAD gearnet`` of ``--mirror`` into a temporary directory.)

Nothing here is imported by the tests: tests/test_gvp_esmgearnet.py only reads the fixture (``torch.load`` with
``weights_only=True``).

What it does (CPU, float32, one thread):

1. ``data.Protein.from_pdb`` on :data:`PROTEINS` with ``residue_feature="default"`` (the 21-d residue one-hot of
   ESM-GearNet's GVP configs), ``view = "residue"``, packed into one ``PackedProtein``.
2. ``layers.GraphConstruction(node_layers=[AlphaCarbonNode()], edge_layers=[SpatialEdge(radius=10.0,
   min_distance=0)])``: the graph of ESM-GearNet's ``config/*/gvp.yaml`` and ``esm_gvp*.yaml``.
3. Two small ``GVPGNN`` (:data:`MODEL_CONFIG`), weights from ``torch.manual_seed`` with the layer norms' affine
   parameters randomised (so they are not identities): ``onehot`` on ``graph.node_feature.float()`` (mean
   readout, vector gates: the configs' settings) and ``dense`` on a seeded random ``(N, 32)`` float input
   standing in for ESM-2 features (sum readout, no vector gate). Eval-mode forward (no dropout); for ``onehot``
   also the parameter gradients of :func:`loss_of`.

Fixture layout (plain tensors / dicts / lists / str / int only):

* ``meta``: versions, seed, reference commit, file names, this script's name.
* ``config``: the ``GVPGNN`` keyword arguments of both models.
* ``onehot_state_dict`` / ``dense_state_dict``: the reference state dicts as they are (keys include the typo
  ``residue_embdding`` and the empty ``...vdropout.dummy_param`` parameters of ``_VDropout``).
* ``onehot_grad``: parameter name -> gradient of :func:`loss_of` (eval mode; the empty ``dummy_param`` left out).
* ``max_in_degree``: the largest number of spatial in-edges of a node (the torch_cluster cap of 32 binds only
  from 32 on).
* ``proteins``: one dict per protein (in batch order) with local node indices: ``file``, ``num_residues``,
  ``node_position`` (N, 3) float32 Cα in Å, ``residue_type`` (N,) long (torchdrug ids), ``node_feature_index``
  (N,) long (hot column of the 21-d feature, 20 = unknown), ``edge_list`` (E, 2) int32 ``[node_in, node_out]``
  sorted by (node_out, node_in), ``dense_input`` (N, 32) float32, and per model ``node_feature`` (N, 16),
  ``graph_feature`` (16,).
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import torch
from fixture_io import plain_config, write_fixture

#: AlphaFold models from the shared data (84-209 residues; the same three as tests/fixtures/torchdrug_gearnet.pt).
PROTEINS = (
    "alphafold/AF-P76011-F1-model_v4.pdb",
    "alphafold/AF-Q9Y5P2-F1-model_v4.pdb",
    "alphafold/AF-A0A1W2PQ64-F1-model_v4.pdb",
)
REFERENCE_COMMIT = "bc90557bbf9ee2676e87b9fc84570aa126daa808"
SEED = 0
DENSE_DIM = 32
MODEL_CONFIG = {
    "onehot": dict(
        node_in_dim=[21, 0],
        node_h_dim=[16, 4],
        edge_in_dim=[16, 1],
        edge_h_dim=[8, 1],
        num_layers=2,
        vector_gate=True,
        readout="mean",
        drop_rate=0.1,
    ),
    "dense": dict(
        node_in_dim=[DENSE_DIM, 0],
        node_h_dim=[16, 4],
        edge_in_dim=[16, 1],
        edge_h_dim=[8, 1],
        num_layers=2,
        vector_gate=False,
        readout="sum",
        drop_rate=0.1,
    ),
}


def loss_of(out: dict) -> torch.Tensor:
    """A scalar touching every output: mean squared node feature plus the summed graph features."""
    return out["node_feature"].square().mean() + out["graph_feature"].sum()


def extract_reference(mirror: Path, target: Path) -> None:
    """``git archive HEAD gearnet`` of the ESM-GearNet snapshot into ``target`` (checks the commit)."""
    head = subprocess.run(["git", "-C", str(mirror), "rev-parse", "HEAD"], check=True, capture_output=True, text=True)
    if head.stdout.strip() != REFERENCE_COMMIT:
        raise SystemExit(f"{mirror}: HEAD is {head.stdout.strip()}, expected {REFERENCE_COMMIT}")
    archive = subprocess.run(["git", "-C", str(mirror), "archive", "HEAD", "gearnet"], check=True, capture_output=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(target, filter="data")


def graph_construction():
    from torchdrug import layers
    from torchdrug.layers import geometry

    return layers.GraphConstruction(
        node_layers=[geometry.AlphaCarbonNode()],
        edge_layers=[geometry.SpatialEdge(radius=10.0, min_distance=0)],
    )


def load_proteins(paths):
    from torchdrug import data

    proteins = []
    for path in paths:
        protein = data.Protein.from_pdb(
            str(path), atom_feature="position", bond_feature="length", residue_feature="default"
        )
        protein.view = "residue"
        proteins.append(protein)
    return data.Protein.pack(proteins)


def build_models():
    from gearnet.gvp import GVPGNN  # ESM-GearNet's, from the temporary extraction

    result = {}
    for i, (name, config) in enumerate(MODEL_CONFIG.items()):
        torch.manual_seed(SEED + i)
        model = GVPGNN(**config)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.LayerNorm):
                    module.weight.normal_(1.0, 0.2)
                    module.bias.normal_(0.0, 0.2)
        result[name] = model.eval()
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/work/shared/data", type=Path)
    parser.add_argument("--out", default="tests/fixtures/esm_gearnet_gvp_reference.pt", type=Path)
    parser.add_argument("--mirror", default="/work/.mirror/DeepGraphLearning+ESM-GearNet/repo", type=Path)
    parser.add_argument("--reference", type=Path, help="directory holding an extracted gearnet/ (else a temp one)")
    parser.add_argument("--pyg", type=Path, help="extra sys.path entry providing torch_geometric")
    args = parser.parse_args(argv)
    if args.pyg:
        sys.path.append(str(args.pyg))  # after the venv's site-packages: never shadows its packages

    with tempfile.TemporaryDirectory(prefix="esmgearnet_ref_") as tmp:
        root = args.reference
        if root is None:
            root = Path(tmp)
            extract_reference(args.mirror, root)
        sys.path.insert(0, str(root))
        return run(args)


def run(args) -> int:
    import torch_cluster
    import torch_geometric
    import torchdrug

    torch.set_num_threads(1)
    batch = load_proteins([args.data / p for p in PROTEINS])
    graph = graph_construction()(batch)
    assert graph.num_relation == 1 and graph.batch_size == len(PROTEINS)
    nets = build_models()
    onehot = graph.node_feature.float()
    assert onehot.shape[1] == 21
    generator = torch.Generator().manual_seed(SEED)
    dense = torch.randn(graph.num_node, DENSE_DIM, generator=generator)
    with torch.no_grad():
        dense_out = nets["dense"](graph, dense)
    onehot_out = nets["onehot"](graph, onehot)
    loss_of(onehot_out).backward()
    grads = {k: p.grad.clone() for k, p in nets["onehot"].named_parameters() if p.numel()}
    assert all(g.abs().sum() > 0 for g in grads.values()), "a parameter got no gradient"
    outputs = {"onehot": {k: v.detach() for k, v in onehot_out.items()}, "dense": dense_out}

    node_feature_index = onehot.argmax(dim=1)
    assert torch.equal(onehot, torch.nn.functional.one_hot(node_feature_index, 21).float())
    in_degree = torch.bincount(graph.edge_list[:, 1], minlength=graph.num_node)
    assert not bool((graph.edge_list[:, 0] == graph.edge_list[:, 1]).any()), "self loop"

    num_nodes = graph.num_nodes.tolist()
    node_offsets = [sum(num_nodes[:b]) for b in range(len(num_nodes))]
    proteins = []
    for b, name in enumerate(PROTEINS):
        n0, n = node_offsets[b], num_nodes[b]
        mask = graph.node2graph[graph.edge_list[:, 1]] == b
        edges = graph.edge_list[mask][:, :2] - n0
        assert int(edges.min()) >= 0 and int(edges.max()) < n
        assert bool((graph.node2graph[graph.edge_list[mask][:, 0]] == b).all())
        edges = edges[torch.argsort(edges[:, 1] * n + edges[:, 0])]
        entry = {
            "file": name,
            "num_residues": n,
            "node_position": graph.node_position[n0 : n0 + n].float().clone(),
            "residue_type": graph.residue_type[n0 : n0 + n].long().clone(),
            "node_feature_index": node_feature_index[n0 : n0 + n].clone(),
            "edge_list": edges.to(torch.int32),
            "dense_input": dense[n0 : n0 + n].clone(),
        }
        for model_name, out in outputs.items():
            entry[model_name] = {
                "node_feature": out["node_feature"][n0 : n0 + n].clone(),
                "graph_feature": out["graph_feature"][b].clone(),
            }
        proteins.append(entry)
        print(
            f"{name}: {n} residues, {len(edges)} edges, max in-degree {int(in_degree[n0 : n0 + n].max())}, "
            f"|graph feature| onehot {outputs['onehot']['graph_feature'][b].abs().max():.3f}, "
            f"dense {outputs['dense']['graph_feature'][b].abs().max():.3f}"
        )

    fixture = {
        "meta": {
            "script": "benchmarks/esm_gearnet_gvp_reference.py",
            "reference": f"DeepGraphLearning/ESM-GearNet@{REFERENCE_COMMIT} gearnet/gvp.py, gearnet/gvp_layer.py",
            "torchdrug": str(torchdrug.__version__),
            "torch": str(torch.__version__),
            "torch_cluster": str(torch_cluster.__version__),
            "torch_geometric": str(torch_geometric.__version__),
            "python": sys.version.split()[0],
            "seed": SEED,
        },
        "config": {name: plain_config(c) for name, c in MODEL_CONFIG.items()},
        "onehot_state_dict": {k: v.detach().clone() for k, v in nets["onehot"].state_dict().items()},
        "dense_state_dict": {k: v.detach().clone() for k, v in nets["dense"].state_dict().items()},
        "onehot_grad": grads,
        "max_in_degree": int(in_degree.max()),
        "proteins": proteins,
    }
    write_fixture(fixture, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
