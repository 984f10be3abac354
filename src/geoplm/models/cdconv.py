"""CDConv: continuous-discrete convolution network (Fan et al., "Continuous-Discrete Convolution for
Geometry-Sequence Modeling in Proteins", ICLR 2023), as the ESM-GearNet paper ran it (Zhang et al. 2023,
"A Systematic Study of Joint Representation Learning on Protein Sequences and Structures", Table 2 rows
CDConv / ESM-CDConv).

Re-implemented in plain torch (no torch_scatter / torch_cluster / torchdrug) after
DeepGraphLearning/ESM-GearNet @ bc90557bbf9ee2676e87b9fc84570aa126daa808, ``gearnet/cdconv.py``
(``Orientation``, ``WeightNet``, ``CDConv``, ``CDBlock``, ``ContinuousDiscreteConvolutionalNetwork``
registered as ``models.CDConv``; configs ``config/{PSR,MSP}/cdconv.yaml``, ``config/{EC,GO,PSR,MSP}/
esm_cdconv{,_parallel}.yaml``), itself a port of hehefan/Continuous-Discrete-Convolution. Nothing is copied;
the computation and the parameter layout are reproduced so that a reference state dict loads with
``strict=True`` (names below).

Geometry (all lengths in Å)
---------------------------
Every node is a residue with a Cα (the reference's ``ResidueGraph`` transform keeps exactly those, like
:func:`geoplm.graph.record_graph_inputs`). Each node ``i`` carries

* ``x_i``: its Cα position (``graph.node_position``);
* a local frame ``O_i`` ``(3, 3)`` (rows ``b, n, o``), the reference's ``Orientation`` transform, built from
  **Cα positions only** (no N / C atoms): with ``u_- = unit(x_i - x_{i-1})``, ``u_+ = unit(x_{i+1} - x_i)``,
  ``b = unit(u_- - u_+)``, ``n = unit(u_- x u_+)``, ``o = unit(b x n)``, for ``1 <= i <= L - 2`` of a protein of
  ``L`` nodes; the first and last node copy the frame of their neighbour (:func:`orientation_frames`);
* an integer sequence position ``s_i``: the **author residue number** (torchdrug ``residue_number``, what the
  reference uses), ``graph.residue_number`` when the graph carries it (:func:`geoplm.graph.pack_graphs` with
  ``residue_numbers``), else the node's index within its protein.

Convolution (one ``ContinuousDiscreteConv``, radius ``r``, ``l = seq_cutoff`` discrete kernels, half-width
``h = l // 2``): over the edges ``j -> i`` of the radius graph ``|x_j - x_i| < r`` **plus a self loop per
node**, with ``d = |x_j - x_i|``, ``t = O_i (x_j - x_i) / (d + 1e-9)``, ``q = (O_i * O_j).sum(-1)`` (row-wise
dot products of the two frames), ``k = clamp(s_j - s_i, -h, h)``::

    w_e    = WeightNet_{k + h}([t, q, d])                                 (E, K)   K = kernel_dims[-1]
    g_e    = 1/2 - 1/2 tanh(16 (d / r) (|k| / h) - 14)                    smooth cut-off (1 near, 0 far)
    out_i  = vec( sum_{e = j -> i} (g_e w_e) (x) f_j ) @ W                (N, output_dim)

``WeightNet_m`` is an MLP whose layer ``p`` has its own weights per discrete offset ``m`` (``Ws[p][m]``
``(in, out)``, ``bs[p][m]``), LeakyReLU(0.2) after every layer; ``(x)`` is the outer product ``(K, width)``
flattened kernel-major (``c = k * width + channel``), ``W`` is ``(K * width, output_dim)``. The edge sum is done
as one batched matmul over edges padded per target node (memory ``O(N * max_degree * (K + width))``, never the
``(E, K * width)`` message tensor the reference materialises).

Network (``models.CDConv``): ``embedding = Linear(input_dim, embedding_dim, bias=False)``; for level
``i = 0..len(hidden_dims)-1`` two ``CDBlock`` s at radius ``cutoffs[i]`` (``dims[i] -> dims[i+1]`` then
``dims[i+1] -> dims[i+1]``, ``dims = [embedding_dim] + hidden_dims``), then, except after the last level,
**pooling**: within each protein nodes ``2m`` and ``2m + 1`` merge into node ``m`` (``ceil(L / 2)`` nodes):
features, positions and frames are averaged (frames re-normalised row-wise), ``s_m = floor(s_{2m} / 2)``. A
``CDBlock`` is ``out = output(conv(input(f))) + identity(f)`` with ``width = int(output_dim * base_width /
64)``; ``input`` = ``[BN] -> LeakyReLU(0.1) -> Dropout -> Linear(in, width) -> [BN] -> LeakyReLU(0.1) ->
Dropout``; ``output`` and ``identity`` (only when ``in != out``; else the identity) = ``[BN] ->
LeakyReLU(0.1) -> Dropout -> Linear``; no biases (``bias=False``), batch-norm momentum 0.2.

Readout: ``graph_feature`` is the **mean** over the last level's nodes ``(B, hidden_dims[-1])``; the
``node_feature`` the reference returns is that graph feature **broadcast to every residue** of the input
(``graph_feature[node2graph]``, ``(N, hidden_dims[-1])``): after pooling CDConv has no per-residue output.
ESM-GearNet's ``FusionNetwork`` (serial / parallel) therefore concatenates each residue's ESM feature with
its protein's CDConv feature; :class:`geoplm.models.fusion.ESMGearNet` does the same with this model.

Reference hyperparameters (every CDConv config of ESM-GearNet): ``embedding_dim=16``, ``hidden_dims=[256,
512, 1024, 2048]``, ``cutoffs=[8, 12, 16, 20]``, ``seq_cutoff=21``, ``kernel_dims=[32]``, ``base_width=16``,
``batch_norm=True``, ``dropout=0.2``; ``input_dim`` 21 (residue one-hot; CDConv alone and parallel fusion)
or 1280 (ESM-2 650M features; serial fusion).

Parameter names (identical to the reference's; ``{b}`` = block ``0..2 * len(hidden_dims) - 1``):
``embedding.weight``; ``layers.{b}.input.module.{0,3,4}`` (BN, Linear, BN; with ``batch_norm``),
``layers.{b}.conv.WeightNet.{Ws,bs}.{p}``, ``layers.{b}.conv.W``, ``layers.{b}.output.module.{0,3}``,
``layers.{b}.identity.module.{0,3}`` (blocks that change width). Initialisation as the reference:
``Ws``/``W`` uniform in ``±1/sqrt(fan)`` with ``fan`` the product of all but the first dimension (``W``:
``output_dim``), ``bs`` zero, ``nn.Linear`` / ``nn.BatchNorm1d`` defaults.

Deliberate differences from the reference
-----------------------------------------
* Proteins with fewer than 3 nodes: the reference's ``Orientation`` raises ``IndexError``; here their frames
  are zero matrices (as the reference's ``normalize`` gives for collinear Cα triples), so ``t = q = 0``.
* ``torch.cross`` without ``dim`` in the reference picks the first axis of size 3, which for a protein of
  exactly 5 nodes is the node axis (a bug); here cross products are always over the coordinate axis.
* ``seq_cutoff=1`` (one discrete kernel): the reference divides ``|k|`` by ``h = 0`` (NaN); here the smooth
  cut-off is left out (``g_e = 1``). Even ``seq_cutoff`` (the reference indexes past its kernels) is a
  ``ConfigError``.
* Truncation (the reference's ``TruncateProtein(max_length=550)`` for EC / GO before ``Orientation``) is the
  data pipeline's job, not the model's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from geoplm.errors import ConfigError
from geoplm.graph import ResidueGraph, radius_graph

__all__ = ["CDBlock", "CDConv", "ContinuousDiscreteConv", "WeightNet", "orientation_frames", "pool_pairs"]

#: Batch-norm momentum of every CDConv batch norm (reference ``Linear`` / ``MLP``: ``momentum=0.2``).
BN_MOMENTUM = 0.2
#: ``t = (x_j - x_i) / (d + EPS)`` (Å); the self loop gives ``t = 0``.
EPS = 1e-9


def _scatter_mean(value: Tensor, index: Tensor, size: int) -> Tensor:
    """``torch_scatter.scatter_mean`` over dim 0 (sum, then divide by the clamped count; empty rows are 0)."""
    out = value.new_zeros((size, *value.shape[1:])).index_add_(0, index, value)
    count = torch.bincount(index, minlength=size).clamp(min=1).to(value.dtype)
    return out / count.view(-1, *([1] * (value.dim() - 1)))


def _segments(node2graph: Tensor, batch_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(sizes (B,), starts (B,), local (N,))`` of a packed, non-decreasing ``node2graph``."""
    sizes = torch.bincount(node2graph, minlength=batch_size)
    starts = torch.cumsum(sizes, 0) - sizes
    local = torch.arange(len(node2graph), device=node2graph.device) - starts[node2graph]
    return sizes, starts, local


