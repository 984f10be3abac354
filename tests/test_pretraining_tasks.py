"""GearNet's five pretraining tasks (:mod:`geoplm.pretraining.gearnet_tasks`) on real AlphaFold DB models: crops,
edge masking and attribute masking do what torchdrug 0.2.1's functions do, the geometric targets equal an
independent numpy computation on the models' Cα coordinates, the samples are drawn uniformly from the reference's
candidate sets (checked against a brute-force enumeration), the sampled edges are removed from the graph the
encoder reads, the InfoNCE loss equals a hand computation, the losses are deterministic and fall in training."""

from __future__ import annotations

import copy
import math
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch

from geoplm import structure
from geoplm.errors import ConfigError
from geoplm.graph import build_record_graphs, cat_graphs
from geoplm.inputs import InputLoader, make_graph, pack
from geoplm.pretraining import gearnet_tasks as gt
from geoplm.pretraining import get_pretraining_task
from geoplm.tasks.base import Example
from geoplm.train import fit

AF = ["AF-P76011-F1-model_v4.pdb", "AF-Q9Y5P2-F1-model_v4.pdb", "AF-A0A1W2PQ64-F1-model_v4.pdb"]
SMALL_GEARNET_EDGE = {
    "type": "gearnet", "hidden_dims": [32, 32], "num_angle_bin": 8, "short_cut": True, "batch_norm": True,
    "concat_hidden": True,
}  # fmt: skip
KINDS = ["multiview_contrast", "attribute_masking", "distance_prediction", "angle_prediction", "dihedral_prediction"]


@pytest.fixture(scope="module")
def records(shared_data):
    return [r for name in AF for r in structure.parse_structure(shared_data / "alphafold" / name)]


@pytest.fixture(scope="module")
def proteins(records):
    loader = InputLoader()
    return [loader(r) for r in records]


@pytest.fixture(scope="module")
def examples(proteins):
    return [Example(p.id, (p,), torch.zeros(0)) for p in proteins]


def make_task(kind: str, seed: int = 0, **spec):
    task = get_pretraining_task({"kind": kind, "epochs": 1, "batch_size": 3, "lr": 1e-3, **spec})
    task.bind("cpu", None, seed)
    return task


def ca_coordinates(record: dict, protein) -> np.ndarray:
    """The nodes' Cα coordinates (Å) read straight from the record (float64)."""
    return record["backbone"][:, 1].double().numpy()[protein.residue_index.numpy()]


def packed_coordinates(records, proteins) -> np.ndarray:
    return np.concatenate([ca_coordinates(r, p) for r, p in zip(records, proteins, strict=True)])


def edge_set(graph) -> Counter:
    return Counter(map(tuple, graph.edge_list.tolist()))


# --- settings ---------------------------------------------------------------------------------------------


def test_reference_defaults_and_bad_settings():
    mc = make_task("multiview_contrast")
    assert {k: mc.settings[k] for k in ("crops", "max_length", "min_neighbor", "min_radius", "noises",
                                         "edge_mask_rate", "tau", "num_mlp_layer")} == {
        "crops": ["subsequence", "subspace"], "max_length": 50, "min_neighbor": 15, "min_radius": 15.0,
        "noises": ["identity", "random_edge_mask"], "edge_mask_rate": 0.15, "tau": 0.07, "num_mlp_layer": 2,
    }  # fmt: skip
    assert mc.settings["truncate"] is None  # MC reads whole proteins
    assert make_task("attribute_masking").settings["mask_rate"] == 0.15
    assert make_task("distance_prediction").settings["num_sample"] == 256
    for kind in ("angle_prediction", "dihedral_prediction"):
        task = make_task(kind)
        assert (task.settings["num_sample"], task.settings["num_class"]) == (512, 8)
    for kind in KINDS[1:]:
        assert (make_task(kind).settings["truncate"], make_task(kind).settings["truncate_random"]) == (100, True)
    with pytest.raises(ConfigError, match="crops"):
        make_task("multiview_contrast", crops=["subsequence", "random_walk"])
    with pytest.raises(ConfigError, match="noises"):
        make_task("multiview_contrast", noises=[])
    with pytest.raises(ConfigError, match="tau"):
        make_task("distance_prediction", tau=0.1)


