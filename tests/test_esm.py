"""Tests of geoplm.esm against fair-esm's own loader, batching and extract.py layout.

Real ESM-2 weights are not available, so a tiny randomly initialised ESM-2 is written in fair-esm's
checkpoint format; the real ESM-2 8M vocabulary/config (shared test data) checks the alphabet.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import hashlib
import json
import os
import pickle
import runpy
import shutil
import urllib.error
from pathlib import Path
from types import SimpleNamespace

import esm
import esm.pretrained
import pytest
import torch

from geoplm.errors import ChecksumError, EmbeddingError
from geoplm.esm import (
    ESM2_MODELS,
    MAX_PADDING,
    EmbeddingStore,
    embed_sequences,
    embed_to_store,
    file_sha256,
    length_batches,
    load_esm2,
    load_esm2_by_name,
    regression_path,
    sequence_hash,
    window_starts,
    write_random_esm2_checkpoint,
)

# Real sequences: human ubiquitin (UniProt P0CG48, one repeat), human insulin B chain (P01308 25-54),
# hen egg-white lysozyme (P00698, mature chain).
UBIQUITIN = "MQIFVKTLTGKTITLEVEPSDTIENVKAKIQDKEGIPPDQQRLIFAGKQLEDGRTLSDYNIQKESTLHLVLRLRGG"
INSULIN_B = "FVNQHLCGSHLVEALYLVCGERGFFYTPKT"
LYSOZYME = (
    "KVFGRCELAAAMKRHGLDNYRGYSLGNWVCAAKFESNFNTQATNRNTDGSTDYGILQINSRWWCNDGRTPGSRNLCNIPCSALLSSDITASVNCAK"
    "KIVSDGNGMNAWVAWRNRCKGTDVQAWIRGCRL"
)

NUM_LAYERS, EMBED_DIM, HEADS = 2, 32, 4

THREE_TO_ONE = {
    "ALA": "A", "ARG": "R", "ASN": "N", "ASP": "D", "CYS": "C", "GLN": "Q", "GLU": "E", "GLY": "G",
    "HIS": "H", "ILE": "I", "LEU": "L", "LYS": "K", "MET": "M", "PHE": "F", "PRO": "P", "SER": "S",
    "THR": "T", "TRP": "W", "TYR": "Y", "VAL": "V",
}  # fmt: skip


def _data_dir() -> Path:
    env = os.environ.get("GEOPLM_TEST_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _seqres(path: Path) -> str:
    residues = []
    for line in path.read_text().splitlines():
        if line.startswith("SEQRES"):
            residues.extend(THREE_TO_ONE.get(name, "X") for name in line[19:].split())
    return "".join(residues)


def _long_sequence(length: int = 2500) -> str:
    """First ``length`` residues of a real long protein (AlphaFold model of Q9P273, 2,699 residues) if the
    shared data is present, else tandem ubiquitin repeats (as in polyubiquitin)."""
    pdb = _data_dir() / "alphafold" / "AF-Q9P273-F1-model_v4.pdb"
    sequence = _seqres(pdb) if pdb.is_file() else ""
    if len(sequence) < length:
        sequence = UBIQUITIN * (length // len(UBIQUITIN) + 1)
    return sequence[:length]


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    path, _ = write_random_esm2_checkpoint(
        tmp_path_factory.mktemp("esm") / "esm2_t2_tiny_random.pt",
        num_layers=NUM_LAYERS,
        embed_dim=EMBED_DIM,
        attention_heads=HEADS,
        seed=7,
    )
    return path


@pytest.fixture(scope="session")
def loaded(checkpoint):
    return load_esm2(checkpoint)


def _direct(model, alphabet, sequence: str, layer: int) -> torch.Tensor:
    """Single-sequence fair-esm forward with BOS/EOS stripped (extract.py's per_tok)."""
    _, _, tokens = alphabet.get_batch_converter()([("x", sequence)])
    with torch.no_grad():
        out = model(tokens, repr_layers=[layer])
    return out["representations"][layer][0, 1 : len(sequence) + 1]


class _ForwardCounter:
    """Wraps the model's token embedding (run once per forward pass, by fair-esm's ``ESM2.forward`` and by
    geoplm's own pass alike); records the number of sequences (batch rows) per call."""

    def __init__(self, model, monkeypatch):
        self.rows: list[int] = []
        original = model.embed_tokens.forward

        def forward(tokens, *args, **kwargs):
            self.rows.append(tokens.shape[0])
            return original(tokens, *args, **kwargs)

        monkeypatch.setattr(model.embed_tokens, "forward", forward)


# --------------------------------------------------------------------------------------------------
# model table, alphabet
# --------------------------------------------------------------------------------------------------


def test_model_table_names_and_urls_are_fair_esms():
    assert len(ESM2_MODELS) == 6
    for name, entry in ESM2_MODELS.items():
        assert callable(getattr(esm.pretrained, name)), name  # fair-esm has a loader of that name
        assert f"t{entry['num_layers']}_" in name
        assert entry["embed_dim"] % entry["attention_heads"] == 0
        assert entry["url"] == f"https://dl.fbaipublicfiles.com/fair-esm/models/{name}.pt"
        assert entry["regression_url"] == (
            f"https://dl.fbaipublicfiles.com/fair-esm/regression/{name}-contact-regression.pt"
        )


def test_alphabet_is_the_real_esm2_vocabulary(loaded):
    folder = _data_dir() / "esm"
    vocab_file = folder / "esm2_t6_8M_UR50D_vocab.txt"
    if not vocab_file.is_file():
        pytest.skip(f"real ESM-2 vocabulary not found at {vocab_file} (set GEOPLM_TEST_DATA)")
    _, alphabet = loaded
    vocab = vocab_file.read_text().split()
    assert alphabet.all_toks == vocab
    config = json.loads((folder / "esm2_t6_8M_UR50D_config.json").read_text())
    assert len(alphabet) == config["vocab_size"]
    assert alphabet.padding_idx == config["pad_token_id"]
    assert alphabet.mask_idx == config["mask_token_id"]
    assert alphabet.prepend_bos and alphabet.append_eos
    entry = ESM2_MODELS["esm2_t6_8M_UR50D"]
    assert (entry["num_layers"], entry["embed_dim"], entry["attention_heads"]) == (
        config["num_hidden_layers"],
        config["hidden_size"],
        config["num_attention_heads"],
    )


# --------------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------------


def test_checkpoint_is_fair_esm_format(checkpoint, loaded, monkeypatch):
    # plain torch.load (weights_only=True is the default since torch 2.6) refuses the Namespace config
    with pytest.raises(pickle.UnpicklingError, match="argparse.Namespace"):
        torch.load(checkpoint)

    with torch.serialization.safe_globals([argparse.Namespace]):
        data = torch.load(checkpoint, weights_only=True)
    assert isinstance(data["cfg"]["model"], argparse.Namespace)
    assert data["cfg"]["model"].encoder_layers == NUM_LAYERS
    assert data["cfg"]["model"].token_dropout is True
    keys = set(data["model"])
    assert "encoder.sentence_encoder.embed_tokens.weight" in keys
    assert "encoder.sentence_encoder.layers.1.self_attn.rot_emb.inv_freq" in keys
    assert "encoder.lm_head.dense.weight" in keys
    assert all(k.startswith(("encoder.sentence_encoder.", "encoder.lm_head.")) for k in keys)
    regression = torch.load(regression_path(checkpoint), weights_only=True)
    assert regression["model"]["contact_head.regression.weight"].shape == (1, NUM_LAYERS * HEADS)

    # fair-esm's own local loader reads it once torch.load is told weights_only=False
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: real_load(*a, **{**k, "weights_only": False}))
    fair_model, fair_alphabet = esm.pretrained.load_model_and_alphabet_local(str(checkpoint))
    monkeypatch.undo()

    model, alphabet = loaded
    assert isinstance(model, esm.model.esm2.ESM2) and not model.training
    assert (model.num_layers, model.embed_dim, model.attention_heads) == (NUM_LAYERS, EMBED_DIM, HEADS)
    assert alphabet.all_toks == fair_alphabet.all_toks
    fair_state = fair_model.state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, fair_state[name]), name
    # the contact head really got the regression weights (fair-esm loads strictly with them)
    assert torch.equal(model.contact_head.regression.weight, regression["model"]["contact_head.regression.weight"])


