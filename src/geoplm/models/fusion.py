"""ESM-GearNet: fusion of the ESM-2 protein language model with GearNet (Zhang et al., "A Systematic Study
of Joint Representation Learning on Protein Sequences and Structures", arXiv 2303.06275, Sec. 3), and the
same fusions with any other structure encoder (ESM-CDConv, ...) and ESM-2 alone.

Classes: :class:`ESMModule` (the ESM-2 half: stored features or an in-model, frozen or fine-tuned ESM-2),
:class:`ESMEncoder` (ESM-2 alone: its per-residue features and their mean; torchdrug ``models.ESM``) and
:class:`ESMFusion` (``FusionNetwork``: ESM-2 + a structure encoder; :data:`ESMGearNet` is the same class).
Below, "GearNet" stands for the structure encoder; with CDConv (:mod:`geoplm.models.cdconv`) ``h`` is the
protein's CDConv feature broadcast to its residues and the structure graph feature its mean readout, exactly
as the reference's ``FusionNetwork`` receives them from ``models.CDConv``.

Re-implemented in plain torch after DeepGraphLearning/ESM-GearNet @ bc90557bbf9ee2676e87b9fc84570aa126daa808
(``gearnet/model.py``: ``FusionNetwork``; ``util.py``: ``build_downstream_solver``;
``config/{EC,GO}/esm_gearnet{,_parallel,_cross,_freeze}.yaml``) and torchdrug 0.2.1
(DeepGraphLearning/torchdrug @ 6066fbd82360abb5f270cba1eca560af01b8cc90: ``torchdrug/models/esm.py``
``EvolutionaryScaleModeling``, ``torchdrug/layers/block.py`` ``SelfAttentionBlock``,
``torchdrug/layers/functional/functional.py`` ``_extend`` / ``variadic_to_padded``). Nothing is copied.

The three fusion schemes of the reference (``fusion: series | parallel | cross``), for a packed batch of
B proteins with N residues (graph nodes = residues with a Cα) in all:

* ``serial`` (the reference's ``series``, the paper's ESM-GearNet default): ESM-2's per-residue output
  ``s`` ``(N, D_esm)`` is GearNet's node input; ``node_feature = [s, h]`` ``(N, D_esm + D_gearnet)``,
  ``graph_feature = [mean_i s_i, sum_i h_i]`` (torchdrug's ``models.ESM`` reads out with its default
  ``readout="mean"``, GearNet with its configured ``readout``, ``"sum"`` in every ESM-GearNet config).
* ``parallel``: GearNet reads the 21-d residue one-hot instead; outputs concatenated as above.
* ``cross``: ``s' = seq_linear(s)``, ``h' = struct_linear(h)`` (both ``cross_dim`` wide); per protein the
  ``2 n`` tokens ``[s'_1..s'_n, h'_1..h'_n]`` go through **one** multi-head self-attention block (8 heads,
  attention-map dropout 0.1; torchdrug ``SelfAttentionBlock``: ``query``/``key``/``value`` linears
  followed by ``nn.MultiheadAttention`` with its own in/out projections; **no** residual, no layer norm,
  no feed-forward); tokens of different proteins never attend to each other (key-padding mask). Residue
  ``i``'s ``node_feature`` is ``[attn_out(s'_i), attn_out(h'_i)]`` ``(N, 2 cross_dim)``;
  ``graph_feature`` is the **sum** of ``node_feature`` over the protein's residues (``scatter_add``).

ESM-2 input: the ESM can run inside the model (fair-esm ``ESM2``, fine-tuned or frozen) or its per-residue
output can be given precomputed (the workflow's embedding store, :class:`geoplm.esm.EmbeddingStore`).
See :meth:`ESMFusion.forward`. A frozen ESM-2 inside the model (``freeze_esm=True`` with ``esm_model``: no
gradients, eval mode, left out of :func:`param_groups`, its weights still in the ``state_dict`` as the reference's
``sequence_model.*``) is what ESM-GearNet's pretraining runs (``fix_sequence_model: True``), computing features
of masked inputs on the fly; in an input sequence :data:`ESM_MASK_CHAR` stands for ESM-2's ``<mask>`` token.

Deliberate differences from the reference (all documented where they occur):

* torchdrug's ESM reads the sequence of the graph's nodes (residues with a Cα; ``AlphaCarbonNode`` drops
  the others before the ESM sees them) and **truncates** proteins longer than 1,022 residues (and then
  misaligns with GearNet's nodes). Here that is the behaviour when no ``sequences`` are given; with
  ``sequences`` (and ``residue_mask``) the ESM reads the full chain sequence and residues without a Cα are
  dropped afterwards, exactly like the embedding store. Sequences longer than ``window`` (1,022) residues
  are **windowed** like :func:`geoplm.esm.embed_sequences` (overlapping windows, per-residue mean), never
  truncated, and never raise.
* torchdrug's residue id 20 does not exist (unknown residues become glycine); geoplm's id 20 (unknown)
  is read by the ESM as ``X``.
* In the reference, ``sequence_model_lr_ratio`` rebuilds the optimizer from ``sequence_model``,
  ``structure_model`` and the task's ``mlp`` only, so the cross-fusion layers (``seq_linear``,
  ``struct_linear``, ``attn``) are never updated. :func:`param_groups` trains them at the full rate.

state_dict mapping to a torchdrug ``FusionNetwork`` (inside a task, strip the ``model.`` prefix):
``sequence_model.model.*`` (fair-esm ``ESM2``), ``structure_model.*`` (:class:`~geoplm.models.GearNet`, or
:class:`~geoplm.models.CDConv` whose names equal ESM-GearNet's ``models.CDConv``),
``seq_linear.*``, ``struct_linear.*``, ``attn.{query,key,value}.*``, ``attn.attn.{in_proj_weight,
in_proj_bias,out_proj.weight,out_proj.bias}`` are identical; torchdrug's ``sequence_model.mapping`` buffer
(residue id -> ESM token) has no counterpart here: drop it before loading. Checked once (not part of the
tests, which need no torchdrug): the reference ``FusionNetwork`` with torchdrug 0.2.1's ``models.ESM`` (tiny
random ESM-2) and ``models.GearNet`` on two AlphaFold models, its state dict loaded here with
``strict=True``, gives the same node and graph features for all three fusions in eval mode (float32 rounding:
differences below 1e-6 of the largest value).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import esm
import torch
from torch import Tensor, nn

from geoplm.errors import ConfigError, EmbeddingError
from geoplm.esm import DEFAULT_STRIDE, DEFAULT_WINDOW, window_starts
from geoplm.graph import ResidueGraph, readout, residue_one_hot
from geoplm.structure import RESIDUE_VOCAB

__all__ = [
    "ESMEncoder",
    "ESMFusion",
    "ESMGearNet",
    "ESMModule",
    "ESM_MASK_CHAR",
    "FUSIONS",
    "SelfAttentionBlock",
    "param_groups",
    "record_esm_inputs",
]

#: The character of an in-model ESM's input sequence that reads as ESM-2's ``<mask>`` token: one character per
#: residue, so masked sequences keep their length and stay aligned with ``residue_mask`` and the graph's nodes
#: (:func:`geoplm.pretraining.masking.mask_residues`; ESM-GearNet's ``ResidueTypePrediction`` sets masked residues
#: to ``alphabet.get_idx("<mask>")``). :meth:`ESMModule.embed` hands it to fair-esm as ``"<mask>"``.
ESM_MASK_CHAR = "?"

#: Fusion schemes; ``"series"`` (the reference's name) is accepted as an alias of ``"serial"``.
FUSIONS = ("serial", "parallel", "cross")
_ALIASES = {"series": "serial"}


def record_esm_inputs(record: dict) -> tuple[str, Tensor]:
    """The ESM inputs of one residue record (:mod:`geoplm.structure`): its full one-letter sequence and the
    ``(L,)`` bool mask of the residues that are graph nodes (those with a Cα, the rows kept by
    :func:`geoplm.graph.record_graph_inputs`), to pass as ``sequences`` / ``residue_mask`` of
    :meth:`ESMFusion.forward`."""
    mask = ~torch.isnan(record["backbone"][:, 1]).any(dim=-1)
    return record["sequence"], mask


class SelfAttentionBlock(nn.Module):
    """torchdrug ``layers.SelfAttentionBlock`` (Vaswani et al. 2017 multi-head self-attention) over padded
    token sets: ``out = MHA(query(x), key(x), value(x), key_padding_mask=~mask)``.

    ``query``, ``key``, ``value`` are ``Linear(hidden_dim, hidden_dim)``; ``attn`` is
    ``nn.MultiheadAttention(hidden_dim, num_heads, dropout)`` (which applies its own input projections,
    dropout on the attention maps in training mode, and the output projection). No residual connection,
    layer norm or feed-forward layer, as in torchdrug. Parameter names equal torchdrug's.

    Args:
        hidden_dim: token width; a multiple of ``num_heads``.
        num_heads: attention heads.
        dropout: dropout ratio of the attention maps.

    Raises:
        ConfigError: ``hidden_dim`` is not a multiple of ``num_heads``.
    """

    def __init__(self, hidden_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if hidden_dim % num_heads:
            raise ConfigError(f"cross_dim {hidden_dim} is not a multiple of the number of attention heads {num_heads}")
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.query = nn.Linear(hidden_dim, hidden_dim)
        self.key = nn.Linear(hidden_dim, hidden_dim)
        self.value = nn.Linear(hidden_dim, hidden_dim)
        self.attn = nn.MultiheadAttention(hidden_dim, num_heads, dropout=dropout, batch_first=True)

    def forward(self, input: Tensor, mask: Tensor) -> Tensor:
        """``input`` ``(B, T, hidden_dim)``, ``mask`` ``(B, T)`` bool (True = real token) -> ``(B, T,
        hidden_dim)``; rows of padding tokens are meaningless."""
        output, _ = self.attn(
            self.query(input), self.key(input), self.value(input), key_padding_mask=~mask, need_weights=False
        )
        return output


class _SequenceModel(nn.Module):
    """Holds the fair-esm model as ``.model`` so parameter names read ``sequence_model.model.*`` as in
    torchdrug's ``models.ESM``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model


