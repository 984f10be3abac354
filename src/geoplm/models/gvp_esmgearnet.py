"""ESM-GearNet's GVP-GNN (Zhang, Wang, Xu, Chenthamarakshan, Lozano, Das & Tang, "A Systematic Study of Joint
Representation Learning on Protein Sequences and Structures", 2023, arXiv 2303.06275): the "GVP" and "ESM-GVP"
rows of its tables.

Behaviour read from (nothing copied) DeepGraphLearning/ESM-GearNet @ bc90557bbf9ee2676e87b9fc84570aa126daa808:

* ``gearnet/gvp.py``, class ``GVPGNN`` (registered as ``models.GVPGNN``; itself adapted from drorlab/gvp-pytorch
  ``gvp/models.py``);
* ``gearnet/gvp_layer.py``: ``GVP``, ``GVPLayerNorm``, ``_VDropout`` / ``Dropout``, ``GVPConv`` (a torch_geometric
  ``MessagePassing``), ``GVPConvLayer``;
* ``config/{PSR,MSP}/gvp.yaml``, ``config/{EC,GO,PSR,MSP}/esm_gvp{,_parallel,_cross}.yaml``: ``node_in_dim [21, 0]``
  (``[1280, 0]`` for ESM-2 650M in serial fusion), ``node_h_dim [256, 16]``, ``edge_in_dim [16, 1]``,
  ``edge_h_dim [64, 1]``, ``num_layers 5``, ``vector_gate True``, ``readout mean``, ``drop_rate 0.1``, on
  ``GraphConstruction(node_layers=[AlphaCarbonNode], edge_layers=[SpatialEdge(radius=10.0, min_distance=0)])``.

The GVP layers are the project's (:mod:`geoplm.models.gvp`: :class:`~geoplm.models.gvp.GVP`,
:class:`~geoplm.models.gvp.GVPConvLayer`, :class:`~geoplm.models.gvp.LayerNorm`, :func:`~geoplm.models.gvp.rbf`),
checked against ``gvp_layer.py`` (``tests/test_gvp_esmgearnet.py``: outputs and gradients equal the reference's
to float32 rounding). They compute the same functions; the differences are outside the eval-mode forward:

* vector dropout: ``_VDropout`` draws its float32 keep-mask on the device of an empty ``dummy_param``
  *parameter* (so the reference state dict has one empty ``...dropout.k.vdropout.dummy_param`` per dropout);
  ours draws it in the input dtype and has no such parameter. Same distribution, different random stream, so
  training-mode outputs are equal in law only. With ``drop_rate == 0`` ours skips the draw (same result).
* message aggregation: the reference's ``MessagePassing(aggr="mean")`` (scatter) and ours (``index_add_`` over
  the targets divided by the in-degree clamped at 1) give zero to nodes without in-edges in both; the float32
  sums may differ in the last bits (summation order).
* a GVP with no vector input (``W_v``) makes its zero output vectors on ``self.device`` (torchdrug patches
  ``nn.Module.device``) in the default dtype; ours with ``new_zeros`` in the scalars' dtype and device.
* ``GVPConvLayer``'s ``autoregressive_x`` / ``node_mask`` arguments (unused by ``GVPGNN``) are not implemented.

Differences from the project's Wu et al. GVP-GNN (:class:`geoplm.models.gvp.GVPGNN`): a bias-free
``Linear(F, F)`` "residue embedding" of the node input (one-hot or ESM-2) instead of ``nn.Embedding``; edge RBFs
over 0-20 Å whatever the graph's radius; the raw edge vector ``x_out - x_in`` (target minus source) instead of
the unit vector ``x_source - x_target``; the model's own sum / mean readout; hidden sizes (256, 16) / (64, 1).
The two edge-vector conventions give the same outputs all the same: the vector layer norm at the start of ``W_e``
normalises the single channel (``v / sqrt(max(|v|^2, 1e-8))``, a unit vector for any edge longer than 1e-4 Å),
and the sign does not matter because GVP layers are equivariant under every orthogonal map, the inversion
``V -> -V`` included, so flipping every input vector flips every hidden vector and leaves the scalars unchanged
(checked on the fixture: node features equal to 5e-7 with ``x_in - x_out`` or the unit vector). The scalar
outputs are likewise invariant under reflections: the model does not tell a structure from its mirror image.

Graph. ``SpatialEdge(radius=10.0, min_distance=0)`` of torchdrug 0.2.1 (``torchdrug/layers/geometry/function.py``)
is ``torch_cluster.radius_graph(node_position, r=10, batch=node2graph, max_num_neighbors=32)`` (its default
``loop=False``: no self loops), no sequence-separation filter (``min_distance > 0`` is false), then edges shorter
than 1e-10 Å dropped. That is :func:`geoplm.graph.radius_graph` with ``r=10.0, max_num_neighbors=32`` (the
``graphs`` entry ``{kind: radius, radius: 10.0, max_num_neighbors: 32}``): the same strict ``d^2 < r^2`` pairs
within each protein, in both directions, without self loops; under the cap, the first 33 candidates of each
target in ascending node index (itself included, then removed), as torch_cluster <= 1.6.3 does on CUDA (on the
CPU torch_cluster keeps the first 33 in nanoflann's order instead). On real Cα coordinates the cap does not bind
at 10 Å (at most 31 in-edges in the fixture's AlphaFold models), and the edge sets are equal
(``tests/test_gvp_esmgearnet.py``). One difference: geoplm's Cα graph keeps zero-length edges (only duplicated
Cα coordinates make them), which torchdrug drops.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn
from torch.nn import functional as F

from geoplm.graph import readout
from geoplm.models.gvp import GVP, GVPConvLayer, LayerNorm, rbf

__all__ = [
    "ESMGearNetGVPGNN",
    "RBF_D_MAX",
    "RBF_D_MIN",
    "convert_reference_state_dict",
]

#: Range (Å) of the edge-distance RBF centres (``GVPGNN.rbf(d, d_min=0.0, d_max=20.0)``).
RBF_D_MIN = 0.0
RBF_D_MAX = 20.0

#: reference state-dict key prefix -> ours (the reference's attribute is spelt ``residue_embdding``)
_RENAMED_PREFIXES = {"residue_embdding.": "residue_embedding."}
#: reference keys of the empty placeholder parameter of ``_VDropout`` (no counterpart here)
_DROPPED_SUFFIX = ".vdropout.dummy_param"


def _pair(value: Sequence[int], name: str) -> tuple[int, int]:
    pair = tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) < 0:
        raise ValueError(f"{name} must be two non-negative integers (scalar, vector channels), got {list(value)}")
    return pair  # type: ignore[return-value]


class ESMGearNetGVPGNN(nn.Module):
    """ESM-GearNet's ``GVPGNN`` (module docstring): a residue-level GVP-GNN with its own readout.

    Args:
        node_in_dim: ``(F, 0)``: the node input width (21 = residue one-hot, 1280 = ESM-2 650M) and no vector
            input.
        node_h_dim: hidden node ``(ns, nv)`` channels (ESM-GearNet: ``(256, 16)``).
        edge_in_dim: ``(num_rbf, 1)``: number of distance RBFs and the single edge vector (``(16, 1)``).
        edge_h_dim: hidden edge ``(es, ev)`` channels (``(64, 1)``).
        readout: ``"mean"`` (every ESM-GearNet config) or ``"sum"`` (the reference class's default).
        num_layers: number of :class:`~geoplm.models.gvp.GVPConvLayer` (5).
        drop_rate: dropout in the conv layers (0.1).
        vector_gate: vector gating in every GVP (True).

    The defaults are those of ESM-GearNet's configs (the reference class defaults to ``readout="sum"`` and
    ``num_layers=3``); activations are the reference's ``(relu, None)``.

    Update rules (``[a, b]`` concatenation; ``LN`` = :class:`~geoplm.models.gvp.LayerNorm`, which normalises
    scalars with ``nn.LayerNorm`` and vectors by their root-mean-square channel norm):

    * input: ``x = node_feature E^T`` with ``E`` a bias-free ``(F, F)`` linear map (``residue_embedding``);
      ``(s, V) = W_v(LN(x))``, ``W_v = GVP((F, 0) -> (ns, nv))`` without activations: ``s = W x + b``, ``V = 0``.
    * edges ``j -> i`` (``edge_list[:, 0] = j`` = node_in = source, ``edge_list[:, 1] = i`` = node_out =
      target): ``v_ij = x_i - x_j`` (Å, not normalised), ``d_ij = |v_ij|``; ``e = W_e(LN((rbf(d_ij), v_ij)))``
      with ``rbf_k(d) = exp(-((d - mu_k) / sigma)^2)``, ``mu = linspace(0, 20 Å, num_rbf)``,
      ``sigma = 20 Å / num_rbf``, ``W_e = GVP((num_rbf, 1) -> (es, ev))`` without activations.
    * ``num_layers`` times: ``m_ij = g3(g2(g1(([s_j, e_s, s_i], [V_j, e_V, V_i]))))`` (three GVPs, the last
      without activations), ``dh_i = mean_j m_ij`` (zero without in-edges), ``h = LN(h + dropout(dh))``,
      ``h = LN(h + dropout(f2(f1(h))))`` with ``f1: (ns, nv) -> (4 ns, 2 nv)`` (ReLU), ``f2`` back without
      activations.
    * output: ``node_feature = relu(GVP(LN(h)) -> (ns, 0))`` (rotation / translation invariant scalars);
      ``graph_feature`` = their sum or mean over each protein's residues.

    Every GVP ``(s, V) -> (s', V')``: ``Vh = W_h V``, ``s' = W_s [s, |Vh|] + b``, ``V' = W_V Vh``; with
    ``vector_gate`` ``V' *= sigmoid(W_g s' + b_g)`` (``s'`` before its activation; the vector activation is
    None); ``s' = act(s')``.

    ``forward(graph, node_feature)``: ``graph`` has ``node_position`` (N, 3) Cα coordinates in Å, ``edge_list``
    (E, >= 2) ``[node_in, node_out, ...]`` (packed node indices), ``node2graph`` (N,) and ``batch_size`` B (a
    :class:`geoplm.graph.ResidueGraph`); ``node_feature`` (N, F) float. Returns ``{"node_feature": (N, ns),
    "graph_feature": (B, ns)}``.

    Raises:
        ValueError: at construction, dims that are not two non-negative integers, ``node_in_dim[1] != 0`` (the
            node input has no vectors), ``edge_in_dim[1] != 1`` (one edge vector), ``num_rbf < 1``,
            ``num_layers < 0`` or an unknown readout; in ``forward``, a ``node_feature`` that is not a floating
            ``(N, F)`` tensor or a ``node_position`` that is not ``(N, 3)``.
    """

    def __init__(
        self,
        node_in_dim: Sequence[int],
        node_h_dim: Sequence[int] = (256, 16),
        edge_in_dim: Sequence[int] = (16, 1),
        edge_h_dim: Sequence[int] = (64, 1),
        readout: str = "mean",
        num_layers: int = 5,
        drop_rate: float = 0.1,
        vector_gate: bool = True,
    ):
        super().__init__()
        self.node_in_dim = _pair(node_in_dim, "node_in_dim")
        self.node_h_dim = _pair(node_h_dim, "node_h_dim")
        self.edge_in_dim = _pair(edge_in_dim, "edge_in_dim")
        self.edge_h_dim = _pair(edge_h_dim, "edge_h_dim")
        if self.node_in_dim[1] != 0:
            raise ValueError(f"node_in_dim must be (F, 0): the node input has no vector channels, got {node_in_dim}")
        if self.edge_in_dim[1] != 1 or self.edge_in_dim[0] < 1:
            raise ValueError(f"edge_in_dim must be (num_rbf >= 1, 1): one edge vector, got {edge_in_dim}")
        if readout not in ("sum", "mean"):
            raise ValueError(f"readout must be 'sum' or 'mean', got {readout!r}")
        if int(num_layers) < 0:
            raise ValueError(f"num_layers must be >= 0, got {num_layers}")
        self.readout = readout
        self.num_rbf = self.edge_in_dim[0]
        in_dim = self.node_in_dim[0]
        ns = self.node_h_dim[0]
        activations = (F.relu, None)
        gate = {"vector_gate": bool(vector_gate)}
        self.residue_embedding = nn.Linear(in_dim, in_dim, bias=False)
        self.W_v = nn.Sequential(
            LayerNorm(self.node_in_dim), GVP(self.node_in_dim, self.node_h_dim, activations=(None, None), **gate)
        )
        self.W_e = nn.Sequential(
            LayerNorm(self.edge_in_dim), GVP(self.edge_in_dim, self.edge_h_dim, activations=(None, None), **gate)
        )
        self.layers = nn.ModuleList(
            GVPConvLayer(self.node_h_dim, self.edge_h_dim, drop_rate=drop_rate, activations=activations, **gate)
            for _ in range(int(num_layers))
        )
        self.W_out = nn.Sequential(
            LayerNorm(self.node_h_dim), GVP(self.node_h_dim, (ns, 0), activations=activations, **gate)
        )

    @property
    def input_dim(self) -> int:
        """Width of the node input (21 one-hot, or the ESM-2 width in serial fusion)."""
        return self.node_in_dim[0]

    @property
    def output_dim(self) -> int:
        return self.node_h_dim[0]

    def edge_features(self, pos: Tensor, edge_index: Tensor) -> tuple[Tensor, Tensor]:
        """``(rbf(|v|) (E, num_rbf), v (E, 1, 3))`` with ``v = pos[target] - pos[source]`` in Å."""
        vec = pos[edge_index[1]] - pos[edge_index[0]]
        return rbf(vec.norm(dim=-1), RBF_D_MIN, RBF_D_MAX, self.num_rbf), vec.unsqueeze(-2)

    def forward(self, graph, node_feature: Tensor) -> dict[str, Tensor]:
        pos = graph.node_position
        n, in_dim = pos.shape[0], self.node_in_dim[0]
        if pos.ndim != 2 or pos.shape[-1] != 3:
            raise ValueError(f"node_position must be (N, 3), got {tuple(pos.shape)}")
        if node_feature.shape != (n, in_dim) or not node_feature.is_floating_point():
            raise ValueError(
                f"node_feature must be a float ({n}, {in_dim}) tensor, got {node_feature.dtype} "
                f"{tuple(node_feature.shape)}"
            )
        edge_index = graph.edge_list[:, :2].t().long()
        h = self.W_v(self.residue_embedding(node_feature.to(pos.dtype)))
        h_edge = self.W_e(self.edge_features(pos, edge_index))
        for layer in self.layers:
            h = layer(h, edge_index, h_edge)
        node = self.W_out(h)
        pooled = readout(node, graph.node2graph.long(), int(graph.batch_size), self.readout)
        return {"node_feature": node, "graph_feature": pooled}

    def load_reference_state_dict(self, state_dict: Mapping[str, Tensor]) -> None:
        """Load a state dict of ESM-GearNet's ``GVPGNN`` (:func:`convert_reference_state_dict`), strictly.

        Raises:
            KeyError: keys of this model the state dict lacks ("missing", our names) or keys it has that this
                model does not ("unexpected", the reference's names), all named.
            ValueError: a tensor whose shape differs from ours (named), or a non-empty ``dummy_param``.
        """
        converted, origin = convert_reference_state_dict(state_dict, return_origin=True)
        own = self.state_dict()
        missing = sorted(set(own) - set(converted))
        unexpected = sorted(origin[k] for k in set(converted) - set(own))
        if missing or unexpected:
            raise KeyError(f"reference GVPGNN state dict: missing keys {missing}, unexpected keys {unexpected}")
        for key, value in converted.items():
            if value.shape != own[key].shape:
                raise ValueError(
                    f"reference GVPGNN state dict: {origin[key]} has shape {tuple(value.shape)}, "
                    f"expected {tuple(own[key].shape)} for {key}"
                )
        self.load_state_dict(converted, strict=True)


def convert_reference_state_dict(state_dict: Mapping[str, Tensor], return_origin: bool = False):
    """Map the keys of an ESM-GearNet ``GVPGNN`` state dict to :class:`ESMGearNetGVPGNN`'s.

    ``residue_embdding.weight`` -> ``residue_embedding.weight``; the empty ``...vdropout.dummy_param`` of every
    ``_VDropout`` is dropped; all other names (``W_v``, ``W_e``, ``layers.{i}.conv.message_func``,
    ``layers.{i}.ff_func``, ``layers.{i}.norm``, ``W_out``, and ``wh`` / ``ws`` / ``wv`` / ``wsv`` /
    ``scalar_norm`` inside) are the same. With ``return_origin`` also returns ``new key -> reference key``.

    Raises:
        ValueError: a ``dummy_param`` that is not empty (not a ``_VDropout`` placeholder).
    """
    converted: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in state_dict.items():
        if key.endswith(_DROPPED_SUFFIX):
            if value.numel():
                raise ValueError(f"{key}: expected the empty placeholder of _VDropout, got shape {tuple(value.shape)}")
            continue
        new = key
        for old, replacement in _RENAMED_PREFIXES.items():
            if new.startswith(old):
                new = replacement + new[len(old) :]
        converted[new] = value
        origin[new] = key
    return (converted, origin) if return_origin else converted
