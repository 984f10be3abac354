"""ESM-2 alone (``type: esm``, torchdrug ``models.ESM``) and ESM-CDConv (``type: esm_cdconv``, ESM-GearNet
``FusionNetwork`` with ``models.CDConv``) on real structures, with a tiny randomly initialised ESM-2 in
fair-esm's checkpoint format (as tests/test_fusion.py)."""

from __future__ import annotations

import logging
from functools import cache

import pytest
import torch
from conftest import shared_data_dir

from geoplm.config import ESM_TYPES, NEEDS_PLM, finetunes_esm, table_jobs, validate_schema
from geoplm.errors import ConfigError, EmbeddingError
from geoplm.esm import embed_sequences, load_esm2, write_random_esm2_checkpoint
from geoplm.graph import pack_graphs, record_graph_inputs, record_residue_numbers, residue_one_hot
from geoplm.models import CDConv, ESMEncoder, ESMFusion, GearNet
from geoplm.models.fusion import param_groups, record_esm_inputs
from geoplm.models.zoo import ENCODERS, build_encoder
from geoplm.structure import parse_structure

ESM_DIM = 32
# 84 residues (AlphaFold), 44 (1FC2 chain C: its last residue has no Cα and is no node), 37 (1AJJ chain A)
STRUCTURES = (("alphafold/AF-P76011-F1-model_v4.pdb", None), ("chains/1FC2_r_b.pdb", "C"), ("chains/1AJJ.pdb", "A"))
CDCONV = {"embedding_dim": 8, "hidden_dims": [16, 24], "cutoffs": [8.0, 12.0], "kernel_dims": [8]}


@cache
def _record(name: str, chain: str | None) -> dict:
    logging.getLogger("geoplm.structure").setLevel(logging.ERROR)
    path = shared_data_dir() / name
    if not path.is_file():
        pytest.skip(f"{path} missing")
    return parse_structure(path, chains=[chain] if chain else None)[0]


def _records(*indices: int) -> list[dict]:
    return [_record(*STRUCTURES[i]) for i in indices]


def _graph(records):
    positions, types = zip(*(record_graph_inputs(r) for r in records), strict=True)
    empty = [torch.zeros(0, 3, dtype=torch.long)] * len(records)
    numbers = [record_residue_numbers(r) for r in records]
    return pack_graphs(list(positions), list(types), empty, 7, edge_feature=None, residue_numbers=numbers)


@pytest.fixture(scope="module")
def tiny_esm(tmp_path_factory):
    path, _ = write_random_esm2_checkpoint(
        tmp_path_factory.mktemp("esm") / "esm2_t2_tiny_random.pt", num_layers=2, embed_dim=ESM_DIM, seed=11
    )
    return load_esm2(path)


def _settings():
    return {"repr_layer": -1}


def _inputs(records):
    sequences, masks = zip(*(record_esm_inputs(r) for r in records), strict=True)
    return list(sequences), list(masks)


def _stored(tiny_esm, records) -> torch.Tensor:
    """Embedding-store rows: full sequences embedded, rows of the residues with a Cα kept."""
    sequences, masks = _inputs(records)
    reps = embed_sequences(*tiny_esm, {str(i): s for i, s in enumerate(sequences)}, repr_layer=-1)
    return torch.cat([reps[str(i)][m] for i, m in enumerate(masks)])


def _fine_tuned(tiny_esm, spec):
    model, alphabet = tiny_esm
    encoder, width = build_encoder(spec, 21, plm=True, esm=(model, alphabet, _settings()))
    return encoder, width


# --------------------------------------------------------------------------------------------------
# ESM-2 alone


def test_esm_alone_graph_feature_is_the_mean_of_the_esm_rows(tiny_esm):
    records = _records(0, 1)
    graph = _graph(records)
    feature = _stored(tiny_esm, records)
    encoder, width = build_encoder({"type": "esm"}, ESM_DIM, plm=True)
    assert width == ESM_DIM and not list(encoder.parameters())  # stored embeddings: only the readout
    out = encoder(graph, feature)
    assert torch.equal(out["node_feature"], feature)
    assert graph.num_nodes_per_graph.tolist() == [84, 43]
    torch.testing.assert_close(out["graph_feature"], torch.stack([feature[:84].mean(0), feature[84:].mean(0)]))
    summed, _ = build_encoder({"type": "esm", "readout": "sum"}, ESM_DIM, plm=True)
    torch.testing.assert_close(summed(graph, feature)["graph_feature"][1], feature[84:].sum(0))