def test_heads_have_the_reference_shapes():
    d = 64
    shapes = {
        "multiview_contrast": [(d, d), (d, d)],
        "attribute_masking": [(d, d), (20, d)],
        "distance_prediction": [(d, 2 * d), (1, d)],
        "angle_prediction": [(d, 3 * d), (8, d)],
        "dihedral_prediction": [(d, 4 * d), (8, d)],
    }
    for kind, expected in shapes.items():
        head = make_task(kind).head(d)
        assert [tuple(layer.weight.shape) for layer in head.layers] == expected, kind


# --- graph helpers ----------------------------------------------------------------------------------------


def test_subgraph_keeps_the_edges_among_kept_nodes_and_their_features(proteins):
    graph = make_graph(proteins)
    generator = torch.Generator().manual_seed(1)
    mask = torch.rand(graph.num_nodes, generator=generator) < 0.6
    sub, kept = gt.subgraph(graph, mask)
    assert torch.equal(kept, torch.nonzero(mask).flatten())
    assert sub.num_nodes == int(mask.sum()) and sub.batch_size == graph.batch_size
    assert torch.equal(sub.node2graph, graph.node2graph[mask])
    assert torch.equal(sub.node_position, graph.node_position[mask])
    # every original edge between kept nodes, renumbered, with its (unchanged) feature
    inside = mask[graph.edge_list[:, 0]] & mask[graph.edge_list[:, 1]]
    assert sub.num_edges == int(inside.sum())
    assert torch.equal(kept[sub.edge_list[:, :2]], graph.edge_list[inside, :2])
    assert torch.equal(sub.edge_list[:, 2], graph.edge_list[inside, 2])
    assert torch.equal(sub.edge_feature, graph.edge_feature[inside])
    assert (sub.node2graph[sub.edge_list[:, 0]] == sub.node2graph[sub.edge_list[:, 1]]).all()

    removed = torch.tensor([0, 5, 5, graph.num_edges - 1])  # duplicates remove once
    pruned = gt.remove_edges(graph, removed)
    assert pruned.num_edges == graph.num_edges - 3
    assert edge_set(pruned) + Counter(map(tuple, graph.edge_list[[0, 5, graph.num_edges - 1]].tolist())) == edge_set(
        graph
    )
    assert pruned.num_nodes == graph.num_nodes


def assert_same_graph(got, expected):
    for name in ("num_nodes", "batch_size", "num_relation"):
        assert getattr(got, name) == getattr(expected, name), name
    for name in ("node_position", "residue_type", "node2graph", "edge_list", "edge_feature", "residue_number"):
        assert torch.equal(getattr(got, name), getattr(expected, name)), name


@pytest.mark.parametrize(
    "settings",
    [
        None,
        {"knn_k": 40, "spatial_max_num_neighbors": 8},
        {"radius": 4.5, "knn_k": 3, "spatial_max_num_neighbors": None},
    ],
)
def test_graph_built_for_a_node_mask_is_the_crop_of_the_whole_graph(records, proteins, settings):
    """``make_graph(node_mask=...)`` searches neighbours from the kept nodes only, yet its kNN edges, the radius cap
    (both depend on the nodes left out), sequence distances and edge order are those of the cropped whole graph."""
    whole = make_graph(proteins, settings=settings)
    nodes = whole.num_nodes
    generator = torch.Generator().manual_seed(3)
    masks = [torch.zeros(nodes, dtype=torch.bool), torch.ones(nodes, dtype=torch.bool)]
    masks += [torch.rand(nodes, generator=generator) < rate for rate in (0.05, 0.3, 0.9)]
    torch.manual_seed(0)
    masks += [gt.subsequence_mask(whole, 50) for _ in range(3)] + [gt.subspace_mask(whole, 15, 15.0) for _ in range(3)]
    assert whole.residue_number is not None
    # the proteins with their graphs cached (the build_graphs rule's), packed then cropped: the same graphs
    cached = build_record_graphs(records, **(settings or {}))
    loader = InputLoader(graphs={rid: g["edge_list"] for rid, g in cached.items()})
    stored = [loader(r) for r in records]
    for mask in masks:
        expected = gt.subgraph(whole, mask)[0]
        assert_same_graph(make_graph(proteins, settings=settings, node_mask=mask), expected)
        if settings is None:  # cached graphs are GearNet's default settings
            assert_same_graph(make_graph(stored, node_mask=mask), expected)
    with pytest.raises(ValueError, match="node_mask"):
        make_graph(proteins, settings=settings, node_mask=torch.ones(nodes + 1, dtype=torch.bool))


