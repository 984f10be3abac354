"""EquiDock (Ganea et al., ICLR 2022): independent SE(3)-equivariant rigid protein-protein docking.

Re-implementation in plain PyTorch (no DGL) of ``src/model/rigid_docking_model.py`` of
octavian-ganea/equidock_public (commit ac2c754399bf20b50a27d86dbff4f6669788d47f), with the residue
graph features of ``src/utils/protein_utils.py`` (same commit):

* :class:`IEGMNLayer` -- one Independent E(3)-Equivariant Graph Matching Network layer (paper Sec. 4.1,
  eq. 5-9): intra-graph messages over each protein's kNN Cα graph, inter-graph cross attention
  between the two proteins' node features, and an E(3)-equivariant update of the Cα coordinates of
  each protein computed from its own graph only.
* :class:`EquiDock` -- the reference's ``IEGMN`` with ``rot_model="kb_att"``: residue embedding,
  ``n_layers`` IEGMN layers, multi-head keypoint attention (paper Sec. 4.2, eq. 10: K = 50 keypoints
  per protein), and the differentiable Kabsch / SVD step (eq. 11) giving the rotation R (det +1) and
  translation t that move the ligand onto the receptor: ``docked = ligand_pos @ R.T + t``.

Conventions kept from the reference:

* edges are ``[source, target]`` with messages ``source -> target`` (DGL ``u -> v``); the relative
  vector of an edge is ``x_source - x_target`` (DGL ``fn.u_sub_v``), messages and coordinate moments
  are **mean**-aggregated at the target (nodes without in-edges get 0).
* coordinate update: ``x_i' = c x_i^0 + (1 - c) x_i + mean_j (x_j - x_i) phi^x(m_ji)`` with
  ``c = x_connection_init`` (0 in the reference).
* node update: ``h_i' = s MLP([h_i, mean_j m_ji, mu_i, h_i^0]) + (1 - s) h_i`` with
  ``s = skip_weight_h`` where the widths match (the first layer has no skip), ``mu_i`` the cross
  attention over the other protein.
* edge input features (``use_edge_features_in_gmn``): 15 Gaussian RBFs ``exp(-d^2 / 1.5^k)``,
  k = 0..14, of the edge length and 12 orientation features (``p_ij, q_ij, k_ij, t_ij``: the edge
  vector and the source's local frame axes expressed in the target's local frame ``(n, u, v)`` built
  from N, Cα, C); in-layer distance RBFs of the current coordinates (``use_dist_in_layers``);
  5 node features ``log |weighted mean of x_i - x_j| / weighted mean of |x_i - x_j|`` with softmax
  weights ``exp(-d^2 / sigma)``, sigma in (1, 2, 5, 10, 30) (``use_mean_node_features``).
* Kabsch: ``A = Yr_c^T Yl_c``, ``U S V^T = svd(A)``, ``R = U diag(1, 1, sign det A) V^T``,
  ``t = mean(Yr) - R mean(Yl)``; where S is (nearly) degenerate, ``A`` is jittered with
  ``rand(3) * I`` and the SVD retried, up to 10 times, as the reference does.

Deviations, documented:

* the graph is given by the caller: :func:`build_docking_graph` builds the reference's graph
  (k = 10 nearest neighbours within 30 Å) on **Cα distances** with :func:`geoplm.graph.knn_graph`,
  where the reference ranks neighbours by the mean all-atom distance between residues; the edge RBF
  and the softmax weights of the mean-vector node features use the Cα distance too.
* one complex per forward call; :class:`geoplm.tasks.docking.RigidDocking` averages the losses of
  ``batch_size`` complexes before each optimiser step, which equals the reference's DGL batching
  (no operation mixes complexes).
* the reference's unused ``fine_tune`` stage and ``noise_*`` options are not implemented.
* ESM-2 input (Wu et al., Communications Biology 2023; not released: their README says "we use the
  original code from EquiDock and only change the input features, which are obtained from ESM-2"):
  ``node_input`` may be a float (N, F) matrix; with ``esm_mode="replace"`` (default, the README's
  reading, and how their released GVP/EGNN code uses ESM: ``h_V = batch.plm``) it *is* the initial
  node feature ``h^0`` in place of the 64-d residue-type embedding; with ``esm_mode="concat"`` the
  residue-type embedding (``residue_type`` must be given) and the ESM vector are concatenated.

Reference hyperparameters (``src/utils/args.py`` defaults and the released DB5.5 checkpoint name
``Wdec_0.001#ITS_lw_10.0#Hdim_64#Nlay_5#shrdLay_T#ln_LN#lnX_0#Hnrm_0#NattH_50#skH_0.5#xConnI_0.0#
LkySl_0.01#pokOTw_1.0``; the DIPS checkpoint: 8 unshared layers, skH 0.75, Wdec 1e-4): hidden and
residue embedding width 64, 5 layers (shared after the first on DB5.5), 50 keypoint heads, LayerNorm
in the edge/node MLPs, no coordinate LayerNorm, no final node norm, LeakyReLU slope 0.01, dropout 0,
``skip_weight_h=0.5``, ``x_connection_init=0``, cross messages, distances in layers, edge features
and mean node features all on (the reference's hyper-search settings).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from geoplm.errors import GeoplmError
from geoplm.structure import NUM_RESIDUE_TYPES

#: Length scales of the distance RBFs: 1.5 ** k for k = 0..14 (Å²).
RBF_LENGTH_SCALES: tuple[float, ...] = tuple(1.5**k for k in range(15))
#: Softmax temperatures of the mean-vector node features (Å²).
MEAN_FEATURE_SIGMAS: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 30.0)
#: Edge input width: 15 RBFs + 12 orientation features.
EDGE_FEATURE_DIM = len(RBF_LENGTH_SCALES) + 12

#: The reference's DB5.5 hyperparameters (see the module docstring).
DEFAULT_CONFIG: dict[str, Any] = {
    "hidden_dim": 64,
    "residue_emb_dim": 64,
    "n_layers": 5,
    "shared_layers": True,
    "num_att_heads": 50,
    "dropout": 0.0,
    "layer_norm": "LN",
    "layer_norm_coors": "0",
    "final_h_layer_norm": "0",
    "leakyrelu_neg_slope": 0.01,
    "skip_weight_h": 0.5,
    "x_connection_init": 0.0,
    "cross_msgs": True,
    "use_dist_in_layers": True,
    "use_edge_features_in_gmn": True,
    "use_mean_node_features": True,
    "esm_mode": "replace",
    "svd_jitter": True,
}


@dataclass
class DockingSide:
    """One protein (receptor or ligand) as EquiDock's input.

    Attributes:
        node_input: (N,) long residue-type indices 0-20 (:data:`geoplm.structure.RESIDUE_VOCAB`), or
            (N, F) float per-residue features (e.g. ESM-2 embeddings).
        pos: (N, 3) Cα coordinates in Å.
        edge_index: (2, E) long ``[source, target]`` kNN graph (:func:`build_docking_graph`).
        frames: (N, 3, 3) local frames, rows ``n, u, v`` (:func:`residue_frames`), in the same
            coordinate frame as ``pos``; None gives zero orientation edge features.
        residue_type: (N,) long residue types, needed with float ``node_input`` and
            ``esm_mode="concat"``.
    """

    node_input: Tensor
    pos: Tensor
    edge_index: Tensor
    frames: Tensor | None = None
    residue_type: Tensor | None = None

    def transformed(self, rotation: Tensor, translation: Tensor) -> DockingSide:
        """This side moved rigidly: ``pos @ rotation.T + translation``, frames rotated alike."""
        frames = None if self.frames is None else self.frames @ rotation.T
        return DockingSide(
            self.node_input, self.pos @ rotation.T + translation, self.edge_index, frames, self.residue_type
        )

    def to(self, device) -> DockingSide:
        """A copy on ``device``."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return DockingSide(
            move(self.node_input), move(self.pos), move(self.edge_index), move(self.frames), move(self.residue_type)
        )