def test_esm_alone_in_model_matches_stored_and_fine_tunes_at_the_lr_ratio(tiny_esm):
    records = _records(0, 1)
    graph = _graph(records)
    sequences, masks = _inputs(records)
    encoder, width = _fine_tuned(tiny_esm, {"type": "esm", "freeze_esm": False})
    net = encoder.net
    assert isinstance(net, ESMEncoder) and width == ESM_DIM and not net.freeze_esm
    net.eval()
    with torch.no_grad():
        out = encoder(graph, residue_one_hot(graph.residue_type), sequences=sequences, residue_mask=masks)
    torch.testing.assert_close(out["node_feature"], _stored(tiny_esm, records), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["graph_feature"][0], out["node_feature"][:84].mean(0))

    head = torch.nn.Linear(width, 5)
    task = torch.nn.ModuleDict({"encoder": encoder, "head": head})
    groups = {g["name"]: g for g in param_groups(task, 1e-4, 0.1)}
    assert groups["esm"]["lr"] == pytest.approx(1e-5) and groups["other"]["lr"] == 1e-4
    assert {id(p) for p in groups["esm"]["params"]} == {id(p) for p in tiny_esm[0].parameters()}
    assert {id(p) for p in groups["other"]["params"]} == {id(p) for p in head.parameters()}

    net.train()
    head(encoder(graph, None, sequences=sequences, residue_mask=masks)["graph_feature"]).pow(2).sum().backward()
    grad = tiny_esm[0].layers[0].self_attn.q_proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    for p in tiny_esm[0].parameters():  # the fixture's ESM is shared: restore its state
        p.grad = None
        p.requires_grad_(True)
    tiny_esm[0].eval()


# --------------------------------------------------------------------------------------------------
# ESM-CDConv


@pytest.mark.parametrize("fusion", ["serial", "parallel"])
def test_esm_cdconv_concatenates_residue_esm_rows_with_the_protein_cdconv_feature(tiny_esm, fusion):
    records = _records(0, 1, 2)
    graph = _graph(records)
    feature = _stored(tiny_esm, records)
    torch.manual_seed(0)
    encoder, width = build_encoder({"type": "esm_cdconv", "fusion": fusion, **CDCONV}, ESM_DIM, plm=True)
    net = encoder.net.eval()
    assert isinstance(net, ESMFusion) and isinstance(net.structure_model, CDConv)
    assert width == net.output_dim == ESM_DIM + 24
    # serial: CDConv embeds the ESM rows; parallel: the 21-d residue one-hot
    assert net.structure_model.embedding.weight.shape == (8, ESM_DIM if fusion == "serial" else 21)
    with torch.no_grad():
        out = encoder(graph, feature)
        cd = net.structure_model(graph, feature if fusion == "serial" else residue_one_hot(graph.residue_type))
    assert out["node_feature"].shape == (graph.num_nodes, width) and out["graph_feature"].shape == (3, width)
    torch.testing.assert_close(out["node_feature"], torch.cat([feature, cd["node_feature"]], -1))
    sizes = graph.num_nodes_per_graph.tolist()
    means = torch.stack([rows.mean(0) for rows in feature.split(sizes)])
    torch.testing.assert_close(out["graph_feature"], torch.cat([means, cd["graph_feature"]], -1))
    # the CDConv half of every residue of a protein is that protein's CDConv graph feature
    assert torch.equal(out["node_feature"][:84, ESM_DIM:], cd["graph_feature"][0].expand(84, -1))
    assert not torch.allclose(cd["graph_feature"][0], cd["graph_feature"][1])