def test_multiview_contrast_builds_only_the_views_and_encodes_them_as_two_calls_would(examples):
    """The views' graphs built for their nodes alone and encoded in one pass (each batch-normalised on its own) give,
    seed for seed, the losses, gradients and batch-norm running statistics of torchdrug's way: the graph built on
    the whole proteins, cropped, and one encoder call per view (up to float rounding: the products run over both
    views' rows at once)."""
    task = make_task("multiview_contrast")
    net = task.build_model(SMALL_GEARNET_EDGE, 21, False)

    def whole_graph_loss(batch):  # training_loss as torchdrug computes it
        proteins = task.batch_inputs(batch)
        packed = pack(proteins, task.device, task.graph_settings)
        projected = []
        for _ in range(2):
            crop, noise = task.rng.choice(task.settings["crops"]), task.rng.choice(task.settings["noises"])
            view, kept = gt.subgraph(packed.graph, task.crop(packed.graph, crop))  # the whole graph, cropped
            if noise == "random_edge_mask":
                view = gt.remove_edges(view, gt.random_edge_mask(view, float(task.settings["edge_mask_rate"])))
            projected.append(net.head(net.encoder(view, packed.node_feature[kept])["graph_feature"]))
        return gt.info_nce(projected[0], projected[1], task.settings["tau"])

    start = copy.deepcopy(net.state_dict())
    for seed in range(4):
        results = []
        for loss_of in (lambda: task.training_loss(net, examples, 0)[0], lambda: whole_graph_loss(examples)):
            net.load_state_dict(start)
            torch.manual_seed(seed)
            task.rng.seed(seed)
            net.zero_grad()
            loss = loss_of()
            loss.backward()
            grads = [p.grad.clone() for p in net.parameters()]
            running = [b.clone() for name, b in net.named_buffers() if "running" in name]
            results.append((loss.detach(), grads, running))
        (loss, grads, running), (expected, expected_grads, expected_running) = results
        assert torch.allclose(loss, expected, rtol=1e-5, atol=1e-6)
        scale = max(float(b.abs().max()) for b in expected_grads)  # biases before a batch norm: rounding noise
        for a, b in zip(grads, expected_grads, strict=True):
            assert torch.allclose(a, b, rtol=1e-3, atol=1e-5 * scale)  # float32 rounding (~2e-6 seen)
        for a, b in zip(running, expected_running, strict=True):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
        assert len(expected_running) == 2 * 3 * 2  # mean and variance of the node, edge and layer norms, 2 layers


def test_views_packed_for_one_pass_keep_their_nodes_graphs_and_edges(proteins):
    whole = make_graph(proteins)
    torch.manual_seed(0)
    first, second = (gt.subgraph(whole, gt.subspace_mask(whole, 15, 15.0))[0] for _ in range(2))
    both = cat_graphs([first, second])
    assert (both.num_nodes, both.batch_size) == (first.num_nodes + second.num_nodes, 6)
    assert torch.equal(both.node2graph, torch.cat([first.node2graph, second.node2graph + 3]))
    assert torch.equal(both.edge_list[first.num_edges :, :2] - first.num_nodes, second.edge_list[:, :2])
    assert torch.equal(both.edge_feature, torch.cat([first.edge_feature, second.edge_feature]))
    encoder = make_task("multiview_contrast").build_model(SMALL_GEARNET_EDGE, 21, False).encoder
    feature = torch.zeros(both.num_nodes, 21)
    with pytest.raises(ValueError, match="add up"):
        encoder(both, feature, norm_groups=[first.num_nodes, second.num_nodes - 1])
    swapped = replace(both, edge_list=torch.cat([both.edge_list[first.num_edges :], both.edge_list[: first.num_edges]]))
    with pytest.raises(ValueError, match="follow one another"):
        encoder(swapped, feature, norm_groups=[first.num_nodes, second.num_nodes])
    with pytest.raises(ValueError, match="relations"):
        cat_graphs([first, replace(second, num_relation=3)])


# --- multiview contrast: crops, noise, InfoNCE ------------------------------------------------------------