def residue_frames(backbone: Tensor) -> Tensor:
    """Local residue frames of EquiDock (``protein_utils.py``, ``l_or_r_extract_3d_coord_and_n_u_v_vecs``).

    ``u = (N - Cα) / |.|``, ``t = (C - Cα) / |.|``, ``n = u x t / |.|``, ``v = n x u``.

    Args:
        backbone: (N, 3, 3) N, Cα, C coordinates in Å (or (N, 4, 3) N, Cα, C, O as in the records).

    Returns:
        (N, 3, 3) float, rows ``n, u, v`` (orthonormal, right-handed).

    Raises:
        GeoplmError: NaN coordinates (a residue without N, Cα or C).
    """
    if torch.isnan(backbone[:, :3]).any():
        raise GeoplmError("residue_frames: backbone has missing N/CA/C atoms (NaN); keep only complete residues")
    n_atom, ca, c = backbone[:, 0], backbone[:, 1], backbone[:, 2]
    u = nn.functional.normalize(n_atom - ca, dim=-1)
    t = nn.functional.normalize(c - ca, dim=-1)
    n = nn.functional.normalize(torch.cross(u, t, dim=-1), dim=-1)
    v = torch.cross(n, u, dim=-1)
    return torch.stack([n, u, v], dim=1)


