"""Produce tests/fixtures/torchdrug_multichain_graphs.pt: the GearNet graphs torchdrug 0.2.1 builds for real
multi-chain PDB files, for tests/test_multichain.py.

Run once, in the torchdrug environment (benchmarks/torchdrug_env.sh), from the repository root::

    bash benchmarks/torchdrug_env.sh /work/tdenv
    /work/tdenv/bin/python benchmarks/torchdrug_multichain_reference.py \
        [--data /work/shared/data] [--out tests/fixtures/torchdrug_multichain_graphs.pt]

Nothing here is imported by the tests (they only ``torch.load(weights_only=True)`` the fixture), so CI needs no
torchdrug.

What it does, with torchdrug 0.2.1 only (CPU, float32):

1. ``data.Protein.from_pdb`` (RDKit) on the multi-chain files of :data:`FILES` (a gzipped file is decompressed
   to a temporary file first: RDKit reads plain PDB only), ``view = "residue"``, packed into one
   ``PackedProtein`` in that order.
2. ``torchdrug_reference.graph_construction()``: ``GraphConstruction(node_layers=[AlphaCarbonNode()],
   edge_layers=[SequentialEdge(max_distance=2), SpatialEdge(radius=10.0, min_distance=5), KNNEdge(k=10,
   min_distance=5)], edge_feature="gearnet")`` on the packed batch, and on every protein alone (the script
   asserts both give the same edges). ``SequentialEdge`` drops the pairs whose residues differ in
   ``graph.chain_id`` (torchdrug/layers/geometry/function.py); ``SpatialEdge`` / ``KNNEdge`` look at residue
   index differences only.

The files were chosen so that the comparison is exact (the script asserts each point):

* torchdrug's parser and geoplm's keep the same residues (after ``AlphaCarbonNode``), in the same order, keyed
  by (chain, residue number, insertion code), so node indices, the ``min_distance`` filter and the kNN agree.
  Files where they differ (HETATM groups with an atom named CA, such as Ca2+ ions, which torchdrug makes
  glycine nodes; free amino acids bound as ligands; MSE and other modified residues, which torchdrug's
  ``residue2id`` lacks) are left out; geoplm is checked here only if it imports (``src/`` on the path and
  Biopython / numba in this environment);
* no Cα has more than 33 Cα (itself included) within 10 Å, so torch_cluster's ``max_num_neighbors=32`` cap does
  not bind and torch_cluster's CPU kernel (nanoflann order) gives the CUDA kernel's edges, which geoplm follows;
* every file has several chains, so the chainless graph has six more sequential edges per chain junction.

Fixture layout (plain tensors / lists / str / int only):

* ``meta``: versions, this script's name, the files.
* ``proteins``: one dict per file, in :data:`FILES` order, with local node indices:

  - ``file`` (relative to the data directory), ``reader`` (which geoplm reader merges its chains in the test),
    ``num_residues`` (after ``AlphaCarbonNode``);
  - ``chain`` (list[str], N; ``" "`` for a blank chain id), ``residue_number`` (N,) int32, ``insertion_code``
    (list[str], N; ``""`` for none): the node keys; ``node_position`` (N, 3) float32: torchdrug's Cα (Å);
  - ``edge_list`` (E, 3) int16 ``[node_in, node_out, relation]`` sorted by (relation, node_out, node_in);
    relations 0-4 sequential (offset -2..2), 5 spatial, 6 kNN.
"""

from __future__ import annotations

import argparse
import gzip
import sys
import tempfile
from pathlib import Path

import torch
from fixture_io import write_fixture

#: (file relative to the data directory, geoplm reader that merges its chains in tests/test_multichain.py).
FILES = (
    ("db5/1AHW_r_b.pdb", "db5"),  # DB5.5 bound receptor, chains A, B (an antibody's light and heavy chains)
    ("chains/1KKL_r_u.pdb", "db5"),  # DB5.5 unbound receptor, chains A, B, C
    ("pdbbind/4cjq/4cjq_pocket.pdb", "pdbbind"),  # a PDBbind pocket spanning chains A and B
    ("pdb/2BEG.pdb", "casp"),  # an NMR entry of five chains (first model)
    ("pdb/1lzh.pdb.gz", "docking"),  # a Cα-only model of two chains, gzipped
)
RADIUS, CAP = 10.0, 32


def graph_construction():
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from torchdrug_reference import graph_construction as construction

    return construction()


def read_protein(path: Path, workdir: Path):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from torchdrug_reference import load_protein

    if path.suffix == ".gz":
        plain = workdir / path.name[: -len(".gz")]
        plain.write_bytes(gzip.decompress(path.read_bytes()))
        path = plain
    protein = load_protein(path)
    if protein is None:
        raise SystemExit(f"torchdrug cannot read {path}")
    return protein


def node_keys(graph) -> tuple[list[str], torch.Tensor, list[str]]:
    from torchdrug import data

    letters = data.Protein.id2alphabet
    chain = [letters[int(c)] for c in graph.chain_id]
    code = [letters[int(c)].strip() for c in graph.insertion_code]
    return chain, graph.residue_number.to(torch.int32).clone(), code