def orientation_frames(position: Tensor, node2graph: Tensor, batch_size: int) -> Tensor:
    """Local frames of the ESM-GearNet ``Orientation`` transform, per protein of a packed batch.

    Args:
        position: ``(N, 3)`` Cα coordinates (Å), proteins contiguous.
        node2graph: ``(N,)`` long, non-decreasing.
        batch_size: B.

    Returns:
        ``(N, 3, 3)``: rows ``b, n, o`` of node ``i``'s frame (see the module docstring): node ``i`` of a
        protein of ``L >= 3`` nodes uses its neighbours ``c - 1, c + 1`` with ``c = clamp(i, 1, L - 2)``;
        proteins with ``L < 3`` get zero frames. Degenerate (collinear) triples give zero rows, as
        ``F.normalize`` does. Rotating the positions by ``R`` maps every row ``v`` to ``R v``.
    """
    frames = position.new_zeros(position.shape[0], 3, 3)
    if position.shape[0] == 0:
        return frames
    sizes, starts, local = _segments(node2graph, batch_size)
    length = sizes[node2graph]
    valid = length >= 3
    if not bool(valid.any()):
        return frames
    centre = torch.minimum(local.clamp(min=1), length - 2) + starts[node2graph]
    centre = centre[valid]
    back = F.normalize(position[centre] - position[centre - 1], dim=-1)  # u_-
    ahead = F.normalize(position[centre + 1] - position[centre], dim=-1)  # u_+
    b = F.normalize(back - ahead, dim=-1)
    n = F.normalize(torch.cross(back, ahead, dim=-1), dim=-1)
    o = F.normalize(torch.cross(b, n, dim=-1), dim=-1)
    frames[valid] = torch.stack([b, n, o], dim=1)
    return frames