def test_subsequence_crop_is_a_window_of_at_most_50_residues(proteins):
    short = proteins[0].crop(10, 40)  # 30 residues: the whole protein
    graph = make_graph([proteins[1], short, proteins[2]])
    sizes = graph.num_nodes_per_graph.tolist()
    starts = [set() for _ in sizes]
    for seed in range(40):
        torch.manual_seed(seed)
        mask = gt.subsequence_mask(graph, 50)
        for b, n in enumerate(sizes):
            local = torch.nonzero(mask[graph.node2graph == b]).flatten()
            assert len(local) == min(50, n)
            assert torch.equal(local, torch.arange(int(local[0]), int(local[0]) + len(local)))  # contiguous
            starts[b].add(int(local[0]))
        torch.manual_seed(seed)  # the start is floor(u * (n - 50)), one u per protein
        u = torch.rand(len(sizes))
        for b, n in enumerate(sizes):
            assert int(torch.nonzero(mask[graph.node2graph == b])[0]) == int(u[b] * max(n - 50, 0))
    assert starts[1] == {0}
    assert all(max(s) < n - 50 and len(s) > 10 for s, n in zip(starts, sizes, strict=True) if n > 50)


def test_subspace_crop_takes_every_residue_within_the_radius(records, proteins):
    graph = make_graph(proteins)
    xyz = packed_coordinates(records, proteins)
    sizes = graph.num_nodes_per_graph.tolist()
    offsets = np.cumsum([0, *sizes[:-1]])
    for seed, min_neighbor in [(0, 15), (1, 15), (2, 15), (3, 500)]:
        torch.manual_seed(seed)
        mask = gt.subspace_mask(graph, min_neighbor, 15.0).numpy()
        torch.manual_seed(seed)
        u = torch.rand(len(sizes)).numpy()
        for b, (n, first) in enumerate(zip(sizes, offsets, strict=True)):
            own = xyz[first : first + n]
            centre = int(np.float32(u[b]) * np.float32(n))
            dist = np.linalg.norm(own - own[centre], axis=1)
            # the min_neighbor-th smallest distance, the centre's own 0 counted (all nodes in a smaller protein)
            radius = max(15.0, 1.5 * np.sort(dist)[min(min_neighbor, n) - 1])
            expected = dist < radius
            got = mask[first : first + n]
            close = np.abs(dist - radius) < 1e-4  # float32 vs float64 at the boundary
            assert np.array_equal(got[~close], expected[~close])
            assert got[centre]
            if min_neighbor > n:
                assert got.all()
            else:
                assert 15 <= got.sum() < n  # a ball, not the whole protein (these models are > 80 residues)


def test_random_edge_mask_drops_15_percent_sampled_with_replacement(proteins):
    graph = make_graph(proteins)
    count = torch.bincount(graph.edge2graph, minlength=graph.batch_size)
    duplicates = 0
    for seed in range(5):
        torch.manual_seed(seed)
        index = gt.random_edge_mask(graph, 0.15)
        per_graph = torch.bincount(graph.edge2graph[index], minlength=graph.batch_size)
        assert per_graph.tolist() == [max(1, math.floor(0.15 * int(m))) for m in count]
        pruned = gt.remove_edges(graph, index)
        assert pruned.num_edges == graph.num_edges - len(set(index.tolist()))
        duplicates += len(index) - len(set(index.tolist()))
    assert duplicates > 0  # with replacement


def test_info_nce_equals_a_hand_computation():
    x = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 2.0]])
    y = torch.tensor([[2.0, 0.1], [1.0, 1.2], [-1.0, 1.0]])
    tau = 0.07
    expected = 0.0
    for a in range(3):
        s = [float(x[a] @ y[b] / (x[a].norm() * y[b].norm())) / tau for b in range(3)]
        expected += -(s[a] - math.log(sum(math.exp(v) for v in s)))
    expected /= 3
    assert float(gt.info_nce(x, y, tau)) == pytest.approx(expected, rel=1e-5)
    # one direction only: swapping the views changes the value
    assert float(gt.info_nce(y, x, tau)) != pytest.approx(expected, rel=1e-3)