def sorted_edges(edges: torch.Tensor, n: int) -> torch.Tensor:
    key = (edges[:, 2] * n + edges[:, 1]) * n + edges[:, 0]
    return edges[torch.argsort(key)]


def max_neighbours(position: torch.Tensor) -> int:
    """Most Cα (itself included) within ``RADIUS`` of a Cα, from float32 ``dx*dx + dy*dy + dz*dz``."""
    diff = position[None, :, :] - position[:, None, :]
    d2 = diff[..., 0] * diff[..., 0] + diff[..., 1] * diff[..., 1] + diff[..., 2] * diff[..., 2]
    return int((d2 < RADIUS * RADIUS).sum(1).max())


def geoplm_keys(path: Path):
    """geoplm's node keys and Cα of all chains of ``path`` merged, or None if geoplm does not import here."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    try:
        from geoplm.structure import concatenate_chains, parse_structure
    except ImportError as exc:
        print(f"geoplm not importable ({exc}); its residues are not checked here")
        return None
    chains = parse_structure(path)
    record = concatenate_chains(chains, path.name, path.name)
    keep = ~torch.isnan(record["backbone"][:, 1]).any(dim=-1)
    names = [chains[int(c)]["chain"] or " " for c in record["chain_index"][keep]]
    numbers = record["residue_number"][keep].tolist()
    codes = [c for c, k in zip(record["insertion_code"], keep.tolist(), strict=True) if k]
    return list(zip(names, numbers, codes, strict=True)), record["backbone"][keep, 1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/work/shared/data", type=Path)
    parser.add_argument("--out", default="tests/fixtures/torchdrug_multichain_graphs.pt", type=Path)
    args = parser.parse_args(argv)

    import rdkit
    import torch_cluster
    import torchdrug
    from torchdrug import data

    torch.set_num_threads(1)
    construction = graph_construction()
    with tempfile.TemporaryDirectory() as tmp:
        proteins = [read_protein(args.data / name, Path(tmp)) for name, _ in FILES]
    with torch.no_grad():
        graph = construction(data.Protein.pack(proteins))
        alone = [construction(data.Protein.pack([p])) for p in proteins]
    assert graph.num_relation == 7 and graph.batch_size == len(FILES)

    num_nodes, num_edges = graph.num_nodes.tolist(), graph.num_edges.tolist()
    edge2graph = graph.node2graph[graph.edge_list[:, 1]]
    out, n0, e0 = [], 0, 0
    for b, ((name, reader), single) in enumerate(zip(FILES, alone, strict=True)):
        n, e = num_nodes[b], num_edges[b]
        assert bool((edge2graph[e0 : e0 + e] == b).all())
        edges = graph.edge_list[e0 : e0 + e].clone()
        edges[:, :2] -= n0
        assert int(edges[:, :2].min()) >= 0 and int(edges[:, :2].max()) < n < 2**15
        edges = sorted_edges(edges, n)
        assert torch.equal(edges, sorted_edges(single.edge_list.clone(), n)), f"{name}: batch and alone differ"
        position = graph.node_position[n0 : n0 + n].float().clone()
        chain, number, code = node_keys(single)
        assert len(set(chain)) > 1, f"{name}: one chain"
        most = max_neighbours(position)
        assert most <= CAP + 1, f"{name}: {most} Cα within {RADIUS} Å of one Cα: the neighbour cap binds"
        mine = geoplm_keys(args.data / name)
        if mine is not None:
            keys, ca = mine
            assert keys == list(zip(chain, number.tolist(), code, strict=True)), f"{name}: parsers keep other residues"
            assert float((ca - position).abs().max()) < 1e-3, f"{name}: other Cα coordinates"
        sequential = edges[edges[:, 2] < 5]
        junctions = sum(a != b for a, b in zip(chain[:-1], chain[1:], strict=True))
        out.append(
            {
                "file": name,
                "reader": reader,
                "num_residues": n,
                "chain": chain,
                "residue_number": number,
                "insertion_code": code,
                "node_position": position,
                "edge_list": edges.to(torch.int16),
            }
        )
        print(
            f"{name}: {n} residues, chains {''.join(dict.fromkeys(chain))} ({junctions} junctions), {e} edges "
            f"({len(sequential)} sequential), at most {most} Cα within {RADIUS} Å"
        )
        n0, e0 = n0 + n, e0 + e

    fixture = {
        "meta": {
            "script": "benchmarks/torchdrug_multichain_reference.py",
            "torchdrug": str(torchdrug.__version__),
            "torch": str(torch.__version__),
            "torch_cluster": str(torch_cluster.__version__),
            "rdkit": str(rdkit.__version__),
            "python": sys.version.split()[0],
            "files": [name for name, _ in FILES],
        },
        "proteins": out,
    }
    write_fixture(fixture, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