def build_docking_graph(pos: Tensor, k: int = 10, cutoff: float = 30.0) -> Tensor:
    """EquiDock's residue graph: each Cα's ``k`` nearest Cα neighbours closer than ``cutoff`` Å.

    The reference (``protein_utils.py``, ``compute_dig_kNN_graph``; ``-graph_max_neighbor 10
    -graph_cutoff 30``) keeps all residues within the cut-off, or the ``k`` nearest when there are
    more; here on Cα distances, with :func:`geoplm.graph.knn_graph` (ties to the lower index).

    Args:
        pos: (N, 3) Cα coordinates in Å.

    Returns:
        (2, E) long ``[source (neighbour), target (centre)]``, no self loops.
    """
    from geoplm.graph import knn_graph

    edge_index = knn_graph(pos, k)
    if edge_index.numel():
        d2 = (pos[edge_index[0]] - pos[edge_index[1]]).pow(2).sum(-1)
        edge_index = edge_index[:, d2 < cutoff * cutoff]
    return edge_index


def _rbf(d2: Tensor) -> Tensor:
    """(E,) squared distances (Å²) -> (E, 15) ``exp(-d^2 / 1.5^k)``."""
    scales = torch.tensor(RBF_LENGTH_SCALES, dtype=d2.dtype, device=d2.device)
    return torch.exp(-d2.unsqueeze(-1) / scales)


def _scatter_mean(values: Tensor, index: Tensor, num_nodes: int) -> Tensor:
    out = values.new_zeros((num_nodes,) + values.shape[1:]).index_add_(0, index, values)
    count = torch.bincount(index, minlength=num_nodes).clamp(min=1).to(values.dtype)
    return out / count.view(-1, *([1] * (values.dim() - 1)))


