"""Molformer (Wu, Zhang, Jin, Jiang & Li, "Molformer: Motif-based Transformer on 3D Heterogeneous
Molecular Graphs", AAAI 2023, arXiv 2110.01191) as Wu et al. (Communications Biology 2023,
"Integration of pre-trained protein language models into geometric deep learning networks") use it
on residue-level Cα coordinates, re-implemented in plain torch.

Behaviour read from (nothing copied) smiles724/GGNN_Meets_PLM @
bb4524b99962ecd8b71c57e5b6cc9abbebc25225:

* ``main.py``: ``--model molformer`` imports ``molformer/tr_cpe.py`` and builds ``PSRModel(plm)``,
  ``LBAModel(plm)`` or ``PPIModel(plm)``; the graph is fully connected (``args.connect = 'FC'``),
  proteins are padded to ``(B, L_max)`` with token 21 (``collate``) and the padding is a key mask.
* ``molformer/tr_cpe.py`` (``PSRModel``, ``MultiRepresentationTransformer3D``, ``Encoder``,
  ``EncoderLayer``, ``attention``, ``MultiHeadedAttention``): ``N=2`` layers, ``embed_dim=32``,
  ``head=4``, ``dropout=0.1``, feed-forward width = ``embed_dim``; Xavier-uniform initialisation of
  every parameter with more than one dimension.
* ``molformer/tr_spe.py`` (``Embeddings``, ``LayerNorm``, ``SublayerConnection``, ``FeedForward``,
  ``Generator3D``; Harvard NLP "Annotated Transformer" building blocks).
* ``molformer/tr_msa.py`` (``MultiScaleMultiHeadedAttention``, ``attention``): the multi-scale
  variant of the AAAI paper (Sec. "Multi-scale attention"); **not** used by Wu et al.'s ``main.py``
  (the file imports a ``Feat_Embedding`` that ``tr_spe.py`` lacks, and indexes its ``(B, L, L)``
  distance mask as 4-D; read here as ``(dist < s).unsqueeze(1)``). Available here through
  ``distance_scales``; off by default.

What :class:`Molformer` computes (Wu et al.'s ``tr_cpe`` encoder, without the ``Generator3D`` head):

* node input: ``Embedding(num_residue_types, D)(type) * sqrt(D)`` (``D = embed_dim = 32``), or with
  ``plm_dim`` the per-residue PLM vector itself (ESM-2 650M, 1280-d), which *replaces* the embedding
  with no projection, so the model width becomes ``D = plm_dim`` (Wu et al.'s ``PSRModel(plm=True)``
  sets ``embed_dim = 1280`` and ``embed = None``);
* full attention among the residues of each protein (no kNN / radius graph; ``edge_index`` is
  ignored) with a multiplicative Cα-distance term: for head ``h``,
  ``scores_h = (Q_h K_h^T / sqrt(d_k)) * C_h(d_ij)`` where ``d_ij = |x_i - x_j|`` (Å) and ``C`` is
  the 1x1 convolution ``Conv2d(1, H, 1) -> ReLU -> Conv2d(H, H, 1)`` over the distance matrix;
  padded keys get ``-1e9`` before the softmax; dropout 0.1 on the attention probabilities;
* pre-norm residual sublayers ``x + dropout(sublayer(LayerNorm(x)))`` for the attention and the
  feed-forward ``Linear(D, F) -> ReLU -> dropout -> Linear(F, D)`` (``F = D``), and a final
  LayerNorm; the LayerNorm is the Annotated Transformer's ``a * (x - mean) / (std + 1e-6) + b``
  with the *unbiased* standard deviation (:class:`LayerNorm`), not ``torch.nn.LayerNorm``.

The output is E(3)-invariant (only distances enter). With ``distance_scales = (s_1, ..., s_m)`` (Å)
each layer instead runs tr_msa's multi-scale attention: the same scores are additionally masked
(``-1e10``) to keys with ``d_ij < s_k`` for every scale and once unrestricted, each branch goes
through the shared output projection, and ``Linear((m + 1) D, D) -> ReLU -> dropout -> Linear(D,
D)`` fuses them. tr_msa also always un-masks position 0 (Molformer's virtual global atom); residue
graphs have no such node, so that is not done here (every residue still sees itself, ``d_ii = 0``).

Reference quirks *not* reproduced (documented for the training code): the readout of
``Generator3D(mean=True)`` is ``mean(x * mask, dim=1)``, i.e. the sum over residues divided by the
*padded* batch length ``L_max``; unknown residues map to token 21 = the padding id there and are
masked as keys (here the unknown type 20 is an ordinary token); ``LBAModel`` / ``PPIModel`` with PLM
overwrite a frozen zero embedding with the PLM vectors (the same as plain PLM input for proteins).

Parameter count of Wu et al.'s configuration (:func:`molformer_num_parameters`): 13,752 with the
22-type embedding of the reference (+ 1,089 for the ``Generator3D`` head = 14,841 for ``PSRModel``),
19,689,016 with 1280-d PLM input (+ 1,640,961 = 21,329,977 with the head).

Checked against the reference classes (run outside the repository, weights copied over, float64, two
padded proteins): tr_cpe ``PSRModel`` encoder output agrees to 2e-8 with and without PLM input (the
reference's ``torch.cdist`` uses the matrix-product distance, so its self-distances are ~1e-7 Å, not
0); tr_msa ``MultiScaleMultiHeadedAttention`` (with the ``unsqueeze(1)`` fix, and residue 0 within
the smallest scale of every residue) agrees exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "DistanceAttention",
    "LayerNorm",
    "Molformer",
    "MolformerLayer",
    "molformer_num_parameters",
    "pad_by_graph",
]

#: Fill value of masked attention scores in tr_cpe (padding keys).
_MASK_FILL = -1e9
#: Fill value of tr_msa (padding keys and keys beyond a distance scale).
_MSA_MASK_FILL = -1e10
#: tr_msa appends this "scale" (Å) for the unrestricted branch.
_MSA_ALL = 1e10


class LayerNorm(nn.Module):
    """Annotated-Transformer LayerNorm ``a * (x - mean) / (std + eps) + b`` over the last dimension,
    ``std`` unbiased (``torch.std``), ``eps`` added to the std (tr_spe.py ``LayerNorm``).

    Shapes: ``(..., features) -> (..., features)``.
    """

    def __init__(self, features: int, eps: float = 1e-6):
        super().__init__()
        self.a_2 = nn.Parameter(torch.ones(features))
        self.b_2 = nn.Parameter(torch.zeros(features))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(-1, keepdim=True)
        std = x.std(-1, keepdim=True) + self.eps
        return self.a_2 * (x - mean) / std + self.b_2


class DistanceAttention(nn.Module):
    """Multi-head self-attention with a multiplicative, learned Cα-distance term (tr_cpe.py
    ``MultiHeadedAttention``), or with ``distance_scales`` the multi-scale variant (tr_msa.py
    ``MultiScaleMultiHeadedAttention``); see the module docstring.

    Args:
        num_heads: ``H``; ``dim`` must be divisible by it (else ``ValueError``).
        dim: model width ``D``.
        dropout: dropout on the attention probabilities (and inside the scale-fusion MLP).
        distance_scales: distance cut-offs in Å (positive), or None for tr_cpe's single scale.

    ``forward(x (B, L, D), dist (B, L, L) Å, mask (B, L) bool [True = residue]) -> (B, L, D)``.
    """

    def __init__(self, num_heads: int, dim: int, dropout: float = 0.1, distance_scales: Sequence[float] | None = None):
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"model width {dim} is not divisible by num_heads={num_heads}")
        self.h = num_heads
        self.d_k = dim // num_heads
        # q, k, v and output projections (the reference's ``linears``)
        self.linears = nn.ModuleList(nn.Linear(dim, dim) for _ in range(4))
        self.cnn = nn.Sequential(nn.Conv2d(1, num_heads, kernel_size=1), nn.ReLU(), nn.Conv2d(num_heads, num_heads, 1))
        self.dropout = nn.Dropout(dropout)
        self.distance_scales = None
        self.scale_linear = None
        if distance_scales is not None:
            scales = [float(s) for s in distance_scales]
            if not scales or min(scales) <= 0:
                raise ValueError(f"distance_scales must be positive distances in Å, got {list(distance_scales)}")
            self.distance_scales = scales
            self.scale_linear = nn.Sequential(
                nn.Linear((len(scales) + 1) * dim, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, dim)
            )

    def _distance_term(self, dist: Tensor) -> Tensor:
        """``self.cnn(dist.unsqueeze(1))`` -- two 1x1 convolutions with a ReLU between, (B, L, L) ->
        (B, H, L, L) -- computed as the per-pixel affine maps they are: the same numbers, without
        CPU convolution kernels (mkldnn's 1x1 backward dominated the step)."""
        conv0, conv2 = self.cnn[0], self.cnn[2]
        heads = conv0.out_channels
        hidden = torch.relu(dist.unsqueeze(1) * conv0.weight.view(1, heads, 1, 1) + conv0.bias.view(1, heads, 1, 1))
        out = torch.einsum("bchw,oc->bohw", hidden, conv2.weight.view(heads, heads))
        return out + conv2.bias.view(1, heads, 1, 1)

    def forward(self, x: Tensor, dist: Tensor, mask: Tensor) -> Tensor:
        batch, length, dim = x.shape
        q, k, v = (lin(x).view(batch, length, self.h, self.d_k).transpose(1, 2) for lin in self.linears[:3])
        dist_conv = self._distance_term(dist)  # (B, H, L, L)
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.d_k) * dist_conv
        key_mask = mask[:, None, None, :]  # (B, 1, 1, L)

        def attend(s: Tensor) -> Tensor:
            p_attn = self.dropout(F.softmax(s, dim=-1))
            out = torch.matmul(p_attn, v).transpose(1, 2).reshape(batch, length, dim)
            return self.linears[3](out)

        if self.distance_scales is None:
            return attend(scores.masked_fill(~key_mask, _MASK_FILL))
        scores = scores.masked_fill(~key_mask, _MSA_MASK_FILL)
        outs = [attend(scores.masked_fill((dist >= s).unsqueeze(1), _MSA_MASK_FILL)) for s in self.distance_scales]
        outs.append(attend(scores.masked_fill((dist >= _MSA_ALL).unsqueeze(1), _MSA_MASK_FILL)))
        return self.scale_linear(torch.cat(outs, dim=-1))


