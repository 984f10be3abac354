"""Proteins per second from PDB files to per-protein GearNet-Edge embeddings: geoplm's ``embed`` path
(:mod:`geoplm.apply`) vs the route the torchdrug tutorials give, same weights, same files, one process.

Run in the torchdrug environment (benchmarks/torchdrug_env.sh), from the repository root::

    /work/tdenv/bin/python benchmarks/bench_apply.py [--data /work/shared/data] [--repeat 3] \
        [--hidden-dim 512] [--num-layers 6] [--batch-size 8] [--threads 2]

* torchdrug (its tutorials' inference route, torchdrug 0.2.1): per file ``data.Protein.from_pdb(path,
  atom_feature="position", bond_feature="length", residue_feature="symbol")`` with ``view = "residue"``, batches of
  ``--batch-size`` packed with ``data.Protein.pack``, GearNet's ``layers.GraphConstruction`` (``AlphaCarbonNode``;
  sequential 2, spatial 10 Å / 5, kNN 10 / 5; ``edge_feature="gearnet"``) and ``models.GearNet`` (GearNet-Edge:
  7 relations, edge input 59, 8 angle bins, batch norm, concat_hidden, short_cut, sum readout) in eval mode under
  ``torch.no_grad``; the ``graph_feature`` of each protein.
* geoplm: the same files through the shard job's code, :func:`geoplm.apply._units_records` (parsing) and
  :func:`geoplm.apply.encode_records` (length batches of at most ``--max-residues`` residues, graphs built per
  batch, ``torch.inference_mode``) with :class:`geoplm.models.GearNet` carrying torchdrug's state dict.

Input: the mirror's single-chain AlphaFold DB PDB models (:data:`FILES`), real files (28 to 1,000 residues).
Rounds alternate which side goes first; the ratio printed is the median over rounds of torchdrug's time / geoplm's
(> 1: geoplm is faster), after one warm-up each. Outputs: per protein the largest |difference| of the graph
feature relative to its largest |value|; proteins where the 32-neighbour cap of torch_cluster's CPU radius graph
binds get other spatial edges in torchdrug (see the README, ``geoplm.graph``) and are listed apart.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

FILES = (
    "alphafold/AF-A0A1W2PQ64-F1-model_v4.pdb",
    "alphafold/AF-P04637-F1-model_v4.pdb",
    "alphafold/AF-P76011-F1-model_v4.pdb",
    "alphafold/AF-Q5T5X7-F1-model_v4.pdb",
    "alphafold/AF-Q8W3K0-F1-model_v4.pdb",
    "alphafold/AF-Q96HM7-F1-model_v4.pdb",
    "alphafold/AF-Q96M98-F1-model_v4.pdb",
    "alphafold/AF-Q96PD2-F1-model_v4.pdb",
    "alphafold/AF-Q9P273-F1-model_v4.pdb",
    "alphafold/AF-Q9Y5P2-F1-model_v4.pdb",
    "alphafold/alphafold.ebi.ac.uk_files_AF-A0A286Q506-F1-model_v4.pdb",
    "alphafold/alphafold.ebi.ac.uk_files_AF-A0A2Y9FRR4-F1-model_v4.pdb",
    "alphafold/alphafold.ebi.ac.uk_files_AF-A0A3L8SFX2-F1-model_v4.pdb",
    "alphafold/alphafold.ebi.ac.uk_files_AF-A0A3P6STH8-F1-model_v4.pdb",
    "alphafold/alphafold.ebi.ac.uk_files_AF-A0A3Q3SLX0-F1-model_v4.pdb",
    "alphafold/alphafold.ebi.ac.uk_files_AF-A0A507BZ37-F1-model_v4.pdb",
    "alphafold/alphafold.ebi.ac.uk_files_AF-D7RIF5-F1-model_v4.pdb",
    "alphafold/alphafold.ebi.ac.uk_files_AF-I1MDT4-F1-model_v4.pdb",
    "alphafold/alphafold.ebi.ac.uk_files_AF-P60713-F1-model_v4.pdb",
    "alphafold/alphafold.ebi.ac.uk_files_AF-Q6QAQ1-F1-model_v4.pdb",
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/work/shared/data", type=Path)
    parser.add_argument("--repeat", default=3, type=int)
    parser.add_argument("--hidden-dim", default=512, type=int)
    parser.add_argument("--num-layers", default=6, type=int)
    parser.add_argument("--batch-size", default=8, type=int, help="torchdrug's batch (its tutorials: 8 to 32)")
    parser.add_argument("--max-residues", default=4096, type=int, help="geoplm's residues per batch")
    parser.add_argument("--threads", default=2, type=int)
    parser.add_argument("--files", type=int, default=len(FILES), help="use the first N files")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from machine import machine_facts

    for line in machine_facts(args.threads):
        print(line)

    from torchdrug import data, models
    from torchdrug_reference import graph_construction

    from geoplm import apply
    from geoplm.config import graph_settings
    from geoplm.models import GearNet
    from geoplm.tasks.base import TaskModel

    paths = [args.data / name for name in FILES[: args.files]]
    config = dict(input_dim=21, hidden_dims=[args.hidden_dim] * args.num_layers, num_relation=7, edge_input_dim=59,
                  num_angle_bin=8, batch_norm=True, concat_hidden=True, short_cut=True, readout="sum")  # fmt: skip
    torch.manual_seed(0)
    td_model = models.GearNet(**config).eval()
    ours = GearNet(**config)
    ours.load_state_dict(td_model.state_dict(), strict=True)
    construction = graph_construction()
    spec = apply.EncoderSpec("torchdrug weights", Path("-"), "encoder_state", "gearnet_edge")
    loaded = apply.LoadedEncoder(spec, TaskModel(ours, torch.nn.Identity()).eval(), None,
                                 graph_settings({}, "gearnet"), 21, {"truncate": None})  # fmt: skip
    units = [apply.Unit(path.name, path.name, path) for path in paths]

    def torchdrug_route() -> dict[str, torch.Tensor]:
        features = {}
        with torch.no_grad():
            for start in range(0, len(paths), args.batch_size):
                chunk = paths[start : start + args.batch_size]
                proteins = []
                for path in chunk:
                    protein = data.Protein.from_pdb(str(path), atom_feature="position", bond_feature="length",
                                                    residue_feature="symbol")  # fmt: skip
                    protein.view = "residue"
                    proteins.append(protein)
                graph = construction(data.Protein.pack(proteins))
                output = td_model(graph, graph.node_feature.float())["graph_feature"]
                features.update({path.name: output[i] for i, path in enumerate(chunk)})
        return features

    def geoplm_route() -> dict[str, torch.Tensor]:
        pairs, _ = apply._units_records(units, 0, 1)
        encoded, _ = apply.encode_records(loaded, [record for record, _ in pairs], args.max_residues, progress=False)
        return {record["source"]: encoded[record["id"]]["protein_features"] for record, _ in pairs}

    theirs, mine = torchdrug_route(), geoplm_route()
    from geoplm.structure import parse_structure

    residues = sum(len(parse_structure(p)[0]["sequence"]) for p in paths)
    print(f"{len(paths)} AlphaFold DB PDB files, {residues} residues; GearNet-Edge {config['hidden_dims']}; "
          f"torchdrug batch {args.batch_size}, geoplm <= {args.max_residues} residues per batch")  # fmt: skip
    worst, differing = 0.0, []
    for name, a in theirs.items():
        b = mine[name]
        relative = float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))
        if relative > 1e-4:
            differing.append(f"{name} ({relative:.1e})")
        else:
            worst = max(worst, relative)
    print(f"graph features: max relative |difference| {worst:.1e} on {len(theirs) - len(differing)} proteins "
          "(float32 rounding)")  # fmt: skip
    if differing:
        print(f"  other edges (torch_cluster's CPU 32-neighbour cap binds): {', '.join(differing)}")

    times_td, times_ours, ratios = [], [], []
    for i in range(args.repeat):
        pair = {}
        for name, fn in (("td", torchdrug_route), ("ours", geoplm_route))[:: 1 if i % 2 == 0 else -1]:
            start = time.perf_counter()
            fn()
            pair[name] = time.perf_counter() - start
        times_td.append(pair["td"])
        times_ours.append(pair["ours"])
        ratios.append(pair["td"] / pair["ours"])
        print(f"round {i}: torchdrug {pair['td']:.2f} s, geoplm {pair['ours']:.2f} s, ratio {ratios[-1]:.2f}x")
    n = len(paths)
    t_td, t_ours = statistics.median(times_td), statistics.median(times_ours)
    print(
        f"proteins per second, PDB files -> GearNet-Edge embeddings: torchdrug {n / t_td:.2f}, geoplm "
        f"{n / t_ours:.2f}; ratio {statistics.median(ratios):.2f}x (median of {args.repeat} rounds; goal >= 3x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
