"""Parity with ESM-GearNet's CDConv (DeepGraphLearning/ESM-GearNet @ bc90557bbf9ee2676e87b9fc84570aa126daa808,
``gearnet/cdconv.py`` on torchdrug 0.2.1, torch_scatter, torch_cluster) on real proteins.

The reference numbers come from ``tests/fixtures/cdconv_reference.pt``, written once by
``benchmarks/cdconv_reference.py`` in the torchdrug environment (``benchmarks/torchdrug_env.sh``). These tests need
no torchdrug: they rebuild the packed graph from the Cα coordinates, author residue numbers and residue features
torchdrug used, load the reference state dicts into :class:`geoplm.models.CDConv` with ``strict=True`` and compare.

Tolerances: frames to 1e-6; features ``atol = rtol = 1e-5`` (``|a - b| <= 1e-5 + 1e-5 |b|``): the reference sums
each edge's ``(K, width)`` message with ``scatter_add``, we with a batched matmul over padded neighbour lists, so
float32 sums differ in the last bits; gradients ``atol = 1e-4``, ``rtol = 1e-4`` (training-mode batch norm divides
by batch standard deviations, which amplifies those differences).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from geoplm.graph import pack_graphs, record_graph_inputs, record_residue_numbers
from geoplm.models.cdconv import CDConv, orientation_frames
from geoplm.structure import parse_structure

FIXTURE = Path(__file__).parent / "fixtures" / "cdconv_reference.pt"


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(FIXTURE, weights_only=True)


def _graph(reference: dict):
    proteins = reference["proteins"]
    return pack_graphs(
        [p["node_position"] for p in proteins],
        [p["residue_feature_index"] for p in proteins],
        [torch.zeros(0, 3, dtype=torch.long)] * len(proteins),
        7,
        edge_feature=None,
        residue_numbers=[p["residue_number"] for p in proteins],
    )


def _model(entry: dict) -> CDConv:
    model = CDConv(**entry["config"])
    model.load_state_dict(entry["state_dict"], strict=True)
    return model


def test_fixture_covers_gapped_numbering_and_both_models(reference):
    proteins = reference["proteins"]
    assert [p["num_residues"] for p in proteins] == [84, 127, 209, 64]
    numbers = proteins[3]["residue_number"]
    assert not torch.equal(numbers - numbers[0], torch.arange(len(numbers)))  # gaps / insertion codes
    assert set(reference["models"]) == {"four_levels", "two_layer_kernel"}


def test_orientation_frames_match_the_reference_transform(reference):
    graph = _graph(reference)
    frames = orientation_frames(graph.node_position, graph.node2graph, graph.batch_size)
    expected = torch.cat([p["orientation"] for p in reference["proteins"]])
    torch.testing.assert_close(frames, expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", ["four_levels", "two_layer_kernel"])
def test_eval_graph_feature_matches_the_reference(reference, name):
    entry = reference["models"][name]
    graph = _graph(reference)
    model = _model(entry).eval()
    with torch.no_grad():
        out = model(graph, torch.nn.functional.one_hot(graph.residue_type, 21).float())
    expected = entry["eval_graph_feature"]
    assert out["graph_feature"].shape == expected.shape
    torch.testing.assert_close(out["graph_feature"], expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(out["node_feature"], out["graph_feature"][graph.node2graph])


def test_training_mode_output_and_gradients_match_the_reference(reference):
    entry = reference["models"]["two_layer_kernel"]
    graph = _graph(reference)
    model = _model(entry).train()
    out = model(graph, torch.nn.functional.one_hot(graph.residue_type, 21).float())["graph_feature"]
    torch.testing.assert_close(out.detach(), entry["train_graph_feature"], atol=1e-5, rtol=1e-5)
    out.pow(2).sum().backward()
    grads = dict(model.named_parameters())
    assert set(grads) == set(entry["grad"])
    for key, expected in entry["grad"].items():
        torch.testing.assert_close(grads[key].grad, expected, atol=1e-4, rtol=1e-4, msg=key)


def test_records_give_the_reference_inputs(reference, shared_data):
    """geoplm's records of the same files give torchdrug's Cα coordinates, author residue numbers and residue
    one-hot columns, so a graph packed from records (``pack_graphs(..., residue_numbers=record_residue_numbers)``)
    feeds CDConv what the reference saw."""
    for protein in reference["proteins"]:
        path = shared_data / protein["file"]
        if not path.is_file():
            pytest.skip(f"{path} missing")
        (record,) = parse_structure(path)
        position, residue_type = record_graph_inputs(record)
        torch.testing.assert_close(position, protein["node_position"], atol=1e-4, rtol=0)
        assert torch.equal(record_residue_numbers(record), protein["residue_number"])
        assert torch.equal(residue_type, protein["residue_feature_index"])


def test_without_residue_numbers_only_gapped_numbering_changes_the_output(reference):
    """The node-index fallback equals the author numbering up to a constant, which CDConv ignores (offsets are
    differences; pooling floors ``s / 2`` of the even node of each pair): the same output for the contiguously
    numbered proteins, a different one for 1ORC (numbering gaps, insertion codes)."""
    entry = reference["models"]["four_levels"]
    graph = _graph(reference)
    graph.residue_number = None
    model = _model(entry).eval()
    with torch.no_grad():
        out = model(graph, torch.nn.functional.one_hot(graph.residue_type, 21).float())["graph_feature"]
    expected = entry["eval_graph_feature"]
    torch.testing.assert_close(out[:3], expected[:3], atol=1e-5, rtol=1e-5)
    assert (out[3] - expected[3]).abs().max() > 1e-2