class Spy(torch.nn.Module):
    """Wraps an encoder and records the graphs and node inputs it is called with."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder, self.calls = encoder, []

    def forward(self, graph, input, **kwargs):
        self.calls.append((graph, input))
        return self.encoder(graph, input, **kwargs)


def test_multiview_views_are_crops_of_the_whole_protein_graph(examples, proteins):
    task = make_task("multiview_contrast")
    net = task.build_model(SMALL_GEARNET_EDGE, 21, False)
    net.encoder = Spy(net.encoder)
    whole = make_graph(proteins)
    feature = torch.cat([p.node_feature for p in proteins])
    seen = set()
    for seed in range(6):
        torch.manual_seed(seed)
        task.training_loss(net, examples, 0)
        for graph, input in net.encoder.calls[-2:]:
            assert graph.batch_size == 3
            # the view's nodes are whole-graph nodes (positions identify them) and carry their input rows
            index = torch.cdist(graph.node_position, whole.node_position).argmin(dim=1)
            assert torch.equal(whole.node_position[index], graph.node_position)
            assert torch.equal(input, feature[index])
            # its edges are edges of the whole graph among those nodes (a crop), possibly minus masked ones
            inside, kept = gt.subgraph(whole, torch.zeros(whole.num_nodes, dtype=torch.bool).index_fill(0, index, True))

            def whole_ids(g, nodes):
                return Counter(map(tuple, torch.cat([nodes[g.edge_list[:, :2]], g.edge_list[:, 2:]], 1).tolist()))

            view_edges, crop_edges = whole_ids(graph, index), whole_ids(inside, kept)
            assert not view_edges - crop_edges
            masked = sum((crop_edges - view_edges).values())
            sizes = graph.num_nodes_per_graph
            subsequence = bool((sizes <= 50).all())
            seen.add((subsequence, masked > 0))
            if masked:  # random edge mask: at most 15% of every view graph's edges
                assert masked <= sum(max(1, int(0.15 * m)) for m in torch.bincount(inside.edge2graph).tolist())
    assert len(seen) >= 3  # crops and noises are both drawn


def test_crops_cut_the_sequences_of_an_in_model_esm(records):
    proteins = [InputLoader(esm_inputs=True)(r) for r in records]
    graph = make_graph(proteins)
    torch.manual_seed(0)
    kept = torch.nonzero(gt.subsequence_mask(graph, 50)).flatten()
    inputs = gt._encoder_inputs(proteins, {"sequences": [], "residue_mask": []}, kept)
    first = 0
    for record, protein, sequence, mask in zip(records, proteins, inputs["sequences"], inputs["residue_mask"],
                                                strict=True):  # fmt: skip
        own = kept[(kept >= first) & (kept < first + protein.num_nodes)] - first
        start = int(protein.residue_index[own[0]])
        assert sequence == record["sequence"][start : start + 50]  # these models have a Cα at every residue
        assert mask.all() and len(mask) == len(sequence) == len(own)
        first += protein.num_nodes


# --- attribute masking ------------------------------------------------------------------------------------


def test_attribute_masking_masks_types_before_the_edges_are_built(proteins):
    task = make_task("attribute_masking")
    torch.manual_seed(0)
    masked, index = task.mask(proteins)
    counts = [p.num_nodes for p in proteins]
    per = torch.bincount(torch.repeat_interleave(torch.arange(3), torch.tensor(counts))[index], minlength=3)
    assert per.tolist() == [max(1, math.floor(0.15 * n)) for n in counts]
    original = torch.cat([p.residue_type for p in proteins])
    residue_type = torch.cat([p.residue_type for p in masked])
    node_feature = torch.cat([p.node_feature for p in masked])
    hit = torch.zeros(len(original), dtype=torch.bool)
    hit[index] = True
    assert (residue_type[hit] == 0).all() and torch.equal(residue_type[~hit], original[~hit])
    assert (node_feature[hit] == 0).all()
    assert torch.equal(node_feature[~hit], torch.cat([p.node_feature for p in proteins])[~hit])
    # the edge features are those of the masked types (glycine one-hot), the edges themselves unchanged
    graph, plain = make_graph(masked), make_graph(proteins)
    assert torch.equal(graph.edge_list, plain.edge_list)
    node_in, node_out = graph.edge_list[:, 0], graph.edge_list[:, 1]
    assert (graph.edge_feature[hit[node_in], 0] == 1).all() and (graph.edge_feature[hit[node_out], 20] == 1).all()
    changed = (graph.edge_feature != plain.edge_feature).any(dim=1)
    touches = (hit & (original != 0))[node_in] | (hit & (original != 0))[node_out]
    assert torch.equal(changed, touches) and changed.any()
    # and so are the graphs built from cached edge lists
    cached = [replace(p, edge_list=make_graph([p]).edge_list) for p in masked]
    assert torch.equal(make_graph(cached).edge_feature, graph.edge_feature)


class HeadSpy(torch.nn.Module):
    """Wraps a head and records its outputs."""

    def __init__(self, head):
        super().__init__()
        self.head, self.outputs = head, []

    def forward(self, input):
        self.outputs.append(self.head(input))
        return self.outputs[-1]


def test_attribute_masking_loss_reads_the_masked_graph_and_predicts_the_original_types(examples):
    task = make_task("attribute_masking")
    net = task.build_model(SMALL_GEARNET_EDGE, 21, False)
    net.encoder, net.head = Spy(net.encoder), HeadSpy(net.head)
    proteins = task.batch_inputs(examples)  # the truncation windows the loss will draw (same task.rng state)
    assert [p.num_nodes for p in proteins] == [84, 100, 100]
    task.bind("cpu", None, 0)
    torch.manual_seed(5)
    loss, parts, _ = task.training_loss(net, examples, 0)
    torch.manual_seed(5)
    masked, index = make_task("attribute_masking").mask(proteins)
    ((graph, input),) = net.encoder.calls
    expected = make_graph(masked)
    assert torch.equal(graph.edge_list, expected.edge_list) and torch.equal(graph.edge_feature, expected.edge_feature)
    assert torch.equal(input, torch.cat([p.node_feature for p in masked])) and (input[index] == 0).all()
    target = torch.cat([p.residue_type for p in proteins])[index]  # the types before masking
    (pred,) = net.head.outputs
    assert pred.shape == (len(index), 20)
    assert float(loss.detach()) == pytest.approx(
        float(torch.nn.functional.cross_entropy(pred, target).detach()), rel=1e-6
    )
    assert parts["accuracy"] == pytest.approx(float((pred.argmax(-1) == target).float().mean()))


# --- distance, angle, dihedral: targets and samples -------------------------------------------------------


def test_distance_targets_are_the_ca_distances_of_sampled_edges(records, proteins):
    task = make_task("distance_prediction")
    graph = make_graph(proteins)
    xyz = packed_coordinates(records, proteins)
    torch.manual_seed(0)
    removed, target, (node_i, node_j) = task.samples(graph)
    assert len(removed) == 3 * 256
    assert torch.bincount(graph.edge2graph[removed]).tolist() == [256] * 3
    assert torch.equal(graph.edge_list[removed, 0], node_i) and torch.equal(graph.edge_list[removed, 1], node_j)
    expected = np.linalg.norm(xyz[node_i.numpy()] - xyz[node_j.numpy()], axis=1)
    np.testing.assert_allclose(target.numpy(), expected, atol=1e-4)
    assert target.max() < 10.0 + 1e-3 or (graph.edge_list[removed, 2] == 6).any()  # radius 10 Å edges, kNN longer
    assert (target == 0).any()  # self-loops are candidates too (as in the reference)


def numpy_angle(v1: np.ndarray, v2: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(v1, axis=1) * np.linalg.norm(v2, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.clip(np.einsum("ij,ij->i", v1, v2) / norm, -1.0, 1.0)
    return np.where(norm > 0, np.arccos(cos), 0.0)


def check_bins(target: torch.Tensor, angle: np.ndarray) -> None:
    expected = np.minimum(np.floor(angle / (np.pi / 8)), 7).astype(int)
    edge = np.abs(angle / (np.pi / 8) - np.round(angle / (np.pi / 8))) < 1e-4  # on a bin boundary
    assert np.array_equal(target.numpy()[~edge], expected[~edge])
    assert ((target >= 0) & (target < 8)).all()


def test_angle_targets_and_removed_edges(records, proteins):
    task = make_task("angle_prediction")
    graph = make_graph(proteins)
    xyz = packed_coordinates(records, proteins)
    torch.manual_seed(0)
    removed, target, (node_i, node_j, node_k) = task.samples(graph)
    edge_a, edge_b = removed[:1536], removed[1536:]
    assert torch.bincount(graph.edge2graph[edge_b]).tolist() == [512] * 3
    # (k -> j) then (j -> i), not the same edge, not there and back
    assert torch.equal(graph.edge_list[edge_a, 0], node_k) and torch.equal(graph.edge_list[edge_a, 1], node_j)
    assert torch.equal(graph.edge_list[edge_b, 0], node_j) and torch.equal(graph.edge_list[edge_b, 1], node_i)
    assert (edge_a != edge_b).all() and (node_k != node_i).all()
    i, j, k = node_i.numpy(), node_j.numpy(), node_k.numpy()
    angle = numpy_angle(xyz[i] - xyz[j], xyz[k] - xyz[j])
    check_bins(target, angle)
    assert len(set(target.tolist())) >= 6


def test_dihedral_targets_and_removed_edges(records, proteins):
    task = make_task("dihedral_prediction")
    graph = make_graph(proteins)
    xyz = packed_coordinates(records, proteins)
    torch.manual_seed(0)
    removed, target, (node_i, node_j, node_k, node_t) = task.samples(graph)
    e1, e2, e3 = removed.view(3, -1)
    assert torch.bincount(graph.edge2graph[e2]).tolist() == [512] * 3
    edges = graph.edge_list
    assert torch.equal(edges[e1, 0], node_k) and torch.equal(edges[e1, 1], node_t)
    assert torch.equal(edges[e2, 0], node_t) and torch.equal(edges[e2, 1], node_j)
    assert torch.equal(edges[e3, 0], node_j) and torch.equal(edges[e3, 1], node_i)
    assert ((e1 != e2) & (e2 != e3) & (node_k != node_j) & (node_t != node_i)).all()
    i, j, t, k = (n.numpy() for n in (node_i, node_j, node_t, node_k))
    # the unsigned dihedral: the angle between the planes (i, j, t) and (j, t, k) about the axis j-t
    axis = xyz[t] - xyz[j]
    n1, n2 = np.cross(axis, xyz[i] - xyz[j]), np.cross(axis, xyz[k] - xyz[t])
    check_bins(target, numpy_angle(n1, n2))
    assert len(set(target.tolist())) >= 6


def brute_force_line_pairs(edges: list[tuple[int, int]]) -> set[tuple[int, int]]:
    """torchdrug's line graph edges (a -> b: a's target is b's source) less a == b and there-and-back."""
    return {
        (a, b) for a, (k, j) in enumerate(edges) for b, (j2, i) in enumerate(edges) if j == j2 and a != b and k != i
    }


