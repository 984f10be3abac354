"""The authors' published checkpoints: the catalogue, and strict loading of torchdrug-written encoder state dicts
into geoplm's encoders (:mod:`geoplm.pretraining.published`).

The reference is ``tests/fixtures/torchdrug_published_gearnet_edge.pt``, written once by
``benchmarks/torchdrug_published_reference.py`` in the torchdrug 0.2.1 environment: a GearNet-Edge and an
ESM-GearNet encoder (pretraining architectures at small widths) saved as the references' ``script/pretrain.py``
saves them (``torch.save(model.state_dict(), path)``), and torchdrug's outputs on three AlphaFold models. These
tests need no torchdrug: they write the fixture's state dicts to ``.pth`` files, load them through
:func:`load_published` into encoders built by the zoo, run them on the same proteins and compare.

Tolerance ``atol = rtol = 1e-5`` (as tests/test_gearnet_parity.py): torchdrug and geoplm sum messages in different
orders (float32), and sum-readout graph features reach a few hundred.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from geoplm.errors import GeoplmError
from geoplm.inputs import InputLoader, ProteinInput, pack
from geoplm.models.zoo import build_encoder
from geoplm.pretraining import PRETRAINING_TASKS
from geoplm.pretraining.published import (
    PUBLISHED_ARCHITECTURES,
    PUBLISHED_CHECKPOINTS,
    check_esm2_keys,
    encoder_weights,
    load_published,
    published_sources,
)
from geoplm.sources import file_name
from geoplm.structure import NUM_RESIDUE_TYPES, parse_structure

FIXTURE = Path(__file__).parent / "fixtures" / "torchdrug_published_gearnet_edge.pt"
#: GearNetIEConv state dicts and outputs written by the GearNet repository's model (tests/test_gearnet_ieconv.py)
IECONV_FIXTURE = Path(__file__).parent / "fixtures" / "torchdrug_gearnet_ieconv.pt"
ATOL = RTOL = 1e-5
ZOO_KEYS = ("hidden_dims", "batch_norm", "concat_hidden", "short_cut", "readout")


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(FIXTURE, weights_only=True)


def _spec(config: dict, **extra) -> dict:
    """The zoo entry of a torchdrug ``models.GearNet`` configuration."""
    spec = {k: config[k] for k in ZOO_KEYS}
    if config.get("num_angle_bin"):
        spec.update(num_angle_bin=config["num_angle_bin"], edge_input_dim=config["edge_input_dim"])
    return {**spec, **extra}


def _gearnet_edge(reference):
    encoder, _ = build_encoder({"type": "gearnet", **_spec(reference["config"]["gearnet_edge"])}, NUM_RESIDUE_TYPES)
    return encoder


def _esm_gearnet(reference, esm=None):
    spec = {"type": "esm_gearnet", "fusion": "serial", **_spec(reference["config"]["esm_gearnet"])}
    if esm is None:
        encoder, _ = build_encoder(spec, reference["config"]["esm"]["embed_dim"], plm=True)
    else:
        encoder, _ = build_encoder({**spec, "freeze_esm": False}, NUM_RESIDUE_TYPES, plm=True, esm=esm)
    return encoder


def _save(state: dict, path: Path) -> Path:
    torch.save(state, path)
    return path


def _stored_inputs(reference) -> list[ProteinInput]:
    """The proteins as torchdrug read them (Cα coordinates, residue types), as geoplm inputs."""
    proteins = []
    for p in reference["proteins"]:
        n = p["num_residues"]
        rtype = p["residue_type"].long()
        proteins.append(
            ProteinInput(
                id=p["file"],
                position=p["node_position"],
                residue_type=rtype,
                node_feature=torch.nn.functional.one_hot(rtype, NUM_RESIDUE_TYPES).float(),
                residue_index=torch.arange(n),
                length=n,
                esm_input=(p["sequence"], torch.ones(n, dtype=torch.bool)),
            )
        )
    return proteins


def _file_inputs(reference, data: Path) -> list[ProteinInput]:
    """The proteins read from their PDB files by geoplm (parser, InputLoader)."""
    loader = InputLoader(esm_inputs=True)
    proteins = []
    for p in reference["proteins"]:
        path = data / p["file"]
        if not path.is_file():
            pytest.skip(f"{path} not found")
        (record,) = parse_structure(path)
        protein = loader(record)
        torch.testing.assert_close(protein.position, p["node_position"], atol=1e-4, rtol=0)  # PDB: 3 decimals
        assert torch.equal(protein.residue_type, p["residue_type"]), p["file"]  # no unknown residues here
        proteins.append(protein)
    return proteins


def _expected(reference, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    proteins = reference["proteins"]
    return (
        torch.cat([p[name]["node_feature"] for p in proteins]),
        torch.stack([p[name]["graph_feature"] for p in proteins]),
    )


def _assert_outputs(out: dict, reference, name: str) -> None:
    node, graph = _expected(reference, name)
    torch.testing.assert_close(out["node_feature"], node, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(out["graph_feature"], graph, atol=ATOL, rtol=RTOL)


# --------------------------------------------------------------------------------------------------
# The catalogue
# --------------------------------------------------------------------------------------------------


def test_catalogue_lists_the_published_files():
    gearnet = {n for n, e in PUBLISHED_CHECKPOINTS.items() if e["model"] == "gearnet_edge"}
    esm_gearnet = {n for n, e in PUBLISHED_CHECKPOINTS.items() if e["model"] == "esm_gearnet"}
    ieconv = {n for n, e in PUBLISHED_CHECKPOINTS.items() if e["model"] == "gearnet_edge_ieconv"}
    assert gearnet == {f"{t}_gearnet_edge" for t in ("mc", "attr", "distance", "angle", "dihedral")}
    assert esm_gearnet == {f"{t}_esm_gearnet" for t in ("mc", "attr", "dist", "angle", "dihedral", "siamdiff")}
    assert ieconv == {"fold_mc_gearnet_edge_ieconv"}  # GearNet#41: the only published GearNet-Edge-IEConv
    assert len(PUBLISHED_CHECKPOINTS) == 12
    records = {"gearnet_edge": "7593637", "esm_gearnet": "10034578", "gearnet_edge_ieconv": "7723075"}
    for name, entry in PUBLISHED_CHECKPOINTS.items():
        record = records[entry["model"]]
        assert entry["url"] == f"https://zenodo.org/record/{record}/files/{entry['file']}"
        assert entry["file"] == f"{name}.pth" == file_name(entry["url"])
        assert entry["model"] in PUBLISHED_ARCHITECTURES and entry["pretraining"] in PRETRAINING_TASKS
        assert entry["checksum"] == ""  # none published; the checksum lock pins the first download


def test_published_sources_are_config_entries():
    sources = published_sources()
    assert list(sources) == [f"published_{n}" for n in PUBLISHED_CHECKPOINTS]
    for name, source in sources.items():
        assert source == {
            "shards": 1,
            "files": [{"url": PUBLISHED_CHECKPOINTS[name.removeprefix("published_")]["url"]}],
        }
    assert list(published_sources(["mc_esm_gearnet"], prefix="")) == ["mc_esm_gearnet"]
    with pytest.raises(GeoplmError, match="nope"):
        published_sources(["nope"])


def test_published_architectures_have_torchdrug_shapes():
    """The zoo builds the published encoders with the key names and shapes torchdrug's configs give."""
    edge, _ = build_encoder(PUBLISHED_ARCHITECTURES["gearnet_edge"]["model"], NUM_RESIDUE_TYPES)
    state = edge.state_dict()
    assert state["layers.0.linear.weight"].shape == (512, 7 * 21)
    assert state["layers.5.self_loop.weight"].shape == (512, 512)
    assert state["edge_layers.0.linear.weight"].shape == (21, 8 * 59)  # out: the node layer's input width
    assert state["edge_layers.5.linear.weight"].shape == (512, 8 * 512)
    assert {k.split(".")[0] for k in state} == {"layers", "edge_layers", "batch_norms"}
    fusion, width = build_encoder(PUBLISHED_ARCHITECTURES["esm_gearnet"]["model"], 1280, plm=True)
    state = fusion.state_dict()
    assert width == 1280 + 6 * 512
    assert state["net.structure_model.layers.0.linear.weight"].shape == (512, 7 * 1280)
    assert all(k.startswith("net.structure_model.") for k in state)
    assert not any("edge_layers" in k for k in state)  # ESM-GearNet's pretraining GearNet has no edge layers
    ieconv, width = build_encoder(PUBLISHED_ARCHITECTURES["gearnet_edge_ieconv"]["model"], NUM_RESIDUE_TYPES)
    state = ieconv.state_dict()
    assert width == 6 * 512
    assert state["linear.weight"].shape == (512, 21)  # GearNetIEConv's input embedding
    assert state["layers.0.linear.weight"].shape == (512, 7 * 512)
    assert state["edge_layers.0.linear.weight"].shape == (512, 8 * 59)
    assert state["ieconvs.5.kernel.layers.0.weight"].shape == (32, 14) and state["layer_norms.5.weight"].shape == (512,)
    assert ieconv.dropout.p == 0.2


