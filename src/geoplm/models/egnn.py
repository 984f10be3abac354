"""E(n)-equivariant graph neural network (EGNN; Satorras, Hoogeboom & Welling, "E(n) Equivariant Graph
Neural Networks", ICML 2021, arXiv 2102.09844, Eqs. 3-6), re-implemented in plain torch.

Behaviour read from (nothing copied):

* vgsatorras/egnn @ e9ca6c0c3e1d30a7598efbd66034121b4af8dccc, ``models/egnn_clean/egnn_clean.py``
  (``E_GCL``, ``EGNN``, ``unsorted_segment_sum`` / ``unsorted_segment_mean``): the constructor
  signature of :class:`EGNN` (``embedding_in`` / ``embedding_out`` linear maps around the layers).
* smiles724/GGNN_Meets_PLM @ bb4524b99962ecd8b71c57e5b6cc9abbebc25225, ``egnn/egnn_clean.py`` (Wu et
  al. 2023, "Integration of pre-trained protein language models into geometric deep learning
  networks"): the same ``E_GCL`` (identical maths) in an ``EGNN`` *without* the linear input / output
  embeddings, on residue-level Cα graphs: ``n_layers=4``, ``in_edge_nf=16`` (the 16 RBF edge scalars of
  :func:`geoplm.models.gvp.edge_features`), ``residual=True``, ``attention=False``, ``normalize=False``,
  ``tanh=False``, SiLU. The node features are ``nn.Embedding(residue types, 32)`` of the residue type
  (``hidden_nf=32``), or, with PLM features, the 1280-d ESM-2 vector itself, so that every layer is then
  1280 wide (``hidden_nf = 1280``). That is :class:`EGNN` with ``embedding_in_out=False``, as
  :mod:`geoplm.models.zoo` builds it; the reference aggregates at ``edge_index[0]`` (below).

One layer (:class:`E_GCL`), for an edge ``j -> i`` (``edge_index = [source j, target i]``)::

    m_ij  = phi_e(h_i, h_j, ||x_i - x_j||^2, a_ij)                 (Eq. 3; 2 x Linear + SiLU)
    m_ij  = m_ij * sigmoid(Linear(m_ij))                            (optional ``attention``)
    x_i  += agg_j (x_i - x_j) * phi_x(m_ij)                          (Eq. 4; agg = mean by default)
    h_i   = h_i + phi_h(h_i, sum_j m_ij)                             (Eqs. 5-6; residual)

``phi_x`` is Linear-SiLU-Linear(no bias, Xavier-uniform gain 0.001)[-tanh]; with ``normalize`` the
difference ``x_i - x_j`` is divided by ``||x_i - x_j|| + 1e-8`` (norm detached), as in the reference.
The coordinate aggregation is the mean over incoming edges (the reference's ``coords_agg='mean'``
default; the paper writes ``C = 1 / (M - 1)`` on a fully connected graph); ``coords_agg="sum"`` is the
alternative. The node aggregation is always a sum.

Edge direction convention: the reference aggregates at ``edge_index[0]`` (``row``). geoplm graphs
(:func:`geoplm.graph.knn_graph`, :func:`geoplm.graph.radius_graph`) are ``[source, target]`` with
messages flowing ``source -> target``, so here node ``i`` (the receiver) is ``edge_index[1]``. On a
symmetric graph (radius graph) the two conventions coincide; on torch_cluster's kNN graph, which Wu et al.
pass unchanged (``[neighbour, centre]``), the reference's messages flow from each centre to its ``k``
neighbours, so :mod:`geoplm.models.zoo` passes Wu et al.'s EGNN the flipped ``edge_index``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["EGNN", "E_GCL", "segment_mean", "segment_sum"]


def segment_sum(data: Tensor, index: Tensor, num_segments: int) -> Tensor:
    """``out[k] = sum_{e: index[e] = k} data[e]`` (``(num_segments, D)``)."""
    out = data.new_zeros(num_segments, data.shape[-1])
    return out.index_add_(0, index, data)


def segment_mean(data: Tensor, index: Tensor, num_segments: int) -> Tensor:
    """Mean of ``data`` per segment; empty segments give 0 (count clamped at 1, as the reference)."""
    total = segment_sum(data, index, num_segments)
    count = torch.bincount(index, minlength=num_segments).clamp(min=1).to(data.dtype)
    return total / count.unsqueeze(-1)


class E_GCL(nn.Module):  # noqa: N801 - the reference's name
    """E(n)-equivariant graph convolutional layer (see the module docstring).

    Args:
        input_nf: width of ``h`` at the input.
        output_nf: width of ``h`` at the output (must equal ``input_nf`` when ``residual``).
        hidden_nf: width of the messages ``m_ij``.
        edges_in_d: width of the optional edge attributes ``a_ij``.
        act_fn: non-linearity (SiLU in the reference).
        residual: ``h_i + phi_h(...)`` instead of ``phi_h(...)``.
        attention: gate messages by ``sigmoid(Linear(m_ij))``.
        normalize: divide ``x_i - x_j`` by its (detached) norm in the coordinate update.
        coords_agg: ``"mean"`` (reference default) or ``"sum"``.
        tanh: bound ``phi_x`` with a final ``tanh``.
    """

    def __init__(
        self,
        input_nf: int,
        output_nf: int,
        hidden_nf: int,
        edges_in_d: int = 0,
        act_fn: nn.Module | None = None,
        residual: bool = True,
        attention: bool = False,
        normalize: bool = False,
        coords_agg: str = "mean",
        tanh: bool = False,
    ):
        super().__init__()
        if coords_agg not in ("mean", "sum"):
            raise ValueError(f"coords_agg must be 'mean' or 'sum', got {coords_agg!r}")
        if residual and input_nf != output_nf:
            raise ValueError(f"residual needs input_nf == output_nf, got {input_nf} != {output_nf}")
        act_fn = act_fn if act_fn is not None else nn.SiLU()
        self.residual = residual
        self.attention = attention
        self.normalize = normalize
        self.coords_agg = coords_agg
        self.tanh = tanh
        self.epsilon = 1e-8

        self.edge_mlp = nn.Sequential(
            nn.Linear(2 * input_nf + 1 + edges_in_d, hidden_nf), act_fn, nn.Linear(hidden_nf, hidden_nf), act_fn
        )
        self.node_mlp = nn.Sequential(
            nn.Linear(hidden_nf + input_nf, hidden_nf), act_fn, nn.Linear(hidden_nf, output_nf)
        )
        last = nn.Linear(hidden_nf, 1, bias=False)
        nn.init.xavier_uniform_(last.weight, gain=0.001)
        coord_layers: list[nn.Module] = [nn.Linear(hidden_nf, hidden_nf), act_fn, last]
        if tanh:
            coord_layers.append(nn.Tanh())
        self.coord_mlp = nn.Sequential(*coord_layers)
        self.att_mlp = nn.Sequential(nn.Linear(hidden_nf, 1), nn.Sigmoid()) if attention else None

    def forward(
        self, h: Tensor, edge_index: Tensor, coord: Tensor, edge_attr: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Return the updated ``(h, coord)``; ``edge_index`` is ``(2, E)`` ``[source j, target i]``."""
        source, target = edge_index[0], edge_index[1]
        num_nodes = h.shape[0]
        diff = coord[target] - coord[source]  # x_i - x_j
        radial = (diff * diff).sum(dim=-1, keepdim=True)
        if self.normalize:
            diff = diff / (radial.sqrt().detach() + self.epsilon)

        parts = [h[target], h[source], radial]
        if edge_attr is not None:
            parts.append(edge_attr)
        message = self.edge_mlp(torch.cat(parts, dim=-1))
        if self.att_mlp is not None:
            message = message * self.att_mlp(message)

        trans = diff * self.coord_mlp(message)
        agg_fn = segment_mean if self.coords_agg == "mean" else segment_sum
        coord = coord + agg_fn(trans, target, num_nodes)

        agg = segment_sum(message, target, num_nodes)
        out = self.node_mlp(torch.cat([h, agg], dim=-1))
        if self.residual:
            out = h + out
        return out, coord