@dataclass
class _Level:
    """The nodes of one pooling level: positions ``(M, 3)`` Å, frames ``(M, 3, 3)``, sequence positions
    ``(M,)`` long, ``node2graph`` ``(M,)``, B."""

    position: Tensor
    orientation: Tensor
    residue_number: Tensor
    node2graph: Tensor
    batch_size: int

    @property
    def num_nodes(self) -> int:
        return int(self.position.shape[0])

    def edges(self, cutoff: float) -> Tensor:
        """``(2, E)`` ``[source j, target i]``: all pairs within the same protein with ``|x_j - x_i| < cutoff``
        (strict, no neighbour cap: the reference's ``max_num_neighbors=9999``) plus one self loop per node,
        sorted by target (the reference's ``receptive_field``)."""
        edge_index = radius_graph(self.position, cutoff, self.node2graph, loop=True)
        order = torch.argsort(edge_index[1], stable=True)
        return edge_index[:, order]


def pool_pairs(level: _Level, feature: Tensor) -> tuple[_Level, Tensor]:
    """CDConv's sequence pooling (reference ``pooling``): in each protein nodes ``2m`` and ``2m + 1`` become node
    ``m`` (``ceil(L / 2)`` nodes); ``feature`` ``(M, D)``, positions and frames are averaged (frames then
    normalised row-wise), ``residue_number = floor(s_{2m} / 2)``. Returns the new level and ``(M', D)``."""
    sizes, starts, local = _segments(level.node2graph, level.batch_size)
    new_sizes = torch.div(sizes + 1, 2, rounding_mode="floor")
    new_starts = torch.cumsum(new_sizes, 0) - new_sizes
    old2new = torch.div(local, 2, rounding_mode="floor") + new_starts[level.node2graph]
    total = int(new_sizes.sum())
    new_node2graph = torch.repeat_interleave(torch.arange(level.batch_size, device=feature.device), new_sizes)
    new_local = torch.arange(total, device=feature.device) - new_starts[new_node2graph]
    new2old = 2 * new_local + starts[new_node2graph]
    pooled = _Level(
        position=_scatter_mean(level.position, old2new, total),
        orientation=F.normalize(_scatter_mean(level.orientation, old2new, total), dim=-1),
        residue_number=torch.div(level.residue_number[new2old], 2, rounding_mode="floor"),
        node2graph=new_node2graph,
        batch_size=level.batch_size,
    )
    return pooled, _scatter_mean(feature, old2new, total)