class MolformerLayer(nn.Module):
    """One encoder layer (tr_cpe.py ``EncoderLayer`` with tr_spe.py ``SublayerConnection`` /
    ``FeedForward``): ``x = x + dropout(attn(norm0(x)))``; ``x = x + dropout(ff(norm1(x)))`` with
    ``ff = Linear(D, F) -> ReLU -> dropout -> Linear(F, D)``.

    ``forward(x (B, L, D), dist (B, L, L) Å, mask (B, L) bool) -> (B, L, D)``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_dim: int,
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        distance_scales: Sequence[float] | None = None,
    ):
        super().__init__()
        self.self_attn = DistanceAttention(num_heads, dim, attention_dropout, distance_scales)
        self.w_1 = nn.Linear(dim, ffn_dim)
        self.w_2 = nn.Linear(ffn_dim, dim)
        self.norm = nn.ModuleList(LayerNorm(dim) for _ in range(2))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, dist: Tensor, mask: Tensor) -> Tensor:
        x = x + self.dropout(self.self_attn(self.norm[0](x), dist, mask))
        ff = self.w_2(self.dropout(F.relu(self.w_1(self.norm[1](x)))))
        return x + self.dropout(ff)


def pad_by_graph(values: Tensor, node2graph: Tensor, num_graphs: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Scatter packed per-residue rows into a zero-padded ``(B, L_max, ...)`` batch.

    Args:
        values: ``(N, ...)`` rows of all proteins packed together.
        node2graph: ``(N,)`` long protein index of each row (need not be sorted; order within a
            protein is kept).
        num_graphs: ``B`` (default ``node2graph.max() + 1``).

    Returns:
        ``(padded (B, L_max, ...), mask (B, L_max) bool, slot (N,) long)``: row ``n`` is at
        ``padded[node2graph[n], slot[n]]``.
    """
    num_graphs = int(node2graph.max()) + 1 if num_graphs is None else num_graphs
    counts = torch.bincount(node2graph, minlength=num_graphs)
    order = torch.argsort(node2graph, stable=True)
    start = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(node2graph)
    slot[order] = torch.arange(len(node2graph), device=node2graph.device) - start[node2graph[order]]
    length = int(counts.max()) if len(counts) else 0
    padded = values.new_zeros(num_graphs, length, *values.shape[1:])
    padded[node2graph, slot] = values
    mask = torch.zeros(num_graphs, length, dtype=torch.bool, device=values.device)
    mask[node2graph, slot] = True
    return padded, mask, slot