def test_samples_are_uniform_over_the_reference_candidates(proteins):
    graph = make_graph([proteins[1].crop(30, 42)])  # 12 residues
    edges = [tuple(e) for e in graph.edge_list[:, :2].tolist()]
    pairs = brute_force_line_pairs(edges)
    edge_a, edge_b = gt.adjacent_edge_pairs(graph)
    assert sorted(zip(edge_a.tolist(), edge_b.tolist(), strict=True)) == sorted(pairs)
    # the reference's second line graph: line edges (l1 -> l2) with l1's b == l2's a, less l1 == l2 and e1 == e3
    line = sorted(pairs)
    triplets = Counter(
        (l1[0], l1[1], l2[1]) for l1 in line for l2 in line if l1[1] == l2[0] and l1 != l2 and l1[0] != l2[1]
    )
    assert set(triplets.values()) == {1}
    task = make_task("dihedral_prediction")
    torch.manual_seed(0)
    draws = 30 * len(triplets)
    e1, e2, e3 = task.triplets(graph, draws)
    seen = Counter(zip(e1.tolist(), e2.tolist(), e3.tolist(), strict=True))
    assert set(seen) == set(triplets)  # every candidate, nothing else
    # uniform: chi-square statistic near its mean (dof = |T| - 1), far from a skewed draw
    freq = np.array([seen[t] for t in triplets], dtype=float)
    chi2 = ((freq - 30) ** 2 / 30).sum()
    dof = len(triplets) - 1
    assert abs(chi2 - dof) < 5 * math.sqrt(2 * dof)