# --------------------------------------------------------------------------------------------------
# GearNet-Edge: torchdrug's state dict, torchdrug's outputs
# --------------------------------------------------------------------------------------------------


def test_fixture_layout(reference):
    assert reference["meta"]["torchdrug"] == "0.2.1"
    assert FIXTURE.stat().st_size < 1_000_000
    assert len(reference["proteins"]) == 3
    assert all(p["file"].startswith("alphafold/") for p in reference["proteins"])
    assert {k.split(".")[0] for k in reference["gearnet_edge_state_dict"]} == {"layers", "edge_layers", "batch_norms"}
    assert {k.split(".")[0] for k in reference["esm_gearnet_state_dict"]} == {"sequence_model", "structure_model"}


@pytest.mark.parametrize("inputs", ["pdb_files", "torchdrug_inputs"])
def test_gearnet_edge_matches_torchdrug(reference, tmp_path, inputs, request):
    """load_published + geoplm's input pipeline (parser or torchdrug's Cα, InputLoader, pack/make_graph) give
    torchdrug's node and graph features."""
    if inputs == "pdb_files":
        proteins = _file_inputs(reference, request.getfixturevalue("shared_data"))
    else:
        proteins = _stored_inputs(reference)
    encoder = _gearnet_edge(reference)
    path = _save(reference["gearnet_edge_state_dict"], tmp_path / "mc_gearnet_edge.pth")
    loaded = load_published(path, encoder)
    assert set(loaded) == set(reference["gearnet_edge_state_dict"])  # identity map
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, reference["gearnet_edge_state_dict"][key]), key
    encoder.eval()
    batch = pack(proteins)
    with torch.no_grad():
        out = encoder(batch.graph, batch.node_feature)
    _assert_outputs(out, reference, "gearnet_edge")


