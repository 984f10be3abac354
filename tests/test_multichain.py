"""GearNet graphs of records merged from several chains: sequential edges stop at chain breaks on both workflow
paths (graphs cached by the ``build_graphs`` rule, graphs built per batch by ``geoplm.inputs.make_graph``), as
torchdrug 0.2.1's ``SequentialEdge`` removes them (it compares ``graph.chain_id``).

``tests/fixtures/torchdrug_multichain_graphs.pt`` holds the edge lists torchdrug builds for five real multi-chain
PDB files (``benchmarks/torchdrug_multichain_reference.py``; files on which both parsers keep the same residues and
the neighbour cap does not bind), keyed by (chain, residue number, insertion code) per node.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch

from geoplm import config, docking, graph, inputs, steps, structure
from geoplm.datasets import casp, pdbbind
from geoplm.datasets import docking as docking_data

FIXTURE = Path(__file__).parent / "fixtures" / "torchdrug_multichain_graphs.pt"
SETTINGS = config.graph_settings({"graphs": {"gearnet": {}}}, "gearnet")  # GearNet's defaults
NUM_SEQUENTIAL = 5  # relations 0-4: offsets -2..2


@cache
def _fixture() -> dict:
    return torch.load(FIXTURE, weights_only=True)


def _read(data: Path, protein: dict) -> dict:
    """The fixture file's chains merged into one record by the geoplm reader the fixture names."""
    path = data / protein["file"]
    if protein["reader"] == "db5":  # the DB5.5 / DIPS readers' partner records
        return docking_data.merge_chains(structure.parse_structure(path), path.name.split(".")[0])
    if protein["reader"] == "pdbbind":
        return pdbbind.merge_chain_records(structure.parse_structure(path), path.parent.name, path.name)
    if protein["reader"] == "casp":  # a native: every chain of the file
        return casp.read_entry(path.stem, "native", path.name, path, None)
    return docking.read_protein(path)  # EquiDock inference: all chains of a file


def _node_keys(record: dict, path: Path) -> list[tuple[str, int, str]]:
    """(chain id, residue number, insertion code) of the record's nodes (residues with a Cα); a blank chain is
    ``" "`` as in torchdrug."""
    names = record.get("chains") or record.get("chain_ids") or [r["chain"] for r in structure.parse_structure(path)]
    keep = ~torch.isnan(record["backbone"][:, 1]).any(dim=-1)
    chains = [names[int(c)] or " " for c in record["chain_index"][keep]]
    codes = [c for c, k in zip(record["insertion_code"], keep.tolist(), strict=True) if k]
    return list(zip(chains, record["residue_number"][keep].tolist(), codes, strict=True))


@pytest.fixture(scope="module")
def cases(shared_data):
    """(fixture protein, geoplm record) per file of the fixture."""
    return [(protein, _read(shared_data, protein)) for protein in _fixture()["proteins"]]


def _edges(edge_list: torch.Tensor) -> set[tuple[int, int, int]]:
    return set(map(tuple, edge_list.long().tolist()))


def _split(g: graph.ResidueGraph) -> list[set[tuple[int, int, int]]]:
    """Per protein of a packed graph, its edges with local node indices."""
    sizes = torch.bincount(g.node2graph, minlength=g.batch_size)
    offsets = torch.cumsum(sizes, 0) - sizes
    owner = g.node2graph[g.edge_list[:, 1]]
    out = []
    for b in range(g.batch_size):
        edges = g.edge_list[owner == b].clone()
        edges[:, :2] -= offsets[b]
        out.append(_edges(edges))
    return out


def _sequential_counts(chain: np.ndarray) -> list[int]:
    """Sequential edges per offset -2..2 when pairs of different chains are left out."""
    n = len(chain)
    return [int(sum(chain[i] == chain[i + o] for i in range(max(0, -o), min(n, n - o)))) for o in range(-2, 3)]


# --- torchdrug's edge sets -----------------------------------------------------------------------------------


def test_fixture_files_have_several_chains_and_the_same_residues(cases, shared_data):
    for protein, record in cases:
        expected = zip(protein["chain"], protein["residue_number"].tolist(), protein["insertion_code"], strict=True)
        assert _node_keys(record, shared_data / protein["file"]) == list(expected), protein["file"]
        position, _ = graph.record_graph_inputs(record)
        assert float((position - protein["node_position"]).abs().max()) < 1e-3
        assert len(set(protein["chain"])) > 1
        chain = graph.record_chain_index(record)
        assert chain is not None and len(chain) == protein["num_residues"]


def test_cached_graphs_equal_torchdrugs(cases, tmp_path):
    records = [record for _, record in cases]
    structure.save_shard(records, tmp_path / "records.pt")
    steps.build_graphs(tmp_path / "records.pt", tmp_path / "graphs.pt", SETTINGS)  # the build_graphs rule's step
    cached = inputs.load_graphs([tmp_path / "graphs.pt"])
    for (protein, record), expected in zip(cases, [_edges(p["edge_list"]) for p, _ in cases], strict=True):
        assert _edges(cached[record["id"]]) == expected, protein["file"]
        # without chain ids each junction would carry 6 more sequential edges (offsets -2..2 across it)
        position, residue_type = graph.record_graph_inputs(record)
        chainless = graph.build_gearnet_graph(position, residue_type, edge_feature=None)
        junctions = sum(a != b for a, b in zip(protein["chain"][:-1], protein["chain"][1:], strict=True))
        assert len(_edges(chainless.edge_list) - expected) == 6 * junctions
        assert _edges(chainless.edge_list) >= expected