def _uniform_fan(tensor: Tensor, fan: int) -> None:
    """The reference's ``kaiming_uniform``: ``U(-b, b)`` with ``b = sqrt(3) * sqrt(2 / 6) / sqrt(fan) =
    1 / sqrt(fan)``."""
    bound = 1.0 / math.sqrt(fan)
    with torch.no_grad():
        tensor.uniform_(-bound, bound)


class WeightNet(nn.Module):
    """Per-offset kernel MLP (reference ``WeightNet``): ``l`` sets of weights, one per discrete sequence offset.

    Layer ``p``: ``h <- LeakyReLU_0.2(h @ Ws[p][m] + bs[p][m])`` for the edge's offset index ``m``; input ``(E, 7)``
    (``[t (3), q (3), d (1)]``), output ``(E, kernel_dims[-1])``.

    Args:
        l: number of discrete offsets (``seq_cutoff``).
        kernel_dims: widths of the MLP's layers.
    """

    def __init__(self, l: int, kernel_dims: Sequence[int]):  # noqa: E741
        super().__init__()
        self.l = l
        self.kernel_dims = list(kernel_dims)
        dims = [7] + self.kernel_dims
        self.Ws = nn.ParameterList(nn.Parameter(torch.empty(l, dims[p], dims[p + 1])) for p in range(len(dims) - 1))
        self.bs = nn.ParameterList(nn.Parameter(torch.empty(l, dims[p + 1])) for p in range(len(dims) - 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for weight, bias in zip(self.Ws, self.bs, strict=True):
            _uniform_fan(weight, weight.shape[1] * weight.shape[2])
            with torch.no_grad():
                bias.zero_()

    def forward(self, input: Tensor, index: Tensor) -> Tensor:
        """``input`` ``(E, 7)``, ``index`` ``(E,)`` long in ``[0, l)`` -> ``(E, kernel_dims[-1])``."""
        hidden = input
        for weight, bias in zip(self.Ws, self.bs, strict=True):
            hidden = F.leaky_relu(torch.bmm(hidden.unsqueeze(1), weight[index]).squeeze(1) + bias[index], 0.2)
        return hidden


class ContinuousDiscreteConv(nn.Module):
    """One continuous-discrete convolution (reference ``CDConv`` layer; formula in the module docstring).

    Args:
        input_dim, output_dim: feature widths.
        kernel_dims: ``WeightNet`` layer widths (``K = kernel_dims[-1]``).
        seq_cutoff: ``l``, number of discrete offsets; odd (offsets ``-l//2 .. l//2``).
        spatial_cutoff: ``r`` (Å): the radius of the graph and the scale of the smooth cut-off.

    Raises:
        ConfigError: ``seq_cutoff`` not a positive odd integer (the reference indexes past its kernels
            for even values), ``spatial_cutoff <= 0``, an empty ``kernel_dims``.
    """

    def __init__(self, input_dim: int, output_dim: int, kernel_dims: Sequence[int], seq_cutoff: int, spatial_cutoff):
        super().__init__()
        if seq_cutoff < 1 or seq_cutoff % 2 == 0:
            raise ConfigError(f"seq_cutoff must be a positive odd number of sequence offsets, got {seq_cutoff}")
        if not spatial_cutoff > 0:
            raise ConfigError(f"CDConv cutoffs must be > 0 Å, got {spatial_cutoff}")
        if not kernel_dims:
            raise ConfigError("kernel_dims must name at least one WeightNet layer")
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.kernel_dims = list(kernel_dims)
        self.seq_cutoff = int(seq_cutoff)
        self.spatial_cutoff = float(spatial_cutoff)
        self.WeightNet = WeightNet(self.seq_cutoff, self.kernel_dims)
        self.W = nn.Parameter(torch.empty(self.kernel_dims[-1] * input_dim, output_dim))
        _uniform_fan(self.W, output_dim)

    def kernel(self, level: _Level, edge_index: Tensor) -> Tensor:
        """``g_e w_e`` ``(E, K)`` of the edges ``edge_index`` ``(2, E)`` ``[j, i]``."""
        source, target = edge_index
        frame = level.orientation[target]
        offset = level.position[source] - level.position[target]
        distance = offset.norm(dim=-1, keepdim=True)
        direction = torch.bmm(frame, (offset / (distance + EPS)).unsqueeze(2)).squeeze(2)
        alignment = (frame * level.orientation[source]).sum(dim=-1)
        half = self.seq_cutoff // 2
        seq = (level.residue_number[source] - level.residue_number[target]).clamp(-half, half)
        weight = self.WeightNet(torch.cat([direction, alignment, distance], dim=-1), seq + half)
        if half == 0:
            return weight  # l = 1: no sequence-distance cut-off (|k| / h is 0 / 0 in the reference)
        scaled = (distance / self.spatial_cutoff) * (seq.abs().unsqueeze(-1) / half)
        return weight * (0.5 - torch.tanh(scaled * 16.0 - 14.0) * 0.5)

    def forward(self, level: _Level, edge_index: Tensor, input: Tensor) -> Tensor:
        """``input`` ``(M, input_dim)`` -> ``(M, output_dim)``; ``edge_index`` from :meth:`_Level.edges`
        (sorted by target)."""
        num_nodes, width = input.shape
        kernel = self.kernel(level, edge_index)  # (E, K)
        source, target = edge_index
        if target.numel() == 0:
            return input.new_zeros(num_nodes, self.output_dim)
        count = torch.bincount(target, minlength=num_nodes)
        degree = int(count.max())
        rank = torch.arange(target.numel(), device=target.device) - (torch.cumsum(count, 0) - count)[target]
        slot = target * degree + rank
        padded_kernel = kernel.new_zeros(num_nodes * degree, kernel.shape[-1]).index_copy(0, slot, kernel)
        padded_input = input.new_zeros(num_nodes * degree, width).index_copy(0, slot, input[source])
        update = torch.bmm(
            padded_kernel.view(num_nodes, degree, -1).transpose(1, 2), padded_input.view(num_nodes, degree, width)
        )  # (M, K, width): sum over edges of kernel (x) input
        return update.reshape(num_nodes, -1) @ self.W


def _pre_activation(
    input_dim: int, output_dim: int, batch_norm: bool, dropout: float, bias: bool, slope: float, post: bool = False
) -> nn.Sequential:
    """``[BN(in)] -> LeakyReLU -> Dropout -> Linear(in, out)``, with ``post``: ``-> [BN(out)] -> LeakyReLU ->
    Dropout`` (the reference's ``Linear`` and ``MLP(mid_channels=None)``; module indices as there)."""
    modules: list[nn.Module] = []
    if batch_norm:
        modules.append(nn.BatchNorm1d(input_dim, momentum=BN_MOMENTUM))
    modules += [nn.LeakyReLU(slope), nn.Dropout(dropout), nn.Linear(input_dim, output_dim, bias=bias)]
    if post:
        if batch_norm:
            modules.append(nn.BatchNorm1d(output_dim, momentum=BN_MOMENTUM))
        modules += [nn.LeakyReLU(slope), nn.Dropout(dropout)]
    return nn.Sequential(*modules)


class _Sequential(nn.Module):
    """Holds an ``nn.Sequential`` as ``.module`` (parameter names ``module.{k}.*`` as the reference's)."""

    def __init__(self, module: nn.Sequential):
        super().__init__()
        self.module = module

    def forward(self, input: Tensor) -> Tensor:
        return self.module(input)


class CDBlock(nn.Module):
    """Residual CDConv block (reference ``CDBlock``): ``output(conv(input(f))) + identity(f)``.

    Args:
        seq_cutoff, cutoff: of the convolution (offsets; Å).
        kernel_dims: ``WeightNet`` widths.
        input_dim, output_dim: block widths; the convolution runs at ``int(output_dim * base_width / 64)``.
        base_width, batch_norm, dropout, bias: as the reference (16, True, 0.2 in its configs, False).
        slope: LeakyReLU negative slope (0.1).

    Raises:
        ConfigError: a bottleneck width below 1, and as :class:`ContinuousDiscreteConv`.
    """

    def __init__(
        self,
        seq_cutoff: int,
        cutoff: float,
        kernel_dims: Sequence[int],
        input_dim: int,
        output_dim: int,
        base_width: float = 16.0,
        batch_norm: bool = True,
        dropout: float = 0.0,
        bias: bool = False,
        slope: float = 0.1,
    ):
        super().__init__()
        width = int(output_dim * (base_width / 64.0))
        if width < 1:
            raise ConfigError(f"CDConv block {input_dim}->{output_dim}: base_width {base_width} gives width {width}")
        if input_dim != output_dim:
            self.identity: nn.Module = _Sequential(
                _pre_activation(input_dim, output_dim, batch_norm, dropout, bias, slope)
            )
        else:
            self.identity = nn.Identity()
        self.input = _Sequential(_pre_activation(input_dim, width, batch_norm, dropout, bias, slope, post=True))
        self.conv = ContinuousDiscreteConv(width, width, kernel_dims, seq_cutoff, cutoff)
        self.output = _Sequential(_pre_activation(width, output_dim, batch_norm, dropout, bias, slope))

    def forward(self, level: _Level, edge_index: Tensor, input: Tensor) -> Tensor:
        return self.output(self.conv(level, edge_index, self.input(input))) + self.identity(input)


class CDConv(nn.Module):
    """Continuous-discrete convolution network (ESM-GearNet ``models.CDConv``; see the module docstring).

    Args:
        input_dim: width of the node input (21 for the residue one-hot, the ESM width for serial fusion).
        embedding_dim: width after the input embedding (16).
        hidden_dims: output width of each level ([256, 512, 1024, 2048]); ``output_dim = hidden_dims[-1]``.
        cutoffs: radius of each level in Å ([8, 12, 16, 20]); at least ``len(hidden_dims)`` values.
        seq_cutoff: number of discrete sequence offsets (21: ``-10..10``); odd.
        kernel_dims: ``WeightNet`` widths ([32]).
        base_width: bottleneck ratio ``width = int(dim * base_width / 64)`` (16).
        batch_norm: batch norms in the blocks (True).
        dropout: dropout in the blocks (0.2).
        bias: biases of the blocks' linears (False).

    Raises:
        ConfigError: fewer ``cutoffs`` than levels, an empty ``hidden_dims``, and as :class:`CDBlock`.
    """

    def __init__(
        self,
        input_dim: int,
        embedding_dim: int = 16,
        hidden_dims: int | Sequence[int] = (256, 512, 1024, 2048),
        cutoffs: Sequence[float] = (8.0, 12.0, 16.0, 20.0),
        seq_cutoff: int = 21,
        kernel_dims: Sequence[int] = (32,),
        base_width: float = 16.0,
        batch_norm: bool = True,
        dropout: float = 0.2,
        bias: bool = False,
    ):
        super().__init__()
        if not isinstance(hidden_dims, Sequence):
            hidden_dims = [hidden_dims]
        hidden_dims = [int(d) for d in hidden_dims]
        if not hidden_dims:
            raise ConfigError("CDConv needs at least one level (hidden_dims)")
        if len(cutoffs) < len(hidden_dims):
            raise ConfigError(f"CDConv: {len(cutoffs)} cutoffs for {len(hidden_dims)} levels (hidden_dims)")
        self.input_dim = int(input_dim)
        self.output_dim = hidden_dims[-1]
        self.dims = [int(embedding_dim), *hidden_dims]
        self.cutoffs = [float(c) for c in cutoffs[: len(hidden_dims)]]
        self.seq_cutoff = int(seq_cutoff)
        self.embedding = nn.Linear(self.input_dim, embedding_dim, bias=False)
        self.layers = nn.ModuleList()
        for i, cutoff in enumerate(self.cutoffs):
            for a, b in ((self.dims[i], self.dims[i + 1]), (self.dims[i + 1], self.dims[i + 1])):
                block = CDBlock(seq_cutoff, cutoff, kernel_dims, a, b, base_width, batch_norm, dropout, bias)
                self.layers.append(block)

    @staticmethod
    def level(graph: ResidueGraph) -> _Level:
        """The first level of a packed graph: Cα positions, :func:`orientation_frames`, and the sequence
        positions ``graph.residue_number`` (author numbers) or, when the graph has none, each node's index in
        its protein.

        Raises:
            ValueError: ``graph.residue_number`` of the wrong shape.
        """
        position = graph.node_position.float()
        number = getattr(graph, "residue_number", None)
        if number is None:
            number = _segments(graph.node2graph, graph.batch_size)[2]
        elif number.shape != (graph.num_nodes,):
            raise ValueError(f"residue_number has shape {tuple(number.shape)}, expected ({graph.num_nodes},)")
        return _Level(
            position=position,
            orientation=orientation_frames(position, graph.node2graph, graph.batch_size),
            residue_number=number.to(device=position.device, dtype=torch.long),
            node2graph=graph.node2graph,
            batch_size=graph.batch_size,
        )

    def forward(self, graph: ResidueGraph, input: Tensor) -> dict[str, Tensor]:
        """``graph``: a packed :class:`~geoplm.graph.ResidueGraph` (its edges are not used: CDConv builds its
        own radius graphs from ``node_position``); ``input``: ``(N, input_dim)`` node features.

        Returns:
            ``{"graph_feature": (B, output_dim)`` (mean over the last level), ``"node_feature": (N,
            output_dim)`` (each residue's protein feature, as the reference)``}``.

        Raises:
            ValueError: ``input`` of the wrong shape, non-finite coordinates; in training mode with batch
                norm, a level with a single node in the whole batch (``nn.BatchNorm1d``).
        """
        if input.shape != (graph.num_nodes, self.input_dim):
            expected = (graph.num_nodes, self.input_dim)
            raise ValueError(f"input has shape {tuple(input.shape)}, CDConv expects {expected}")
        level = self.level(graph)
        feature = self.embedding(input.float())
        last = len(self.cutoffs) - 1
        for i, cutoff in enumerate(self.cutoffs):
            edge_index = level.edges(cutoff)
            feature = self.layers[2 * i](level, edge_index, feature)
            feature = self.layers[2 * i + 1](level, edge_index, feature)
            if i != last:
                level, feature = pool_pairs(level, feature)
        graph_feature = _scatter_mean(feature, level.node2graph, graph.batch_size)
        return {"node_feature": graph_feature[graph.node2graph], "graph_feature": graph_feature}