def test_encoder_weights_for_the_training_loop(reference, tmp_path):
    """encoder_weights maps without loading (geoplm.train.load_init, part ``published``, loads them strictly)."""
    from geoplm.train import load_init

    path = _save(reference["gearnet_edge_state_dict"], tmp_path / "mc_gearnet_edge.pth")
    encoder = _gearnet_edge(reference)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    weights = encoder_weights(path, encoder)
    assert all(torch.equal(v, before[k]) for k, v in encoder.state_dict().items())  # not loaded
    assert {k: tuple(v.shape) for k, v in weights.items()} == {k: tuple(v.shape) for k, v in before.items()}
    source, init = load_init(path, "published")
    assert str(path) in source and init(encoder).keys() == weights.keys()


def test_engine_checkpoints_load(reference, tmp_path):
    """torchdrug core.Engine.save checkpoints: the task's state under "model" (encoder keys prefixed "model.",
    "model.model." inside tasks.Unsupervised), heads and optimizer state ignored."""
    state = reference["gearnet_edge_state_dict"]
    head = {"mlp.layers.0.weight": torch.randn(4, 64), "mlp.layers.0.bias": torch.randn(4)}
    optimizer = {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1, 2]}]}
    task = {**{f"model.{k}": v for k, v in state.items()}, **head}
    unsupervised = {**{f"model.model.{k}": v for k, v in state.items()}, **{f"model.{k}": v for k, v in head.items()}}
    for name, model in (("task", task), ("unsupervised", unsupervised)):
        encoder = _gearnet_edge(reference)
        path = _save({"model": model, "optimizer": optimizer}, tmp_path / f"{name}.pth")
        load_published(path, encoder)
        for key, value in encoder.state_dict().items():
            assert torch.equal(value, state[key]), (name, key)