def test_esm_cdconv_fine_tuned_gives_esm_its_lr_ratio_and_cdconv_full_lr(tiny_esm):
    records = _records(0, 2)
    graph = _graph(records)
    sequences, masks = _inputs(records)
    encoder, width = _fine_tuned(tiny_esm, {"type": "esm_cdconv", "freeze_esm": False, **CDCONV})
    net = encoder.net
    assert width == ESM_DIM + 24 and net.structure_model.input_dim == ESM_DIM  # serial by default
    groups = {g["name"]: g for g in param_groups(encoder, 2e-4, 0.1)}
    assert groups["esm"]["lr"] == pytest.approx(2e-5)
    assert {id(p) for p in groups["esm"]["params"]} == {id(p) for p in net.sequence_model.parameters()}
    assert {id(p) for p in groups["other"]["params"]} == {id(p) for p in net.structure_model.parameters()}
    net.train()
    out = encoder(graph, None, sequences=sequences, residue_mask=masks)
    out["graph_feature"].pow(2).sum().backward()
    assert tiny_esm[0].layers[1].fc1.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.structure_model.parameters())
    for p in tiny_esm[0].parameters():
        p.grad = None
        p.requires_grad_(True)
    tiny_esm[0].eval()


def test_esm_gearnet_is_the_same_fusion_class_with_gearnet():
    encoder, width = build_encoder({"type": "esm_gearnet", "hidden_dims": [16, 16]}, ESM_DIM, plm=True)
    assert type(encoder.net) is ESMFusion and isinstance(encoder.net.structure_model, GearNet)
    assert width == ESM_DIM + 32 and encoder.net.structure_model.input_dim == ESM_DIM


# --------------------------------------------------------------------------------------------------
# registry and configuration


@pytest.mark.parametrize("fusion", ["serial", "parallel", "cross"])
def test_esm_gvp_fuses_esm_with_esm_gearnets_gvp(tiny_esm, fusion):
    """ESM-GVP (ESM-GearNet config/*/esm_gvp*.yaml): the same fusion with ESM-GearNet's GVP-GNN; serial GVP reads
    the ESM rows, parallel / cross the residue one-hot; on a 10 Å Cα r-ball capped at 32 neighbours."""
    from geoplm.graph import build_batch_graph
    from geoplm.models.gvp_esmgearnet import ESMGearNetGVPGNN

    records = _records(0, 1)
    packed = _graph(records)
    graph = build_batch_graph(
        packed.node_position, packed.residue_type, packed.node2graph, {"kind": "radius", "radius": 10.0,
                                                                         "max_num_neighbors": 32}
    )  # fmt: skip
    feature = _stored(tiny_esm, records)
    spec = {"type": "esm_gvp", "fusion": fusion, "node_dims": [16, 4], "edge_dims": [8, 1], "num_layers": 2,
            "cross_dim": 16}  # fmt: skip
    torch.manual_seed(0)
    encoder, width = build_encoder(spec, ESM_DIM, plm=True)
    net = encoder.net.eval()
    assert isinstance(net.structure_model, ESMGearNetGVPGNN)
    assert net.structure_model.input_dim == (ESM_DIM if fusion == "serial" else 21)
    assert width == (2 * 16 if fusion == "cross" else ESM_DIM + 16)
    with torch.no_grad():
        out = encoder(graph, feature)
    assert out["node_feature"].shape == (graph.num_nodes, width) and out["graph_feature"].shape == (2, width)
    if fusion != "cross":
        with torch.no_grad():
            reads = feature if fusion == "serial" else residue_one_hot(graph.residue_type)
            structure = net.structure_model(graph, reads)
        torch.testing.assert_close(out["node_feature"], torch.cat([feature, structure["node_feature"]], -1))
    with pytest.raises(ConfigError, match="use it with a plm"):
        build_encoder(spec, 21, plm=False, name="m")