def edge_features(pos: Tensor, edge_index: Tensor, frames: Tensor | None) -> Tensor:
    """SE(3)-invariant edge input features (``protein_utils.py``): (E, 27).

    Columns 0-14: ``exp(-d_ij^2 / 1.5^k)`` of the Cα distance (Å); 15-26: ``B_j (x_i - x_j)``,
    ``B_j n_i``, ``B_j u_i``, ``B_j v_i`` with ``B_j`` the target's frame (rows n, u, v), i the source
    -- zeros when ``frames`` is None.
    """
    src, dst = edge_index
    d2 = (pos[src] - pos[dst]).pow(2).sum(-1)
    rbf = _rbf(d2)
    if frames is None:
        return torch.cat([rbf, rbf.new_zeros(rbf.shape[0], 12)], dim=-1)
    basis = frames[dst]  # (E, 3, 3)
    p = torch.einsum("eab,eb->ea", basis, pos[src] - pos[dst])
    rest = torch.einsum("eab,ecb->eca", basis, frames[src]).reshape(-1, 9)  # B_j n_i, B_j u_i, B_j v_i
    return torch.cat([rbf, p, rest], dim=-1)


def mean_vector_features(pos: Tensor, edge_index: Tensor) -> Tensor:
    """EquiDock's ``mu_r_norm`` (``protein_utils.py``): (N, 5) invariant node features, before the log.

    For target i with neighbours j and ``w_s = softmax_j(-d_ij^2 / sigma_s)``:
    ``|sum_j w_s (x_i - x_j)| / sum_j w_s |x_i - x_j|`` for sigma in (1, 2, 5, 10, 30) Å². Nodes
    without neighbours get 1.
    """
    src, dst = edge_index
    n = pos.shape[0]
    diff = pos[dst] - pos[src]  # x_i - x_j, i the centre
    dist = diff.norm(dim=-1)
    out = []
    for sigma in MEAN_FEATURE_SIGMAS:
        logits = -dist.pow(2) / sigma
        row_max = torch.full((n,), -math.inf, dtype=pos.dtype, device=pos.device).scatter_reduce(
            0, dst, logits, reduce="amax"
        )
        w = torch.exp(logits - row_max[dst])
        w = w / pos.new_zeros(n).index_add_(0, dst, w)[dst]
        mean_vec = pos.new_zeros(n, 3).index_add_(0, dst, w.unsqueeze(-1) * diff)
        denominator = pos.new_zeros(n).index_add_(0, dst, w * dist)
        has = denominator > 0
        out.append(torch.where(has, mean_vec.norm(dim=-1) / denominator.clamp(min=1e-12), torch.ones_like(denominator)))
    return torch.stack(out, dim=-1)


def _nonlin(slope: float) -> nn.Module:
    return nn.LeakyReLU(negative_slope=slope)


def _norm(kind: str, dim: int) -> nn.Module:
    if kind == "LN":
        return nn.LayerNorm(dim)
    if kind == "BN":
        return nn.BatchNorm1d(dim)
    if kind == "0":
        return nn.Identity()
    raise GeoplmError(f"EquiDock: unknown norm '{kind}' (known: 0, LN, BN)")


def cross_attention(queries: Tensor, keys: Tensor, values: Tensor) -> Tensor:
    """``softmax_j(q_i . k_j) v_j``: (N, d), (M, d), (M, d') -> (N, d') (reference ``compute_cross_attention``)."""
    return torch.softmax(queries @ keys.t(), dim=1) @ values