def _fold_task_checkpoint(state: dict, width: int, num_class: int = 1195) -> dict:
    """A ``core.Engine.save`` checkpoint of GearNet's Fold task (``tasks.PropertyPrediction``, ``num_mlp_layer`` 3,
    ``mlp_batch_norm``; GearNet ``config/downstream/Fold3D/gearnet_edge_ieconv.yaml``) around encoder ``state``: the
    layout of ``fold_mc_gearnet_edge_ieconv.pth`` (read as ``task.load_state_dict(ckpt["model"])``, GearNet#62)."""
    head = {
        "mlp.layers.0.weight": torch.randn(width, width),
        "mlp.layers.0.bias": torch.randn(width),
        "mlp.layers.1.weight": torch.randn(width, width),
        "mlp.layers.1.bias": torch.randn(width),
        "mlp.layers.2.weight": torch.randn(num_class, width),
        "mlp.layers.2.bias": torch.randn(num_class),
    }
    for i in range(2):
        head.update({f"mlp.batch_norms.{i}.{k}": torch.rand(width) for k in ("weight", "bias", "running_mean")})
        head[f"mlp.batch_norms.{i}.running_var"] = torch.rand(width) + 0.5
        head[f"mlp.batch_norms.{i}.num_batches_tracked"] = torch.tensor(100)
    buffers = {"mean": torch.zeros(1), "std": torch.ones(1), "weight": torch.ones(1)}  # PropertyPrediction's
    model = {**{f"model.{k}": v for k, v in state.items()}, **head, **buffers}
    return {"model": model, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]}}


