"""GVP-GNN (Jing, Eismann, Suriana, Townshend & Dror, "Learning from Protein Structure with Geometric
Vector Perceptrons", ICLR 2021, arXiv 2009.01411; vector gating from Jing et al. 2021, "Equivariant
Graph Neural Networks for 3D Macromolecular Structure", arXiv 2106.03843), re-implemented in plain
torch (no torch_geometric / torch_scatter).

Behaviour read from (nothing copied):

* drorlab/gvp-pytorch ``gvp/__init__.py`` (``GVP``, ``GVPConv``, ``GVPConvLayer``, ``LayerNorm``,
  ``Dropout``, ``_norm_no_nan``) and ``gvp/data.py`` (``_rbf``, ``_normalize``).
* smiles724/GGNN_Meets_PLM @ bb4524b99962ecd8b71c57e5b6cc9abbebc25225 (Wu et al. 2023, "Integration
  of pre-trained protein language models into geometric deep learning networks"): ``gvp/__init__.py``
  (the same layers), ``gvp/data.py`` (``_rbf``) and ``gvp/atom3d.py`` (``BaseModel``,
  ``BaseTransform``, ``_edge_features``, ``_DEFAULT_V_DIM = (100, 16)``, ``_DEFAULT_E_DIM = (32, 1)``,
  ``_NUM_RESIDUE_TYPES = 22``).

:class:`GVPGNN` is Wu et al.'s ``BaseModel`` at residue level without its pooling / dense head:

* node input: ``nn.Embedding(num_residue_types, 32)`` of the residue type, or (``plm_dim``) the
  per-residue PLM vector (ESM-2 650M, 1280-d) which *replaces* the embedding (not concatenated);
* ``W_v = LayerNorm((E, 0)) -> GVP((E, 0), (100, 16), activations=(None, None), vector_gate=True)``
  (the vector channels start at zero);
* edges: ``W_e = LayerNorm((16, 1)) -> GVP((16, 1), (32, 1), activations=(None, None),
  vector_gate=True)`` on the 16 Gaussian RBFs of the Cα distance (centres ``linspace(0, D_max, 16)``,
  width ``D_max / 16``, ``D_max`` = the graph cut-off, 8 Å in ``BaseTransform(edge_cutoff=8)``; the
  ``D_max=4.5`` default of ``_edge_features`` is always overridden there) and the unit vector
  ``x_source - x_target`` (:func:`edge_features`);
* 5 x ``GVPConvLayer((100, 16), (32, 1), activations=(relu, None), vector_gate=True)``
  (``n_message=3``, ``n_feedforward=2``, ``drop_rate=0.1``, mean aggregation);
* ``W_out = LayerNorm((100, 16)) -> GVP((100, 16), (100, 0), activations=(relu, None),
  vector_gate=True)`` -> node scalars ``(N, 100)``.

Graphs: Wu et al. build residue graphs on Cα with ``torch_cluster.radius_graph(r=8)`` (default) or
``knn_graph(k=10)``; use :func:`geoplm.graph.radius_graph` / :func:`geoplm.graph.knn_graph`, which
return the same ``[source, target]`` (flow ``source -> target``) layout.

Parameter count of that configuration (:func:`gvp_gnn_num_parameters`): 876,412 with the 22-type
embedding of the reference (+ 20,401 for its ``dense`` head = 896,813 for ``BaseModel``), 1,003,004
with 1280-d PLM input (1,023,405 with the head).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "DEFAULT_EDGE_DIMS",
    "DEFAULT_NODE_DIMS",
    "GVP",
    "GVPConv",
    "GVPConvLayer",
    "GVPGNN",
    "Dropout",
    "LayerNorm",
    "edge_features",
    "gvp_gnn_num_parameters",
    "rbf",
]

#: Wu et al.'s ``_DEFAULT_V_DIM``: node (scalar, vector) channels.
DEFAULT_NODE_DIMS = (100, 16)
#: Wu et al.'s ``_DEFAULT_E_DIM``: edge (scalar, vector) channels after ``W_e``.
DEFAULT_EDGE_DIMS = (32, 1)

Activation = Callable[[Tensor], Tensor] | None
SV = tuple[Tensor, Tensor]


def _norm_no_nan(x: Tensor, dim: int = -1, keepdim: bool = False, eps: float = 1e-8, sqrt: bool = True) -> Tensor:
    """``sqrt(max(sum(x^2), eps))`` along ``dim`` (no NaN gradient at zero vectors)."""
    out = torch.clamp((x * x).sum(dim=dim, keepdim=keepdim), min=eps)
    return torch.sqrt(out) if sqrt else out


def rbf(distance: Tensor, d_min: float = 0.0, d_max: float = 20.0, count: int = 16) -> Tensor:
    """Gaussian radial basis ``exp(-((d - mu_k) / sigma)^2)``, ``mu = linspace(d_min, d_max, count)``,
    ``sigma = (d_max - d_min) / count`` (gvp-pytorch ``_rbf``); shape ``distance.shape + (count,)``."""
    mu = torch.linspace(d_min, d_max, count, device=distance.device, dtype=distance.dtype)
    sigma = (d_max - d_min) / count
    return torch.exp(-(((distance.unsqueeze(-1) - mu) / sigma) ** 2))


def edge_features(pos: Tensor, edge_index: Tensor, d_max: float = 8.0, num_rbf: int = 16) -> SV:
    """Wu et al.'s ``_edge_features``: ``(rbf(|v|) (E, num_rbf), v / |v| (E, 1, 3))`` with
    ``v = pos[source] - pos[target]``; zero-length edges give a zero direction (``nan_to_num``)."""
    vec = pos[edge_index[0]] - pos[edge_index[1]]
    length = vec.norm(dim=-1)
    edge_s = rbf(length, d_max=d_max, count=num_rbf)
    edge_v = torch.nan_to_num(vec / length.unsqueeze(-1)).unsqueeze(-2)
    return torch.nan_to_num(edge_s), edge_v


def _tuple_cat(*args: SV) -> SV:
    return torch.cat([a[0] for a in args], dim=-1), torch.cat([a[1] for a in args], dim=-2)


class GVP(nn.Module):
    """Geometric vector perceptron ``(s, V) -> (s', V')`` (gvp-pytorch ``GVP``).

    ``V (.., vi, 3) -> Vh = W_h V (h = h_dim or max(vi, vo))``; ``s' = W_s [s, |Vh|]``;
    ``V' = W_v Vh`` scaled by ``sigmoid(W_sv act_v(s'))`` (``vector_gate``; ``W_sv s'`` when
    ``act_v`` is None; the gate uses ``s'`` *before* the scalar activation) or by ``act_v(|V'|)``;
    finally ``s' = act_s(s')``. With ``vi == 0`` the input is the scalar tensor alone and the output
    vectors are zeros; with ``vo == 0`` only the scalar tensor is returned.
    """

    def __init__(
        self,
        in_dims: tuple[int, int],
        out_dims: tuple[int, int],
        h_dim: int | None = None,
        activations: tuple[Activation, Activation] = (F.relu, torch.sigmoid),
        vector_gate: bool = False,
    ):
        super().__init__()
        self.si, self.vi = in_dims
        self.so, self.vo = out_dims
        self.vector_gate = vector_gate
        self.scalar_act, self.vector_act = activations
        self.wh = self.wv = self.wsv = None
        if self.vi:
            self.h_dim = h_dim or max(self.vi, self.vo)
            self.wh = nn.Linear(self.vi, self.h_dim, bias=False)
            self.ws = nn.Linear(self.h_dim + self.si, self.so)
            if self.vo:
                self.wv = nn.Linear(self.h_dim, self.vo, bias=False)
                if vector_gate:
                    self.wsv = nn.Linear(self.so, self.vo)
        else:
            self.ws = nn.Linear(self.si, self.so)

    def forward(self, x: SV | Tensor) -> SV | Tensor:
        if self.vi:
            s, v = x
            vh = self.wh(v.transpose(-1, -2))  # (.., 3, h)
            s = self.ws(torch.cat([s, _norm_no_nan(vh, dim=-2)], dim=-1))
            if self.vo:
                v = self.wv(vh).transpose(-1, -2)  # (.., vo, 3)
                if self.vector_gate:
                    gate = self.wsv(self.vector_act(s) if self.vector_act else s)
                    v = v * torch.sigmoid(gate).unsqueeze(-1)
                elif self.vector_act:
                    v = v * self.vector_act(_norm_no_nan(v, dim=-1, keepdim=True))
        else:
            s = self.ws(x)
            if self.vo:
                v = s.new_zeros(*s.shape[:-1], self.vo, 3)
        if self.scalar_act:
            s = self.scalar_act(s)
        return (s, v) if self.vo else s


class LayerNorm(nn.Module):
    """LayerNorm of ``(s, V)``: ``nn.LayerNorm`` on ``s``; ``V / sqrt(mean_channels(max(|V_c|^2, eps)))``
    (no learnable vector parameters). With ``dims[1] == 0`` it takes and returns a scalar tensor."""

    def __init__(self, dims: tuple[int, int]):
        super().__init__()
        self.s, self.v = dims
        self.scalar_norm = nn.LayerNorm(self.s)

    def forward(self, x: SV | Tensor) -> SV | Tensor:
        if not self.v:
            return self.scalar_norm(x)
        s, v = x
        vn = _norm_no_nan(v, dim=-1, keepdim=True, sqrt=False)
        vn = torch.sqrt(vn.mean(dim=-2, keepdim=True))
        return self.scalar_norm(s), v / vn


class Dropout(nn.Module):
    """Dropout of ``(s, V)``: elementwise on ``s``; whole vector channels (all 3 components together)
    on ``V``, rescaled by ``1 / (1 - p)``. A plain tensor is treated as scalars."""

    def __init__(self, drop_rate: float):
        super().__init__()
        self.drop_rate = drop_rate
        self.sdropout = nn.Dropout(drop_rate)

    def _vdropout(self, v: Tensor) -> Tensor:
        if not self.training or self.drop_rate == 0:
            return v
        keep = torch.bernoulli(torch.full(v.shape[:-1], 1 - self.drop_rate, device=v.device, dtype=v.dtype))
        return keep.unsqueeze(-1) * v / (1 - self.drop_rate)

    def forward(self, x: SV | Tensor) -> SV | Tensor:
        if isinstance(x, Tensor):
            return self.sdropout(x)
        s, v = x
        return self.sdropout(s), self._vdropout(v)


class GVPConv(nn.Module):
    """GVP message passing (gvp-pytorch ``GVPConv``) without residual / feed-forward.

    For an edge ``j -> i`` (``edge_index = [source j, target i]``) the message is
    ``message_func(([s_j, e_s, s_i], [V_j, e_V, V_i]))`` (``n_layers`` GVPs, the last one without
    activations); messages are averaged (``aggr="mean"``) or summed at the target. Nodes without
    incoming edges receive zeros.
    """

    def __init__(
        self,
        in_dims: tuple[int, int],
        out_dims: tuple[int, int],
        edge_dims: tuple[int, int],
        n_layers: int = 3,
        aggr: str = "mean",
        activations: tuple[Activation, Activation] = (F.relu, torch.sigmoid),
        vector_gate: bool = False,
    ):
        super().__init__()
        if aggr not in ("mean", "add"):
            raise ValueError(f"aggr must be 'mean' or 'add', got {aggr!r}")
        self.si, self.vi = in_dims
        self.so, self.vo = out_dims
        self.se, self.ve = edge_dims
        self.aggr = aggr
        msg_in = (2 * self.si + self.se, 2 * self.vi + self.ve)
        if n_layers == 1:
            modules = [GVP(msg_in, out_dims, activations=(None, None), vector_gate=vector_gate)]
        else:
            modules = [GVP(msg_in, out_dims, activations=activations, vector_gate=vector_gate)]
            modules += [
                GVP(out_dims, out_dims, activations=activations, vector_gate=vector_gate) for _ in range(n_layers - 2)
            ]
            modules.append(GVP(out_dims, out_dims, activations=(None, None), vector_gate=vector_gate))
        self.message_func = nn.Sequential(*modules)

    def forward(self, x: SV, edge_index: Tensor, edge_attr: SV) -> SV:
        s, v = x
        source, target = edge_index[0], edge_index[1]
        ms, mv = self.message_func(_tuple_cat((s[source], v[source]), edge_attr, (s[target], v[target])))
        num_nodes = s.shape[0]
        out_s = ms.new_zeros(num_nodes, self.so).index_add_(0, target, ms)
        out_v = mv.new_zeros(num_nodes, self.vo, 3).index_add_(0, target, mv)
        if self.aggr == "mean":
            count = torch.bincount(target, minlength=num_nodes).clamp(min=1).to(ms.dtype)
            out_s = out_s / count.unsqueeze(-1)
            out_v = out_v / count.view(-1, 1, 1)
        return out_s, out_v


class GVPConvLayer(nn.Module):
    """gvp-pytorch ``GVPConvLayer`` (non-autoregressive): ``x = norm0(x + dropout(conv(x)))``,
    ``x = norm1(x + dropout(ff(x)))`` with ``ff`` = ``n_feedforward`` GVPs through
    ``(4 * ns, 2 * nv)`` hidden channels (the last one without activations)."""

    def __init__(
        self,
        node_dims: tuple[int, int],
        edge_dims: tuple[int, int],
        n_message: int = 3,
        n_feedforward: int = 2,
        drop_rate: float = 0.1,
        activations: tuple[Activation, Activation] = (F.relu, torch.sigmoid),
        vector_gate: bool = False,
    ):
        super().__init__()
        self.conv = GVPConv(
            node_dims, node_dims, edge_dims, n_message, aggr="mean", activations=activations, vector_gate=vector_gate
        )
        self.norm = nn.ModuleList(LayerNorm(node_dims) for _ in range(2))
        self.dropout = nn.ModuleList(Dropout(drop_rate) for _ in range(2))
        if n_feedforward == 1:
            ff = [GVP(node_dims, node_dims, activations=(None, None), vector_gate=vector_gate)]
        else:
            hid = (4 * node_dims[0], 2 * node_dims[1])
            ff = [GVP(node_dims, hid, activations=activations, vector_gate=vector_gate)]
            ff += [GVP(hid, hid, activations=activations, vector_gate=vector_gate) for _ in range(n_feedforward - 2)]
            ff.append(GVP(hid, node_dims, activations=(None, None), vector_gate=vector_gate))
        self.ff_func = nn.Sequential(*ff)

    def forward(self, x: SV, edge_index: Tensor, edge_attr: SV) -> SV:
        dh = self.dropout[0](self.conv(x, edge_index, edge_attr))
        x = self.norm[0]((x[0] + dh[0], x[1] + dh[1]))
        dh = self.dropout[1](self.ff_func(x))
        return self.norm[1]((x[0] + dh[0], x[1] + dh[1]))


class GVPGNN(nn.Module):
    """Wu et al.'s residue-level GVP-GNN ``BaseModel`` (module docstring) returning node scalars.

    Args:
        num_residue_types: size of the residue-type embedding (ignored with ``plm_dim``). Default 21 =
            geoplm's residue ids 0-19 plus "unknown" (20); Wu et al. use 22 (their 20 types, a
            ligand type and unknown).
        embed_dim: width of the residue-type embedding (32 in Wu et al.).
        plm_dim: if set, the node input is a ``(N, plm_dim)`` float PLM feature (1280 for ESM-2
            650M) that replaces the embedding; there is then no ``embed`` module.
        node_dims / edge_dims: hidden (scalar, vector) channels of nodes / edges.
        num_rbf: number of RBFs of the edge distance.
        d_max: RBF range in Å (the graph cut-off; 8 Å in Wu et al.).
        num_layers: number of :class:`GVPConvLayer` (5).
        drop_rate: dropout inside the conv layers (0.1).

    ``forward(node_input, pos, edge_index)``: ``node_input`` is ``(N,)`` long residue types or
    ``(N, plm_dim)`` floats, ``pos`` ``(N, 3)`` Cα coordinates (Å), ``edge_index`` ``(2, E)``
    ``[source, target]``; returns E(3)-invariant node scalars ``(N, node_dims[0])``.
    """

    def __init__(
        self,
        num_residue_types: int = 21,
        embed_dim: int = 32,
        plm_dim: int | None = None,
        node_dims: tuple[int, int] = DEFAULT_NODE_DIMS,
        edge_dims: tuple[int, int] = DEFAULT_EDGE_DIMS,
        num_rbf: int = 16,
        d_max: float = 8.0,
        num_layers: int = 5,
        drop_rate: float = 0.1,
    ):
        super().__init__()
        self.plm_dim = plm_dim
        self.num_rbf = num_rbf
        self.d_max = d_max
        self.node_dims = tuple(node_dims)
        self.edge_dims = tuple(edge_dims)
        if plm_dim:
            in_dim = plm_dim
            self.embed = None
        else:
            in_dim = embed_dim
            self.embed = nn.Embedding(num_residue_types, embed_dim)
        gate = {"vector_gate": True}
        self.W_e = nn.Sequential(
            LayerNorm((num_rbf, 1)), GVP((num_rbf, 1), self.edge_dims, activations=(None, None), **gate)
        )
        self.W_v = nn.Sequential(
            LayerNorm((in_dim, 0)), GVP((in_dim, 0), self.node_dims, activations=(None, None), **gate)
        )
        activations = (F.relu, None)
        self.layers = nn.ModuleList(
            GVPConvLayer(self.node_dims, self.edge_dims, drop_rate=drop_rate, activations=activations, **gate)
            for _ in range(num_layers)
        )
        ns = self.node_dims[0]
        self.W_out = nn.Sequential(
            LayerNorm(self.node_dims), GVP(self.node_dims, (ns, 0), activations=activations, **gate)
        )

    @property
    def output_dim(self) -> int:
        return self.node_dims[0]

    def forward(self, node_input: Tensor, pos: Tensor, edge_index: Tensor) -> Tensor:
        if self.embed is None:
            if node_input.ndim != 2 or node_input.shape[-1] != self.plm_dim:
                raise ValueError(f"PLM node input must be (N, {self.plm_dim}), got {tuple(node_input.shape)}")
            h = node_input.to(pos.dtype)
        else:
            if node_input.ndim != 1 or node_input.is_floating_point():
                raise ValueError(f"node input must be (N,) residue-type ids, got {tuple(node_input.shape)}")
            h = self.embed(node_input.long())
        if pos.shape != (h.shape[0], 3):
            raise ValueError(f"pos must be ({h.shape[0]}, 3), got {tuple(pos.shape)}")
        edge_index = edge_index.long()
        h_e = self.W_e(edge_features(pos, edge_index, d_max=self.d_max, num_rbf=self.num_rbf))
        h_v = self.W_v(h)
        for layer in self.layers:
            h_v = layer(h_v, edge_index, h_e)
        return self.W_out(h_v)


def gvp_gnn_num_parameters(
    in_dim: int = 32,
    num_residue_types: int | None = 22,
    node_dims: tuple[int, int] = DEFAULT_NODE_DIMS,
    edge_dims: tuple[int, int] = DEFAULT_EDGE_DIMS,
    num_rbf: int = 16,
    num_layers: int = 5,
    dense_head: bool = False,
) -> int:
    """Closed-form parameter count of Wu et al.'s GVP ``BaseModel`` (all GVPs vector-gated).

    ``in_dim``: node input width (32 embedding, or the PLM width); ``num_residue_types``: embedding
    rows (``None`` = PLM input, no embedding); ``dense_head``: add ``Linear(ns, 2 ns) + Linear(2 ns,
    1)``.
    """

    def gvp(si: int, vi: int, so: int, vo: int) -> int:
        if not vi:
            return si * so + so
        h = max(vi, vo)
        n = vi * h + (h + si) * so + so
        if vo:
            n += h * vo + so * vo + vo
        return n

    ns, nv = node_dims
    es, ev = edge_dims
    total = num_residue_types * in_dim if num_residue_types else 0
    total += 2 * num_rbf + gvp(num_rbf, 1, es, ev)  # W_e
    total += 2 * in_dim + gvp(in_dim, 0, ns, nv)  # W_v
    message = gvp(2 * ns + es, 2 * nv + ev, ns, nv) + 2 * gvp(ns, nv, ns, nv)
    ff = gvp(ns, nv, 4 * ns, 2 * nv) + gvp(4 * ns, 2 * nv, ns, nv)
    total += num_layers * (message + 2 * 2 * ns + ff)
    total += 2 * ns + gvp(ns, nv, ns, 0)  # W_out
    if dense_head:
        total += ns * 2 * ns + 2 * ns + 2 * ns + 1
    return total