class IEGMNLayer(nn.Module):
    """One IEGMN layer (EquiDock Sec. 4.1; ``IEGMN_Layer`` of ``rigid_docking_model.py``).

    Args:
        orig_dim: width of the initial node features ``h^0`` (fed to every layer's node MLP).
        in_dim: width of the incoming node features ``h``.
        out_dim: width of the messages and outgoing node features.
        edge_dim: width of the edge input features (27, or 0 for none).
        config: the :data:`DEFAULT_CONFIG` keys ``dropout``, ``layer_norm``, ``layer_norm_coors``,
            ``final_h_layer_norm``, ``leakyrelu_neg_slope``, ``skip_weight_h``, ``x_connection_init``,
            ``cross_msgs``, ``use_dist_in_layers``.

    Shapes (per protein, N nodes, E edges): ``pos`` (N, 3) Å, ``h`` (N, in_dim), ``h0`` (N, orig_dim),
    ``edge_attr`` (E, edge_dim); returns new ``pos`` (N, 3) and ``h`` (N, out_dim) of both proteins.
    """

    def __init__(self, orig_dim: int, in_dim: int, out_dim: int, edge_dim: int, config: Mapping[str, Any]):
        super().__init__()
        slope = float(config["leakyrelu_neg_slope"])
        dropout = float(config["dropout"])
        self.in_dim, self.out_dim = in_dim, out_dim
        self.cross_msgs = bool(config["cross_msgs"])
        self.use_dist = bool(config["use_dist_in_layers"])
        self.skip_weight_h = float(config["skip_weight_h"])
        self.x_connection_init = float(config["x_connection_init"])
        n_rbf = len(RBF_LENGTH_SCALES)
        self.edge_mlp = nn.Sequential(
            nn.Linear(2 * in_dim + edge_dim + n_rbf, out_dim),
            nn.Dropout(dropout),
            _nonlin(slope),
            _norm(config["layer_norm"], out_dim),
            nn.Linear(out_dim, out_dim),
        )
        self.att_mlp_q = nn.Sequential(nn.Linear(in_dim, in_dim, bias=False), _nonlin(slope))
        self.att_mlp_k = nn.Sequential(nn.Linear(in_dim, in_dim, bias=False), _nonlin(slope))
        self.att_mlp_v = nn.Sequential(nn.Linear(in_dim, in_dim, bias=False))
        self.node_mlp = nn.Sequential(
            nn.Linear(orig_dim + 2 * in_dim + out_dim, in_dim),
            nn.Dropout(dropout),
            _nonlin(slope),
            _norm(config["layer_norm"], in_dim),
            nn.Linear(in_dim, out_dim),
        )
        self.final_norm = _norm(config["final_h_layer_norm"], out_dim)
        self.coors_mlp = nn.Sequential(
            nn.Linear(out_dim, out_dim),
            nn.Dropout(dropout),
            _nonlin(slope),
            _norm(config["layer_norm_coors"], out_dim),
            nn.Linear(out_dim, 1),
        )

    def _intra(self, pos: Tensor, h: Tensor, edge_index: Tensor, edge_attr: Tensor) -> tuple[Tensor, Tensor]:
        src, dst = edge_index
        rel = pos[src] - pos[dst]  # DGL u_sub_v
        dist_feat = _rbf(rel.pow(2).sum(-1))
        if not self.use_dist:
            dist_feat = dist_feat * 0.0
        msg = self.edge_mlp(torch.cat([h[src], h[dst], edge_attr, dist_feat], dim=-1))
        n = pos.shape[0]
        x_update = _scatter_mean(rel * self.coors_mlp(msg), dst, n)
        return x_update, _scatter_mean(msg, dst, n)

    def forward(
        self,
        lig: tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor],
        rec: tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor],
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``lig``/``rec`` = (pos, h, h0, edge_index, edge_attr, pos0); returns (pos_l, h_l, pos_r, h_r)."""
        pos_l, h_l, h0_l, ei_l, ea_l, pos0_l = lig
        pos_r, h_r, h0_r, ei_r, ea_r, pos0_r = rec
        x_upd_l, aggr_l = self._intra(pos_l, h_l, ei_l, ea_l)
        x_upd_r, aggr_r = self._intra(pos_r, h_r, ei_r, ea_r)
        if self.cross_msgs:
            cross_l = cross_attention(self.att_mlp_q(h_l), self.att_mlp_k(h_r), self.att_mlp_v(h_r))
            cross_r = cross_attention(self.att_mlp_q(h_r), self.att_mlp_k(h_l), self.att_mlp_v(h_l))
        else:
            cross_l, cross_r = h_l * 0.0, h_r * 0.0
        c = self.x_connection_init
        new_pos_l = c * pos0_l + (1.0 - c) * pos_l + x_upd_l
        new_pos_r = c * pos0_r + (1.0 - c) * pos_r + x_upd_r
        upd_l = self.node_mlp(torch.cat([h_l, aggr_l, cross_l, h0_l], dim=-1))
        upd_r = self.node_mlp(torch.cat([h_r, aggr_r, cross_r, h0_r], dim=-1))
        if self.in_dim == self.out_dim:
            s = self.skip_weight_h
            upd_l = s * upd_l + (1.0 - s) * h_l
            upd_r = s * upd_r + (1.0 - s) * h_r
        return new_pos_l, self.final_norm(upd_l), new_pos_r, self.final_norm(upd_r)


def kabsch(source: Tensor, target: Tensor, *, jitter: bool = False, max_tries: int = 10) -> tuple[Tensor, Tensor]:
    """Rigid transform (R, t) minimising ``sum |source @ R.T + t - target|^2``, det R = +1.

    Kabsch via SVD with the reflection fix, as EquiDock (``rigid_docking_model.py`` keypoint step and
    ``protein_utils.py`` ``rigid_transform_Kabsch_3D``): ``A = (target - mean)^T (source - mean)``,
    ``U S V^T = svd(A)``, ``R = U diag(1, 1, sign det A) V^T``, ``t = mean(target) - R mean(source)``.

    Args:
        source: (N, 3) points (Å).
        target: (N, 3) corresponding points (Å).
        jitter: the model's variant: while ``min S < 1e-3`` or two squared singular values are closer
            than 1e-2, add ``rand(3) * I`` (torch's global RNG) to ``A`` and redo the SVD (keeps the
            SVD gradient finite); at most ``max_tries`` times.

    Returns:
        R (3, 3) and t (3,), differentiable.

    Raises:
        GeoplmError: shapes differ or are not (N, 3); NaN input; with ``jitter``, the SVD stays
            degenerate after ``max_tries`` jitters.
    """
    if source.shape != target.shape or source.dim() != 2 or source.shape[1] != 3:
        raise GeoplmError(
            f"kabsch: expected two (N, 3) point sets, got {tuple(source.shape)} and {tuple(target.shape)}"
        )
    mean_s = source.mean(dim=0, keepdim=True)
    mean_t = target.mean(dim=0, keepdim=True)
    a = (target - mean_t).t() @ (source - mean_s)
    if torch.isnan(a).any():
        raise GeoplmError("kabsch: NaN coordinates")
    u, s, vt = torch.linalg.svd(a)
    if jitter:
        eye = torch.eye(3, dtype=a.dtype, device=a.device)
        tries = 0
        while s.min() < 1e-3 or (s.pow(2).view(1, 3) - s.pow(2).view(3, 1) + eye).abs().min() < 1e-2:
            a = a + torch.rand(3, 3, dtype=a.dtype, device=a.device) * eye
            u, s, vt = torch.linalg.svd(a)
            tries += 1
            if tries > max_tries:
                raise GeoplmError("kabsch: SVD numerically unstable after repeated jitter (degenerate keypoints)")
    sign = torch.sign(torch.det(a)).detach()
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    corr = torch.diag(torch.stack([sign.new_ones(()), sign.new_ones(()), sign]))
    rotation = u @ corr @ vt
    translation = (mean_t - mean_s @ rotation.t()).squeeze(0)
    return rotation, translation


class EquiDock(nn.Module):
    """EquiDock's docking network (``IEGMN`` + keypoint attention + Kabsch, ``rigid_docking_model.py``).

    Args:
        input_dim: None for residue-type input ((N,) long ``node_input``, embedded to
            ``residue_emb_dim``); F for float (N, F) ``node_input`` (e.g. ESM-2, 1280 for 650M).
        **config: overrides of :data:`DEFAULT_CONFIG` (``hidden_dim``, ``n_layers``, ``num_att_heads``,
            ``esm_mode`` "replace" | "concat", ...).

    Raises:
        GeoplmError: an unknown key or ``esm_mode``.
    """

    def __init__(self, input_dim: int | None = None, **config: Any):
        super().__init__()
        unknown = set(config) - set(DEFAULT_CONFIG)
        if unknown:
            raise GeoplmError(f"EquiDock: unknown option(s) {sorted(unknown)} (known: {sorted(DEFAULT_CONFIG)})")
        cfg = {**DEFAULT_CONFIG, **config}
        if cfg["esm_mode"] not in ("replace", "concat"):
            raise GeoplmError(f"EquiDock: esm_mode must be 'replace' or 'concat', got {cfg['esm_mode']!r}")
        self.config = cfg
        self.input_dim = input_dim
        hidden = int(cfg["hidden_dim"])
        emb = int(cfg["residue_emb_dim"])
        self.use_embedding = input_dim is None or cfg["esm_mode"] == "concat"
        self.residue_emb_layer = nn.Embedding(NUM_RESIDUE_TYPES, emb) if self.use_embedding else None
        node_dim = (emb if self.use_embedding else 0) + (input_dim or 0)
        if cfg["use_mean_node_features"]:
            node_dim += len(MEAN_FEATURE_SIGMAS)
        self.node_dim = node_dim
        edge_dim = EDGE_FEATURE_DIM
        self.use_edge_features = bool(cfg["use_edge_features_in_gmn"])
        n_layers = int(cfg["n_layers"])
        layers = [IEGMNLayer(node_dim, node_dim, hidden, edge_dim, cfg)]
        if n_layers > 1:
            if cfg["shared_layers"]:
                shared = IEGMNLayer(node_dim, hidden, hidden, edge_dim, cfg)
                layers += [shared] * (n_layers - 1)
            else:
                layers += [IEGMNLayer(node_dim, hidden, hidden, edge_dim, cfg) for _ in range(n_layers - 1)]
        self.layers = nn.ModuleList(layers)
        self.num_heads = int(cfg["num_att_heads"])
        self.hidden_dim = hidden
        self.att_mlp_key_rot = nn.Linear(hidden, self.num_heads * hidden, bias=False)
        self.att_mlp_query_rot = nn.Linear(hidden, self.num_heads * hidden, bias=False)
        self.mlp_h_mean_rot = nn.Sequential(
            nn.Linear(hidden, hidden), nn.Dropout(float(cfg["dropout"])), _nonlin(float(cfg["leakyrelu_neg_slope"]))
        )

    def _node_features(self, side: DockingSide, name: str) -> Tensor:
        x = side.node_input
        parts = []
        if self.input_dim is None:
            if x.dim() != 1 or x.dtype not in (torch.long, torch.int32, torch.int64):
                raise GeoplmError(
                    f"EquiDock: {name} node_input must be (N,) residue ids, got {tuple(x.shape)} {x.dtype}"
                )
            parts.append(self.residue_emb_layer(x.long()))
        else:
            if x.dim() != 2 or x.shape[1] != self.input_dim:
                raise GeoplmError(
                    f"EquiDock: {name} node_input must be (N, {self.input_dim}) float, got {tuple(x.shape)}"
                )
            if self.use_embedding:
                if side.residue_type is None:
                    raise GeoplmError(f"EquiDock: esm_mode='concat' needs {name}.residue_type")
                parts.append(self.residue_emb_layer(side.residue_type.long()))
            parts.append(x.to(side.pos.dtype))
        if self.config["use_mean_node_features"]:
            parts.append(torch.log(mean_vector_features(side.pos, side.edge_index)))
        return torch.cat(parts, dim=-1)

    def _check(self, side: DockingSide, name: str) -> None:
        n = side.pos.shape[0]
        if side.pos.dim() != 2 or side.pos.shape[1] != 3 or n < 2:
            raise GeoplmError(f"EquiDock: {name} pos must be (N, 3) with N >= 2, got {tuple(side.pos.shape)}")
        if side.node_input.shape[0] != n:
            raise GeoplmError(f"EquiDock: {name} node_input has {side.node_input.shape[0]} rows, pos {n}")
        if side.edge_index.dim() != 2 or side.edge_index.shape[0] != 2:
            raise GeoplmError(f"EquiDock: {name} edge_index must be (2, E), got {tuple(side.edge_index.shape)}")
        if side.edge_index.numel() and (side.edge_index.min() < 0 or side.edge_index.max() >= n):
            raise GeoplmError(f"EquiDock: {name} edge_index refers to nodes outside 0..{n - 1}")

    def _keypoints(self, h_self: Tensor, h_other: Tensor, coords: Tensor) -> Tensor:
        d, k = self.hidden_dim, self.num_heads
        query = self.att_mlp_query_rot(self.mlp_h_mean_rot(h_other).mean(dim=0, keepdim=True))  # (1, K d)
        keys = self.att_mlp_key_rot(h_self).view(-1, k, d).transpose(0, 1)  # (K, n, d)
        logits = keys @ query.view(1, k, d).transpose(0, 1).transpose(1, 2) / math.sqrt(d)  # (K, n, 1)
        weights = torch.softmax(logits, dim=1).view(k, -1)
        return weights @ coords  # (K, 3)

    def forward(self, receptor: DockingSide | Mapping, ligand: DockingSide | Mapping) -> dict[str, Tensor]:
        """Dock ``ligand`` onto ``receptor``.

        Args:
            receptor, ligand: :class:`DockingSide` (or dicts with its fields); positions in Å.

        Returns:
            dict with ``rotation`` (3, 3), det +1; ``translation`` (3,) Å; ``ligand_keypoints`` (K, 3)
            in the ligand input frame; ``receptor_keypoints`` (K, 3) in the receptor frame;
            ``ligand_pos`` (N_l, 3): the docked ligand ``ligand.pos @ R.T + t``; ``ligand_coords`` /
            ``receptor_coords``: the IEGMN output coordinates.

        Raises:
            GeoplmError: malformed inputs (shapes, node ids, edge indices), degenerate keypoints.
        """
        receptor = receptor if isinstance(receptor, DockingSide) else DockingSide(**receptor)
        ligand = ligand if isinstance(ligand, DockingSide) else DockingSide(**ligand)
        self._check(receptor, "receptor")
        self._check(ligand, "ligand")
        h0_l = self._node_features(ligand, "ligand")
        h0_r = self._node_features(receptor, "receptor")
        scale = 1.0 if self.use_edge_features else 0.0
        ea_l = edge_features(ligand.pos, ligand.edge_index, ligand.frames).to(h0_l.dtype) * scale
        ea_r = edge_features(receptor.pos, receptor.edge_index, receptor.frames).to(h0_r.dtype) * scale
        pos_l, h_l, pos_r, h_r = ligand.pos, h0_l, receptor.pos, h0_r
        for layer in self.layers:
            pos_l, h_l, pos_r, h_r = layer(
                (pos_l, h_l, h0_l, ligand.edge_index, ea_l, ligand.pos),
                (pos_r, h_r, h0_r, receptor.edge_index, ea_r, receptor.pos),
            )
        keypoints_r = self._keypoints(h_r, h_l, pos_r)
        keypoints_l = self._keypoints(h_l, h_r, pos_l)
        rotation, translation = kabsch(keypoints_l, keypoints_r, jitter=bool(self.config["svd_jitter"]))
        return {
            "rotation": rotation,
            "translation": translation,
            "ligand_keypoints": keypoints_l,
            "receptor_keypoints": keypoints_r,
            "ligand_pos": ligand.pos @ rotation.t() + translation,
            "ligand_coords": pos_l,
            "receptor_coords": pos_r,
        }
