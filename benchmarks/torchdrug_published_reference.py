"""Produce tests/fixtures/torchdrug_published_gearnet_edge.pt: encoder checkpoints written by torchdrug 0.2.1 the way
the authors wrote their published ones, and torchdrug's outputs on real proteins, for tests/test_published.py.

Run once, in the torchdrug environment (benchmarks/torchdrug_env.sh), from the repository root::

    bash benchmarks/torchdrug_env.sh /work/tdenv
    /work/tdenv/bin/python benchmarks/torchdrug_published_reference.py \
        [--data /work/shared/data] [--out tests/fixtures/torchdrug_published_gearnet_edge.pt]

Nothing here is imported by the tests, which need no torchdrug: they read the fixture with ``torch.load(...,
weights_only=True)`` and load its state dicts through :func:`geoplm.pretraining.published.load_published`.

The published checkpoints (Zenodo 7593637, 10034578) are written by the references' ``script/pretrain.py``
``save()`` (DeepGraphLearning/GearNet @ 28bf75f, DeepGraphLearning/ESM-GearNet @ bc90557): ``torch.save(
model.state_dict(), path)`` of the task's encoder (``solver.model.model``, or ``solver.model.model.model``
inside ``tasks.Unsupervised``). This script saves its encoders the same way (``state_dict()`` with no prefix),
at small widths so the fixture stays small (< 1 MB):

1. GearNet-Edge: torchdrug ``models.GearNet`` with the pretraining architecture of GearNet's
   ``config/pretrain/*_gearnet_edge.yaml`` (``input_dim`` 21, ``num_relation`` 7, ``edge_input_dim`` 59,
   ``num_angle_bin`` 8, ``batch_norm``, ``concat_hidden``, ``short_cut``, ``readout`` sum) but ``hidden_dims``
   [32, 32] instead of 6 x 512; weights from ``torch.manual_seed(SEED)``, batch-norm affine parameters and
   running statistics randomised (eval mode, so they are not identities). Inputs as GearNet's pipeline makes
   them: ``Protein.from_pdb`` (RDKit), residue view, ``GraphConstruction`` with ``AlphaCarbonNode``,
   ``SequentialEdge(2)``, ``SpatialEdge(10, 5)``, ``KNNEdge(10, 5)``, ``edge_feature="gearnet"``; node input
   ``graph.node_feature.float()`` (21-d residue one-hot).
2. ESM-GearNet (the published ``*_esm_gearnet.pth``): a ``FusionNetwork`` (ESM-GearNet ``gearnet/model.py``)
   state dict is its ``sequence_model`` (torchdrug ``models.ESM``) and ``structure_model`` (``models.GearNet``)
   state dicts under those two prefixes. ESM-GearNet's code is not installed here, so the script builds the two
   torchdrug halves and writes their state dicts with those prefixes: ``models.ESM`` around a tiny random fair-esm
   ESM-2 (2 layers, width 32, 4 heads; torchdrug's ``load_weight`` is replaced so nothing is downloaded, the rest
   of its ``__init__`` -- the ``mapping`` buffer -- runs as is) and plain ``models.GearNet`` (no edge layers, as
   ESM-GearNet's ``config/pretrain/*_esm_gearnet.yaml``) with ``input_dim`` 32 (serial fusion). Outputs: the
   series fusion of ``FusionNetwork.forward`` (``cat([esm residue_feature, gearnet node_feature])``, graph
   features likewise; ESM read out by mean); the ESM residue features are stored too (they are what the workflow
   stores as frozen ESM-2 features).

Fixture layout (plain tensors / dicts / lists / str / int only):

* ``meta``: versions, seed, script name, ``proteins`` (file names relative to the data directory).
* ``config``: ``gearnet_edge`` and ``esm_gearnet`` (the structure model's ``models.GearNet`` arguments) and
  ``esm`` (``num_layers``, ``embed_dim``, ``attention_heads`` of the tiny ESM-2).
* ``gearnet_edge_state_dict``: the GearNet-Edge checkpoint (torchdrug names, no prefix).
* ``esm_gearnet_state_dict``: the ESM-GearNet checkpoint (``sequence_model.*``, ``structure_model.*``).
* ``proteins``: per protein, in batch order: ``file``, ``num_residues``, ``node_position`` (N, 3) float32 Cα
  coordinates, ``residue_type`` (N,) long (torchdrug ids), ``sequence`` (str), and the outputs
  ``gearnet_edge`` / ``esm_gearnet``: ``node_feature`` (N, D), ``graph_feature`` (D,) float32 (D = 64, or
  32 + 64 = 96 for ESM-GearNet), plus ``esm_residue_feature`` (N, 32).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from fixture_io import plain_config, write_fixture

PROTEINS = (
    "alphafold/AF-P76011-F1-model_v4.pdb",
    "alphafold/AF-Q9Y5P2-F1-model_v4.pdb",
    "alphafold/AF-A0A1W2PQ64-F1-model_v4.pdb",
)
SEED = 7
ESM_CONFIG = {"num_layers": 2, "embed_dim": 32, "attention_heads": 4}
GEARNET_EDGE_CONFIG = dict(
    input_dim=21,
    hidden_dims=[32, 32],
    num_relation=7,
    edge_input_dim=59,
    num_angle_bin=8,
    batch_norm=True,
    concat_hidden=True,
    short_cut=True,
    readout="sum",
)
ESM_GEARNET_CONFIG = dict(
    input_dim=ESM_CONFIG["embed_dim"],
    hidden_dims=[32, 32],
    num_relation=7,
    batch_norm=True,
    concat_hidden=True,
    short_cut=True,
    readout="sum",
)


def randomise_batch_norms(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.normal_(0.0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_(1.0, 0.2)
                module.bias.normal_(0.0, 0.2)
                module.num_batches_tracked.fill_(10)


def build_esm(workdir: Path):
    """torchdrug ``models.ESM`` holding a tiny random fair-esm ESM-2 (nothing downloaded)."""
    import esm
    from torchdrug import models

    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    torch.manual_seed(SEED + 1)
    esm2 = esm.model.esm2.ESM2(alphabet=alphabet, token_dropout=True, **ESM_CONFIG)
    with torch.no_grad():  # non-trivial layer norms and biases (fair-esm initialises them to 1 / 0)
        for _name, param in esm2.named_parameters():
            if param.ndim == 1:
                param.add_(0.1 * torch.randn_like(param))

    original = models.ESM.load_weight
    models.ESM.load_weight = lambda self, path, model: (esm2, alphabet)
    try:
        wrapper = models.ESM(path=str(workdir), model="ESM-2-8M", readout="mean")
    finally:
        models.ESM.load_weight = original
    wrapper.repr_layer = ESM_CONFIG["num_layers"]  # the class table says 6 for ESM-2-8M; ours has 2 layers
    wrapper.output_dim = ESM_CONFIG["embed_dim"]
    return wrapper.eval()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/work/shared/data", type=Path)
    parser.add_argument("--out", default="tests/fixtures/torchdrug_published_gearnet_edge.pt", type=Path)
    args = parser.parse_args(argv)

    import esm
    import rdkit
    import torchdrug
    from torchdrug import models

    sys.path.insert(0, str(Path(__file__).parent))
    from torchdrug_reference import graph_construction, load_proteins

    torch.set_num_threads(1)
    batch = load_proteins([args.data / p for p in PROTEINS])
    graph = graph_construction()(batch)
    assert graph.num_relation == 7 and graph.batch_size == len(PROTEINS)

    torch.manual_seed(SEED)
    gearnet_edge = models.GearNet(**GEARNET_EDGE_CONFIG)
    randomise_batch_norms(gearnet_edge)
    gearnet_edge.eval()

    with tempfile.TemporaryDirectory() as workdir:
        esm_model = build_esm(Path(workdir))
    torch.manual_seed(SEED + 2)
    structure = models.GearNet(**ESM_GEARNET_CONFIG)
    randomise_batch_norms(structure)
    structure.eval()

    with torch.no_grad():
        edge_out = gearnet_edge(graph, graph.node_feature.float())
        esm_out = esm_model(graph, graph.node_feature.float())
        residue_feature = esm_out["residue_feature"]
        struct_out = structure(graph, residue_feature)  # "series" fusion: GearNet reads the ESM output
        fusion_node = torch.cat([residue_feature, struct_out["node_feature"]], dim=-1)
        fusion_graph = torch.cat([esm_out["graph_feature"], struct_out["graph_feature"]], dim=-1)

    # the checkpoints, as script/pretrain.py save() writes them: the encoder's state_dict, no prefix
    gearnet_edge_state = {k: v.clone() for k, v in gearnet_edge.state_dict().items()}
    esm_gearnet_state = {f"sequence_model.{k}": v.clone() for k, v in esm_model.state_dict().items()}
    esm_gearnet_state.update({f"structure_model.{k}": v.clone() for k, v in structure.state_dict().items()})

    residue_symbol = torchdrug.data.Protein.id2residue_symbol
    num_nodes = graph.num_nodes.tolist()
    proteins = []
    for b, name in enumerate(PROTEINS):
        n0, n = sum(num_nodes[:b]), num_nodes[b]
        rtype = graph.residue_type[n0 : n0 + n].long().clone()
        proteins.append(
            {
                "file": name,
                "num_residues": n,
                "node_position": graph.node_position[n0 : n0 + n].float().clone(),
                "residue_type": rtype,
                "sequence": "".join(residue_symbol[int(t)] for t in rtype),
                "gearnet_edge": {
                    "node_feature": edge_out["node_feature"][n0 : n0 + n].clone(),
                    "graph_feature": edge_out["graph_feature"][b].clone(),
                },
                "esm_gearnet": {
                    "node_feature": fusion_node[n0 : n0 + n].clone(),
                    "graph_feature": fusion_graph[b].clone(),
                    "esm_residue_feature": residue_feature[n0 : n0 + n].clone(),
                },
            }
        )
        print(
            f"{name}: {n} residues; |GearNet-Edge graph feature| {edge_out['graph_feature'][b].abs().max():.3f}, "
            f"|ESM-GearNet graph feature| {fusion_graph[b].abs().max():.3f}"
        )

    fixture = {
        "meta": {
            "script": "benchmarks/torchdrug_published_reference.py",
            "torchdrug": str(torchdrug.__version__),
            "torch": str(torch.__version__),
            "fair_esm": str(esm.__version__),
            "rdkit": str(rdkit.__version__),
            "python": sys.version.split()[0],
            "seed": SEED,
            "proteins": list(PROTEINS),
        },
        "config": {
            "gearnet_edge": plain_config(GEARNET_EDGE_CONFIG),
            "esm_gearnet": plain_config(ESM_GEARNET_CONFIG),
            "esm": dict(ESM_CONFIG),
        },
        "gearnet_edge_state_dict": gearnet_edge_state,
        "esm_gearnet_state_dict": esm_gearnet_state,
        "proteins": proteins,
    }
    write_fixture(fixture, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