def test_graph_built_for_a_node_mask_keeps_the_chain_breaks(cases):
    """Multiview contrast's views (``make_graph`` with ``node_mask``, built for the cropped nodes alone) of
    multi-chain proteins: the crop of the whole graph, no sequential edge across a chain junction."""
    proteins = [inputs.InputLoader()(record) for _, record in cases]
    whole = inputs.make_graph(proteins, settings=SETTINGS)
    generator = torch.Generator().manual_seed(0)
    for rate in (0.2, 0.5, 0.95):
        mask = torch.rand(whole.num_nodes, generator=generator) < rate
        view = inputs.make_graph(proteins, settings=SETTINGS, node_mask=mask)
        expected = graph.subgraph(whole, mask)[0]
        assert torch.equal(view.edge_list, expected.edge_list) and torch.equal(view.edge_feature, expected.edge_feature)
        assert torch.equal(view.node_position, expected.node_position)


def test_graphs_built_per_batch_equal_torchdrugs(cases):
    proteins = [inputs.InputLoader()(record) for _, record in cases]
    assert all(p.chain_index is not None and p.edge_list is None for p in proteins)
    expected = [_edges(p["edge_list"]) for p, _ in cases]
    assert _split(inputs.make_graph(proteins, settings=SETTINGS)) == expected
    assert _split(inputs.make_graph(proteins[::-1], settings=SETTINGS)) == expected[::-1]
    # the cached graphs packed (every protein has one) give the same graph
    cached = graph.build_record_graphs([record for _, record in cases], **SETTINGS)
    loader = inputs.InputLoader(graphs={rid: g["edge_list"] for rid, g in cached.items()})
    packed = inputs.make_graph([loader(record) for _, record in cases], settings=SETTINGS)
    assert _split(packed) == expected
    batch = inputs.make_graph(proteins, settings=SETTINGS)
    assert torch.equal(packed.edge_list, batch.edge_list)
    assert torch.allclose(packed.edge_feature, batch.edge_feature)


def test_concatenated_chains_equal_the_merged_record(cases, shared_data):
    """MSP's path: chains loaded one by one, then :func:`geoplm.inputs.concatenate_proteins` (the reference keeps
    each residue's chain id)."""
    for protein, _ in cases:
        if protein["reader"] != "db5":
            continue
        loaded = [inputs.InputLoader()(r) for r in structure.parse_structure(shared_data / protein["file"])]
        assert len(loaded) > 1 and all(p.chain_index is None for p in loaded)
        whole = inputs.concatenate_proteins(loaded, protein["file"])
        assert whole.chain_index.tolist() == [i for i, p in enumerate(loaded) for _ in range(p.num_nodes)]
        assert _split(inputs.make_graph([whole], settings=SETTINGS)) == [_edges(protein["edge_list"])]
        # concatenating a merged protein numbers the chains on
        again = inputs.concatenate_proteins([whole, loaded[0]], "again")
        assert again.chain_index.unique().tolist() == list(range(len(loaded) + 1))
        assert inputs.concatenate_proteins([whole], "alone").chain_index is whole.chain_index


# --- records of the readers that merge chains ---------------------------------------------------------------


@pytest.fixture(scope="module")
def reader_records(shared_data):
    """Every multi-chain record the mirror gives the chain-merging readers: DB5.5 partners, PDBbind proteins and
    pockets, a CASP-style native, EquiDock's whole-file proteins (HETATM ions, MSE, four chains)."""
    db5_files = sorted(p for p in (shared_data / "db5").iterdir() if p.is_file())
    records = docking_data.read_db5_shard(db5_files, 0, 1, {}, "skip")[0]
    complexes = [shared_data / "pdbbind" / code for code in ("1a0q", "1a61", "1qkt", "2l1r", "4cjq")]
    labels = sorted((shared_data / "pdbbind").glob("GIGN_*.csv"))
    for kind, folders in (("protein", complexes), ("pocket", complexes[-1:])):
        options = {"labels": ["GIGN_*.csv"], "protein": kind}
        records += [
            dict(r, id=f"{r['id']}_{kind}") for r in pdbbind.read_shard(folders + labels, 0, 1, options, "fail")[0]
        ]
    records.append(casp.read_entry("2BEG", "native", "2BEG.pdb", shared_data / "pdb" / "2BEG.pdb", None))
    for name in ("4hhb.pdb", "117e.pdb.gz", "11as.pdb", "1f2n.pdb", "a_structure.pdb"):
        records.append(docking.read_protein(shared_data / "pdb" / name))
    return [r for r in records if graph.record_chain_index(r) is not None]