class Molformer(nn.Module):
    """Wu et al.'s residue-level Molformer encoder (tr_cpe ``PSRModel`` without its ``Generator3D``
    head; module docstring) returning per-residue features.

    Args:
        num_residue_types: rows of the residue-type embedding (ignored with ``plm_dim``). Default 21
            = geoplm's residue ids 0-19 plus unknown (20); Wu et al. use 22 (20 types, ligand,
            unknown/padding).
        plm_dim: if set, the node input is a ``(N, plm_dim)`` float PLM vector (1280 for ESM-2 650M)
            used directly as the layer input: no ``embed`` module, and the model width is ``plm_dim``.
        embed_dim: model width ``D`` with the residue-type embedding (32 in Wu et al.).
        num_layers: encoder layers (2).
        num_heads: attention heads (4); the width must be divisible by it (``ValueError``).
        ffn_dim: feed-forward hidden width (default: the model width, as in Wu et al.).
        dropout: residual / feed-forward / attention dropout (0.1).
        distance_scales: None (Wu et al.: single-scale tr_cpe attention) or the tr_msa multi-scale
            distance cut-offs in Å.

    ``forward(node_input, pos, edge_index=None, node2graph=None) -> (N, output_dim)``: ``node_input``
    ``(N,)`` long residue types or ``(N, plm_dim)`` floats; ``pos`` ``(N, 3)`` Cα coordinates (Å);
    ``edge_index`` is ignored (each residue attends to all residues of its protein, as in the
    reference's fully connected ``'FC'`` setting); ``node2graph`` ``(N,)`` long protein index (all
    zeros if None): proteins are padded to ``(B, L_max)`` with a key-padding mask, so they never see
    each other. Raises ``ValueError`` on inputs of the wrong shape or type.
    """

    def __init__(
        self,
        num_residue_types: int = 21,
        plm_dim: int | None = None,
        embed_dim: int = 32,
        num_layers: int = 2,
        num_heads: int = 4,
        ffn_dim: int | None = None,
        dropout: float = 0.1,
        distance_scales: Sequence[float] | None = None,
    ):
        super().__init__()
        self.plm_dim = plm_dim
        self.dim = plm_dim if plm_dim else embed_dim
        if self.dim % num_heads:
            raise ValueError(f"model width {self.dim} is not divisible by num_heads={num_heads}")
        self.embed = None if plm_dim else nn.Embedding(num_residue_types, embed_dim)
        self.layers = nn.ModuleList(
            MolformerLayer(self.dim, num_heads, ffn_dim or self.dim, dropout, dropout, distance_scales)
            for _ in range(num_layers)
        )
        self.norm = LayerNorm(self.dim)
        for p in self.parameters():  # the reference's initialisation (tr_cpe.py PSRModel)
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    @property
    def output_dim(self) -> int:
        """Width ``D`` of the returned residue features (``embed_dim``, or ``plm_dim``)."""
        return self.dim

    def forward(
        self, node_input: Tensor, pos: Tensor, edge_index: Tensor | None = None, node2graph: Tensor | None = None
    ) -> Tensor:
        if self.embed is None:
            if node_input.ndim != 2 or not node_input.is_floating_point() or node_input.shape[-1] != self.plm_dim:
                raise ValueError(f"PLM node input must be float (N, {self.plm_dim}), got {tuple(node_input.shape)}")
            h = node_input.to(pos.dtype)
        else:
            if node_input.ndim != 1 or node_input.is_floating_point():
                raise ValueError(f"node input must be (N,) long residue-type ids, got {tuple(node_input.shape)}")
            h = self.embed(node_input.long()) * math.sqrt(self.dim)
        num_nodes = h.shape[0]
        if pos.shape != (num_nodes, 3):
            raise ValueError(f"pos must be ({num_nodes}, 3) Cα coordinates, got {tuple(pos.shape)}")
        if node2graph is None:
            node2graph = torch.zeros(num_nodes, dtype=torch.long, device=pos.device)
        elif node2graph.shape != (num_nodes,) or node2graph.is_floating_point():
            raise ValueError(f"node2graph must be ({num_nodes},) long graph ids, got {tuple(node2graph.shape)}")
        elif num_nodes and int(node2graph.min()) < 0:
            raise ValueError("node2graph has negative graph ids")
        if num_nodes == 0:
            return h.new_zeros(0, self.dim)
        node2graph = node2graph.long()
        x, mask, slot = pad_by_graph(h, node2graph)
        coords, _, _ = pad_by_graph(pos, node2graph)
        dist = torch.cdist(coords, coords, compute_mode="donot_use_mm_for_euclid_dist")  # (B, L, L) Å
        for layer in self.layers:
            x = layer(x, dist, mask)
        return self.norm(x)[node2graph, slot]