def test_fold_checkpoint_loads_the_ieconv_encoder_as_the_reference(tmp_path, shared_data):
    """``fold_mc_gearnet_edge_ieconv.pth`` (Zenodo 7723075) is the whole fine-tuned Fold task: its encoder (keys
    ``model.*``) is loaded strictly into the zoo's GearNet-Edge-IEConv, the head and buffers are left out, and the
    encoder then gives the GearNet repository's outputs on the same real proteins (read from their PDB files).
    Uses the GearNetIEConv fixture (small widths, the reference's packed-batch frames)."""
    ref = torch.load(IECONV_FIXTURE, weights_only=True)
    config, state = ref["config"]["gearnet_edge_ieconv"], ref["state_dict"]["gearnet_edge_ieconv"]
    keys = ("embedding_dim", "hidden_dims", "batch_norm", "concat_hidden", "short_cut", "readout", "layer_norm")
    keys += ("dropout", "edge_input_dim", "num_angle_bin", "use_ieconv")
    spec = {"type": "gearnet_ieconv", **{k: config[k] for k in keys}, "ieconv_frames": "reference"}
    encoder, width = build_encoder(spec, NUM_RESIDUE_TYPES)
    path = _save(_fold_task_checkpoint(state, width), tmp_path / "fold_mc_gearnet_edge_ieconv.pth")
    loaded = load_published(path, encoder)
    assert set(loaded) == set(state)  # identity map; mlp.*, mean, std, weight not taken
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, state[key]), key
    proteins = _file_inputs(ref, shared_data)
    batch = pack(proteins)
    with torch.no_grad():
        out = encoder.eval()(batch.graph, batch.node_feature)
    node = torch.cat([p["gearnet_edge_ieconv"]["node_feature"] for p in ref["proteins"]])
    graph = torch.stack([p["gearnet_edge_ieconv"]["graph_feature"] for p in ref["proteins"]])
    for ours, theirs in ((out["node_feature"], node), (out["graph_feature"], graph)):
        atol = max(ATOL, 1e-6 * float(theirs.abs().max()))  # as tests/test_gearnet_ieconv.py
        torch.testing.assert_close(ours, theirs, atol=atol, rtol=RTOL)

    key = "ieconvs.1.kernel.layers.1.weight"
    broken = _fold_task_checkpoint({k: v for k, v in state.items() if k != key}, width)
    path = _save(broken, tmp_path / "broken_fold_mc_gearnet_edge_ieconv.pth")
    with pytest.raises(GeoplmError, match=f"{path}.*missing key.*'model.{key}'"):
        load_published(path, build_encoder(spec, NUM_RESIDUE_TYPES)[0])
    wider = {**spec, "embedding_dim": 48}  # the same layers, another width: every shape is named
    with pytest.raises(GeoplmError, match=r"wrong shape\(s\): 'model.linear.weight' \(32, 21\) \(encoder"):
        load_published(tmp_path / "fold_mc_gearnet_edge_ieconv.pth", build_encoder(wider, NUM_RESIDUE_TYPES)[0])


@pytest.mark.parametrize(
    "change, key",
    [
        ("missing", "layers.1.linear.weight"),
        ("unexpected", "layers.2.linear.weight"),
        ("shape", "batch_norms.0.weight"),
    ],
)
def test_strict_errors_name_file_and_key(reference, tmp_path, change, key):
    state = dict(reference["gearnet_edge_state_dict"])
    if change == "missing":
        del state[key]
    elif change == "unexpected":
        state[key] = torch.zeros(32, 7 * 32)
    else:
        state[key] = torch.ones(33)
    path = _save(state, tmp_path / f"{change}_gearnet_edge.pth")
    with pytest.raises(GeoplmError) as error:
        load_published(path, _gearnet_edge(reference))
    message = str(error.value)
    assert str(path) in message and key in message
    assert {"missing": "missing key", "unexpected": "unexpected key", "shape": "(33,)"}[change] in message


def test_unreadable_or_foreign_checkpoints(reference, tmp_path):
    encoder = _gearnet_edge(reference)
    with pytest.raises(GeoplmError, match="not found"):
        load_published(tmp_path / "absent.pth", encoder)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(GeoplmError, match="garbage.pth"):
        load_published(garbage, encoder)
    foreign = _save({"encoder.weight": torch.zeros(2)}, tmp_path / "foreign.pth")
    with pytest.raises(GeoplmError, match="no key maps onto the encoder"):
        load_published(foreign, encoder)


# --------------------------------------------------------------------------------------------------
# ESM-GearNet: FusionNetwork state dicts (sequence_model.* + structure_model.*)
# --------------------------------------------------------------------------------------------------


def test_esm_gearnet_on_stored_features_matches_torchdrug(reference, tmp_path):
    """Stored (frozen) ESM features: the structure model is loaded, the frozen ESM-2 checked, and the serial fusion
    of the stored ESM rows gives torchdrug's FusionNetwork outputs."""
    state = reference["esm_gearnet_state_dict"]
    assert "sequence_model.mapping" in state  # torchdrug models.ESM's residue -> token buffer
    encoder = _esm_gearnet(reference)
    loaded = load_published(_save(state, tmp_path / "mc_esm_gearnet.pth"), encoder)
    assert set(loaded) == {f"net.{k}" for k in state if k.startswith("structure_model.")}
    encoder.eval()
    batch = pack(_stored_inputs(reference))
    stored = torch.cat([p["esm_gearnet"]["esm_residue_feature"] for p in reference["proteins"]])
    with torch.no_grad():
        out = encoder(batch.graph, stored)
    _assert_outputs(out, reference, "esm_gearnet")