def _check_chain_breaks(g: graph.ResidueGraph, chain: torch.Tensor, label: str) -> None:
    """No sequential edge joins two chains; every other sequential pair is there; the spatial and kNN edges are
    those of the graph built without chains (torchdrug's ``SpatialEdge`` / ``KNNEdge`` ignore chains)."""
    edges = g.edge_list
    sequential = edges[edges[:, 2] < NUM_SEQUENTIAL]
    assert torch.equal(chain[sequential[:, 0]], chain[sequential[:, 1]]), label
    counts = torch.bincount(sequential[:, 2], minlength=NUM_SEQUENTIAL).tolist()
    assert counts == _sequential_counts(chain.numpy()), label
    chainless = graph.build_gearnet_graph(g.node_position, g.residue_type, edge_feature=None)
    geometric = chainless.edge_list[chainless.edge_list[:, 2] >= NUM_SEQUENTIAL]
    assert torch.equal(edges[edges[:, 2] >= NUM_SEQUENTIAL], geometric), label
    assert len(chainless.edge_list) - len(edges) >= 4 * int((chain[1:] != chain[:-1]).sum()), label


def test_no_sequential_edge_crosses_a_chain_in_reader_records(reader_records):
    assert len(reader_records) >= 15
    assert {len(set(graph.record_chain_index(r).tolist())) for r in reader_records} >= {2, 4, 5}
    cached = graph.build_record_graphs(reader_records, **SETTINGS)
    proteins = [inputs.InputLoader()(record) for record in reader_records]
    batch = inputs.make_graph(proteins, settings=SETTINGS)
    sizes = [p.num_nodes for p in proteins]
    for b, (record, protein) in enumerate(zip(reader_records, proteins, strict=True)):
        chain = graph.record_chain_index(record)
        assert torch.equal(protein.chain_index, chain)
        edges = cached[record["id"]]["edge_list"]
        one = graph.pack_graphs([protein.position], [protein.residue_type], [edges], 7, edge_feature=None)
        _check_chain_breaks(one, chain, f"{record['id']} cached")
        first = sum(sizes[:b])
        mine = batch.edge_list[batch.node2graph[batch.edge_list[:, 1]] == b] - torch.tensor([first, first, 0])
        assert torch.equal(mine, one.edge_list), record["id"]


def test_truncation_and_crops_keep_each_nodes_chain(reader_records):
    """A window across a junction (torchdrug ``TruncateProtein``; ESM-GearNet's ``TruncateProteinPair`` crop)
    keeps the chains of its residues."""
    record = next(r for r in reader_records if r["id"] == "1AHW_r_b")
    chain = graph.record_chain_index(record)
    junction = int(torch.nonzero(chain[1:] != chain[:-1])[0]) + 1
    start = junction - 60
    truncated = inputs.InputLoader(max_length=150, random_start=True)
    truncated.rng.randrange = lambda stop: start  # the window's start
    protein = truncated(record)
    assert protein.num_nodes == 150 and protein.edge_list is None
    assert torch.equal(protein.chain_index, chain[start : start + 150])
    g = inputs.make_graph([protein], settings=SETTINGS)
    _check_chain_breaks(g, protein.chain_index, "truncated")
    crop = inputs.InputLoader()(record).crop(junction - 30, junction + 30)
    assert crop.chain_index.tolist() == [0] * 30 + [1] * 30
    _check_chain_breaks(inputs.make_graph([crop], settings=SETTINGS), crop.chain_index, "cropped")
    # a window inside one chain is one chain
    inside = inputs.InputLoader(max_length=100)(record)
    assert graph.record_chain_index(inputs.truncate_record(record, 100)) is None and inside.chain_index is None


def test_single_chain_records_have_no_chain_index(shared_data):
    records = structure.parse_structure(shared_data / "pdb" / "4hhb.pdb")
    assert len(records) == 4 and all("chain_index" not in r for r in records)
    assert all(inputs.InputLoader()(r).chain_index is None for r in records)
    one = docking_data.merge_chains(records[:1], "4hhb_A")  # merged, but one chain
    assert one["chain_index"].unique().tolist() == [0] and graph.record_chain_index(one) is None
    bad = dict(one, chain_index=one["chain_index"][:-1])
    with pytest.raises(ValueError, match="chain_index"):
        graph.record_chain_index(bad)


def test_chains_reach_only_graph_kinds_with_a_sequential_relation(reader_records):
    record = reader_records[0]
    position, residue_type = graph.record_graph_inputs(record)
    chain = graph.record_chain_index(record)
    node2graph = torch.zeros(len(position), dtype=torch.long)
    for settings in ({"kind": "radius", "radius": 8.0}, {"kind": "knn", "k": 10}, {"kind": "none"}):
        with_chains = graph.build_batch_graph(position, residue_type, node2graph, settings, chain_id=chain)
        without = graph.build_batch_graph(position, residue_type, node2graph, settings)
        assert torch.equal(with_chains.edge_list, without.edge_list), settings
    gearnet = graph.build_batch_graph(position, residue_type, node2graph, SETTINGS, chain_id=chain)
    assert len(gearnet.edge_list) < len(graph.build_batch_graph(position, residue_type, node2graph, SETTINGS).edge_list)
