"""Write tests/fixtures/cdconv_reference.pt: outputs of ESM-GearNet's CDConv for tests/test_cdconv_parity.py.

Run once, in the torchdrug environment (benchmarks/torchdrug_env.sh: torchdrug 0.2.1, torch_scatter, torch_cluster),
from the repository root::

    /work/tdenv/bin/python benchmarks/cdconv_reference.py \\
        [--esm-gearnet /work/.mirror/DeepGraphLearning+ESM-GearNet/repo] [--data /work/shared/data] \\
        [--out tests/fixtures/cdconv_reference.pt]

The reference code is DeepGraphLearning/ESM-GearNet @ bc90557bbf9ee2676e87b9fc84570aa126daa808,
``gearnet/cdconv.py``: read from a clone / mirror of that repository (``git show <commit>:gearnet/cdconv.py``, or
the file of a work tree) into a temporary directory and imported from there; nothing of it is stored in this
repository. The tests import nothing from here and need no torchdrug: they read the fixture (``torch.load`` with
``weights_only=True``).

What it does (CPU, float32):

1. ``data.Protein.from_pdb(path, atom_feature=None, bond_feature=None, residue_feature="default")`` on a few real
   proteins (:data:`PROTEINS`), then the transforms of ESM-GearNet's CDConv configs: ``ResidueGraph`` (keep the Cα
   atoms of residues that have one), ``Orientation`` (local frames from the Cα trace) and ``ProteinView("residue")``;
   packed into one ``PackedProtein``.
2. ``models.CDConv`` (``ContinuousDiscreteConvolutionalNetwork``) for each of :data:`MODELS`: weights from
   ``torch.manual_seed(SEED)``; batch-norm running statistics and affine parameters and the (zero-initialised)
   ``WeightNet`` biases are randomised, so none of them is an identity. Input: ``graph.residue_feature.float()``
   (the 21-d residue one-hot, what the task feeds the model).
3. Eval-mode ``graph_feature`` of every model; for the models with ``dropout=0``, also the training-mode
   ``graph_feature`` (batch statistics) and the gradients of ``sum(graph_feature ** 2)`` w.r.t. every parameter.

Fixture layout (plain tensors / dicts / lists / str / int / float only):

* ``meta``: versions, commit, seed, this script's name.
* ``proteins``: per protein ``file``, ``num_residues``, ``node_position`` (n, 3) float32 (Å), ``residue_number`` (n,)
  long (torchdrug's author residue numbers), ``residue_feature_index`` (n,) long (the hot column of the 21-d
  feature), ``orientation`` (n, 3, 3) float32 (the ``Orientation`` transform's frames).
* ``models``: per model name ``config`` (the ``models.CDConv`` keyword arguments), ``state_dict``,
  ``eval_graph_feature`` (B, D) and, when ``dropout == 0``, ``train_graph_feature`` (B, D) and ``grad``
  (parameter name -> gradient).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from fixture_io import write_fixture

COMMIT = "bc90557bbf9ee2676e87b9fc84570aa126daa808"
#: AlphaFold models numbered 1..L (84, 127 residues), an X-ray chain numbered from 2 (209) and an NMR structure with
#: numbering gaps and insertion codes (1ORC, 64 residues), so author numbers differ from node indices.
PROTEINS = (
    "alphafold/AF-P76011-F1-model_v4.pdb",
    "alphafold/AF-Q9Y5P2-F1-model_v4.pdb",
    "pdb/2J9H-A.pdb",
    "pdb/1orc.pdb",
)
SEED = 0
#: small versions of the reference configuration (``config/*/cdconv.yaml``: embedding 16, hidden [256, 512, 1024,
#: 2048], cutoffs [8, 12, 16, 20], seq_cutoff 21, kernel_dims [32], base_width 16, dropout 0.2)
MODELS = {
    "four_levels": dict(
        input_dim=21,
        embedding_dim=8,
        hidden_dims=[16, 32, 48, 64],
        cutoffs=[8.0, 12.0, 16.0, 20.0],
        seq_cutoff=21,
        kernel_dims=[32],
        base_width=16.0,
        batch_norm=True,
        dropout=0.2,
    ),
    "two_layer_kernel": dict(
        input_dim=21,
        embedding_dim=12,
        hidden_dims=[16, 24],
        cutoffs=[10.0, 14.0],
        seq_cutoff=11,
        kernel_dims=[8, 16],
        base_width=32.0,
        batch_norm=True,
        dropout=0.0,
    ),
}


def load_reference(source: Path, workdir: Path):
    """Import ESM-GearNet's ``gearnet/cdconv.py`` from a clone (bare or not) at :data:`COMMIT`, or from a file."""
    target = workdir / "esm_gearnet_cdconv.py"
    if source.is_file():
        target.write_text(source.read_text())
    else:
        text = subprocess.run(
            ["git", "-C", str(source), "show", f"{COMMIT}:gearnet/cdconv.py"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        target.write_text(text)
    spec = importlib.util.spec_from_file_location("esm_gearnet_cdconv", target)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def randomise(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
            module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)
        if name.endswith("WeightNet"):
            for bias in module.bs:
                bias.data.copy_(torch.randn(bias.shape, generator=gen) * 0.1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--esm-gearnet", type=Path, default=Path("/work/.mirror/DeepGraphLearning+ESM-GearNet/repo"))
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data"))
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/cdconv_reference.pt"))
    args = parser.parse_args(argv)

    import torchdrug
    from torchdrug import data, transforms

    with tempfile.TemporaryDirectory() as tmp:
        ref = load_reference(args.esm_gearnet, Path(tmp))

    pipeline = [ref.ResidueGraph(keys="graph"), ref.Orientation(keys="graph"), transforms.ProteinView(view="residue")]
    proteins, graphs = [], []
    for name in PROTEINS:
        protein = data.Protein.from_pdb(
            str(args.data / name), atom_feature=None, bond_feature=None, residue_feature="default"
        )
        item = {"graph": protein}
        for transform in pipeline:
            item = transform(item)
        graph = item["graph"]
        feature = graph.residue_feature.float()
        assert feature.shape[1] == 21 and torch.equal(feature.sum(1), torch.ones(len(feature)))
        proteins.append(
            {
                "file": name,
                "num_residues": int(graph.num_residue),
                "node_position": graph.node_position.float().clone(),
                "residue_number": graph.residue_number.long().clone(),
                "residue_feature_index": feature.argmax(1),
                "orientation": graph.orientation.float().clone(),
            }
        )
        graphs.append(graph)
        print(f"{name}: {graph.num_residue} residues")
    batch = data.Protein.pack(graphs)
    batch.view = "residue"
    input = batch.residue_feature.float()

    models = {}
    for index, (model_name, config) in enumerate(MODELS.items()):
        torch.manual_seed(SEED + index)
        model = ref.ContinuousDiscreteConvolutionalNetwork(**config)
        randomise(model, SEED + 100 + index)
        entry = {"config": dict(config), "state_dict": {k: v.clone() for k, v in model.state_dict().items()}}
        model.eval()
        with torch.no_grad():
            entry["eval_graph_feature"] = model(batch, input)["graph_feature"].clone()
        if config["dropout"] == 0:
            model.train()
            model.zero_grad()
            out = model(batch, input)["graph_feature"]
            out.pow(2).sum().backward()
            entry["train_graph_feature"] = out.detach().clone()
            entry["grad"] = {k: p.grad.clone() for k, p in model.named_parameters()}
        models[model_name] = entry
        print(f"{model_name}: graph_feature {tuple(entry['eval_graph_feature'].shape)}")

    fixture = {
        "meta": {
            "script": "benchmarks/cdconv_reference.py",
            "reference": f"DeepGraphLearning/ESM-GearNet@{COMMIT}:gearnet/cdconv.py",
            "torchdrug": str(torchdrug.__version__),
            "torch": str(torch.__version__),
            "seed": SEED,
        },
        "proteins": proteins,
        "models": models,
    }
    write_fixture(fixture, args.out)


if __name__ == "__main__":
    sys.exit(main())