def test_the_encoder_reads_the_graph_without_the_sampled_edges(examples, proteins):
    for kind in ("distance_prediction", "angle_prediction", "dihedral_prediction"):
        task = make_task(kind)
        net = task.build_model(SMALL_GEARNET_EDGE, 21, False)
        net.encoder = Spy(net.encoder)
        graph = make_graph(task.batch_inputs(examples))  # truncation draws from task.rng: redo with the same state
        task.bind("cpu", None, 0)
        torch.manual_seed(3)
        removed, _, _ = task.samples(graph)
        torch.manual_seed(3)
        task.training_loss(net, examples, 0)
        ((seen, input),) = net.encoder.calls
        assert edge_set(seen) == edge_set(gt.remove_edges(graph, removed))
        assert seen.num_edges < graph.num_edges
        assert graph.num_nodes_per_graph.max() <= 100  # GearNet's TruncateProtein(100, random)


# --- training ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_loss(kind, examples):
    losses = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        task = make_task(kind, seed=seed)
        net = task.build_model(SMALL_GEARNET_EDGE, 21, False)
        torch.manual_seed(seed + 100)
        losses.append(float(task.training_loss(net, examples, 0)[0].detach()))
    assert losses[0] == losses[1]
    assert losses[0] != losses[2]


#: (lr, epochs, how the loss must fall): "ratio" = the last third's mean below 0.8 x the first third's; a number =
#: the last third's mean at least that much below the first epoch's (the classification losses start near log C
#: and first fall to the entropy of the class frequencies) with the accuracy up
TRAINING = {
    "multiview_contrast": (3e-3, 8, "ratio"),
    "distance_prediction": (1e-2, 10, "ratio"),
    "attribute_masking": (1e-2, 10, 0.25),
    "angle_prediction": (1e-2, 10, 0.1),
    "dihedral_prediction": (1e-2, 10, 0.1),
}