class EGNN(nn.Module):
    """Stack of :class:`E_GCL` layers between linear input / output embeddings (vgsatorras/egnn), or without
    them (``embedding_in_out=False``: GGNN_Meets_PLM's ``EGNN``; then ``in_node_nf``, ``hidden_nf`` and
    ``out_node_nf`` must be equal, else ``ValueError``).

    ``forward(h (N, in_node_nf), x (N, 3), edge_index (2, E) [source, target], edge_attr (E,
    in_edge_nf) | None) -> (h (N, out_node_nf), x (N, 3))``. Node features are E(3)-invariant and
    output coordinates equivariant (``R x + t`` in, ``R x' + t`` out). Wu et al.'s residue-level
    setting: ``EGNN(32, 32, 32, in_edge_nf=16, embedding_in_out=False)`` on embedded residue types, or
    ``EGNN(1280, 1280, 1280, ...)`` on ESM-2 vectors, with the RBF edge scalars of
    :func:`geoplm.models.gvp.edge_features`.
    """

    def __init__(
        self,
        in_node_nf: int,
        hidden_nf: int,
        out_node_nf: int,
        in_edge_nf: int = 0,
        n_layers: int = 4,
        residual: bool = True,
        attention: bool = False,
        normalize: bool = False,
        tanh: bool = False,
        act_fn: nn.Module | None = None,
        coords_agg: str = "mean",
        embedding_in_out: bool = True,
    ):
        super().__init__()
        if not embedding_in_out and not in_node_nf == hidden_nf == out_node_nf:
            raise ValueError(
                f"without input / output embeddings in_node_nf, hidden_nf and out_node_nf must be equal, got "
                f"{in_node_nf}, {hidden_nf}, {out_node_nf}"
            )
        self.in_node_nf = in_node_nf
        self.hidden_nf = hidden_nf
        self.out_node_nf = out_node_nf
        self.in_edge_nf = in_edge_nf
        self.n_layers = n_layers
        act_fn = act_fn if act_fn is not None else nn.SiLU()
        self.embedding_in = nn.Linear(in_node_nf, hidden_nf) if embedding_in_out else nn.Identity()
        self.embedding_out = nn.Linear(hidden_nf, out_node_nf) if embedding_in_out else nn.Identity()
        self.layers = nn.ModuleList(
            E_GCL(
                hidden_nf,
                hidden_nf,
                hidden_nf,
                edges_in_d=in_edge_nf,
                act_fn=act_fn,
                residual=residual,
                attention=attention,
                normalize=normalize,
                coords_agg=coords_agg,
                tanh=tanh,
            )
            for _ in range(n_layers)
        )

    def forward(
        self, h: Tensor, x: Tensor, edge_index: Tensor, edge_attr: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        if h.ndim != 2 or h.shape[-1] != self.in_node_nf:
            raise ValueError(f"h must be (N, {self.in_node_nf}), got {tuple(h.shape)}")
        if x.shape != (h.shape[0], 3):
            raise ValueError(f"x must be ({h.shape[0]}, 3), got {tuple(x.shape)}")
        if (edge_attr is None) != (self.in_edge_nf == 0):
            raise ValueError(f"edge_attr must be given iff in_edge_nf > 0 (in_edge_nf={self.in_edge_nf})")
        edge_index = edge_index.long()
        h = self.embedding_in(h)
        for layer in self.layers:
            h, x = layer(h, edge_index, x, edge_attr)
        return self.embedding_out(h), x
