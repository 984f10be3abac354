"""The model zoo: every encoder of the three papers, built by name from a ``models`` config entry.

Every encoder built here has one interface, what the training loop calls::

    encoder(graph: ResidueGraph, node_feature: (N, F) float) -> {"node_feature": (N, D), ...}

``graph`` is a packed batch (:class:`geoplm.graph.ResidueGraph`: Cα ``node_position`` in Å,
``residue_type`` (N,), ``node2graph`` (N,), ``edge_list`` (E, 3)); ``node_feature`` is the residue
one-hot (21) or the ESM-2 per-residue embedding. ``D`` is returned by :func:`build_encoder`. An
``esm`` / ``esm_*`` entry with ``freeze_esm: false`` also takes ``sequences`` and ``residue_mask`` (each
chain's sequence for the ESM-2 inside it; :func:`geoplm.models.fusion.record_esm_inputs`), as does one with
``esm_in_model: true`` (a key the pretraining run sets, not the config: ESM-2 inside the model but frozen).

=========== ============================================================== =========================
type        model                                                          graph
=========== ============================================================== =========================
gearnet     GearNet / GearNet-Edge (Zhang et al., ICLR 2023, Sec. 3.1-3.2; 7 relations (GearNet)
            torchdrug 0.2.1 ``models.GearNet``); ESM-2 input = ESM-GearNet
            serial fusion without the ESM half
gearnet_iec GearNet-IEConv / GearNet-Edge-IEConv (type ``gearnet_ieconv``; 7 relations (GearNet)
            Zhang et al., ICLR 2023, Fold / Reaction rows; GearNet's
            ``GearNetIEConv``): embedding, layer norm, IEConv layers
            (``use_ieconv``), line graph with ``num_angle_bin``
esm_gearnet ESM-GearNet serial / parallel / cross fusion (Zhang et al.     7 relations (GearNet)
            2023, Sec. 3); ESM-2 frozen (stored embeddings) or fine-tuned
            inside the model (``freeze_esm: false``)
cdconv      CDConv (Fan et al., ICLR 2023) as ESM-GearNet runs it          its own Cα r-balls 8, 12,
            (``models.CDConv``, :mod:`geoplm.models.cdconv`); node         16, 20 Å per pooling
            feature = the protein's feature broadcast to its residues      level (edges ignored)
esm_cdconv  ESM-CDConv serial / parallel / cross fusion (ESM-GearNet       as cdconv
            ``config/*/esm_cdconv{,_parallel}.yaml``); ESM as esm_gearnet
esm         ESM-2 alone (torchdrug ``models.ESM``): residue features and   none
            their mean; stored, or fine-tuned inside (``freeze_esm:
            false``, ``config/EC/esm.yaml``)
gvp         GVP-GNN (Jing et al., ICLR 2021) as Wu et al. (2023) use it    Cα r-ball 8 Å / kNN 10
gvp_esmgear ESM-GearNet's GVP-GNN (type ``gvp_esmgearnet``; Zhang et al.    Cα r-ball 10 Å, cap 32
            2023, "GVP" row; ``gearnet/gvp.py`` ``GVPGNN``)
esm_gvp     ESM-GVP serial / parallel / cross fusion (ESM-GearNet          as gvp_esmgearnet
            ``config/*/esm_gvp*.yaml``); ESM as esm_gearnet
egnn        EGNN (Satorras et al., ICML 2021) as Wu et al. use it          Cα r-ball 8 Å / kNN 10
molformer   Molformer (Wu et al., AAAI 2023) as Wu et al. (2023) use it    Cα, full attention
=========== ============================================================== ==================
For ``gvp``, ``egnn`` and ``molformer`` (Wu et al.), with ESM-2 features the 1280-d vector
*replaces* the residue-type input (it is not concatenated); without, the residue type is embedded
(``nn.Embedding`` with one row per one-hot column: 21, or 22 with LBA's ligand-atom type). EGNN has no
other input layer: with ESM-2 all its layers are 1280 wide.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from geoplm.errors import ConfigError
from geoplm.structure import NUM_RESIDUE_TYPES

#: graph kinds of Wu et al.'s models (GGNN_Meets_PLM: torch_cluster radius_graph r=8 / knn_graph k=10)
CA_GRAPH_KINDS = ("radius", "knn")


class CaGraphEncoder(nn.Module):
    """Wu et al.'s Cα-graph encoders (GVP-GNN, EGNN, Molformer) behind the zoo's interface.

    Args:
        net: the encoder; called as ``net(node_input, pos, edge_index)`` (GVP-GNN, Molformer) or
            ``net(h, x, edge_index, edge_attr)`` (EGNN, ``kind="egnn"``).
        kind: ``gvp``, ``egnn`` or ``molformer``.
        plm: True when ``node_feature`` is a PLM embedding that replaces the residue-type input.
        num_rbf, d_max: EGNN's edge attributes, the RBFs of the Cα distance (16 over 0-8 Å, as the
            GVP edge scalars in GGNN_Meets_PLM).
        embed: EGNN's residue-type embedding (``nn.Embedding``; None with ``plm``). EGNN receives the graph's
            edges flipped: GGNN_Meets_PLM's ``E_GCL`` aggregates at ``edge_index[0]``, which on a kNN graph is
            each centre's neighbour (see :mod:`geoplm.models.egnn`).
        readout: the graph feature (:func:`geoplm.graph.readout`): ``mean`` over each protein's residues (GVP-GNN's
            and EGNN's ``scatter_mean``), or ``padded_mean`` (Wu et al.'s Molformer head, over the batch's padded
            length).

    ``forward(graph, node_feature)`` returns ``{"node_feature": (N, D), "graph_feature": (B, D)}``
    (graph feature: ``readout`` over each protein's residues) and, for EGNN, ``"position"`` (N, 3).
    """

    def __init__(
        self,
        net: nn.Module,
        kind: str,
        plm: bool,
        num_rbf: int = 16,
        d_max: float = 8.0,
        embed: nn.Module | None = None,
        readout: str = "mean",
    ):
        super().__init__()
        self.readout = readout
        self.net = net
        self.kind = kind
        self.plm = plm
        self.num_rbf = num_rbf
        self.d_max = d_max
        self.embed = embed

    def forward(self, graph, node_feature: torch.Tensor) -> dict[str, torch.Tensor]:
        edge_index = graph.edge_list[:, :2].t().long()
        pos = graph.node_position
        out: dict[str, torch.Tensor] = {}
        if self.kind == "egnn":
            from geoplm.models.gvp import rbf

            h = node_feature if self.plm else self.embed(graph.residue_type)
            distance = (pos[edge_index[0]] - pos[edge_index[1]]).norm(dim=-1)
            edge_attr = rbf(distance, 0.0, self.d_max, self.num_rbf)
            # GGNN_Meets_PLM's E_GCL aggregates at edge_index[0] of the [source, target] graph it is given
            node, out["position"] = self.net(h, pos, edge_index.flip(0), edge_attr)
        elif self.kind == "molformer":
            node = self.net(node_feature if self.plm else graph.residue_type, pos, edge_index, graph.node2graph)
        else:
            node = self.net(node_feature if self.plm else graph.residue_type, pos, edge_index)
        from geoplm.graph import readout

        out.update(node_feature=node, graph_feature=readout(node, graph.node2graph, graph.batch_size, self.readout))
        return out


#: keys every ``models`` entry of the zoo may have besides its type's (:data:`MODEL_KEYS`)
COMMON_KEYS = frozenset({"type", "graph"})


def _check_keys(spec: Mapping, name: str, allowed: set[str] | frozenset[str]) -> None:
    unknown = set(spec) - set(allowed) - COMMON_KEYS
    if unknown:
        raise ConfigError(f"models.{name}: keys {sorted(unknown)} do not apply to type '{spec['type']}'")


#: keys of a GearNet entry (``gearnet``, and the structure half of ``esm_gearnet``)
GEARNET_KEYS = frozenset(
    {"hidden_dims", "short_cut", "batch_norm", "concat_hidden", "readout", "dropout", "num_angle_bin", "edge_input_dim"}
)


def _gearnet(spec: Mapping, input_dim: int) -> tuple[nn.Module, int]:
    """GearNet / GearNet-Edge (with ``num_angle_bin``) of a ``gearnet`` or ``esm_gearnet`` entry, on
    7 relations; its node output width (all layers with ``concat_hidden``, else the last)."""
    from geoplm.models.gearnet import GearNet

    hidden = list(spec.get("hidden_dims", [512] * 6))
    encoder = GearNet(
        input_dim=input_dim,
        hidden_dims=hidden,
        num_relation=7,
        short_cut=spec.get("short_cut", True),
        batch_norm=spec.get("batch_norm", True),
        concat_hidden=spec.get("concat_hidden", True),
        readout=spec.get("readout", "sum"),
        dropout=spec.get("dropout", 0.0),
        edge_input_dim=spec.get("edge_input_dim", 59) if "num_angle_bin" in spec else None,
        num_angle_bin=spec.get("num_angle_bin"),
    )
    return encoder, (sum(hidden) if spec.get("concat_hidden", True) else hidden[-1])


#: keys of a ``gearnet_ieconv`` entry
GEARNET_IECONV_KEYS = frozenset(
    {
        "hidden_dims",
        "embedding_dim",
        "short_cut",
        "batch_norm",
        "concat_hidden",
        "readout",
        "dropout",
        "layer_norm",
        "use_ieconv",
        "num_angle_bin",
        "edge_input_dim",
        "ieconv_frames",
    }
)


def _build_gearnet_ieconv(spec: Mapping, input_dim: int, plm: bool, name: str, esm) -> tuple[nn.Module, int]:
    """``type: gearnet_ieconv``: :class:`geoplm.models.gearnet_ieconv.GearNetIEConv` on 7 relations and the node
    features given (one-hot, or ESM-2 embedded by its input ``linear``).

    Defaults are DeepGraphLearning/GearNet's ``config/downstream/Fold3D/gearnet_ieconv.yaml`` (GearNet-IEConv):
    ``embedding_dim`` 512, ``hidden_dims`` 6 x 512, ``batch_norm``, ``concat_hidden``, ``short_cut``,
    ``layer_norm`` true, ``readout`` sum, ``dropout`` 0.2, ``use_ieconv`` true. ``num_angle_bin: 8`` gives
    GearNet-Edge-IEConv (``gearnet_edge_ieconv.yaml``; ``edge_input_dim`` 59), and with ``use_ieconv: false``
    the Fold GearNet-Edge (``gearnet_edge.yaml``). ``ieconv_frames``: ``per_graph`` (default) or ``reference``
    (:func:`geoplm.models.gearnet_ieconv.ieconv_local_frames`).

    Raises:
        ConfigError: keys that do not apply, or invalid values (as the model's ValueError).
    """
    from geoplm.models.gearnet_ieconv import GearNetIEConv

    _check_keys(spec, name, set(GEARNET_IECONV_KEYS))
    num_angle_bin = spec.get("num_angle_bin")
    try:
        encoder = GearNetIEConv(
            input_dim=input_dim,
            embedding_dim=spec.get("embedding_dim", 512),
            hidden_dims=list(spec.get("hidden_dims", [512] * 6)),
            num_relation=7,
            edge_input_dim=spec.get("edge_input_dim", 59) if num_angle_bin else None,
            num_angle_bin=num_angle_bin,
            batch_norm=spec.get("batch_norm", True),
            concat_hidden=spec.get("concat_hidden", True),
            short_cut=spec.get("short_cut", True),
            readout=spec.get("readout", "sum"),
            dropout=spec.get("dropout", 0.2),
            layer_norm=spec.get("layer_norm", True),
            use_ieconv=spec.get("use_ieconv", True),
            frames=spec.get("ieconv_frames", "per_graph"),
        )
    except ValueError as error:
        raise ConfigError(f"models.{name}: {error}") from error
    return encoder, encoder.output_dim


#: keys of a CDConv entry (``cdconv``, and the structure half of ``esm_cdconv``)
CDCONV_KEYS = frozenset(
    {"embedding_dim", "hidden_dims", "cutoffs", "seq_cutoff", "kernel_dims", "base_width", "batch_norm", "dropout"}
)
#: keys of the ESM half (``esm``, ``esm_*`` fusions); ``esm_lr_ratio`` is read by the training loop
ESM_KEYS = frozenset({"freeze_esm", "esm_lr_ratio"})
#: keys a run sets on an ESM entry, not the config: ``esm_in_model`` (a pretraining run,
#: :mod:`geoplm.pretraining.run`, runs the frozen ESM-2 inside the model; see :func:`_esm_half`)
ESM_RUN_KEYS = frozenset({"esm_in_model"})
#: keys of the fusion itself (``esm_*``)
FUSION_KEYS = frozenset({"fusion", "cross_dim"})


def _cdconv(spec: Mapping, input_dim: int) -> tuple[nn.Module, int]:
    """CDConv (:class:`geoplm.models.cdconv.CDConv`) of a ``cdconv`` or ``esm_cdconv`` entry, with the reference's
    defaults (ESM-GearNet ``config/*/cdconv.yaml``); its output width ``hidden_dims[-1]``."""
    from geoplm.models.cdconv import CDConv

    encoder = CDConv(
        input_dim,
        embedding_dim=spec.get("embedding_dim", 16),
        hidden_dims=list(spec.get("hidden_dims", [256, 512, 1024, 2048])),
        cutoffs=list(spec.get("cutoffs", [8.0, 12.0, 16.0, 20.0])),
        seq_cutoff=spec.get("seq_cutoff", 21),
        kernel_dims=list(spec.get("kernel_dims", [32])),
        base_width=spec.get("base_width", 16.0),
        batch_norm=spec.get("batch_norm", True),
        dropout=spec.get("dropout", 0.2),
    )
    return encoder, encoder.output_dim


class _FusionEncoder(nn.Module):
    """An :class:`geoplm.models.fusion.ESMModule` (ESM fusion or ESM-2 alone) behind the encoder interface. On
    stored (frozen) ESM-2 features, ``node_feature`` is the ESM-2 embedding. With ESM-2 inside the model
    (``freeze_esm: false``, or frozen with ``esm_in_model: true``), ESM-2 reads each chain's full sequence
    (``sequences`` / ``residue_mask``, :func:`geoplm.models.fusion.record_esm_inputs`) in every forward pass and
    ``node_feature`` (the one-hot) is not needed. A fusion's structure encoder reads the residue one-hot from the
    graph (parallel / cross) or the ESM output (serial)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, graph, node_feature: torch.Tensor, sequences=None, residue_mask=None) -> dict[str, torch.Tensor]:
        if self.net.sequence_model is None:
            return self.net(graph, esm_feature=node_feature)
        return self.net(graph, sequences=sequences, residue_mask=residue_mask)


def _esm_half(spec: Mapping, esm_dim: int, name: str, esm) -> dict:
    """The :class:`geoplm.models.fusion.ESMModule` arguments of an entry: stored features of width ``esm_dim``
    (``freeze_esm: true``, default), the ESM-2 ``esm = (model, alphabet, plm settings)`` fine-tuned inside
    (``freeze_esm: false``), or that ESM-2 inside the model but frozen (``freeze_esm: true`` with
    ``esm_in_model: true``, ESM-GearNet's pretraining: ``fix_sequence_model: True`` with the ESM in the
    ``FusionNetwork``): ``requires_grad=False``, always in eval mode, run without gradients, left out of the
    optimizer by :func:`geoplm.models.fusion.param_groups`, and its weights in the encoder's ``state_dict``
    (``net.sequence_model.model.*``, the reference's ``sequence_model.model.*``). It reads the proteins'
    ``sequences`` / ``residue_mask`` like a fine-tuned one, so masked inputs reach ESM-2 as masked sequences.

    Raises:
        ConfigError: ``freeze_esm: false`` or ``esm_in_model: true`` without an ESM-2.
    """
    from geoplm.esm import DEFAULT_STRIDE, DEFAULT_WINDOW

    frozen = bool(spec.get("freeze_esm", True))
    if frozen and not spec.get("esm_in_model", False):
        return {"esm_dim": esm_dim}
    if esm is None:
        what = "freeze_esm: false fine-tunes" if not frozen else "esm_in_model: true runs"
        raise ConfigError(f"models.{name}: {what} ESM-2 inside the model; give its checkpoint")
    esm_model, alphabet, settings = esm
    return {
        "esm_model": esm_model,
        "esm_alphabet": alphabet,
        "freeze_esm": frozen,
        "repr_layer": settings.get("repr_layer", -1),
        "window": settings.get("window", DEFAULT_WINDOW),
        "stride": settings.get("stride", DEFAULT_STRIDE),
        "toks_per_batch": settings.get("toks_per_batch", 4096),
    }


def build_esm_fusion(
    spec: Mapping,
    esm_dim: int,
    structure: Callable[[Mapping, int], tuple[nn.Module, int]],
    name: str = "model",
    esm=None,
) -> tuple[nn.Module, int]:
    """An ESM fusion (Zhang et al. 2023, Sec. 3; DeepGraphLearning/ESM-GearNet ``FusionNetwork``) of ESM-2 with the
    structure encoder that ``structure(spec, input_dim) -> (encoder, D)`` builds from the same entry: ``fusion``
    serial / parallel / cross, ``cross_dim`` (512) for cross fusion. The structure encoder reads the ESM-2
    output (serial; ``input_dim`` = the ESM width) or the 21-d residue one-hot (parallel, cross).

    ``freeze_esm: true`` (default): on the workflow's stored ESM-2 embeddings (ESM frozen; ``esm_dim`` their
    width). ``freeze_esm: false``: ESM-2 (``esm = (model, alphabet, plm settings)``) runs inside the model
    and is fine-tuned; :func:`geoplm.models.fusion.param_groups` gives it ``esm_lr_ratio`` (0.1) times the
    learning rate, as the reference's ``sequence_model_lr_ratio``. ``esm_in_model: true`` (set by a pretraining
    run) with ``freeze_esm: true``: ESM-2 runs inside the model, frozen (:func:`_esm_half`).

    Raises:
        ConfigError: unknown fusion, ``cross_dim`` not a multiple of the 8 heads, or ``freeze_esm: false``
            without an ESM-2.
    """
    from geoplm.models.fusion import ESMFusion

    fusion = spec.get("fusion", "serial")
    if fusion not in ("serial", "series", "parallel", "cross"):
        raise ConfigError(f"models.{name}.fusion: '{fusion}' is not serial, parallel or cross")
    half = _esm_half(spec, esm_dim, name, esm)
    width = int(half["esm_model"].embed_dim) if "esm_model" in half else esm_dim
    encoder, _ = structure(spec, width if fusion in ("serial", "series") else NUM_RESIDUE_TYPES)
    net = ESMFusion(encoder, fusion=fusion, cross_dim=spec.get("cross_dim", 512), **half)
    return _FusionEncoder(net), net.output_dim


def build_esm_gearnet(spec: Mapping, esm_dim: int, name: str = "model", esm=None) -> tuple[nn.Module, int]:
    """ESM-GearNet: :func:`build_esm_fusion` with GearNet (hyperparameters as for ``type: gearnet``)."""
    return build_esm_fusion(spec, esm_dim, _gearnet, name, esm)


def _build_gearnet(spec: Mapping, input_dim: int, plm: bool, name: str, esm) -> tuple[nn.Module, int]:
    """``type: gearnet``: GearNet / GearNet-Edge on the node features given (one-hot or ESM-2: serial fusion)."""
    _check_keys(spec, name, GEARNET_KEYS)
    return _gearnet(spec, input_dim)


#: keys of a ``gvp`` entry (Wu et al.'s GVP-GNN)
GVP_KEYS = frozenset({"embed_dim", "node_dims", "edge_dims", "num_rbf", "d_max", "num_layers", "dropout"})


def _build_gvp(spec: Mapping, input_dim: int, plm: bool, name: str, esm) -> tuple[nn.Module, int]:
    """``type: gvp``: GVP-GNN (:class:`geoplm.models.gvp.GVPGNN`)."""
    from geoplm.models.gvp import GVPGNN

    _check_keys(spec, name, GVP_KEYS)
    net = GVPGNN(
        embed_dim=spec.get("embed_dim", 32),
        plm_dim=input_dim if plm else None,
        num_residue_types=input_dim,
        node_dims=tuple(spec.get("node_dims", (100, 16))),
        edge_dims=tuple(spec.get("edge_dims", (32, 1))),
        num_rbf=spec.get("num_rbf", 16),
        d_max=spec.get("d_max", 8.0),
        num_layers=spec.get("num_layers", 5),
        drop_rate=spec.get("dropout", 0.1),
    )
    return CaGraphEncoder(net, "gvp", plm), net.output_dim


#: keys of an ESM-GearNet GVP-GNN entry (``gvp_esmgearnet``, and the structure half of ``esm_gvp``)
GVP_ESMGEARNET_KEYS = frozenset(
    {"node_dims", "edge_dims", "num_rbf", "num_layers", "dropout", "readout", "vector_gate"}
)


def _gvp_esmgearnet(spec: Mapping, input_dim: int, name: str = "model") -> tuple[nn.Module, int]:
    """ESM-GearNet's GVP-GNN (:class:`geoplm.models.gvp_esmgearnet.ESMGearNetGVPGNN`) on ``input_dim``-wide node
    inputs. Keys (ESM-GearNet's names in brackets, defaults from its configs): ``node_dims`` (``node_h_dim``,
    [256, 16]), ``edge_dims`` (``edge_h_dim``, [64, 1]), ``num_rbf`` (``edge_in_dim[0]``, 16), ``num_layers`` (5),
    ``dropout`` (``drop_rate``, 0.1), ``readout`` (mean), ``vector_gate`` (true); ``node_in_dim`` is
    ``[input_dim, 0]``. Its graph is ``{kind: radius, radius: 10.0, max_num_neighbors: 32}`` (torchdrug
    ``SpatialEdge(radius=10, min_distance=0)``).

    Raises:
        ConfigError: hyperparameters the model rejects.
    """
    from geoplm.models.gvp_esmgearnet import ESMGearNetGVPGNN

    try:
        net = ESMGearNetGVPGNN(
            node_in_dim=(input_dim, 0),
            node_h_dim=tuple(spec.get("node_dims", (256, 16))),
            edge_in_dim=(spec.get("num_rbf", 16), 1),
            edge_h_dim=tuple(spec.get("edge_dims", (64, 1))),
            readout=spec.get("readout", "mean"),
            num_layers=spec.get("num_layers", 5),
            drop_rate=spec.get("dropout", 0.1),
            vector_gate=spec.get("vector_gate", True),
        )
    except ValueError as error:
        raise ConfigError(f"models.{name}: {error}") from error
    return net, net.output_dim


def _build_gvp_esmgearnet(spec: Mapping, input_dim: int, plm: bool, name: str, esm) -> tuple[nn.Module, int]:
    """``type: gvp_esmgearnet``: ESM-GearNet's GVP-GNN (:func:`_gvp_esmgearnet`) on the node features given (the
    21-d one-hot: the "GVP" row; ESM-2 rows read in its place).

    Raises:
        ConfigError: keys that do not apply, or hyperparameters the model rejects.
    """
    _check_keys(spec, name, set(GVP_ESMGEARNET_KEYS))
    return _gvp_esmgearnet(spec, input_dim, name)


def _build_esm_gvp(spec: Mapping, input_dim: int, plm: bool, name: str, esm) -> tuple[nn.Module, int]:
    """``type: esm_gvp``: ESM-GVP (ESM-GearNet ``config/*/esm_gvp{,_parallel,_cross}.yaml``),
    :func:`build_esm_fusion` with ESM-GearNet's GVP-GNN (needs ESM-2 features)."""
    if not plm:
        raise ConfigError(f"models.{name}: esm_gvp fuses ESM-2 with GVP-GNN; use it with a plm, not 'none'")
    _check_keys(spec, name, GVP_ESMGEARNET_KEYS | ESM_KEYS | ESM_RUN_KEYS | FUSION_KEYS)
    return build_esm_fusion(spec, input_dim, lambda s, dim: _gvp_esmgearnet(s, dim, name), name, esm)


#: keys of an ``egnn`` entry
EGNN_KEYS = frozenset({"hidden_dim", "num_layers", "num_rbf", "d_max", "attention"})


def _build_egnn(spec: Mapping, input_dim: int, plm: bool, name: str, esm) -> tuple[nn.Module, int]:
    """``type: egnn``: GGNN_Meets_PLM's EGNN (:class:`geoplm.models.egnn.EGNN` without input / output
    embeddings): ``nn.Embedding(residue types, hidden_dim)`` of the residue type, or the PLM vector itself (every
    layer ``input_dim`` wide), with RBF edge attributes; ``egnn/egnn_clean.py`` ``EGNN(hidden_nf=32, n_layers=4,
    in_edge_nf=16)``."""
    from geoplm.models.egnn import EGNN

    _check_keys(spec, name, EGNN_KEYS)
    width = input_dim if plm else spec.get("hidden_dim", 32)
    num_rbf = spec.get("num_rbf", 16)
    net = EGNN(
        in_node_nf=width,
        hidden_nf=width,
        out_node_nf=width,
        in_edge_nf=num_rbf,
        n_layers=spec.get("num_layers", 4),
        attention=spec.get("attention", False),
        embedding_in_out=False,
    )
    embed = None if plm else nn.Embedding(input_dim, width)
    return CaGraphEncoder(net, "egnn", plm, num_rbf=num_rbf, d_max=spec.get("d_max", 8.0), embed=embed), width


#: keys of a ``molformer`` entry: :class:`geoplm.models.molformer.Molformer`'s hyperparameters and ``readout``
MOLFORMER_KEYS = frozenset({"embed_dim", "num_layers", "num_heads", "ffn_dim", "dropout", "distance_scales", "readout"})


def _build_molformer(spec: Mapping, input_dim: int, plm: bool, name: str, esm) -> tuple[nn.Module, int]:
    """``type: molformer``: Molformer (:class:`geoplm.models.molformer.Molformer`); ``readout`` (``mean``, or Wu
    et al.'s ``padded_mean``) makes the graph feature."""
    from geoplm.models import molformer

    _check_keys(spec, name, MOLFORMER_KEYS)
    options = {k: v for k, v in spec.items() if k not in ("type", "graph", "readout")}
    readout = spec.get("readout", "mean")
    if readout not in ("mean", "padded_mean"):
        raise ConfigError(f"models.{name}.readout: {readout!r} is not a Molformer readout (mean, padded_mean)")
    net = molformer.Molformer(plm_dim=input_dim if plm else None, num_residue_types=input_dim, **options)
    return CaGraphEncoder(net, "molformer", plm, readout=readout), net.output_dim


def _build_esm_gearnet(spec: Mapping, input_dim: int, plm: bool, name: str, esm) -> tuple[nn.Module, int]:
    """``type: esm_gearnet``: :func:`build_esm_gearnet` (needs ESM-2 features)."""
    if not plm:
        raise ConfigError(f"models.{name}: esm_gearnet fuses ESM-2 with GearNet; use it with a plm, not 'none'")
    _check_keys(spec, name, GEARNET_KEYS | ESM_KEYS | ESM_RUN_KEYS | FUSION_KEYS)
    return build_esm_gearnet(spec, input_dim, name, esm)


def _build_cdconv(spec: Mapping, input_dim: int, plm: bool, name: str, esm) -> tuple[nn.Module, int]:
    """``type: cdconv``: CDConv (:class:`geoplm.models.cdconv.CDConv`) on the node features given (one-hot, or
    ESM-2 features read in place of it)."""
    _check_keys(spec, name, CDCONV_KEYS)
    return _cdconv(spec, input_dim)


def _build_esm_cdconv(spec: Mapping, input_dim: int, plm: bool, name: str, esm) -> tuple[nn.Module, int]:
    """``type: esm_cdconv``: ESM-CDConv, :func:`build_esm_fusion` with CDConv (needs ESM-2 features)."""
    if not plm:
        raise ConfigError(f"models.{name}: esm_cdconv fuses ESM-2 with CDConv; use it with a plm, not 'none'")
    _check_keys(spec, name, CDCONV_KEYS | ESM_KEYS | ESM_RUN_KEYS | FUSION_KEYS)
    return build_esm_fusion(spec, input_dim, _cdconv, name, esm)


def _build_esm(spec: Mapping, input_dim: int, plm: bool, name: str, esm) -> tuple[nn.Module, int]:
    """``type: esm``: ESM-2 alone (:class:`geoplm.models.fusion.ESMEncoder`): its residue features and their
    ``readout`` (``mean``, torchdrug ``models.ESM``'s default); fine-tuned inside the model with ``freeze_esm:
    false`` (the reference's ``config/EC/esm.yaml``, ``lr_ratio: 0.1`` = ``esm_lr_ratio``)."""
    from geoplm.models.fusion import ESMEncoder

    if not plm:
        raise ConfigError(f"models.{name}: type esm is ESM-2 alone; use it with a plm, not 'none'")
    _check_keys(spec, name, ESM_KEYS | ESM_RUN_KEYS | {"readout"})
    net = ESMEncoder(esm_readout=spec.get("readout", "mean"), **_esm_half(spec, input_dim, name, esm))
    return _FusionEncoder(net), net.output_dim


#: The model registry: ``models`` entry ``type`` -> builder ``(spec, input_dim, plm, name, esm) -> (encoder, D)``.
#: A new encoder is a module under ``geoplm.models`` plus one entry here and its keys in :data:`MODEL_KEYS` (and in
#: ``config/schema.yaml``; ``tests/test_config.py`` checks that the two agree).
ENCODERS: dict[str, Callable[..., tuple[nn.Module, int]]] = {
    "gearnet": _build_gearnet,
    "gearnet_ieconv": _build_gearnet_ieconv,
    "esm_gearnet": _build_esm_gearnet,
    "cdconv": _build_cdconv,
    "esm_cdconv": _build_esm_cdconv,
    "esm": _build_esm,
    "gvp": _build_gvp,
    "gvp_esmgearnet": _build_gvp_esmgearnet,
    "esm_gvp": _build_esm_gvp,
    "egnn": _build_egnn,
    "molformer": _build_molformer,
}
ENCODER_TYPES = tuple(ENCODERS)


def _equidock_keys() -> frozenset[str]:
    from geoplm.models.equidock import DEFAULT_CONFIG

    return frozenset(DEFAULT_CONFIG) | {"type"}


#: Every key a ``models`` entry of each ``type`` may have: :data:`COMMON_KEYS` and the set its builder checks; for
#: ``equidock`` (built by the docking task, :class:`geoplm.tasks.docking.RigidDocking`, without a ``graph``)
#: ``type`` and the keys of :data:`geoplm.models.equidock.DEFAULT_CONFIG`. :func:`geoplm.config.check_entries`
#: checks every ``models`` entry against it when the config is loaded.
MODEL_KEYS: dict[str, frozenset[str]] = {
    "gearnet": COMMON_KEYS | GEARNET_KEYS,
    "gearnet_ieconv": COMMON_KEYS | GEARNET_IECONV_KEYS,
    "esm_gearnet": COMMON_KEYS | GEARNET_KEYS | ESM_KEYS | FUSION_KEYS,
    "cdconv": COMMON_KEYS | CDCONV_KEYS,
    "esm_cdconv": COMMON_KEYS | CDCONV_KEYS | ESM_KEYS | FUSION_KEYS,
    "esm": COMMON_KEYS | ESM_KEYS | {"readout"},
    "gvp": COMMON_KEYS | GVP_KEYS,
    "gvp_esmgearnet": COMMON_KEYS | GVP_ESMGEARNET_KEYS,
    "esm_gvp": COMMON_KEYS | GVP_ESMGEARNET_KEYS | ESM_KEYS | FUSION_KEYS,
    "egnn": COMMON_KEYS | EGNN_KEYS,
    "molformer": COMMON_KEYS | MOLFORMER_KEYS,
    "equidock": _equidock_keys(),
}


def build_encoder(
    spec: Mapping, input_dim: int, plm: bool = False, name: str = "model", esm=None
) -> tuple[nn.Module, int]:
    """Build the encoder of a ``models`` config entry (its ``type`` looked up in :data:`ENCODERS`); return it
    and its node output width D.

    Args:
        spec: the config entry (``type`` and the model's hyperparameters; see ``config/schema.yaml``).
        input_dim: F, the width of ``node_feature`` (21 for one-hot, the ESM-2 width with a plm).
        plm: whether ``node_feature`` is an ESM-2 embedding (Wu et al.'s models then take it in
            place of the residue-type input; ``esm``, ``esm_gearnet``, ``esm_cdconv`` require it).
        name: the entry's name, for error messages.
        esm: ``(model, alphabet, plm settings)`` of the ESM-2 an ``esm`` / ``esm_*`` entry with
            ``freeze_esm: false`` fine-tunes, or runs frozen inside with ``esm_in_model: true`` (:func:`_esm_half`).

    Raises:
        ConfigError: an unknown type, keys that do not apply to it, or an ESM type without ESM.
    """
    from geoplm.config import ESM_TYPES

    kind = spec["type"]
    for key in ("freeze_esm", *ESM_RUN_KEYS):
        if kind not in ESM_TYPES and key in spec:
            raise ConfigError(f"models.{name}: {key} applies to types {', '.join(ESM_TYPES)} only, not '{kind}'")
    if kind not in ENCODERS:
        raise ConfigError(f"models.{name}: unknown model type '{kind}' (known: {', '.join(ENCODER_TYPES)})")
    return ENCODERS[kind](spec, input_dim, plm, name, esm)