def test_random_checkpoint_is_reproducible_and_leaves_global_rng(tmp_path):
    state = torch.random.get_rng_state()
    a, _ = write_random_esm2_checkpoint(tmp_path / "a" / "esm2_a.pt", seed=3)
    b, _ = write_random_esm2_checkpoint(tmp_path / "b" / "esm2_b.pt", seed=3)
    c, _ = write_random_esm2_checkpoint(tmp_path / "c" / "esm2_c.pt", seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    with torch.serialization.safe_globals([argparse.Namespace]):
        sa, sb, sc = (torch.load(p, weights_only=True)["model"] for p in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(
        sa["encoder.sentence_encoder.embed_tokens.weight"], sc["encoder.sentence_encoder.embed_tokens.weight"]
    )
    assert not list(tmp_path.glob("*/*.part"))


def test_checkpoint_name_must_start_with_esm2(tmp_path, checkpoint):
    with pytest.raises(EmbeddingError, match="esm2"):
        write_random_esm2_checkpoint(tmp_path / "tiny.pt")
    renamed = tmp_path / "tiny.pt"
    shutil.copy(checkpoint, renamed)
    shutil.copy(regression_path(checkpoint), regression_path(renamed))
    with pytest.raises(EmbeddingError, match="esm2"):
        load_esm2(renamed)


def test_load_checks_sha256(checkpoint):
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert file_sha256(checkpoint) == digest
    model, _ = load_esm2(checkpoint, sha256=digest.upper())
    assert not model.training
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as info:
        load_esm2(checkpoint, sha256=wrong)
    message = str(info.value)
    assert str(checkpoint) in message and digest in message and wrong in message


def test_missing_regression_file(tmp_path, checkpoint):
    alone = tmp_path / checkpoint.name
    shutil.copy(checkpoint, alone)
    with pytest.raises(EmbeddingError, match="contact-regression") as info:
        load_esm2(alone)
    assert str(regression_path(alone)) in str(info.value)


def test_full_pickle_only_for_verified_file(tmp_path, checkpoint):
    """A checkpoint with a global outside the allow-list loads only when its sha256 is given and matches."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        data = torch.load(checkpoint, weights_only=True)
    data["cfg"]["model"].created = datetime.date(2022, 7, 20)
    odd = tmp_path / "esm2_odd.pt"
    torch.save(data, odd)
    shutil.copy(regression_path(checkpoint), regression_path(odd))
    with pytest.raises(EmbeddingError, match="weights_only"):
        load_esm2(odd)
    model, _ = load_esm2(odd, sha256=file_sha256(odd))
    reference, _ = load_esm2(checkpoint)
    assert torch.equal(model.embed_tokens.weight, reference.embed_tokens.weight)


def test_load_by_name_without_internet_says_to_use_a_local_path(monkeypatch):
    def offline(name):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(esm.pretrained, "load_model_and_alphabet_hub", offline)
    with pytest.raises(EmbeddingError) as info:
        load_esm2_by_name("esm2_t6_8M_UR50D")
    message = str(info.value)
    assert "load_esm2" in message and ESM2_MODELS["esm2_t6_8M_UR50D"]["url"] in message
    with pytest.raises(EmbeddingError, match="unknown"):
        load_esm2_by_name("esm2_t99_1T_UR50D")


# --------------------------------------------------------------------------------------------------
# embedding
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", [0, 1, NUM_LAYERS])
def test_embedding_equals_direct_forward_regardless_of_batching(loaded, monkeypatch, layer):
    model, alphabet = loaded
    sequences = {"ubq": UBIQUITIN, "insb": INSULIN_B, "lyz": LYSOZYME, "lyz120": LYSOZYME[:120]}
    counter = _ForwardCounter(model, monkeypatch)
    one_by_one = embed_sequences(model, alphabet, sequences, layer, toks_per_batch=140)
    all_at_once = embed_sequences(model, alphabet, sequences, layer, toks_per_batch=4096)
    # by length; 120 and 129 residues share a batch (9 of 262 tokens padding), 30 and 76 would pad too much
    assert counter.rows == [1, 1, 1, 1] + [1, 1, 2]
    for sid, sequence in sequences.items():
        direct = _direct(model, alphabet, sequence, layer)
        assert one_by_one[sid].shape == (len(sequence), EMBED_DIM)
        assert one_by_one[sid].dtype == torch.float32
        torch.testing.assert_close(one_by_one[sid], direct, atol=1e-5, rtol=0)
        torch.testing.assert_close(all_at_once[sid], direct, atol=1e-5, rtol=0)


def test_negative_layer_and_determinism(loaded):
    model, alphabet = loaded
    last = embed_sequences(model, alphabet, {"ubq": UBIQUITIN}, NUM_LAYERS)["ubq"]
    minus_one = embed_sequences(model, alphabet, {"ubq": UBIQUITIN}, -1)["ubq"]
    assert torch.equal(last, minus_one)
    first = embed_sequences(model, alphabet, {"ubq": UBIQUITIN}, -(NUM_LAYERS + 1))["ubq"]
    torch.testing.assert_close(first, _direct(model, alphabet, UBIQUITIN, 0))
    assert not torch.allclose(first, last)
    with pytest.raises(EmbeddingError, match="repr_layer"):
        embed_sequences(model, alphabet, {"ubq": UBIQUITIN}, NUM_LAYERS + 1)


def test_window_starts_cover_every_residue():
    assert window_starts(76, 1022, 511) == [0]
    assert window_starts(1022, 1022, 511) == [0]
    assert window_starts(50, 20, 10) == [0, 10, 20, 30]
    assert window_starts(2500, 1022, 511) == [0, 511, 1022, 1478]
    for length, window, stride in [(1023, 1022, 511), (55, 20, 7), (41, 20, 20)]:
        starts = window_starts(length, window, stride)
        covered = set()
        for start in starts:
            assert 0 <= start and start + window <= length
            covered.update(range(start, start + window))
        assert covered == set(range(length))


def _coverage(length: int) -> collections.Counter:
    """How many residues of a sequence of ``length`` are covered by 1, 2, 3 default windows."""
    counts = [0] * length
    for start in window_starts(length, 1022, 511):
        for i in range(start, min(start + 1022, length)):
            counts[i] += 1
    return collections.Counter(counts)


def test_window_coverage_is_as_documented():
    """The coverage embed_sequences' docstring states for the default window 1,022 and stride 511."""
    assert _coverage(1022) == collections.Counter({1: 1022})
    for length in (1023, 1362, 1363, 1533):  # two windows, [0, 1022) and [L - 1022, L)
        assert _coverage(length) == collections.Counter({1: 2 * (length - 1022), 2: 2044 - length})
    assert _coverage(1362)[2] > 1362 / 2 and _coverage(1363)[2] < 1363 / 2  # "most residues" up to 1,362 only
    for length in (1534, 2043, 2044, 2045, 2555, 2556, 2699, 5000):
        last_regular = max(range(0, length - 1022, 511))
        triple = max(0, last_regular + 511 - (length - 1022))
        single = 511 + (length - 1022 - last_regular)
        expected = collections.Counter({1: single, 2: length - single - triple, 3: triple})
        assert _coverage(length) == expected, length
    assert _coverage(1534)[3] == 510 and _coverage(2699)[3] == 367
    assert _coverage(2044)[3] == _coverage(2555)[3] == 0


def test_length_batches_bound_tokens_and_padding():
    lengths = [30, 76, 129, 120, 5, 1100, 74, 76, 3000]
    batches = length_batches(lengths, 2048, 2)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths)  # shortest first, as fair-esm's get_batch_indices
    for batch in batches:
        padded = len(batch) * (max(lengths[i] for i in batch) + 2)
        assert padded <= 2048 or len(batch) == 1  # a window over the budget is a batch of its own
        assert padded - sum(lengths[i] + 2 for i in batch) <= MAX_PADDING * padded
    assert [len(b) for b in batches] == [1, 1, 3, 2, 1, 1]  # 74/76/76 and 120/129 together
    # without padding to avoid, fair-esm's batches exactly
    dataset = esm.data.FastaBatchedDataset(list(range(90)), ["A" * 100] * 90)
    assert length_batches([100] * 90, 4096, 2) == dataset.get_batch_indices(4096, extra_toks_per_seq=2)


@pytest.fixture(scope="module")
def esm2_8m(tmp_path_factory):
    """A random ESM-2 of the real 8M architecture (6 layers, 320 wide, 20 heads)."""
    path, _ = write_random_esm2_checkpoint(tmp_path_factory.mktemp("esm8m") / "esm2_t6_8M_random.pt", 6, 320, 20)
    return load_esm2(path)


@pytest.fixture(scope="module")
def real_chains(shared_data) -> dict[str, str]:
    """Real chains of the mirror: the first chain of every 40th structure file, those of at most 400 residues
    (six, 52 to 362 residues)."""
    from geoplm.structure import parse_structure

    files = sorted(p for p in (shared_data / "chains").iterdir() if p.name != "CHAINS.tsv")[::40]
    records = [parse_structure(path)[0] for path in files]
    return {r["id"]: r["sequence"] for r in records if len(r["sequence"]) <= 400}


@pytest.mark.parametrize("layer", [3, 6])
def test_embeddings_equal_fair_esm_forward_on_real_chains(esm2_8m, real_chains, layer):
    """extract.py's values: fair-esm's ``model(toks, repr_layers=[k])["representations"][k]`` on one padded
    batch of real chains, BOS/EOS cut, for a layer inside the model and for the last (after the final layer
    norm); geoplm's own pass, and the fused-attention option, agree within 1e-5."""
    model, alphabet = esm2_8m
    assert len(real_chains) >= 5 and max(map(len, real_chains.values())) <= 1022
    _, _, tokens = alphabet.get_batch_converter()(list(real_chains.items()))
    with torch.no_grad():
        reference = model(tokens, repr_layers=[layer])["representations"][layer]
    for fused in (False, True):
        reps = embed_sequences(model, alphabet, real_chains, layer, fused_attention=fused)
        for row, (sid, sequence) in enumerate(real_chains.items()):
            torch.testing.assert_close(reps[sid], reference[row, 1 : len(sequence) + 1], atol=1e-5, rtol=0)


def test_half_precision_needs_cuda_and_unknown_options_fail(loaded):
    model, alphabet = loaded
    with pytest.raises(EmbeddingError, match="CUDA"):
        embed_sequences(model, alphabet, {"u": UBIQUITIN}, -1, precision="float16")
    with pytest.raises(EmbeddingError, match="precision"):
        embed_sequences(model, alphabet, {"u": UBIQUITIN}, -1, precision="fp8")


def test_progress_and_returned_tensors_are_ordinary(loaded):
    model, alphabet = loaded
    calls = []
    sequences = {"u": UBIQUITIN, "i": INSULIN_B, "l": LYSOZYME}
    reps = embed_sequences(model, alphabet, sequences, -1, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(30, 235), (106, 235), (235, 235)]  # one call per batch, shortest first
    rep = reps["u"]
    assert not torch.is_inference(rep) and rep.untyped_storage().nbytes() == rep.numel() * 4
    rep.add_(1.0)  # computed under inference mode, returned as an ordinary tensor


def test_model_still_fine_tunes_after_embedding(checkpoint):
    """fair-esm keeps its rotary tables on the model; those left by an embedding (run under inference mode) must
    not break a later training step of the same model on a sequence of the same length."""
    model, alphabet = load_esm2(checkpoint)
    embed_sequences(model, alphabet, {"u": UBIQUITIN}, -1)
    tokens = alphabet.get_batch_converter()([("u", UBIQUITIN)])[2]
    model.train()
    model(tokens, repr_layers=[NUM_LAYERS])["representations"][NUM_LAYERS].square().mean().backward()
    assert model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


def test_other_models_run_through_their_forward(loaded):
    model, alphabet = loaded

    class Wrapped(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.num_layers, self.calls = inner, inner.num_layers, 0

        def forward(self, tokens, repr_layers):
            self.calls += 1
            return self.inner(tokens, repr_layers=repr_layers)

    wrapped = Wrapped(model)
    rep = embed_sequences(wrapped, alphabet, {"u": UBIQUITIN}, 1)["u"]
    assert wrapped.calls == 1
    torch.testing.assert_close(rep, _direct(model, alphabet, UBIQUITIN, 1), atol=1e-5, rtol=0)
    with pytest.raises(EmbeddingError, match="fused_attention"):
        embed_sequences(wrapped, alphabet, {"u": UBIQUITIN}, 1, fused_attention=True)


def test_long_sequence_is_not_truncated(loaded, monkeypatch):
    model, alphabet = loaded
    sequence = _long_sequence(2500)
    counter = _ForwardCounter(model, monkeypatch)
    rep = embed_sequences(model, alphabet, {"long": sequence}, -1)["long"]
    assert rep.shape == (2500, EMBED_DIM)
    assert torch.isfinite(rep).all()
    assert sum(counter.rows) == 4  # windows at 0, 511, 1022, 1478, each with its own BOS/EOS
    # residues 2044..2499 are covered by the last window only: they are its forward, unaveraged
    tail = _direct(model, alphabet, sequence[1478:], NUM_LAYERS)
    torch.testing.assert_close(rep[2044:], tail[2044 - 1478 :], atol=1e-5, rtol=0)


def test_short_sequence_windowed_equals_direct(loaded):
    model, alphabet = loaded
    rep = embed_sequences(model, alphabet, {"ubq": UBIQUITIN}, 1, window=100, stride=50)["ubq"]
    torch.testing.assert_close(rep, _direct(model, alphabet, UBIQUITIN, 1), atol=1e-5, rtol=0)


def test_overlapping_windows_are_averaged(loaded):
    model, alphabet = loaded
    sequence = LYSOZYME[:50]
    rep = embed_sequences(model, alphabet, {"lyz50": sequence}, -1, window=20, stride=10)["lyz50"]
    w = {s: _direct(model, alphabet, sequence[s : s + 20], NUM_LAYERS) for s in (0, 10, 20, 30)}
    expected = torch.cat(
        [
            w[0][:10],
            (w[0][10:] + w[10][:10]) / 2,
            (w[10][10:] + w[20][:10]) / 2,
            (w[20][10:] + w[30][:10]) / 2,
            w[30][10:],
        ]
    )
    torch.testing.assert_close(rep, expected, atol=1e-5, rtol=0)
    # and it is not the whole-sequence forward (the windows really were used)
    assert not torch.allclose(rep, _direct(model, alphabet, sequence, NUM_LAYERS), atol=1e-3)
    with pytest.raises(EmbeddingError, match="stride"):
        embed_sequences(model, alphabet, {"lyz50": sequence}, -1, window=20, stride=21)


def test_invalid_sequences_name_the_id(loaded):
    model, alphabet = loaded
    with pytest.raises(EmbeddingError, match="'bad_one'") as info:
        embed_sequences(model, alphabet, {"ok": UBIQUITIN, "bad_one": "MQIF1KT"}, -1)
    assert "'1'" in str(info.value)
    with pytest.raises(EmbeddingError, match="'empty'"):
        embed_sequences(model, alphabet, {"empty": ""}, -1)
    lower = embed_sequences(model, alphabet, {"u": INSULIN_B.lower()}, -1)["u"]
    upper = embed_sequences(model, alphabet, {"u": INSULIN_B}, -1)["u"]
    assert torch.equal(lower, upper)
    assert embed_sequences(model, alphabet, {}, -1) == {}


# --------------------------------------------------------------------------------------------------
# store
# --------------------------------------------------------------------------------------------------


def test_sequence_hash():
    assert sequence_hash(UBIQUITIN.lower()) == sequence_hash(UBIQUITIN)
    assert sequence_hash(UBIQUITIN) == hashlib.sha256(UBIQUITIN.encode()).hexdigest()
    assert sequence_hash(UBIQUITIN) != sequence_hash(INSULIN_B)


def test_store_embeds_shared_sequences_once(tmp_path, loaded, monkeypatch):
    model, alphabet = loaded
    store = EmbeddingStore(tmp_path / "cache", "esm2_t2_tiny_random", NUM_LAYERS)
    counter = _ForwardCounter(model, monkeypatch)

    dataset_a = {"1UBQ_A": UBIQUITIN, "ubq_copy": UBIQUITIN.lower(), "132L_A": LYSOZYME}
    paths_a = embed_to_store(store, model, alphabet, dataset_a)
    assert sum(counter.rows) == 2  # ubiquitin once, lysozyme once
    assert paths_a["1UBQ_A"] == paths_a["ubq_copy"] == store.path(UBIQUITIN)
    digest = sequence_hash(UBIQUITIN)
    assert store.path(UBIQUITIN) == tmp_path / "cache" / "esm2_t2_tiny_random" / digest[:2] / f"{digest}.pt"

    dataset_b = {"ubq_again": UBIQUITIN, "insulin_B": INSULIN_B}
    paths_b = embed_to_store(store, model, alphabet, dataset_b)
    assert sum(counter.rows) == 3  # only insulin was new
    assert set(paths_b) == set(dataset_b) and all(p.is_file() for p in paths_b.values())

    data = torch.load(paths_a["1UBQ_A"], weights_only=True)
    assert {"label", "representations", "mean_representations", "sequence_hash"} <= set(data)
    assert data["label"] == "1UBQ_A" and data["sequence_hash"] == digest
    rep = data["representations"][NUM_LAYERS]
    assert rep.shape == (len(UBIQUITIN), EMBED_DIM)
    torch.testing.assert_close(data["mean_representations"][NUM_LAYERS], rep.mean(0))
    direct = embed_sequences(model, alphabet, {"x": UBIQUITIN}, NUM_LAYERS)["x"]
    torch.testing.assert_close(store.get(UBIQUITIN), direct, atol=1e-5, rtol=0)
    # the stored tensor is its own storage, not a view into the batch output
    assert rep.untyped_storage().nbytes() == rep.numel() * 4

    other = EmbeddingStore(tmp_path / "cache", "esm2_t2_tiny_random", 1)
    assert store.has(UBIQUITIN) and not other.has(UBIQUITIN)
    with pytest.raises(EmbeddingError, match="layer 1"):
        other.get(UBIQUITIN)
    embed_to_store(other, model, alphabet, {"u": UBIQUITIN})
    assert other.has(UBIQUITIN) and store.has(UBIQUITIN)  # the file keeps both layers
    assert not EmbeddingStore(tmp_path / "cache", "another_plm", NUM_LAYERS).has(UBIQUITIN)
    assert not list((tmp_path / "cache").rglob("*.part"))


def test_cached_rerun_loads_no_model_and_reads_each_file_once(tmp_path, checkpoint, monkeypatch):
    loads = []

    def loader():
        loads.append(checkpoint)
        return load_esm2(checkpoint)

    def must_not_load():
        raise AssertionError("the model was loaded although every sequence is in the store")

    store = EmbeddingStore(tmp_path / "cache", "esm2_t2_tiny_random", NUM_LAYERS)
    sequences = {"ubq": UBIQUITIN, "insb": INSULIN_B, "ubq_copy": UBIQUITIN.lower()}
    with pytest.raises(EmbeddingError, match="'broken'"):  # checked before anything is loaded
        embed_to_store(store, must_not_load, None, {**sequences, "broken": "MQ*IF"})
    first = embed_to_store(store, loader, None, sequences)
    assert len(loads) == 1

    reads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: reads.append(k.get("mmap")) or real_load(*a, **k))
    rerun = EmbeddingStore(tmp_path / "cache", "esm2_t2_tiny_random", NUM_LAYERS)  # a new job's store
    assert all(rerun.has(seq) for seq in sequences.values())  # the workflow's step asks first ...
    assert embed_to_store(rerun, must_not_load, None, sequences) == first  # ... and embed_to_store again
    assert reads == [True, True]  # each distinct file's metadata once, its tensors mapped, not read

    EmbeddingStore(tmp_path / "cache", "esm2_t2_tiny_random", 1).put("u", UBIQUITIN, torch.zeros(76, EMBED_DIM))
    reads.clear()
    assert rerun.has(UBIQUITIN) and reads == [True]  # a rewritten file is looked at again
    torch.testing.assert_close(rerun.get(INSULIN_B), embed_sequences(*load_esm2(checkpoint), {"i": INSULIN_B}, -1)["i"])

    embed_to_store(rerun, loader, None, {"lyz": LYSOZYME, "ubq": UBIQUITIN})  # a new sequence: loaded once
    assert len(loads) == 2 and rerun.has(LYSOZYME)


def test_embed_esm_script_loads_no_model_on_a_cached_rerun(tmp_path, checkpoint, shared_data, monkeypatch):
    """The embed_esm rule's script writes the index steps.embed_records writes, and a rerun whose sequences are
    all in the store does not load the checkpoint."""
    from geoplm import esm as geoplm_esm
    from geoplm import steps, structure

    records = [structure.parse_structure(p)[0] for p in sorted((shared_data / "chains").glob("1A*.pdb"))[:3]]
    structure.save_shard(records, tmp_path / "0000.pt")
    script = Path(__file__).resolve().parents[1] / "scripts" / "embed_esm.py"
    settings = {"repr_layer": NUM_LAYERS, "toks_per_batch": 4096, "window": 1022, "stride": 511, "checksum": None}

    def run_rule(index: Path):
        io = SimpleNamespace(records=str(tmp_path / "0000.pt"), model=str(checkpoint), index=str(index))
        snakemake = SimpleNamespace(
            scriptdir=str(script.parent),
            input=io,
            output=io,
            params=SimpleNamespace(store=str(tmp_path / "store"), settings=settings),
            wildcards=SimpleNamespace(plm="tiny"),
            log=[str(tmp_path / "log.txt")],
            config={"device": "cpu"},
        )
        runpy.run_path(str(script), init_globals={"snakemake": snakemake})

    loads = []
    real_loader = geoplm_esm.load_esm2
    monkeypatch.setattr(geoplm_esm, "load_esm2", lambda *a, **k: loads.append(a) or real_loader(*a, **k))
    run_rule(tmp_path / "first.tsv")
    assert len(loads) == 1
    monkeypatch.setattr(geoplm_esm, "load_esm2", lambda *a, **k: pytest.fail("loaded on a cached rerun"))
    run_rule(tmp_path / "rerun.tsv")
    monkeypatch.undo()
    steps.embed_records(tmp_path / "0000.pt", checkpoint, tmp_path / "steps.tsv", tmp_path / "store", "tiny", settings)
    index = (tmp_path / "first.tsv").read_text()
    assert len(index.splitlines()) == 4
    assert index == (tmp_path / "rerun.tsv").read_text() == (tmp_path / "steps.tsv").read_text()


def test_store_errors(tmp_path, loaded):
    model, alphabet = loaded
    store = EmbeddingStore(tmp_path, "esm2_t2_tiny_random", NUM_LAYERS)
    with pytest.raises(EmbeddingError, match="no stored embedding"):
        store.get(INSULIN_B)
    with pytest.raises(EmbeddingError, match="rows"):
        store.put("insB", INSULIN_B, torch.zeros(len(INSULIN_B) - 1, EMBED_DIM))
    with pytest.raises(EmbeddingError, match="'broken'"):
        embed_to_store(store, model, alphabet, {"insB": INSULIN_B, "broken": "MQ*IF"})
    assert not list(tmp_path.rglob("*.pt"))  # nothing embedded before the error
    with pytest.raises(EmbeddingError, match="absolute layer"):
        EmbeddingStore(tmp_path, "esm2", -1)
    store.put("insB", INSULIN_B, torch.ones(len(INSULIN_B), EMBED_DIM))
    assert store.has(INSULIN_B)
    assert not store.has(INSULIN_B[:-1])


@pytest.mark.parametrize("name", ["esm2_t6_8M_UR50D", "esm2_t12_35M_UR50D", "esm2_t30_150M_UR50D"])
def test_real_architectures_load_through_fair_esm_and_embed_at_their_width(tmp_path, name):
    """Wu et al.'s scale ablation (Fig. 2b) uses ESM-2 of every size: a random checkpoint of each real
    architecture (layers, width, heads of fair-esm's model list) loads through the real loading path and embeds
    a real sequence at the last layer with the width the scale table's node features have (320, 480, 640).
    The 650M, 3B and 15B architectures (2.6 to 60 GB of weights) are built on the meta device only."""
    entry = ESM2_MODELS[name]
    layers, width, heads = entry["num_layers"], entry["embed_dim"], entry["attention_heads"]
    path, _ = write_random_esm2_checkpoint(tmp_path / f"{name}.pt", layers, width, heads, seed=0)
    model, alphabet = load_esm2(path)
    assert (model.num_layers, model.embed_dim, model.attention_heads) == (layers, width, heads)
    tokens = alphabet.get_batch_converter()([("p53", "MEEPQSDPSVEPPLSQETFSDLWKLL")])[2]
    with torch.no_grad():
        representation = model(tokens, repr_layers=[layers])["representations"][layers]
    assert representation.shape == (1, 26 + 2, width) and torch.isfinite(representation).all()
    sizes = {"esm2_t6_8M_UR50D": 7.5e6, "esm2_t12_35M_UR50D": 3.4e7, "esm2_t30_150M_UR50D": 1.48e8}
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(sizes[name], rel=0.05)


def test_large_architectures_have_their_published_sizes():
    """The 650M, 3B and 15B entries of the model list build (on the meta device: no memory) to their names' sizes."""
    for name, size in (("esm2_t33_650M_UR50D", 6.5e8), ("esm2_t36_3B_UR50D", 2.8e9), ("esm2_t48_15B_UR50D", 1.5e10)):
        entry = ESM2_MODELS[name]
        with torch.device("meta"):
            model = esm.model.esm2.ESM2(entry["num_layers"], entry["embed_dim"], entry["attention_heads"])
        assert sum(p.numel() for p in model.parameters()) == pytest.approx(size, rel=0.1), name