def test_esm_gearnet_with_esm_inside_matches_torchdrug(reference, tmp_path):
    """freeze_esm: false: the ESM-2 inside the model gets the checkpoint's weights (sequence_model.model.*) and the
    whole fusion, reading the sequences, gives torchdrug's outputs."""
    from geoplm.esm import load_esm2, write_random_esm2_checkpoint

    arch = reference["config"]["esm"]
    esm_path, _ = write_random_esm2_checkpoint(tmp_path / "esm2_tiny_random.pt", seed=3, **arch)
    model, alphabet = load_esm2(esm_path)
    encoder = _esm_gearnet(reference, esm=(model, alphabet, {"repr_layer": -1}))
    state = reference["esm_gearnet_state_dict"]
    loaded = load_published(_save(state, tmp_path / "mc_esm_gearnet.pth"), encoder)
    assert set(loaded) == {f"net.{k}" for k in state if k != "sequence_model.mapping"}
    assert torch.equal(model.embed_tokens.weight, state["sequence_model.model.embed_tokens.weight"])
    encoder.eval()
    batch = pack(_stored_inputs(reference))
    with torch.no_grad():
        out = encoder(batch.graph, batch.node_feature, **batch.encoder_inputs)
    _assert_outputs(out, reference, "esm_gearnet")


def test_esm_gearnet_frozen_esm_is_checked(reference, tmp_path):
    state = reference["esm_gearnet_state_dict"]
    encoder = _esm_gearnet(reference)
    broken = {k: v for k, v in state.items() if k != "sequence_model.model.layers.1.fc1.weight"}
    path = _save(broken, tmp_path / "broken_esm_gearnet.pth")
    with pytest.raises(GeoplmError) as error:
        load_published(path, encoder)
    assert str(path) in str(error.value) and "sequence_model.model.layers.1.fc1.weight" in str(error.value)

    structure_only = {k: v for k, v in state.items() if k.startswith("structure_model.")}
    path = _save(structure_only, tmp_path / "structure_only.pth")
    with pytest.raises(GeoplmError, match="frozen ESM-2 is absent"):
        load_published(path, encoder)

    esm_state = {k.removeprefix("sequence_model.model."): v for k, v in state.items() if ".model." in k}
    assert check_esm2_keys(esm_state, "x.pth", embed_dim=32) == {"num_layers": 2, "embed_dim": 32, "attention_heads": 4}
    with pytest.raises(GeoplmError, match="32 wide.*48-wide"):
        check_esm2_keys(esm_state, "x.pth", embed_dim=48)


def test_esm_gearnet_frozen_esm_compared_with_the_plm(reference, tmp_path):
    """With ``esm_model``, the checkpoint's frozen ESM-2 must be the plm whose features are stored."""
    from geoplm.esm import load_esm2, write_random_esm2_checkpoint

    state = reference["esm_gearnet_state_dict"]
    path = _save(state, tmp_path / "mc_esm_gearnet.pth")
    esm_path, _ = write_random_esm2_checkpoint(tmp_path / "esm2_tiny_other.pt", seed=5, **reference["config"]["esm"])
    other, _ = load_esm2(esm_path)
    with pytest.raises(GeoplmError, match="differs from the plm"):
        load_published(path, _esm_gearnet(reference), esm_model=other)
    same = {
        k.removeprefix("sequence_model.model."): v for k, v in state.items() if k.startswith("sequence_model.model.")
    }
    other.load_state_dict(same)
    load_published(path, _esm_gearnet(reference), esm_model=other)
