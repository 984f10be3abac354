"""SiamDiff: siamese diffusion trajectory prediction (Zhang et al., "Pre-Training Protein Encoder via Siamese
Sequence-Structure Diffusion Trajectory Prediction", NeurIPS 2023, arXiv 2301.12068), the sixth pretraining task
of ESM-GearNet (Zhang et al. 2023, arXiv 2303.06275).

Re-implemented after DeepGraphLearning/ESM-GearNet ``gearnet/siamdiff.py`` (``SiamDiff``, ``NoiseTransform``) and
``config/pretrain/siamdiff_esm_gearnet.yaml``; nothing is copied. For a batch of B proteins (truncated to a random
window of at most 150 residues, torchdrug ``TruncateProtein(150, random=True)``):

1. **Siamese conformer** (``NoiseTransform(sigma=0.3)``): view 2 is the protein with every Cα moved by
   ``N(0, 0.3^2)`` Å per coordinate; view 1 is the protein itself. (``use_MI: false``, DiffPreT: view 1 only.)
2. **Noise level**: ``t_b ~ U{0..T-1}`` per protein (T = ``num_noise_level`` = 100), shared by both views. The
   schedule (:func:`noise_schedule`): ``beta = sigmoid(linspace(-6, 6, T)) (sigma_end - sigma_begin) +
   sigma_begin`` (1e-3, 0.1), ``a = cumprod(1 - beta)``.
3. **Sequence diffusion** (``add_seq_noise``): per protein ``max(1, floor(n r_t))`` nodes sampled uniformly *with
   replacement*, ``r_t = (max_mask_ratio - min_mask_ratio) (t + 1) / T + min_mask_ratio`` (0.15 -> 1.0,
   :func:`mask_rate`); the same nodes are masked in both views (:func:`geoplm.pretraining.masking.mask_residues`:
   residue type 0, node feature zeroed, the in-model ESM-2 reads ``esm_mask_token`` there).
4. **Graphs**: each view's graph (:func:`geoplm.inputs.pack` with the model's graph settings) is built on the masked
   protein at the view's coordinates *before* the structure noise, as the reference's ``apply_edge_layer`` runs
   before ``add_struct_noise`` ("this should be done before structure perturbation"); edges are **not** rebuilt
   on the perturbed coordinates.
5. **Structure diffusion** (``add_struct_noise``): ``x~ = x + eps sqrt((1 - a_t) / a_t)``, ``eps ~ N(0, I)``
   (Å), per view. The graph handed to the encoder carries ``x~`` as ``node_position``; with GearNet's 59-d edge
   features (``edge_feature: gearnet``) their last column (the Cα distance) becomes the perturbed distance; without
   edge features (ESM-GearNet's pretraining config: ``edge_feature: null``) a plain GearNet never reads the
   coordinates, and the perturbed structure reaches the model only through ``dist_mlp(d~)`` below.
   Edge target (the distance score): ``s = (d - d~) sqrt(a_t) / sqrt(1 - a_t)`` with ``d``, ``d~`` the Cα
   distances of every edge before and after the noise.
6. **Cross prediction**: the encoder's per-residue output ``h^(2)`` of view 2 denoises view 1 and ``h^(1)``
   denoises view 2. Structure: ``s^ = struct_mlp([h_i * h_j, dist_mlp(d~_ij)])`` per edge ``i -> j`` of the
   denoised view, mapped to node vectors by :func:`eq_transform` (GeoDiff's ``eq_transform``), like the target;
   loss ``0.5 ||s^_node - s_node||^2`` averaged over each protein's nodes, then over proteins. Sequence:
   ``seq_mlp(h_k)`` over the masked nodes, loss ``0.5 CE`` averaged per protein, then over proteins.
7. **Loss** ``gamma (L_struct^1 + L_struct^2) + (1 - gamma) (L_seq^1 + L_seq^2)`` with ``gamma`` 0.5.

The heads (:meth:`SiamDiff.head`) are torchdrug MLPs of ``num_mlp_layer`` (3 in the config) layers:
``struct_mlp`` ``2D -> D -> D -> 1``, ``dist_mlp`` ``1 -> D -> D -> D``, ``seq_mlp`` ``D -> D -> D -> 20``
(``constant.NUM_AMINO_ACID``). The run's torch generator draws every random number (noise levels, masks, both
noises), in the order: siamese noise, noise levels, mask positions, structure noise of view 1, of view 2.

Deviations, forced by the project's Cα-only inputs or its vocabulary:

* Residues keep only their backbone atoms when masked (``node_mask`` in ``add_seq_noise``): on the reference's
  residue-view graphs ``AlphaCarbonNode`` has already left one Cα atom per residue, so this removes nothing there
  and has no counterpart here. The siamese noise is drawn for the Cα only (the reference draws it for every
  atom, then keeps the Cα: the same distribution).
* geoplm's residue type 20 (unknown, ``X``) has no torchdrug id (torchdrug reads unknown residues as glycine):
  a masked ``X`` is a glycine (0) target of the 20-way ``seq_mlp``.
* ``esm_mask_token`` ``"G"`` (default) reproduces the reference exactly: it sets masked residues to type 0, which
  torchdrug's ``models.ESM`` maps to glycine, so ESM-2 reads ``G`` there, not ``<mask>``; ``"<mask>"`` feeds
  ESM-2's mask token instead (as ESM-GearNet's residue type prediction does).
* With stored ESM-2 rows instead of an ESM-2 inside the model, masked residues' rows are zeroed but their
  neighbours' rows were computed from the unmasked sequence (see :mod:`geoplm.pretraining.masking`).
* The ESM-2 inside the model reads each protein's full (truncated) sequence and drops residues without a Cα
  afterwards (:mod:`geoplm.models.fusion`); AlphaFold DB models have a Cα everywhere, so nothing changes there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from geoplm.errors import ConfigError
from geoplm.graph import ResidueGraph, gearnet_edge_feature_dim, graph_kind
from geoplm.inputs import Batch, ProteinInput, pack
from geoplm.pretraining.base import PretrainingTask, sample_with_replacement
from geoplm.pretraining.masking import MASK_TOKEN, esm_mask_character, mask_residues
from geoplm.structure import NUM_STANDARD_RESIDUE_TYPES, UNKNOWN_RESIDUE_INDEX
from geoplm.tasks.base import MLP, Example

#: ``seq_mlp`` classes: torchdrug's 20 residue types (``constant.NUM_AMINO_ACID``)
NUM_CLASS = NUM_STANDARD_RESIDUE_TYPES


def noise_schedule(sigma_begin: float, sigma_end: float, num_noise_level: int) -> Tensor:
    """SiamDiff's cumulative noise schedule ``a_t`` (``SiamDiff.__init__``).

    ``beta_t = sigmoid(linspace(-6, 6, T))_t (sigma_end - sigma_begin) + sigma_begin``,
    ``a_t = prod_{s <= t} (1 - beta_s)``.

    Returns:
        ``(T,)`` float32, decreasing from ``1 - beta_0``.

    Raises:
        ConfigError: ``T < 1`` or betas outside ``(0, 1)``.
    """
    if int(num_noise_level) < 1:
        raise ConfigError(f"num_noise_level must be >= 1, got {num_noise_level}")
    if not 0.0 < float(sigma_begin) <= float(sigma_end) < 1.0:
        raise ConfigError(f"need 0 < sigma_begin <= sigma_end < 1, got {sigma_begin}, {sigma_end}")
    betas = torch.linspace(-6, 6, int(num_noise_level)).sigmoid() * (sigma_end - sigma_begin) + sigma_begin
    return (1.0 - betas).cumprod(dim=0)


def mask_rate(noise_level: Tensor, num_noise_level: int, min_mask_ratio: float, max_mask_ratio: float) -> Tensor:
    """The fraction of residues sequence diffusion masks at each level (``add_seq_noise``):
    ``(max - min) (t + 1) / T + min``, from ``min + (max - min) / T`` at t = 0 to ``max`` at t = T - 1.

    Args:
        noise_level: ``(B,)`` long levels in ``0..T-1``.

    Returns:
        ``(B,)`` float32.
    """
    return (max_mask_ratio - min_mask_ratio) * ((noise_level + 1) / num_noise_level) + min_mask_ratio


def scatter_mean(value: Tensor, index: Tensor, size: int) -> Tensor:
    """``torch_scatter.scatter_mean(value, index, dim=0, dim_size=size)``: the mean of the rows of ``value``
    (``(M, ...)``) with each ``index`` (``(M,)`` long), 0 where none; ``(size, ...)``."""
    total = value.new_zeros((size, *value.shape[1:])).index_add(0, index, value)
    count = torch.bincount(index, minlength=size).clamp(min=1).to(value.dtype)
    return total / count.view(-1, *([1] * (value.dim() - 1)))


def eq_transform(score: Tensor, graph: ResidueGraph) -> Tensor:
    """Edge scores to node vectors (``SiamDiff.eq_transform``, after GeoDiff ``models/epsnet/dualenc.py``):
    ``u_ij = (x_i - x_j) / (|x_i - x_j| + 1e-10)`` for edge ``i -> j`` (``node_in`` i, ``node_out`` j),
    ``v = scatter_mean(u s, node_in) + scatter_mean(-u s, node_out)``.

    Args:
        score: ``(E,)`` per-edge scores (Å).
        graph: the edges and the (perturbed) ``node_position`` ``(N, 3)`` Å.

    Returns:
        ``(N, 3)``.
    """
    node_in, node_out = graph.edge_list[:, 0], graph.edge_list[:, 1]
    diff = graph.node_position[node_in] - graph.node_position[node_out]
    unit = diff / (diff.norm(dim=-1, keepdim=True) + 1e-10)
    vector = unit * score.unsqueeze(-1)
    return scatter_mean(vector, node_in, graph.num_nodes) + scatter_mean(-vector, node_out, graph.num_nodes)


def edge_distance(graph: ResidueGraph, position: Tensor | None = None) -> Tensor:
    """``(E,)`` Cα distance (Å) of every edge ``node_in -> node_out`` at ``position`` (default the graph's)."""
    position = graph.node_position if position is None else position
    return (position[graph.edge_list[:, 0]] - position[graph.edge_list[:, 1]]).norm(dim=-1)


@dataclass
class DiffusionView:
    """One view of a batch after sequence and structure diffusion.

    Attributes:
        batch: the packed masked proteins; ``batch.graph.node_position`` holds the perturbed Cα ``x~`` (N, 3) Å.
        position: ``(N, 3)`` the view's Cα before the structure noise (Å; view 2: the siamese conformer).
        perturbed_dist: ``(E,)`` edge distances ``d~`` at ``x~`` (Å); None without structure diffusion.
        struct_target: ``(E,)`` ``(d - d~) sqrt(a) / sqrt(1 - a)``; None without structure diffusion.
    """

    batch: Batch
    position: Tensor
    perturbed_dist: Tensor | None
    struct_target: Tensor | None

    @property
    def graph(self) -> ResidueGraph:
        return self.batch.graph


@dataclass
class DiffusionSample:
    """A batch's noise: levels, masked nodes and the views (1 with ``use_MI: false``, else 2).

    Attributes:
        noise_level: ``(B,)`` long, one level per protein, shared by the views.
        node_index: ``(S,)`` long packed node indices masked in every view (repeats possible); empty without
            sequence diffusion.
        seq_target: ``(S,)`` long residue types of the masked nodes (0-19).
        views: the views.
    """

    noise_level: Tensor
    node_index: Tensor
    seq_target: Tensor
    views: tuple[DiffusionView, ...]


class SiamDiff(PretrainingTask):
    """SiamDiff pretraining (see the module docstring; ESM-GearNet ``gearnet/siamdiff.py`` ``SiamDiff``).

    Settings (defaults: the reference's ``config/pretrain/siamdiff_esm_gearnet.yaml`` and class defaults):
    ``sigma_begin`` 1e-3, ``sigma_end`` 0.1, ``num_noise_level`` 100, ``gamma`` 0.5 (structure vs sequence loss
    weight), ``use_MI`` true (siamese views; false: DiffPreT, one view), ``min_mask_ratio`` 0.15 (a class
    constant there), ``max_mask_ratio`` 1.0, ``num_mlp_layer`` 3, ``siamese_sigma`` 0.3 Å (``NoiseTransform``),
    ``esm_mask_token`` ``"G"`` (what an in-model ESM-2 reads at masked residues; ``"<mask>"`` or a residue
    letter); loop defaults ``truncate`` 150, ``truncate_random`` true.

    Raises:
        ConfigError: settings out of range (naming ``pretraining.<name>.<key>``).
    """

    options: ClassVar[dict[str, Any]] = {
        **PretrainingTask.options,
        "sigma_begin": 1e-3,
        "sigma_end": 0.1,
        "num_noise_level": 100,
        "gamma": 0.5,
        "use_MI": True,
        "min_mask_ratio": 0.15,
        "max_mask_ratio": 1.0,
        "num_mlp_layer": 3,
        "siamese_sigma": 0.3,
        "esm_mask_token": "G",
    }
    loop_defaults: ClassVar[dict[str, Any]] = {
        **PretrainingTask.loop_defaults,
        "truncate": 150,
        "truncate_random": True,
    }

    def __init__(self, spec: Mapping, name: str = "pretraining"):
        super().__init__(spec, name)
        s = self.settings

        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"config key '{self.section}.{name}.{key}': {why}, got {s[key]!r}")

        try:
            self.alphas = noise_schedule(float(s["sigma_begin"]), float(s["sigma_end"]), int(s["num_noise_level"]))
        except ConfigError as error:
            raise ConfigError(f"{self.section}.{name}: {error}") from error
        if not 0.0 <= float(s["gamma"]) <= 1.0:
            raise bad("gamma", "must be in [0, 1]")
        if not 0.0 <= float(s["min_mask_ratio"]) <= float(s["max_mask_ratio"]) <= 1.0:
            raise bad("max_mask_ratio", "need 0 <= min_mask_ratio <= max_mask_ratio <= 1")
        if int(s["num_mlp_layer"]) < 1:
            raise bad("num_mlp_layer", "must be >= 1")
        if float(s["siamese_sigma"]) < 0:
            raise bad("siamese_sigma", "must be >= 0")
        try:
            esm_mask_character(s["esm_mask_token"])
        except Exception as error:
            raise bad("esm_mask_token", f"{MASK_TOKEN!r} or one residue letter") from error

    @property
    def gamma(self) -> float:
        return float(self.settings["gamma"])

    # --- model -----------------------------------------------------------------------------------------

    def head(self, output_dim: int) -> nn.ModuleDict:
        """The denoising MLPs on an encoder of node width D = ``output_dim`` (torchdrug MLPs, no batch norm):
        ``struct_mlp`` ``(E, 2D) -> (E, 1)``, ``dist_mlp`` ``(E, 1) -> (E, D)``, ``seq_mlp`` ``(S, D) -> (S, 20)``."""
        hidden = [int(output_dim)] * (int(self.settings["num_mlp_layer"]) - 1)
        return nn.ModuleDict(
            {
                "struct_mlp": MLP(2 * output_dim, hidden + [1]),
                "dist_mlp": MLP(1, hidden + [output_dim]),
                "seq_mlp": MLP(output_dim, hidden + [NUM_CLASS]),
            }
        )

    # --- noise -----------------------------------------------------------------------------------------

    def siamese_views(self, proteins: Sequence[ProteinInput]) -> list[list[ProteinInput]]:
        """``[proteins]`` (``use_MI: false``) or ``[proteins, conformers]``: each conformer the protein with
        ``N(0, siamese_sigma^2)`` Å added to every Cα coordinate (ESM-GearNet ``NoiseTransform``), cached graph
        dropped (edges are built on the conformer)."""
        if not self.settings["use_MI"]:
            return [list(proteins)]
        sigma = float(self.settings["siamese_sigma"])
        conformers = [
            replace(p, position=p.position + torch.randn_like(p.position) * sigma, edge_list=None) for p in proteins
        ]
        return [list(proteins), conformers]

    def sample_masks(self, sizes: Tensor, noise_level: Tensor) -> Tensor:
        """Masked nodes of sequence diffusion: ``max(1, floor(n_b r_t))`` per protein (:func:`mask_rate`), drawn
        uniformly with replacement (:func:`~geoplm.pretraining.base.sample_with_replacement`).

        Args:
            sizes: ``(B,)`` long node counts.
            noise_level: ``(B,)`` long levels.

        Returns:
            ``(S,)`` long packed node indices, protein-major.
        """
        s = self.settings
        rate = mask_rate(noise_level, int(s["num_noise_level"]), float(s["min_mask_ratio"]), float(s["max_mask_ratio"]))
        num_samples = (sizes * rate).long().clamp(min=1)
        return sample_with_replacement(sizes, num_samples).clamp(max=int(sizes.sum()) - 1)

    def perturb(self, graph: ResidueGraph, noise_level: Tensor) -> tuple[ResidueGraph, Tensor, Tensor]:
        """Structure diffusion of a view (``add_struct_noise``): ``x~ = x + eps sqrt((1 - a) / a)``.

        Args:
            graph: the view's graph (edges built at ``x``).
            noise_level: ``(B,)`` long levels.

        Returns:
            ``(graph at x~, d~ (E,), target (E,) = (d - d~) sqrt(a) / sqrt(1 - a))``; with GearNet's edge features
            their last column (the Cα distance) is set to ``d~``.
        """
        alphas = self.alphas.to(graph.node_position.device)[noise_level]
        a_node, a_edge = alphas[graph.node2graph], alphas[graph.edge2graph]
        dist = edge_distance(graph)
        noise = torch.randn_like(graph.node_position)
        position = graph.node_position + noise * ((1.0 - a_node).sqrt() / a_node.sqrt()).unsqueeze(-1)
        perturbed_dist = edge_distance(graph, position)
        edge_feature = graph.edge_feature
        kind, options = graph_kind(self.graph_settings)
        if (
            kind == "gearnet"
            and options.get("edge_feature", "gearnet") == "gearnet"
            and edge_feature.shape[1] == gearnet_edge_feature_dim(graph.num_relation)
        ):
            edge_feature = edge_feature.clone()
            edge_feature[:, -1] = perturbed_dist
        target = (dist - perturbed_dist) / (1.0 - a_edge).sqrt() * a_edge.sqrt()
        return replace(graph, node_position=position, edge_feature=edge_feature), perturbed_dist, target

    def corrupt(self, proteins: Sequence[ProteinInput]) -> DiffusionSample:
        """Steps 1-5 of the module docstring on a batch of proteins (drawn from the global torch generator).

        Returns:
            The :class:`DiffusionSample`, tensors on the task's device.
        """
        device = self.device
        views = self.siamese_views(proteins)
        sizes = torch.tensor([p.num_nodes for p in proteins], dtype=torch.long, device=device)
        noise_level = torch.randint(0, len(self.alphas), (len(proteins),), device=device)
        node_index = torch.zeros(0, dtype=torch.long, device=device)
        seq_target = torch.zeros(0, dtype=torch.long, device=device)
        if self.gamma < 1.0:
            node_index = self.sample_masks(sizes, noise_level)
            ends = torch.cumsum(sizes, 0).cpu()
            owner = torch.searchsorted(ends, node_index.cpu(), right=True)  # protein of each masked node
            local = node_index.cpu() - (ends - sizes.cpu())[owner]
            token = self.settings["esm_mask_token"]
            views = [[mask_residues(p, local[owner == b], token) for b, p in enumerate(view)] for view in views]
            types = torch.cat([p.residue_type for p in proteins]).to(device)[node_index]
            seq_target = torch.where(types == UNKNOWN_RESIDUE_INDEX, torch.zeros_like(types), types)
        out = []
        for view in views:
            batch = pack(view, device, self.graph_settings)
            position = batch.graph.node_position
            perturbed_dist = struct_target = None
            if self.gamma > 0.0:
                graph, perturbed_dist, struct_target = self.perturb(batch.graph, noise_level)
                batch = replace(batch, graph=graph)
            out.append(DiffusionView(batch, position, perturbed_dist, struct_target))
        return DiffusionSample(noise_level, node_index, seq_target, tuple(out))

    # --- loss ------------------------------------------------------------------------------------------

    def struct_loss(self, head: nn.Module, output: Tensor, view: DiffusionView) -> Tensor:
        """Structure denoising loss of ``view`` from the node representations ``output`` ``(N, D)`` of the
        *other* view: ``mean_b mean_{i in b} 0.5 ||eq(s^)_i - eq(s)_i||^2`` (``struct_predict``, ``eq_transform``)."""
        graph = view.graph
        node_in, node_out = graph.edge_list[:, 0], graph.edge_list[:, 1]
        dist_feature = head["dist_mlp"](view.perturbed_dist.unsqueeze(-1))
        pred = head["struct_mlp"](torch.cat([output[node_in] * output[node_out], dist_feature], dim=-1)).squeeze(-1)
        diff = eq_transform(pred, graph) - eq_transform(view.struct_target, graph)
        loss = 0.5 * (diff**2).sum(dim=-1)
        return scatter_mean(loss, graph.node2graph, graph.batch_size).mean()

    def seq_loss(self, head: nn.Module, output: Tensor, sample: DiffusionSample, graph: ResidueGraph):
        """Sequence denoising loss and accuracy from node representations ``output`` ``(N, D)``:
        ``mean_b mean_{k in b} 0.5 CE(seq_mlp(h_k), y_k)`` over the masked nodes (``seq_predict``)."""
        logits = head["seq_mlp"](output[sample.node_index])
        loss = 0.5 * F.cross_entropy(logits, sample.seq_target, reduction="none")
        loss = scatter_mean(loss, graph.node2graph[sample.node_index], graph.batch_size).mean()
        accuracy = (logits.argmax(dim=-1) == sample.seq_target).float().mean()
        return loss, accuracy

    def training_loss(self, model: nn.Module, batch: Sequence[Example], epoch: int):
        """``(gamma (L_struct^1 + L_struct^2) + (1 - gamma) (L_seq^1 + L_seq^2), parts, 1.0)``; parts:
        ``loss``, ``struct_loss`` (``L_struct^1 + L_struct^2``), ``seq_loss`` (``L_seq^1 + L_seq^2``),
        ``seq_accuracy`` (mean of the two views' accuracies)."""
        sample = self.corrupt(self.batch_inputs(batch))
        outputs = [
            model.encoder(v.graph, v.batch.node_feature, **v.batch.encoder_inputs)["node_feature"] for v in sample.views
        ]
        # cross prediction: view 2's representation denoises view 1 and vice versa
        partner = outputs[::-1]
        loss = torch.zeros((), device=outputs[0].device)
        parts: dict[str, float] = {}
        if self.gamma > 0.0:
            struct = [self.struct_loss(model.head, h, v) for h, v in zip(partner, sample.views, strict=True)]
            struct_sum = struct[0] + struct[-1]  # one view (DiffPreT): the reference doubles it
            loss = loss + self.gamma * struct_sum
            parts["struct_loss"] = float(struct_sum.detach())
        if self.gamma < 1.0:
            seq = [self.seq_loss(model.head, h, sample, v.graph) for h, v in zip(partner, sample.views, strict=True)]
            seq_sum = seq[0][0] + seq[-1][0]
            loss = loss + (1.0 - self.gamma) * seq_sum
            parts["seq_loss"] = float(seq_sum.detach())
            parts["seq_accuracy"] = float(0.5 * (seq[0][1] + seq[-1][1]))
        parts["loss"] = float(loss.detach())
        return loss, parts, 1.0