def molformer_num_parameters(
    dim: int = 32,
    num_residue_types: int | None = 22,
    num_layers: int = 2,
    num_heads: int = 4,
    ffn_dim: int | None = None,
    num_scales: int = 0,
    head: bool = False,
) -> int:
    """Closed-form parameter count of :class:`Molformer` / Wu et al.'s tr_cpe ``PSRModel``.

    ``dim``: model width (32, or the PLM width); ``num_residue_types``: embedding rows (``None`` =
    PLM input, no embedding); ``ffn_dim``: feed-forward width (default ``dim``); ``num_scales``:
    number of tr_msa distance scales (0 = tr_cpe); ``head``: add ``Generator3D``'s ``Linear(D, D) +
    Linear(D, 1)``. Defaults give Wu et al.'s 13,752.
    """
    ffn_dim = ffn_dim or dim
    attn = 4 * (dim * dim + dim) + (num_heads + num_heads) + (num_heads * num_heads + num_heads)
    if num_scales:
        attn += (num_scales + 1) * dim * dim + dim + dim * dim + dim
    layer = attn + (dim * ffn_dim + ffn_dim) + (ffn_dim * dim + dim) + 2 * 2 * dim
    total = (num_residue_types * dim if num_residue_types else 0) + num_layers * layer + 2 * dim
    if head:
        total += dim * dim + dim + dim + 1
    return total