def test_registry_config_and_schema_know_the_new_types():
    assert {"cdconv", "esm_cdconv", "esm"} <= set(ENCODERS)
    assert set(ESM_TYPES) == set(NEEDS_PLM) == {"esm", "esm_gearnet", "esm_cdconv", "esm_gvp"}
    assert finetunes_esm({"type": "esm", "freeze_esm": False})
    assert finetunes_esm({"type": "esm_cdconv", "freeze_esm": False})
    assert not finetunes_esm({"type": "esm_cdconv"}) and not finetunes_esm({"type": "cdconv", "freeze_esm": False})
    config = {
        "seeds": [0],
        "models": {"cd": {"type": "cdconv"}, "ecd": {"type": "esm_cdconv"}, "e": {"type": "esm"}},
        "tables": {"t": {"models": ["cd", "ecd", "e"], "plms": ["none", "esm2"], "columns": [{"task": "x"}]}},
    }
    jobs = {(j["model"], j["plm"]) for j in table_jobs(config, "t")}
    assert jobs == {("cd", "none"), ("cd", "esm2"), ("ecd", "esm2"), ("e", "esm2")}
    for kind in ("esm", "esm_cdconv"):
        with pytest.raises(ConfigError, match="use it with a plm"):
            build_encoder({"type": kind}, 21, plm=False, name="m")
        with pytest.raises(ConfigError, match="give its checkpoint"):
            build_encoder({"type": kind, "freeze_esm": False}, 21, plm=True, name="m")
    with pytest.raises(ConfigError, match=r"keys \['cutoffs'\] do not apply to type 'esm'"):
        build_encoder({"type": "esm", "cutoffs": [8.0]}, ESM_DIM, plm=True, name="m")
    with pytest.raises(ConfigError, match="fusion: 'late'"):
        build_encoder({"type": "esm_cdconv", "fusion": "late"}, ESM_DIM, plm=True, name="m")

    import yaml

    from geoplm.config import SCHEMA

    schema_types = yaml.safe_load(SCHEMA.read_text())["properties"]["models"]["additionalProperties"]
    assert set(ENCODERS) <= set(schema_types["properties"]["type"]["enum"])
    for key in ("embedding_dim", "cutoffs", "seq_cutoff", "kernel_dims", "base_width"):
        assert key in schema_types["properties"]


def test_schema_accepts_cdconv_keys_and_rejects_an_even_seq_cutoff():
    from pathlib import Path

    import yaml

    folder = Path(__file__).resolve().parents[1] / "config"
    base = {
        **yaml.safe_load((folder / "sources.yaml").read_text()),
        **yaml.safe_load((folder / "config.yaml").read_text()),
    }
    base["models"]["esm_cdconv_parallel"] = {
        "type": "esm_cdconv",
        "fusion": "parallel",
        "freeze_esm": False,
        "hidden_dims": [256, 512, 1024, 2048],
        "embedding_dim": 16,
        "cutoffs": [8.0, 12.0, 16.0, 20.0],
        "seq_cutoff": 21,
        "kernel_dims": [32],
        "base_width": 16.0,
        "dropout": 0.2,
    }
    base["models"]["esm_alone"] = {"type": "esm", "freeze_esm": False, "readout": "mean"}
    validate_schema(base)
    base["models"]["esm_cdconv_parallel"]["seq_cutoff"] = 20
    with pytest.raises(ConfigError, match="seq_cutoff"):
        validate_schema(base)


def test_esm_errors_name_the_problem(tiny_esm):
    records = _records(0, 1)
    graph = _graph(records)
    encoder = ESMEncoder(*tiny_esm)
    with pytest.raises(EmbeddingError, match="protein 1 of the batch: 44 residues for 43 graph nodes"):
        encoder(graph, sequences=[r["sequence"] for r in records])
    with pytest.raises(EmbeddingError, match=r"esm_feature has shape \(127, 5\)"):
        ESMEncoder(esm_dim=ESM_DIM)(graph, esm_feature=torch.zeros(127, 5))
    with pytest.raises(ConfigError, match="esm_readout"):
        ESMEncoder(esm_dim=ESM_DIM, esm_readout="max")
    with pytest.raises(ConfigError, match="serial fusion: CDConv input_dim 21 must equal the ESM width 32"):
        ESMFusion(CDConv(21, **CDCONV), esm_dim=ESM_DIM)