@pytest.mark.parametrize("kind", KINDS)
def test_loss_falls_in_training(kind, examples, tmp_path):
    lr, epochs, fall = TRAINING[kind]
    # the training loop of the workflow, a training split only; fixed windows so that the data do not move
    task = get_pretraining_task({"kind": kind, "epochs": epochs, "batch_size": 3, "lr": lr, "truncate_random": False})
    metrics = fit(
        task, SMALL_GEARNET_EDGE, {"train": examples}, 0, tmp_path / "metrics.json", tmp_path / "model.pt",
        input_dim=21, encoder_path=tmp_path / "encoder.pt",
    )  # fmt: skip
    history = metrics["history"]
    losses = [h["train_loss"] for h in history]
    assert len(losses) == epochs and all(math.isfinite(v) for v in losses)
    third = len(losses) // 3
    if fall == "ratio":
        assert np.mean(losses[-third:]) < 0.8 * np.mean(losses[:third]), losses
    else:
        assert np.mean(losses[-third:]) < losses[0] - fall, losses
        accuracy = [h["train_accuracy"] for h in history]
        assert np.mean(accuracy[-third:]) > accuracy[0] + 0.05, accuracy
    # the stage's output: the encoder's state_dict alone (GearNet's layers.*), no head
    encoder = torch.load(tmp_path / "encoder.pt", weights_only=True)
    assert any(k.startswith("layers.0.") for k in encoder) and not any(k.startswith("head") for k in encoder)


def test_attribute_masking_shows_an_in_model_esm_its_mask_token(records):
    """ESM-GearNet's residue type prediction: the masked residues are ESM-2's <mask> in its input sequence."""
    from geoplm.models.fusion import ESM_MASK_CHAR

    task = make_task("attribute_masking")
    proteins = [InputLoader(esm_inputs=True)(r) for r in records]
    torch.manual_seed(0)
    masked, index = task.mask(proteins)
    first = 0
    for record, protein, out in zip(records, proteins, masked, strict=True):
        own = sorted({int(i) - first for i in index.tolist() if first <= i < first + protein.num_nodes})
        residues = {int(protein.residue_index[i]) for i in own}
        sequence = out.esm_input[0]
        assert {i for i, c in enumerate(sequence) if c == ESM_MASK_CHAR} == residues and residues
        assert all(sequence[i] == record["sequence"][i] for i in range(len(sequence)) if i not in residues)
        assert (out.residue_type[own] == 0).all() and protein.esm_input[0] == record["sequence"]
        first += protein.num_nodes
