"""ESM-2 protein language model: checkpoints, per-residue embeddings and a content-addressed cache.

ESM-2 is the masked protein language model of Lin et al., "Evolutionary-scale prediction of
atomic-level protein structure with a language model", Science 379:1123 (2023). It is loaded and run
through Meta's own implementation, ``fair-esm`` 2.0.0 (the ``esm`` package):

* checkpoints are fair-esm's ``torch.hub`` files (``esm/pretrained.py``): a ``.pt`` whose stem starts
  with ``esm2`` holding ``{"cfg": {"model": argparse.Namespace(...)}, "model": state_dict}`` with the
  fairseq key prefixes ``encoder.sentence_encoder.`` / ``encoder.``, plus the contact-regression
  weights in ``<stem>-contact-regression.pt`` beside it;
* the vocabulary is fair-esm's ``Alphabet.from_architecture("ESM-1b")`` (``esm/data.py``): 33 tokens,
  ``<cls>`` prepended and ``<eos>`` appended to every sequence;
* per-residue representations follow fair-esm's ``scripts/extract.py``: the hidden state of one layer
  (``0`` = token embeddings, ``num_layers`` = last layer after the final layer norm) with BOS/EOS
  removed; the cache files have the layout of extract.py's output files.

Unlike extract.py, nothing is truncated: sequences longer than the training context are embedded in
overlapping windows (see :func:`embed_sequences`). And unlike extract.py, which runs ``ESM2.forward`` (every
layer, the language-model head, attention weights of every head), :func:`embed_sequences` runs the model's own
modules up to the requested layer, with a fused attention on the CPU (or fair-esm's attention arithmetic without
its memory traffic), in batches of similar length (:func:`length_batches`), under ``torch.inference_mode``: the
same values within float32 rounding, about twice as fast on a 2-core CPU (``benchmarks/bench_esm.py``).
:func:`embed_to_store` loads the model only when the store lacks a sequence.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import pickle
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import esm
import esm.pretrained
import torch
from tqdm import tqdm

from geoplm.atomic import torch_save
from geoplm.errors import ChecksumError, EmbeddingError

log = logging.getLogger(__name__)

_MODEL_URL = "https://dl.fbaipublicfiles.com/fair-esm/models/{name}.pt"
_REGRESSION_URL = "https://dl.fbaipublicfiles.com/fair-esm/regression/{name}-contact-regression.pt"


def _entry(num_layers: int, embed_dim: int, attention_heads: int, name: str) -> dict:
    return {
        "num_layers": num_layers,
        "embed_dim": embed_dim,
        "attention_heads": attention_heads,
        "url": _MODEL_URL.format(name=name),
        "regression_url": _REGRESSION_URL.format(name=name),
    }


#: The six ESM-2 models released with fair-esm (names as in ``esm/pretrained.py``; sizes from the
#: ESM-2 paper's Table S1 / the Hugging Face configs; URLs are the ones fair-esm downloads from).
#: ``embed_dim`` is the width D of the per-residue representations.
ESM2_MODELS: dict[str, dict] = {
    name: _entry(layers, dim, heads, name)
    for name, layers, dim, heads in [
        ("esm2_t6_8M_UR50D", 6, 320, 20),
        ("esm2_t12_35M_UR50D", 12, 480, 20),
        ("esm2_t30_150M_UR50D", 30, 640, 20),
        ("esm2_t33_650M_UR50D", 33, 1280, 20),
        ("esm2_t36_3B_UR50D", 36, 2560, 40),
        ("esm2_t48_15B_UR50D", 48, 5120, 40),
    ]
}

#: Residues per window: ESM-2 was trained on crops of 1,024 tokens (1,022 residues + BOS + EOS); it is
#: also fair-esm extract.py's default ``--truncation_seq_length``.
DEFAULT_WINDOW = 1022
#: Step between window starts: half a window, so that every interior residue is seen by two windows.
DEFAULT_STRIDE = 511

# embed_to_store embeds and writes in groups of about this many residues, so that memory stays
# bounded and a killed job keeps what it had written.
_STORE_GROUP_RESIDUES = 200_000


def regression_path(checkpoint: str | os.PathLike) -> Path:
    """Where fair-esm expects the contact-regression file of ``checkpoint``: ``<stem>-contact-regression.pt``
    in the same folder (``esm.pretrained.load_model_and_alphabet_local``)."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + "-contact-regression.pt")


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------