class ESMModule(nn.Module):
    """The ESM-2 half shared by :class:`ESMEncoder` (ESM-2 alone) and :class:`ESMFusion` (ESM-GearNet,
    ESM-CDConv, ...): per-residue ESM features either given precomputed (the embedding store) or computed by
    a fair-esm ESM-2 held as ``sequence_model.model`` (frozen or fine-tuned), with windowing of long chains.
    :func:`param_groups` gives the in-model ESM of every ``ESMModule`` its learning-rate ratio.

    Args:
        esm_model: a fair-esm ESM-2 (``geoplm.esm.load_esm2``, ``esm.pretrained``) run inside the model, or
            None when ESM features are always given precomputed.
        esm_alphabet: its fair-esm ``Alphabet`` (required with ``esm_model``).
        esm_dim: width of the ESM features; taken from ``esm_model.embed_dim`` when a model is given.
        freeze_esm: the in-model ESM is frozen (``requires_grad=False``, always in eval mode, run without
            gradients: the reference's ``*_freeze.yaml``); False fine-tunes it (``requires_grad=True``; use
            :func:`param_groups` for the 0.1 learning-rate ratio). ``esm_model`` itself is modified (it is
            a submodule, not a copy).
        repr_layer: ESM layer whose hidden state is the per-residue feature (``0..num_layers``, negative
            from the end; -1 = last layer after the final layer norm, as torchdrug's ``models.ESM``).
        esm_readout: ``"mean"`` (torchdrug ``models.ESM`` default, used by every ESM-GearNet config) or
            ``"sum"``: how the ESM features of a protein's residues become its ESM graph feature.
        window, stride: windowing of sequences longer than ``window`` residues in the in-model ESM, as
            :func:`geoplm.esm.embed_sequences` (defaults 1,022 / 511).
        toks_per_batch: token budget per ESM forward (windows sorted and packed by fair-esm's
            ``FastaBatchedDataset.get_batch_indices``, like :func:`geoplm.esm.embed_sequences`, so a
            frozen in-model ESM gives the embedding store's numbers).

    Raises:
        ConfigError: a missing ``esm_dim`` / ``esm_alphabet``, ``esm_dim`` that contradicts the model, bad
            window/stride/readout.
        EmbeddingError: ``repr_layer`` outside the ESM's layers.
    """

    def __init__(
        self,
        esm_model: nn.Module | None = None,
        esm_alphabet: esm.data.Alphabet | None = None,
        esm_dim: int | None = None,
        freeze_esm: bool = True,
        repr_layer: int = -1,
        esm_readout: str = "mean",
        window: int = DEFAULT_WINDOW,
        stride: int = DEFAULT_STRIDE,
        toks_per_batch: int = 4096,
    ):
        super().__init__()
        if esm_readout not in ("mean", "sum"):
            raise ConfigError(f"esm_readout: {esm_readout!r} (expected 'mean' or 'sum')")
        if window < 1 or not 1 <= stride <= window or toks_per_batch < 1:
            raise ConfigError(f"invalid ESM windowing: {window=}, {stride=}, {toks_per_batch=}")
        self.freeze_esm = freeze_esm
        self.esm_readout = esm_readout
        self.window = window
        self.stride = stride
        self.toks_per_batch = toks_per_batch

        if esm_model is not None:
            if esm_alphabet is None:
                raise ConfigError("esm_alphabet is required with esm_model (fair-esm returns (model, alphabet))")
            model_dim = int(esm_model.embed_dim)
            if esm_dim is not None and esm_dim != model_dim:
                raise ConfigError(f"esm_dim {esm_dim} differs from the ESM model's embed_dim {model_dim}")
            esm_dim = model_dim
            num_layers = int(esm_model.num_layers)
            if not -(num_layers + 1) <= repr_layer <= num_layers:
                raise EmbeddingError(
                    f"repr_layer {repr_layer} is out of range for a {num_layers}-layer ESM (0..{num_layers}, "
                    f"or -{num_layers + 1}..-1 from the end)"
                )
            self.repr_layer = (repr_layer + num_layers + 1) % (num_layers + 1)
            self.sequence_model = _SequenceModel(esm_model)
            self.alphabet = esm_alphabet
            self._allowed = set(esm_alphabet.standard_toks) | {ESM_MASK_CHAR}
            for param in self.sequence_model.parameters():
                param.requires_grad_(not freeze_esm)
            if freeze_esm:
                self.sequence_model.eval()
        else:
            if esm_dim is None:
                raise ConfigError("esm_dim is required when no esm_model is given (precomputed ESM features)")
            self.repr_layer = repr_layer
            self.sequence_model = None
            self.alphabet = None
        self.esm_dim = int(esm_dim)

    def train(self, mode: bool = True) -> ESMModule:
        """As ``nn.Module.train``, but a frozen in-model ESM stays in eval mode."""
        super().train(mode)
        if self.sequence_model is not None and self.freeze_esm:
            self.sequence_model.eval()
        return self

    def _check_sequence(self, index: int, sequence: str) -> str:
        if not isinstance(sequence, str) or not sequence:
            raise EmbeddingError(f"protein {index} of the batch: empty sequence, nothing to embed")
        upper = sequence.upper()
        bad = sorted(set(upper) - self._allowed)
        if bad:
            raise EmbeddingError(f"protein {index} of the batch: characters outside the ESM alphabet {bad!r}")
        return upper

    def embed(self, sequences: Sequence[str]) -> list[Tensor]:
        """Per-residue ESM features of each sequence with the in-model ESM: a list of ``(L_i, esm_dim)``
        tensors on the model's device (BOS/EOS removed; layer ``repr_layer``).

        Sequences of at most ``window`` residues are one fair-esm forward (``<cls>`` + residues +
        ``<eos>``); longer ones are cut into overlapping windows (:func:`geoplm.esm.window_starts`) and each
        residue gets the mean over the windows covering it, as :func:`geoplm.esm.embed_sequences` does.
        Differentiable when the ESM is not frozen.

        A residue written :data:`ESM_MASK_CHAR` is read as ESM-2's ``<mask>`` token (masked pretraining inputs).

        Raises:
            EmbeddingError: no in-model ESM, an empty sequence or characters outside the ESM alphabet
                (naming the protein's index in the batch).
        """
        if self.sequence_model is None:
            raise EmbeddingError("no in-model ESM: pass precomputed esm_feature (N, esm_dim) instead")
        checked = [self._check_sequence(i, s) for i, s in enumerate(sequences)]
        labels: list[tuple[int, int]] = []
        chunks: list[str] = []
        for index, sequence in enumerate(checked):
            for start in window_starts(len(sequence), self.window, self.stride):
                labels.append((index, start))
                chunks.append(sequence[start : start + self.window])
        if not chunks:
            return []
        alphabet = self.alphabet
        model = self.sequence_model.model
        device = next(model.parameters()).device
        dataset = esm.data.FastaBatchedDataset(labels, chunks)
        extra = int(alphabet.prepend_bos) + int(alphabet.append_eos)
        batches = dataset.get_batch_indices(self.toks_per_batch, extra_toks_per_seq=extra)
        converter = alphabet.get_batch_converter()
        offset = int(alphabet.prepend_bos)
        outputs: dict[tuple[int, int], Tensor] = {}
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_esm):
            for batch in batches:
                items = [dataset[i] for i in batch]
                # one character per residue here; fair-esm tokenizes "<mask>" (a special token) as ESM's mask
                masked = [(label, chunk.replace(ESM_MASK_CHAR, "<mask>")) for label, chunk in items]
                batch_labels, _, tokens = converter(masked)
                hidden = model(tokens.to(device), repr_layers=[self.repr_layer])["representations"][self.repr_layer]
                for row, (label, (_, chunk)) in enumerate(zip(batch_labels, items, strict=True)):
                    outputs[label] = hidden[row, offset : offset + len(chunk)]

        result = []
        for index, sequence in enumerate(checked):
            starts = window_starts(len(sequence), self.window, self.stride)
            if len(starts) == 1:
                result.append(outputs[(index, 0)])
                continue
            first = outputs[(index, starts[0])]
            total = first.new_zeros(len(sequence), first.shape[-1])
            count = torch.zeros(len(sequence), 1, dtype=first.dtype, device=first.device)
            for start in starts:
                rep = outputs[(index, start)]
                positions = torch.arange(start, start + rep.shape[0], device=rep.device)
                total = total.index_add(0, positions, rep)
                count[start : start + rep.shape[0]] += 1.0
            result.append(total / count)
        return result

    def esm_node_feature(
        self,
        graph: ResidueGraph,
        sequences: Sequence[str] | None = None,
        residue_mask: Sequence[Tensor] | None = None,
    ) -> Tensor:
        """In-model ESM features of the graph's nodes, ``(N, esm_dim)``, rows in node order.

        Args:
            graph: packed batch of B proteins.
            sequences: B full chain sequences (one-letter); None = the sequence of the graph's nodes read
                from ``graph.residue_type`` (torchdrug's ``models.ESM`` behaviour; id 20 reads as ``X``).
            residue_mask: B bool tensors ``(L_i,)``, True for residues that are graph nodes (with a Cα;
                :func:`record_esm_inputs`); None = every residue is a node.

        Raises:
            EmbeddingError: the number of sequences is not B, a mask's length differs from its sequence,
                or the residues kept do not match the protein's node count (naming the protein); and as
                :meth:`embed`.
        """
        sizes = graph.num_nodes_per_graph.tolist()
        if sequences is None:
            if residue_mask is not None:
                raise EmbeddingError("residue_mask given without sequences")
            letters = [RESIDUE_VOCAB[t] for t in graph.residue_type.tolist()]
            bounds = [0, *torch.tensor(sizes, dtype=torch.long).cumsum(0).tolist()]
            sequences = ["".join(letters[bounds[i] : bounds[i + 1]]) for i in range(graph.batch_size)]
        if len(sequences) != graph.batch_size:
            raise EmbeddingError(f"{len(sequences)} sequences for a batch of {graph.batch_size} proteins")
        if residue_mask is not None and len(residue_mask) != graph.batch_size:
            raise EmbeddingError(f"{len(residue_mask)} residue masks for a batch of {graph.batch_size} proteins")
        for i, sequence in enumerate(sequences):
            if residue_mask is None:
                kept = len(sequence)
            else:
                mask = residue_mask[i]
                if mask.shape != (len(sequence),):
                    raise EmbeddingError(
                        f"protein {i} of the batch: residue_mask has shape {tuple(mask.shape)}, "
                        f"the sequence {len(sequence)} residues"
                    )
                kept = int(mask.sum())
            if kept != sizes[i]:
                raise EmbeddingError(
                    f"protein {i} of the batch: {kept} residues for {sizes[i]} graph nodes"
                    + ("" if residue_mask is not None else " (pass residue_mask to drop residues without a Cα)")
                )
        features = self.embed(sequences)
        if residue_mask is not None:
            features = [f[m.to(device=f.device, dtype=torch.bool)] for f, m in zip(features, residue_mask, strict=True)]
        if not features:
            return graph.node_position.new_zeros(0, self.esm_dim)
        return torch.cat(features).to(graph.node_position.device)

    # ------------------------------------------------------------------------------------------------

    def sequence_feature(
        self,
        graph: ResidueGraph,
        esm_feature: Tensor | None = None,
        sequences: Sequence[str] | None = None,
        residue_mask: Sequence[Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The ESM features of the graph's nodes ``(N, esm_dim)`` and their readout ``(B, esm_dim)``.

        ``esm_feature`` (precomputed rows, node order, residues without a Cα already removed) is used when
        given; otherwise the in-model ESM runs (:meth:`esm_node_feature`).

        Raises:
            EmbeddingError: neither ``esm_feature`` nor an in-model ESM; ``esm_feature`` together with
                ``sequences``; ``esm_feature`` of the wrong shape; and as :meth:`esm_node_feature`.
        """
        if esm_feature is not None:
            if sequences is not None or residue_mask is not None:
                raise EmbeddingError("give either precomputed esm_feature or sequences/residue_mask, not both")
            if esm_feature.shape != (graph.num_nodes, self.esm_dim):
                raise EmbeddingError(
                    f"esm_feature has shape {tuple(esm_feature.shape)}, expected ({graph.num_nodes}, {self.esm_dim}) "
                    "(one row per residue with a Cα)"
                )
            node = esm_feature.float()
        elif self.sequence_model is not None:
            node = self.esm_node_feature(graph, sequences, residue_mask)
        else:
            raise EmbeddingError("no ESM features: pass esm_feature (N, esm_dim) or build the model with esm_model")
        if self.esm_readout == "mean":
            return node, readout(node, graph.node2graph, graph.batch_size, "mean")
        return node, readout(node, graph.node2graph, graph.batch_size, "sum")


class ESMEncoder(ESMModule):
    """ESM-2 alone as a protein encoder (torchdrug 0.2.1 ``models.ESM``, DeepGraphLearning/torchdrug @
    6066fbd82360abb5f270cba1eca560af01b8cc90 ``torchdrug/models/esm.py`` ``EvolutionaryScaleModeling``; the
    ESM-GearNet paper's "ESM-2-650M" row, ESM-GearNet @ bc90557bbf9ee2676e87b9fc84570aa126daa808
    ``config/{EC,GO}/esm.yaml``).

    ``node_feature`` = the ESM-2 per-residue features ``(N, esm_dim)`` of the graph's nodes; ``graph_feature``
    = their ``esm_readout`` over each protein's nodes ``(B, esm_dim)`` (torchdrug's default ``readout="mean"``).
    With precomputed (frozen) features the model has no parameters: it is the readout. With ``esm_model`` and
    ``freeze_esm=False`` ESM-2 runs inside and is fine-tuned; the reference's ``lr_ratio: 0.1`` (whole ESM at
    0.1 x lr, task head at lr) is :func:`param_groups` with ``esm_lr_ratio=0.1``. Arguments as
    :class:`ESMModule`.

    Differences from the reference: the mean runs over the residues that are graph nodes (with a Cα), where
    torchdrug's ``models.ESM`` (``ProteinView("residue")``, no ``AlphaCarbonNode``) averages over every parsed
    residue; chains longer than 1,022 residues are windowed, not truncated (see the module docstring).
    """

    @property
    def output_dim(self) -> int:
        """Width of ``node_feature`` and ``graph_feature``: ``esm_dim``."""
        return self.esm_dim

    def forward(
        self,
        graph: ResidueGraph,
        esm_feature: Tensor | None = None,
        sequences: Sequence[str] | None = None,
        residue_mask: Sequence[Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """``{"node_feature": (N, esm_dim), "graph_feature": (B, esm_dim)}``; inputs and errors as
        :meth:`ESMModule.sequence_feature`."""
        node, graph_feature = self.sequence_feature(graph, esm_feature, sequences, residue_mask)
        return {"node_feature": node, "graph_feature": graph_feature}


class ESMFusion(ESMModule):
    """ESM-2 fused with a structure encoder (ESM-GearNet ``models.FusionNetwork``; see the module docstring):
    ESM-GearNet, ESM-CDConv, ESM-GVP, ... according to ``structure_model``.

    Args:
        structure_model: the structure encoder: a module with ``input_dim`` and ``output_dim`` attributes whose
            ``forward(graph, input)`` takes ``(N, input_dim)`` node features and returns ``node_feature`` ``(N,
            output_dim)`` and ``graph_feature`` ``(B, output_dim)`` (:class:`~geoplm.models.GearNet`,
            :class:`~geoplm.models.CDConv`). For ``serial`` its ``input_dim`` must equal the ESM width
            (``esm_dim``, e.g. 1280 for ESM-2 650M); for ``parallel`` / ``cross`` it is the width of the node
            input (21 for the residue one-hot). Its own outputs are used as they are: GearNet's per-residue
            features with its ``readout``; CDConv's protein feature broadcast to the residues with its mean
            readout (so ``serial`` / ``parallel`` ESM-CDConv concatenate each residue's ESM row with its
            protein's CDConv vector, as the reference).
        fusion: ``"serial"`` (alias ``"series"``), ``"parallel"`` or ``"cross"``.
        cross_dim: token width of the ``cross`` fusion (512 in the reference's ``*_cross.yaml``).
        num_heads: attention heads of the ``cross`` fusion (8 in the reference).
        attention_dropout: dropout of the ``cross`` attention maps (0.1 in the reference).
        esm_model, esm_alphabet, esm_dim, freeze_esm, repr_layer, esm_readout, window, stride,
            toks_per_batch: the ESM half, as :class:`ESMModule`.

    Raises:
        ConfigError: unknown fusion, ESM width that does not match the structure model's input (``serial``),
            a structure model without ``input_dim`` / ``output_dim``, ``cross_dim`` not a multiple of
            ``num_heads``, and as :class:`ESMModule`.
        EmbeddingError: as :class:`ESMModule`.
    """

    def __init__(
        self,
        structure_model: nn.Module,
        esm_model: nn.Module | None = None,
        esm_alphabet: esm.data.Alphabet | None = None,
        esm_dim: int | None = None,
        fusion: str = "serial",
        freeze_esm: bool = True,
        repr_layer: int = -1,
        cross_dim: int = 512,
        num_heads: int = 8,
        attention_dropout: float = 0.1,
        esm_readout: str = "mean",
        window: int = DEFAULT_WINDOW,
        stride: int = DEFAULT_STRIDE,
        toks_per_batch: int = 4096,
    ):
        fusion = _ALIASES.get(fusion, fusion)
        if fusion not in FUSIONS:
            raise ConfigError(f"fusion: unknown scheme {fusion!r} (expected one of {', '.join(FUSIONS)} or 'series')")
        name = type(structure_model).__name__
        if not all(hasattr(structure_model, attr) for attr in ("input_dim", "output_dim")):
            raise ConfigError(f"structure model {name} has no input_dim / output_dim")
        super().__init__(
            esm_model, esm_alphabet, esm_dim, freeze_esm, repr_layer, esm_readout, window, stride, toks_per_batch
        )
        self.fusion = fusion
        self.structure_model = structure_model
        if fusion == "serial" and structure_model.input_dim != self.esm_dim:
            raise ConfigError(
                f"serial fusion: {name} input_dim {structure_model.input_dim} must equal the ESM width {self.esm_dim}"
            )
        if fusion == "cross":
            self.cross_dim = cross_dim
            self.seq_linear = nn.Linear(self.esm_dim, cross_dim)
            self.struct_linear = nn.Linear(structure_model.output_dim, cross_dim)
            self.attn = SelfAttentionBlock(cross_dim, num_heads, attention_dropout)

    @property
    def output_dim(self) -> int:
        """Width of ``node_feature`` and ``graph_feature``: ``esm_dim + structure_model.output_dim`` (serial,
        parallel) or ``2 * cross_dim`` (cross)."""
        if self.fusion == "cross":
            return 2 * self.cross_dim
        return self.esm_dim + self.structure_model.output_dim

    def forward(
        self,
        graph: ResidueGraph,
        node_input: Tensor | None = None,
        esm_feature: Tensor | None = None,
        sequences: Sequence[str] | None = None,
        residue_mask: Sequence[Tensor] | None = None,
        line_graph=None,
    ) -> dict[str, Tensor]:
        """Fused residue and protein representations of a packed batch.

        Typical training-loop calls (graph packed from records, e.g. :func:`geoplm.graph.pack_graphs`)::

            out = model(graph, esm_feature=torch.cat(stored_rows))           # frozen, embedding store
            seqs, masks = zip(*map(record_esm_inputs, records))
            out = model(graph, sequences=seqs, residue_mask=masks)           # in-model ESM

        Args:
            graph: a :class:`~geoplm.graph.ResidueGraph` of B proteins, N nodes (residues with a Cα).
            node_input: ``(N, structure_model.input_dim)`` structure-model input for ``parallel`` / ``cross``;
                None = the 21-d residue one-hot of ``graph.residue_type`` (:func:`geoplm.graph.residue_one_hot`).
                Ignored by ``serial`` (the structure model reads the ESM features).
            esm_feature: precomputed ``(N, esm_dim)`` float ESM features of the nodes (rows in node order,
                residues without a Cα already removed); if given, the in-model ESM is not run.
            sequences: B chain sequences for the in-model ESM (see :meth:`esm_node_feature`); None = the
                node sequence from ``graph.residue_type``.
            residue_mask: B bool ``(L_i,)`` masks of the residues that are nodes (see
                :meth:`esm_node_feature`).
            line_graph: optional precomputed spatial line graph, passed to GearNet(-Edge) (only when given).

        Returns:
            ``{"node_feature": (N, output_dim), "graph_feature": (B, output_dim)}`` (see the module
            docstring for what each half is).

        Raises:
            EmbeddingError: as :meth:`ESMModule.sequence_feature`.
            ValueError: ``node_input`` of the wrong shape.
        """
        seq_node, seq_graph = self.sequence_feature(graph, esm_feature, sequences, residue_mask)
        if self.fusion == "serial":
            struct_input = seq_node
        else:
            struct_input = residue_one_hot(graph.residue_type) if node_input is None else node_input.float()
            if struct_input.shape != (graph.num_nodes, self.structure_model.input_dim):
                raise ValueError(
                    f"node_input has shape {tuple(struct_input.shape)}, {type(self.structure_model).__name__} "
                    f"expects ({graph.num_nodes}, {self.structure_model.input_dim})"
                )
        extra = {} if line_graph is None else {"line_graph": line_graph}
        struct = self.structure_model(graph, struct_input, **extra)
        struct_node = struct["node_feature"]

        if self.fusion in ("serial", "parallel"):
            return {
                "node_feature": torch.cat([seq_node, struct_node], dim=-1),
                "graph_feature": torch.cat([seq_graph, struct["graph_feature"]], dim=-1),
            }
        node_feature = self._cross(graph, self.seq_linear(seq_node), self.struct_linear(struct_node))
        return {
            "node_feature": node_feature,
            "graph_feature": readout(node_feature, graph.node2graph, graph.batch_size, "sum"),
        }

    def _cross(self, graph: ResidueGraph, seq: Tensor, struct: Tensor) -> Tensor:
        """Per protein, self-attention over ``[seq_1..seq_n, struct_1..struct_n]`` (``n`` = its nodes),
        padded to ``2 * max n`` tokens; returns ``[out(seq_i), out(struct_i)]`` per node ``(N, 2 cross_dim)``."""
        sizes = graph.num_nodes_per_graph
        batch_size = graph.batch_size
        if graph.num_nodes == 0:
            return seq.new_zeros(0, 2 * self.cross_dim)
        starts = torch.cumsum(sizes, 0) - sizes
        local = torch.arange(graph.num_nodes, device=seq.device) - starts[graph.node2graph]
        length = int(2 * sizes.max())
        seq_slot = graph.node2graph * length + local
        struct_slot = seq_slot + sizes[graph.node2graph]
        padded = seq.new_zeros(batch_size * length, seq.shape[-1])
        padded = padded.index_put((seq_slot,), seq).index_put((struct_slot,), struct)
        mask = torch.arange(length, device=seq.device).unsqueeze(0) < (2 * sizes).unsqueeze(1)
        mask[:, 0] |= sizes == 0  # a protein without nodes: one (zero) key, so softmax stays finite
        out = self.attn(padded.view(batch_size, length, -1), mask).reshape(batch_size * length, -1)
        return torch.cat([out[seq_slot], out[struct_slot]], dim=-1)


#: The name ESM-GearNet's code and this project used first; ESM-GearNet is ``ESMFusion(GearNet(...))``.
ESMGearNet = ESMFusion


def param_groups(model: nn.Module, lr: float, esm_lr_ratio: float = 0.1) -> list[dict]:
    """Optimizer parameter groups with ESM-GearNet's ESM learning-rate ratio.

    The parameters of every in-model ESM (the ``sequence_model`` of each :class:`ESMModule` inside
    ``model``: :class:`ESMFusion`, :class:`ESMEncoder`) that require gradients get ``lr * esm_lr_ratio``
    (ESM-GearNet ``util.py`` ``build_downstream_solver`` with ``sequence_model_lr_ratio: 0.1`` for the
    fusions, ``lr_ratio: 0.1`` for ESM-2 alone, whose whole ``model`` is the ESM); every other trainable
    parameter (GearNet, CDConv, cross-fusion layers, task heads) gets ``lr``. Frozen parameters
    (``requires_grad=False``, e.g. a frozen ESM) are left out (the reference's ``*_freeze.yaml`` instead keeps
    them at ratio 0). Empty groups are omitted. Each group has a ``"name"`` (``"esm"`` or ``"other"``),
    which torch optimizers keep as an extra key.

    Args:
        model: an :class:`ESMModule` or any module containing one (e.g. encoder + prediction head).
        lr: base learning rate (> 0).
        esm_lr_ratio: ESM learning rate / base learning rate (>= 0).

    Returns:
        ``[{"name": "esm", "params": [...], "lr": lr * esm_lr_ratio}, {"name": "other", "params": [...],
        "lr": lr}]`` (without empty groups), ready for ``torch.optim.Adam(groups, lr=lr)``.

    Raises:
        ConfigError: ``lr <= 0`` or ``esm_lr_ratio < 0``.
    """
    if not lr > 0:
        raise ConfigError(f"lr must be > 0, got {lr}")
    if not esm_lr_ratio >= 0:
        raise ConfigError(f"esm_lr_ratio must be >= 0, got {esm_lr_ratio}")
    esm_ids = set()
    for module in model.modules():
        if isinstance(module, ESMModule) and module.sequence_model is not None:
            esm_ids.update(id(p) for p in module.sequence_model.parameters())
    esm_params: list[nn.Parameter] = []
    other: list[nn.Parameter] = []
    for param in _unique(model.parameters()):
        if not param.requires_grad:
            continue
        (esm_params if id(param) in esm_ids else other).append(param)
    groups = []
    if esm_params:
        groups.append({"name": "esm", "params": esm_params, "lr": lr * esm_lr_ratio})
    if other:
        groups.append({"name": "other", "params": other, "lr": lr})
    return groups


def _unique(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    seen, out = set(), []
    for param in params:
        if id(param) not in seen:
            seen.add(id(param))
            out.append(param)
    return out