def write_random_esm2_checkpoint(
    path: str | os.PathLike,
    num_layers: int = 2,
    embed_dim: int = 32,
    attention_heads: int = 4,
    seed: int = 0,
) -> tuple[Path, Path]:
    """Write a randomly initialised ESM-2 in fair-esm's own checkpoint format (for tests and demos).

    The files are what ``esm.pretrained.load_model_and_alphabet_local`` reads:

    * ``path``: ``{"cfg": {"model": argparse.Namespace(arch="esm2", encoder_layers, encoder_embed_dim,
      encoder_ffn_embed_dim, encoder_attention_heads, token_dropout=True, ...)}, "model": state_dict}``
      where the transformer's parameters carry the fairseq prefix ``encoder.sentence_encoder.`` and the
      language-model head ``encoder.lm_head.`` (as in the released ``esm2_t*_UR50D.pt`` files; fair-esm's
      ``_load_model_and_alphabet_core_v2`` strips both prefixes);
    * ``<stem>-contact-regression.pt`` beside it: ``{"model": {"contact_head.regression.weight": (1,
      num_layers * attention_heads), "contact_head.regression.bias": (1,)}}``.

    Weight matrices are drawn from N(0, 1/fan_in) (embeddings N(0, 1), padding row zero), biases and
    layer-norm offsets from N(0, 0.1^2), layer-norm scales from 1 + N(0, 0.1^2), all from a
    ``torch.Generator`` seeded with ``seed``: the same arguments give byte-identical tensors, and the
    global RNG state is left untouched. The rotary ``inv_freq`` buffers keep fair-esm's values. Both
    files are written atomically.

    Args:
        path: the checkpoint file; its name must end in ``.pt`` and its stem start with ``esm2`` (fair-esm
            picks the ESM-2 loader by the stem).
        num_layers, embed_dim, attention_heads: the architecture (ESM-2 8M is 6, 320, 20);
            ``embed_dim / attention_heads`` must be an even integer (rotary embeddings).
        seed: seed of the generator.

    Returns:
        ``(checkpoint_path, regression_path)``.

    Raises:
        EmbeddingError: bad file name or architecture.
    """
    path = Path(path)
    if path.suffix != ".pt" or not path.stem.startswith("esm2"):
        raise EmbeddingError(
            f"{path}: an ESM-2 checkpoint's name must end in '.pt' and start with 'esm2' "
            "(fair-esm dispatches on the file stem)"
        )
    if num_layers < 1 or embed_dim < 2 or attention_heads < 1:
        raise EmbeddingError(f"{path}: invalid architecture ({num_layers=}, {embed_dim=}, {attention_heads=})")
    if embed_dim % attention_heads or (embed_dim // attention_heads) % 2:
        raise EmbeddingError(
            f"{path}: embed_dim {embed_dim} / attention_heads {attention_heads} must be an even integer"
        )

    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    with torch.random.fork_rng(devices=[]):  # module construction draws from the global RNG
        model = esm.model.esm2.ESM2(
            num_layers=num_layers,
            embed_dim=embed_dim,
            attention_heads=attention_heads,
            alphabet=alphabet,
            token_dropout=True,
        )
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, param in model.named_parameters(remove_duplicate=False):
            if name == "lm_head.weight":
                continue  # tied to embed_tokens.weight, filled below
            if name == "embed_tokens.weight":
                value = torch.randn(param.shape, generator=generator)
                value[alphabet.padding_idx] = 0.0
            elif "layer_norm" in name and name.endswith(".weight"):
                value = 1.0 + 0.1 * torch.randn(param.shape, generator=generator)
            elif param.ndim >= 2:
                value = torch.randn(param.shape, generator=generator) / param.shape[-1] ** 0.5
            else:
                value = 0.1 * torch.randn(param.shape, generator=generator)
            param.copy_(value)
        for name, tensor in model.state_dict().items():
            state[name] = tensor.detach().clone()
    state["lm_head.weight"] = state["embed_tokens.weight"]  # tied, as in ESM2.__init__

    regression = {k: v for k, v in state.items() if k.startswith("contact_head.")}
    encoder = {}
    for name, tensor in state.items():
        if name.startswith("contact_head."):
            continue
        prefix = "encoder." if name.startswith("lm_head.") else "encoder.sentence_encoder."
        encoder[prefix + name] = tensor

    cfg = argparse.Namespace(
        _name="esm2",
        arch="esm2",
        encoder_layers=num_layers,
        encoder_embed_dim=embed_dim,
        encoder_ffn_embed_dim=4 * embed_dim,
        encoder_attention_heads=attention_heads,
        token_dropout=True,
        max_positions=1024,
        random_init_seed=seed,
    )
    reg_path = regression_path(path)
    torch_save({"cfg": {"model": cfg}, "model": encoder}, path)
    torch_save({"model": regression}, reg_path)
    return path, reg_path


def _unpickling_reason(error: Exception) -> str:
    """The informative line of torch's weights-only unpickling error."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "Unsupported" in line or "WeightsUnpickler error" in line:
            return line
    return lines[-1] if lines else type(error).__name__


def _torch_load(path: Path, verified: bool):
    """torch.load with weights_only=True and argparse.Namespace allow-listed; weights_only=False only
    for a file whose SHA-256 was verified."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not verified:
            raise EmbeddingError(
                f"{path}: cannot be loaded with weights_only=True even with argparse.Namespace "
                f"allow-listed ({_unpickling_reason(error)}); a full pickle "
                "load (weights_only=False) is only done for a file whose expected sha256 is given and matches"
            ) from error
    except Exception as error:
        raise EmbeddingError(f"{path}: not a readable torch checkpoint ({type(error).__name__}: {error})") from error
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise EmbeddingError(f"{path}: not a readable torch checkpoint ({type(error).__name__}: {error})") from error


def load_esm2(path: str | os.PathLike, sha256: str | None = None) -> tuple[torch.nn.Module, esm.data.Alphabet]:
    """Load a local fair-esm ESM-2 checkpoint (``esm2_*.pt`` + ``esm2_*-contact-regression.pt``).

    The files are unpickled here and handed to fair-esm's ``esm.pretrained.load_model_and_alphabet_core``
    (the function behind ``load_model_and_alphabet_local``), so the model is fair-esm's ``ESM2`` with
    the same key mapping and strictness. torch >= 2.6 loads with ``weights_only=True`` by default, which
    refuses the ``argparse.Namespace`` that fair-esm checkpoints keep their configuration in (fair-esm's
    own ``load_model_and_alphabet_local`` therefore fails on a modern torch); here both files are loaded
    with ``weights_only=True`` and ``argparse.Namespace`` allow-listed
    (``torch.serialization.safe_globals``). Only if that still fails and the checkpoint's SHA-256
    matched ``sha256`` is it loaded with ``weights_only=False``.

    Args:
        path: the checkpoint; its stem must start with ``esm2``.
        sha256: expected SHA-256 hex digest of ``path`` (not of the regression file), or None to skip
            the check.

    Returns:
        ``(model, alphabet)``: a fair-esm ``ESM2`` on the CPU in eval mode and its ``Alphabet``
        (ESM-1b vocabulary, 33 tokens).

    Raises:
        ChecksumError: ``path``'s SHA-256 differs from ``sha256`` (the message names the file and both
            digests).
        EmbeddingError: the file is missing, not named ``esm2*``, not an ESM-2 checkpoint, cannot be
            loaded safely, or its contact-regression file is not where fair-esm requires it.
    """
    path = Path(path)
    if not path.is_file():
        raise EmbeddingError(f"{path}: ESM-2 checkpoint not found")
    name = path.stem
    if not name.startswith("esm2"):
        raise EmbeddingError(
            f"{path}: the checkpoint's file name must start with 'esm2' (fair-esm selects the ESM-2 "
            "loader by the file stem, e.g. esm2_t33_650M_UR50D.pt)"
        )
    reg_path = regression_path(path)
    if not reg_path.is_file():
        hint = f" (download: {ESM2_MODELS[name]['regression_url']})" if name in ESM2_MODELS else ""
        raise EmbeddingError(
            f"{path}: its contact-regression weights are missing; fair-esm requires them beside the "
            f"checkpoint at {reg_path}{hint}"
        )
    verified = False
    if sha256 is not None:
        actual = file_sha256(path)
        if actual.lower() != sha256.strip().lower():
            raise ChecksumError(f"{path}: SHA-256 is {actual}, expected {sha256.strip().lower()}")
        verified = True

    model_data = _torch_load(path, verified)
    regression_data = _torch_load(reg_path, verified=False)
    if not isinstance(model_data, dict) or "cfg" not in model_data or "model" not in model_data:
        raise EmbeddingError(f"{path}: not a fair-esm ESM-2 checkpoint (expected the keys 'cfg' and 'model')")
    if not isinstance(regression_data, dict) or "model" not in regression_data:
        raise EmbeddingError(f"{reg_path}: not a fair-esm contact-regression file (expected the key 'model')")
    try:
        model, alphabet = esm.pretrained.load_model_and_alphabet_core(name, model_data, regression_data)
    except (RuntimeError, KeyError, AttributeError, TypeError) as error:
        raise EmbeddingError(
            f"{path}: fair-esm cannot build ESM-2 from it ({type(error).__name__}: {error})"
        ) from error
    model.eval()
    return model, alphabet


def load_esm2_by_name(name: str) -> tuple[torch.nn.Module, esm.data.Alphabet]:
    """Load a released ESM-2 by its fair-esm name through ``esm.pretrained.load_model_and_alphabet_hub``.

    fair-esm downloads ``ESM2_MODELS[name]["url"]`` and ``["regression_url"]`` into the torch hub cache
    (``torch.hub.get_dir()/checkpoints``) unless they are already there; this needs internet.

    Returns:
        ``(model, alphabet)``, the model in eval mode.

    Raises:
        EmbeddingError: unknown name, or the download/load failed; the message says to download both
            files elsewhere and use :func:`load_esm2` on the local path instead.
    """
    if name not in ESM2_MODELS:
        raise EmbeddingError(
            f"unknown ESM-2 model {name!r}; known: {', '.join(ESM2_MODELS)}. "
            "For a local checkpoint file use load_esm2(path)"
        )
    entry = ESM2_MODELS[name]
    try:
        model, alphabet = esm.pretrained.load_model_and_alphabet_hub(name)
    except Exception as error:
        raise EmbeddingError(
            f"{name}: could not be obtained through fair-esm's hub loader ({type(error).__name__}: {error}). "
            f"Without internet, download {entry['url']} and {entry['regression_url']} elsewhere, put both "
            f"in one folder and load the local checkpoint path with load_esm2('<folder>/{name}.pt', sha256=...)"
        ) from error
    model.eval()
    return model, alphabet


# --------------------------------------------------------------------------------------------------
# Embedding
# --------------------------------------------------------------------------------------------------


def sequence_hash(sequence: str) -> str:
    """SHA-256 hex digest of the upper-cased sequence (UTF-8): the cache key of :class:`EmbeddingStore`."""
    return hashlib.sha256(sequence.upper().encode("utf-8")).hexdigest()


def _check_sequences(sequences: dict[str, str], alphabet) -> dict[str, str]:
    """Upper-case the sequences and check that every character is a residue token of ``alphabet``."""
    allowed = set(alphabet.standard_toks)
    checked = {}
    for sid, sequence in sequences.items():
        if not isinstance(sequence, str) or not sequence:
            raise EmbeddingError(f"sequence {sid!r}: empty sequence, nothing to embed")
        upper = sequence.upper()
        bad = sorted(set(upper) - allowed)
        if bad:
            first = next(i for i, c in enumerate(upper) if c not in allowed)
            raise EmbeddingError(
                f"sequence {sid!r}: characters outside the ESM alphabet {bad!r} (first at position "
                f"{first + 1}); allowed: {''.join(alphabet.standard_toks)}"
            )
        checked[sid] = upper
    return checked


def _normalise_layer(model, repr_layer: int) -> int:
    num_layers = int(model.num_layers)
    if not -(num_layers + 1) <= repr_layer <= num_layers:
        raise EmbeddingError(
            f"repr_layer {repr_layer} is out of range for a {num_layers}-layer model "
            f"(0..{num_layers}, or -{num_layers + 1}..-1 counted from the end)"
        )
    return (repr_layer + num_layers + 1) % (num_layers + 1)


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """0-based start residues of the windows covering a sequence of ``length`` residues.

    ``[0]`` if ``length <= window``; otherwise ``0, stride, 2*stride, ...`` while the window ends before
    the sequence does, plus a last window aligned to the sequence end (``length - window``), so every
    residue is covered and every window is full length. How many windows cover each residue with the
    defaults is spelled out in :func:`embed_sequences`.
    """
    if length <= window:
        return [0]
    return [*range(0, length - window, stride), length - window]


#: Padded tokens allowed in a batch, as a fraction of its tokens (padding included): windows are sorted by
#: length and a batch is closed before it would exceed this (or ``toks_per_batch``); see :func:`length_batches`.
MAX_PADDING = 0.125

#: Elements of the ``(pairs, T, T)`` attention weights the exact attention (``fused_attention=False``) computes at a
#: time, over a few (row, head) pairs: 4 MiB of float32 on the CPU, so that they stay in the cache between the two
#: products and the softmax; 256 MiB on a GPU, where fewer, larger kernels pay.
_ATTENTION_CHUNK = {"cpu": 1 << 20, "cuda": 1 << 26}

_PRECISIONS = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def length_batches(lengths: list[int], toks_per_batch: int, extra_toks_per_seq: int = 2) -> list[list[int]]:
    """Indices of ``lengths`` grouped into batches of similar length (shortest first).

    As fair-esm's ``FastaBatchedDataset.get_batch_indices`` (which ``scripts/extract.py`` uses), the items are
    sorted by ``(length, index)`` and taken in that order, and a batch is closed before its padded size
    ``rows * (longest + extra_toks_per_seq)`` would exceed ``toks_per_batch`` (an item longer than that is a
    batch of its own). In addition a batch is closed before its padding (tokens of ``<pad>``) would exceed
    :data:`MAX_PADDING` of its padded size, so that little attention and few linear layers are computed on
    padding: at 4,096 tokens per batch fair-esm's rule alone adds 22% padding tokens to the 75 chains of
    ``benchmarks/bench_esm.py --long 0`` (and 37% to their attention), this one 9% (15%), in 10 batches instead of
    5.

    Args:
        lengths: item lengths in residues.
        toks_per_batch: token budget of a batch, padding included.
        extra_toks_per_seq: tokens added to each item (BOS and EOS: 2).

    Returns:
        Lists of indices into ``lengths``; every index appears once.
    """
    batches: list[list[int]] = []
    batch: list[int] = []
    tokens = 0
    for index in sorted(range(len(lengths)), key=lambda i: (lengths[i], i)):
        size = lengths[index] + extra_toks_per_seq
        padded = (len(batch) + 1) * size  # sorted: this item is the longest of the batch
        if batch and (padded > toks_per_batch or padded - (tokens + size) > MAX_PADDING * padded):
            batches.append(batch)
            batch, tokens = [], 0
        batch.append(index)
        tokens += size
    if batch:
        batches.append(batch)
    return batches


def _attention(q, k, v, key_padding_mask: torch.Tensor | None, fused: bool) -> torch.Tensor:
    """Self-attention of ``q``, ``k``, ``v`` (``(B, H, T, d)``, q scaled and both rotated) with the keys where
    ``key_padding_mask`` (``(B, T)``, True at ``<pad>``; None: no padding) is True left out. Returns ``(B, H, T,
    d)``.

    ``fused=False``: fair-esm's ``MultiheadAttention`` arithmetic (``bmm`` of q and k, ``-inf`` at padded keys,
    float32 softmax, ``bmm`` with v), evaluated over a few of the ``B * H`` (row, head) pairs at a time, so that
    each block of weights (:data:`_ATTENTION_CHUNK` elements) stays in the cache between the two products and the
    softmax instead of the whole ``(B * H, T, T)`` tensor going through memory six times (fair-esm also copies
    it for the mask and averages it over the heads for weights nobody reads here). ``fused=True``: torch's
    ``scaled_dot_product_attention`` (on the CPU a flash-attention kernel; on CUDA flash or memory-efficient
    kernels), which never forms the weights and sums in another order.
    """
    if fused:
        mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
    rows, heads, length, dim = q.shape
    q, k, v = (t.reshape(rows * heads, length, dim) for t in (q, k, v))
    out = torch.empty_like(q)
    masked = None if key_padding_mask is None else key_padding_mask.repeat_interleave(heads, 0).unsqueeze(1)
    step = max(1, _ATTENTION_CHUNK["cuda" if q.is_cuda else "cpu"] // (length * length))
    for first in range(0, rows * heads, step):
        part = slice(first, first + step)
        weights = torch.bmm(q[part], k[part].transpose(1, 2))
        if masked is not None:
            weights.masked_fill_(masked[part], float("-inf"))
        weights = torch.softmax(weights, dim=-1, dtype=torch.float32)
        out[part] = torch.bmm(weights.type_as(v), v[part])
    return out.view(rows, heads, length, dim)


def _rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """fair-esm's ``apply_rotary_pos_emb(x, cos, sin)`` = ``x * cos + rotate_half(x) * sin`` in four passes
    instead of five, with the same values: ``rotate_half(x) = cat(-x2, x1)`` times ``sin`` is ``roll(x) = cat(x2,
    x1)`` times ``signed_sin = cat(-sin1, sin2)``."""
    out = x * cos
    rolled = x.roll(x.shape[-1] // 2, dims=-1)
    rolled *= signed_sin
    out += rolled
    return out


def _rotary_tables(layers, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(cos, signed_sin)`` for :func:`_rotate` in each of ``layers`` for ``x`` of shape ``(B, T, E)``: the tables
    of fair-esm's ``RotaryEmbedding._update_cos_sin_tables`` (``(1, T, head_dim)``), computed once for all layers
    whose ``inv_freq`` buffers are equal (in every ESM-2 they are) instead of once per layer.

    fair-esm keeps the last tables on the module and reuses them in later forward passes, so they are made
    outside inference mode: inference tensors left there would break a later fine-tuning of the same model
    ("Inference tensors cannot be saved for backward").
    """
    tables: list[tuple[torch.Tensor, torch.Tensor]] = []
    with torch.inference_mode(False):
        for block in layers:
            rot_emb = block.self_attn.rot_emb
            if tables and torch.equal(rot_emb.inv_freq, layers[0].self_attn.rot_emb.inv_freq):
                tables.append(tables[0])
                continue
            cos, sin = rot_emb._update_cos_sin_tables(x, seq_dimension=1)
            half = sin.shape[-1] // 2
            tables.append((cos, torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)))
    return tables


def _layer_forward(
    layer, x: torch.Tensor, key_padding_mask: torch.Tensor | None, fused: bool, rotary: tuple[torch.Tensor, ...]
) -> torch.Tensor:
    """One fair-esm ``TransformerLayer`` (pre-layer-norm self-attention with rotary embeddings, then the
    pre-layer-norm GELU feed-forward, each added to the residual stream) on ``x`` of shape ``(B, T, E)``.

    Its submodules do the work: ``self_attn_layer_norm``, ``self_attn.{q,k,v,out}_proj``, ``final_layer_norm``,
    ``fc1``, ``fc2``; ``rotary`` is the layer's entry of :func:`_rotary_tables` (fair-esm's rotary tables, whose
    rotation :func:`_rotate` applies). As in fair-esm, q is scaled by ``head_dim ** -0.5`` before the rotation.
    Differences from ``TransformerLayer.forward``: the attention is :func:`_attention` (no head weights are
    formed or returned), and the GELU is ``torch.nn.functional.gelu``, the same erf form as fair-esm's
    ``esm.modules.gelu`` in one pass instead of five (within a float32 rounding: it multiplies by 1/sqrt(2) where
    fair-esm divides by sqrt(2)). Fewer passes over the activations also mean fewer waits for a busy core.
    """
    attention = layer.self_attn
    rows, length, width = x.shape
    heads, dim = attention.num_heads, attention.head_dim
    h = layer.self_attn_layer_norm(x)
    q = attention.q_proj(h)
    q *= attention.scaling
    q, k, v = (t.view(rows, length, heads, dim).transpose(1, 2) for t in (q, attention.k_proj(h), attention.v_proj(h)))
    h = _attention(_rotate(q, *rotary), _rotate(k, *rotary), v, key_padding_mask, fused)
    x = x + attention.out_proj(h.transpose(1, 2).reshape(rows, length, width))
    h = layer.fc2(torch.nn.functional.gelu(layer.fc1(layer.final_layer_norm(x))))
    return x + h


def _esm2_hidden(model, tokens: torch.Tensor, layer: int, fused: bool) -> torch.Tensor:
    """Hidden state ``(B, T, E)`` of ``layer`` (``0..num_layers``) of a fair-esm ``ESM2`` for ``tokens``.

    The steps of ``ESM2.forward`` up to that layer (fair-esm 2.0.0, ``esm/model/esm2.py``): the scaled token
    embedding; token dropout's rescaling (``x * (1 - 0.15 * 0.8) / (1 - masked fraction)``, masked tokens
    zeroed); padded positions zeroed; then ``layers[:layer]`` (:func:`_layer_forward`, with the padding mask
    only if some row is padded), and the final ``emb_layer_norm_after`` only when ``layer`` is the last (fair-esm
    applies it there and reports the last layer after it). Skipped, as nothing returned needs them: the layers
    past ``layer``, the language-model head (logits), attention head weights and the contact head.
    """
    padding_mask = tokens.eq(model.padding_idx)
    x = model.embed_scale * model.embed_tokens(tokens)
    if model.token_dropout:
        masked = tokens.eq(model.mask_idx)
        x.masked_fill_(masked.unsqueeze(-1), 0.0)
        mask_ratio_train = 0.15 * 0.8
        mask_ratio_observed = masked.sum(-1).to(x.dtype) / (~padding_mask).sum(-1)
        x = x * (1 - mask_ratio_train) / (1 - mask_ratio_observed)[:, None, None]
    x = x * (1 - padding_mask.unsqueeze(-1).type_as(x))
    key_padding_mask = padding_mask if padding_mask.any() else None
    blocks = model.layers[:layer]
    for block, rotary in zip(blocks, _rotary_tables(blocks, x), strict=True):
        x = _layer_forward(block, x, key_padding_mask, fused, rotary)
    if layer == model.num_layers:
        x = model.emb_layer_norm_after(x)
    return x


def embed_sequences(
    model,
    alphabet,
    sequences: dict[str, str],
    repr_layer: int,
    toks_per_batch: int = 4096,
    window: int = DEFAULT_WINDOW,
    stride: int = DEFAULT_STRIDE,
    device: str | torch.device = "cpu",
    *,
    precision: str = "float32",
    fused_attention: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-residue ESM-2 representations of one layer, as fair-esm's ``scripts/extract.py --include per_tok``.

    Each sequence (upper-cased) is cut into windows of at most ``window`` residues (see
    :func:`window_starts`); every window is tokenised with fair-esm's ``BatchConverter`` (BOS ``<cls>``
    + residues + ``<eos>``, padded with ``<pad>``); windows are sorted by length and grouped into batches of at
    most ``toks_per_batch`` tokens (padding included) with little padding (:func:`length_batches`; a window
    longer than that forms a batch of its own). The layer's hidden states at the residue positions (BOS/EOS
    dropped) are kept.

    The forward pass of a fair-esm ``ESM2`` is run from the model's own modules up to ``repr_layer`` only
    (:func:`_esm2_hidden`: no later layers, no language-model or contact head, no attention weights), under
    ``torch.inference_mode``. For sequences of at most 1,022 residues the result equals extract.py's
    ``representations`` for the same checkpoint within float32 rounding: ``tests/test_esm.py`` and
    ``benchmarks/bench_esm.py`` find at most 3e-6 absolute on random ESM-2 8M / 35M checkpoints, the GELU's and
    (with the fused attention) the attention's summation order being the only differences. A model that is not an
    ``ESM2`` is called as fair-esm's ``model(tokens, repr_layers=[layer])``.

    Long sequences: ESM-2 was trained on crops of 1,022 residues, and extract.py truncates there. Here
    nothing is truncated: a sequence longer than ``window`` is embedded as overlapping windows (each with
    its own BOS/EOS, positions restarting at the window), and each residue's vector is the unweighted
    mean over all windows covering it. With the defaults (window 1,022, stride 511) a sequence of L residues
    is covered as follows (``tests/test_esm.py`` computes these counts from :func:`window_starts`):

    * L <= 1,022: one window, the plain single-sequence forward;
    * 1,023 <= L <= 1,533: two windows, residues ``[0, 1022)`` and ``[L - 1022, L)``: the 2,044 - L residues
      of their overlap are averaged over both (most of the sequence only up to L = 1,362; 511 residues at
      L = 1,533), the first and last L - 1,022 residues are seen by one window;
    * L >= 1,534: windows start at 0, 511, ..., s (the multiples of 511 below L - 1,022) and at L - 1,022.
      The first 511 residues and the last L - 1,022 - s are seen by one window; residues ``[L - 1022, s + 511)``
      by three (the end window over the last two regular ones: 510 residues at L = 1,534, 367 at L = 2,699, none
      when L - 1,022 is a multiple of 511, as at L = 2,044 or 2,555); all others by two.

    Windows are summed in order of their start, so results do not depend on the batching. A sequence of at
    most ``window`` residues is one window and gets the single-sequence forward.

    The model is moved to ``device`` and run in eval mode (its previous training mode is restored).

    Args:
        model: a fair-esm ESM-2 (``esm.model.esm2.ESM2``; anything else with ``num_layers`` and fair-esm's
            ``forward(tokens, repr_layers=[...])`` is run through that forward).
        alphabet: its fair-esm ``Alphabet``.
        sequences: id -> amino-acid sequence (one-letter codes of the alphabet, any case).
        repr_layer: layer to return, ``0..num_layers`` (0 = token embeddings, ``num_layers`` = output of
            the last layer after the final layer norm); negative counts from the end (-1 = last).
        toks_per_batch: token budget per batch (extract.py's ``--toks_per_batch``).
        window: residues per window (default 1,022, ESM-2's training crop minus BOS/EOS).
        stride: residues between window starts, ``1 <= stride <= window``.
        device: torch device to run on.
        precision: ``"float32"`` (default), or ``"float16"`` / ``"bfloat16"`` on a CUDA device only: the
            forward runs under ``torch.autocast`` (weights stay float32; matrix products in half precision,
            layer norms and softmax in float32); results are returned as float32. ``benchmarks/bench_esm.py``
            reports the difference to float32 on a GPU.
        fused_attention: True: attention by ``torch.nn.functional.scaled_dot_product_attention`` (fused
            kernels: on the CPU a float32 flash-attention kernel; on CUDA flash or memory-efficient kernels);
            False: fair-esm's arithmetic (bmm, softmax, bmm) a few heads at a time (:func:`_attention`); None
            (default): fused on the CPU, fair-esm's arithmetic on other devices (on a GPU the fused kernels are
            an option, whose difference to float32 ``benchmarks/bench_esm.py`` reports). On the 2-core CPU of
            ``benchmarks/README.md`` the fused attention makes the whole embedding ~1.15x faster when the cores
            are idle and 1.4x-3x when other processes compete for them (one call per layer instead of one per
            few heads, each of which waits for both threads); both agree with fair-esm within 3e-6.
        progress: called after each batch as ``progress(residues_done, residues_total)``, counted over the
            windows' residues (for logging, or to interleave a benchmark).

    Returns:
        id -> float32 CPU tensor of shape ``(L, D)``, L the sequence length in residues, D the model's
        ``embed_dim``; dimensionless hidden-state activations.

    Raises:
        EmbeddingError: empty sequence or characters outside the alphabet (naming the id), ``repr_layer``
            out of range, invalid ``window``/``stride``/``toks_per_batch``, an unknown ``precision`` or half
            precision on a device other than CUDA, or ``fused_attention`` with a model that is not an ``ESM2``.
    """
    if window < 1 or not 1 <= stride <= window:
        raise EmbeddingError(f"invalid windowing: window={window}, stride={stride} (need 1 <= stride <= window)")
    if toks_per_batch < 1:
        raise EmbeddingError(f"invalid toks_per_batch={toks_per_batch}")
    device = torch.device(device)
    if precision not in _PRECISIONS:
        raise EmbeddingError(f"unknown precision {precision!r} (one of {', '.join(_PRECISIONS)})")
    if precision != "float32" and device.type != "cuda":
        raise EmbeddingError(
            f"precision {precision!r} needs a CUDA device (got {device}); on the CPU embeddings are float32"
        )
    layer = _normalise_layer(model, repr_layer)
    is_esm2 = isinstance(model, esm.model.esm2.ESM2)
    if fused_attention is None:
        fused_attention = is_esm2 and device.type == "cpu"
    if fused_attention and not is_esm2:
        raise EmbeddingError(f"fused_attention needs a fair-esm ESM2 model, got {type(model).__name__}")
    checked = _check_sequences(sequences, alphabet)
    if not checked:
        return {}

    ids = list(checked)
    chunks: list[tuple[tuple[int, int], str]] = []  # ((sequence index, window start), window's residues)
    for index, sid in enumerate(ids):
        sequence = checked[sid]
        for start in window_starts(len(sequence), window, stride):
            chunks.append(((index, start), sequence[start : start + window]))

    extra = int(alphabet.prepend_bos) + int(alphabet.append_eos)
    batches = length_batches([len(chunk) for _, chunk in chunks], toks_per_batch, extra)
    converter = alphabet.get_batch_converter()
    offset = int(alphabet.prepend_bos)
    total = sum(len(chunk) for _, chunk in chunks)
    done = 0
    autocast = torch.autocast(device.type, dtype=_PRECISIONS[precision]) if precision != "float32" else nullcontext()

    outputs: dict[tuple[int, int], torch.Tensor] = {}
    was_training = model.training
    model.to(device)
    model.eval()
    try:
        for batch in tqdm(batches, desc="ESM-2", unit="batch", disable=None, leave=False):
            labels, strs, tokens = converter([chunks[i] for i in batch])
            with torch.inference_mode(), autocast:
                tokens = tokens.to(device)
                if is_esm2:
                    hidden = _esm2_hidden(model, tokens, layer, fused_attention)
                else:
                    hidden = model(tokens, repr_layers=[layer])["representations"][layer]
            # copied out of inference mode: the returned tensors are ordinary ones (in-place ops, autograd)
            for row, (label, chunk) in enumerate(zip(labels, strs, strict=True)):
                rep = hidden[row, offset : offset + len(chunk)]
                outputs[label] = rep.to(device="cpu", dtype=torch.float32).clone()
            done += sum(len(chunk) for chunk in strs)
            if progress is not None:
                progress(done, total)
    finally:
        model.train(was_training)

    result: dict[str, torch.Tensor] = {}
    for index, sid in enumerate(ids):
        sequence = checked[sid]
        starts = window_starts(len(sequence), window, stride)
        if len(starts) == 1:
            result[sid] = outputs[(index, 0)]
            continue
        dim = outputs[(index, starts[0])].shape[1]
        total_rep = torch.zeros(len(sequence), dim, dtype=torch.float32)
        count = torch.zeros(len(sequence), 1, dtype=torch.float32)
        for start in starts:
            rep = outputs[(index, start)]
            total_rep[start : start + rep.shape[0]] += rep
            count[start : start + rep.shape[0]] += 1.0
        result[sid] = total_rep / count
    return result


# --------------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------------


class EmbeddingStore:
    """Content-addressed cache of per-residue representations: ``root/{plm}/{hash[:2]}/{hash}.pt``.

    ``hash`` is :func:`sequence_hash` of the sequence, so a sequence shared by several ids or datasets
    is stored (and embedded) once. Each file is a dict laid out like the output of fair-esm's
    ``scripts/extract.py --include per_tok mean``::

        {"label": <id it was first stored under>,
         "sequence_hash": <hash>,
         "representations": {layer: float32 (L, D)},
         "mean_representations": {layer: float32 (D,)}}

    and loads with ``torch.load(weights_only=True)``. Several layers of one model can share a file
    (:meth:`put` keeps the layers already there); files are written atomically (concurrent writers of
    different layers of one sequence may drop one another's layer, never corrupt the file).

    :meth:`has` reads a file's metadata only and remembers the files it found complete (see there), so asking
    twice about a cached sequence reads its file once.

    Args:
        root: cache folder.
        plm: model name, one folder per model (e.g. ``esm2_t33_650M_UR50D``); no path separators.
        repr_layer: absolute layer index (>= 0; resolve -1 with the model's ``num_layers`` first, since
            a file must say which layer it holds).

    Raises:
        EmbeddingError: bad ``plm`` or negative ``repr_layer``.
    """

    def __init__(self, root: str | os.PathLike, plm: str, repr_layer: int):
        if not plm or "/" in plm or "\\" in plm or plm in (".", ".."):
            raise EmbeddingError(f"invalid model name for the embedding store: {plm!r}")
        if repr_layer < 0:
            raise EmbeddingError(
                f"EmbeddingStore needs an absolute layer index, got {repr_layer} "
                "(use the model's num_layers for the last layer)"
            )
        self.root = Path(root)
        self.plm = plm
        self.repr_layer = int(repr_layer)
        # files found to hold this layer for their sequence -> (size, mtime_ns, inode) when they did
        self._complete: dict[Path, tuple[int, int, int]] = {}

    def path(self, sequence: str) -> Path:
        """The cache file of ``sequence`` (whether or not it exists)."""
        digest = sequence_hash(sequence)
        return self.root / self.plm / digest[:2] / f"{digest}.pt"

    def _load(self, sequence: str, mmap: bool = False) -> dict | None:
        """The file of ``sequence`` if it is a readable store file of that sequence, else None. ``mmap=True``
        maps the tensors' bytes instead of reading them (for checks of shapes only; files torch cannot map
        are read)."""
        path = self.path(sequence)
        if not path.is_file():
            return None
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except Exception:
            if not mmap:
                return None
            return self._load(sequence)
        if not isinstance(data, dict) or data.get("sequence_hash") != sequence_hash(sequence):
            return None
        if not isinstance(data.get("representations"), dict):
            return None
        return data

    def has(self, sequence: str) -> bool:
        """True if the file exists, is readable, belongs to ``sequence`` and holds this store's layer
        with ``len(sequence)`` rows.

        Only the file's zip directory and pickled metadata are read (``torch.load(mmap=True)``: the tensors are
        mapped, and only their shapes looked at). A file found complete is remembered with its size,
        modification time and inode, and while those are unchanged asking again costs one ``stat`` (the
        workflow's embed step asks before and inside :func:`embed_to_store`).
        """
        path = self.path(sequence)
        try:
            info = path.stat()
        except OSError:
            return False
        key = (info.st_size, info.st_mtime_ns, info.st_ino)
        if self._complete.get(path) == key:
            return True
        data = self._load(sequence, mmap=True)
        if data is None:
            return False
        rep = data["representations"].get(self.repr_layer)
        complete = isinstance(rep, torch.Tensor) and rep.ndim == 2 and rep.shape[0] == len(sequence)
        if complete:
            self._complete[path] = key
        return complete

    def put(self, label: str, sequence: str, representation: torch.Tensor) -> Path:
        """Store the ``(L, D)`` representation of ``sequence`` for this store's layer; returns the file.

        Layers already in the file are kept; the label of a new file is ``label``.

        Raises:
            EmbeddingError: ``representation`` is not 2-D with ``len(sequence)`` rows.
        """
        if not isinstance(representation, torch.Tensor) or representation.ndim != 2:
            raise EmbeddingError(f"sequence {label!r}: representation must be an (L, D) tensor")
        if representation.shape[0] != len(sequence):
            raise EmbeddingError(
                f"sequence {label!r}: representation has {representation.shape[0]} rows, "
                f"the sequence {len(sequence)} residues"
            )
        rep = representation.detach().to(device="cpu", dtype=torch.float32).contiguous().clone()
        existing = self._load(sequence)
        data = {
            "label": existing["label"] if existing else label,
            "sequence_hash": sequence_hash(sequence),
            "representations": dict(existing["representations"]) if existing else {},
            "mean_representations": dict(existing.get("mean_representations", {})) if existing else {},
        }
        data["representations"][self.repr_layer] = rep
        data["mean_representations"][self.repr_layer] = rep.mean(0)
        path = self.path(sequence)
        torch_save(data, path)
        info = path.stat()
        self._complete[path] = (info.st_size, info.st_mtime_ns, info.st_ino)
        return path

    def get(self, sequence: str) -> torch.Tensor:
        """The stored ``(L, D)`` float32 representation of ``sequence`` for this store's layer.

        Raises:
            EmbeddingError: no (readable) file, the layer is absent, or its length differs from the
                sequence's (the file names the path).
        """
        path = self.path(sequence)
        data = self._load(sequence)
        if data is None:
            raise EmbeddingError(f"{path}: no stored embedding of this sequence ({len(sequence)} residues)")
        rep = data["representations"].get(self.repr_layer)
        if not isinstance(rep, torch.Tensor):
            raise EmbeddingError(f"{path}: layer {self.repr_layer} not stored (has {sorted(data['representations'])})")
        if rep.ndim != 2 or rep.shape[0] != len(sequence):
            raise EmbeddingError(
                f"{path}: stored representation has shape {tuple(rep.shape)}, the sequence {len(sequence)} residues"
            )
        return rep


def embed_to_store(store: EmbeddingStore, model, alphabet, sequences: dict[str, str], **kwargs) -> dict[str, Path]:
    """Embed the sequences not yet in ``store`` (layer ``store.repr_layer``) and return every id's file.

    Identical sequences (case-insensitive) are embedded once, whichever ids or datasets they come
    from; a sequence already in the store is not embedded again. Work is done in groups of about
    200,000 residues, each written before the next is embedded.

    The model can be given as a loader, called only when some sequence is missing from the store: a rerun whose
    sequences are all cached then loads no checkpoint (2.5 GB for ESM-2 650M, 11 GB for 3B) and reads each
    cached file's metadata once (:meth:`EmbeddingStore.has`).

    Args:
        store: the cache.
        model: as for :func:`embed_sequences`; or a callable without arguments (not a ``torch.nn.Module``)
            returning ``(model, alphabet)``, e.g. ``lambda: load_esm2(path)``, called at most once and only if
            something is to be embedded.
        alphabet: as for :func:`embed_sequences`; with a loader it may be None, and the sequences are then
            checked against fair-esm's ESM-1b alphabet (the vocabulary of every ESM-2) before anything is
            loaded, the loader's alphabet tokenising them.
        sequences: id -> sequence.
        **kwargs: passed to :func:`embed_sequences` (``toks_per_batch``, ``window``, ``stride``,
            ``device``, ``precision``, ``fused_attention``, ``progress``).

    Returns:
        id -> cache file (``store.path(sequence)``), for every id.

    Raises:
        EmbeddingError: as :func:`embed_sequences` (invalid sequences are reported before anything is
            embedded or loaded).
    """
    loader = None
    if callable(model) and not isinstance(model, torch.nn.Module):
        loader, model = model, None
    if alphabet is None and loader is None:
        raise EmbeddingError("embed_to_store: an alphabet is needed unless the model is given as a loader")
    checked = _check_sequences(sequences, alphabet or esm.data.Alphabet.from_architecture("ESM-1b"))
    if model is not None:
        _normalise_layer(model, store.repr_layer)
    unique: dict[str, tuple[str, str]] = {}
    for sid, sequence in checked.items():
        unique.setdefault(sequence_hash(sequence), (sid, sequence))
    todo = [(sid, seq) for sid, seq in unique.values() if not store.has(seq)]
    log.info("%d of %d distinct sequences to embed (the others are in %s)", len(todo), len(unique), store.root)
    if todo and loader is not None:
        model, alphabet = loader()
        _normalise_layer(model, store.repr_layer)

    group: dict[str, str] = {}
    residues = 0
    for position, (sid, sequence) in enumerate(todo):
        group[sid] = sequence
        residues += len(sequence)
        if residues >= _STORE_GROUP_RESIDUES or position == len(todo) - 1:
            reps = embed_sequences(model, alphabet, group, store.repr_layer, **kwargs)
            for gid, rep in reps.items():
                store.put(gid, group[gid], rep)
            group, residues = {}, 0
    return {sid: store.path(sequence) for sid, sequence in checked.items()}
