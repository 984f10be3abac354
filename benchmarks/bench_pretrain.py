"""Multiview-contrast pretraining: steps per second vs torchdrug 0.2.1, and peak memory at 1x and 10x corpus size.

Two modes (run from the repository root; ``src/`` is put on ``sys.path``)::

    /work/tdenv/bin/python benchmarks/bench_pretrain.py speed [--proteins 16] [--batch-size 4] [--rounds 5] \
        [--hidden-dim 128] [--num-layers 4] [--threads 2] [--independent-views] [--independent-crops] \
        [--profile N] [--dense-bound]
    .venv/bin/python benchmarks/bench_pretrain.py memory [--proteins 8] [--scale 10] [--batch-size 4] \
        [--hidden-dim 128] [--num-layers 4] [--threads 2]

**speed** (torchdrug environment, benchmarks/torchdrug_env.sh): one process runs both sides on the same real
AlphaFold DB models (the PDB files of ``../shared/data/alphafold``, one per UniProt entry, less those RDKit cannot
read; ``--proteins N`` takes N of them evenly spaced by id), interleaved batch by batch.

* torchdrug: GearNet's ``config/pretrain/mc_gearnet_edge.yaml`` -- ``tasks.Unsupervised(models.MultiviewContrast(
  models.GearNet(GearNet-Edge), crop_funcs=[SubsequenceNode(max_length=50), SubspaceNode(entity_level="residue",
  min_neighbor=15, min_radius=15.0)], noise_funcs=[IdentityNode(), RandomEdgeMask(mask_rate=0.15)],
  num_mlp_layer=2), graph_construction_model=GraphConstruction([AlphaCarbonNode()], [SequentialEdge(2),
  SpatialEdge(10, 5), KNNEdge(10, 5)], edge_feature="gearnet"))``, Adam (lr 1e-3), its data as ``AlphaFoldDB``
  keeps it (``load_pdbs`` with ``atom_feature=None, bond_feature=None``, ``ProteinView("residue")``; not timed) and
  the loop of ``core.Engine.train`` on the CPU: ``DataLoader`` (``get_item``: clone, dense residue features,
  ``ProteinView``; ``graph_collate``), ``task(batch)``, backward, step, ``zero_grad``, meter update.
* geoplm: the ``multiview_contrast`` pretraining task (same settings; Adam lr 1e-3) on examples made from the
  parsed records by its ``InputLoader`` (``task.build_examples``, as ``Corpus.load`` does per split; not timed),
  and the epoch loop of ``geoplm.train.fit``: ``task.batches``, ``zero_grad``, ``task.training_loss`` (pack
  the nodes, two views each with the graph of its cropped nodes, GearNet-Edge once over both views, projection
  MLP, InfoNCE), backward,
  ``optimizer.step``, each batch under ``train.deterministic()`` as ``fit`` runs it.

Same encoder (GearNet-Edge ``[--hidden-dim] * --num-layers``, 7 relations, 59-d edge features, 8 angle bins, batch
norm, short cut, concat hidden, sum readout; the paper's is 512 x 6) and projection MLP on both sides, each with its
own initial weights; batch ``--batch-size`` (GearNet: 96 per GPU); the same proteins in batch i on both sides
(torchdrug's loader draws them in the order geoplm's ``task.batches`` shuffles them to). By default each batch also
uses the same crop and noise function per view on both sides: geoplm's choices (drawn from its task generator)
are read ahead and torchdrug's ``random.sample`` of them in ``MultiviewContrast.forward`` is answered with the same
functions, so that batch i does the same kind of work on both sides and the per-batch ratios stay comparable.
``--independent-views`` lets torchdrug draw its own. The crop windows and masked edges are drawn by each side's own
crop and noise functions from torch's generator, the same draws in the same order on both (one ``torch.rand`` per
graph for a crop's start or centre, one per masked edge); by default that generator is seeded identically before
each view's crop on both sides (``CropSeeds``), so both encode the same crops (the same nodes: geoplm's
``subsequence_mask`` and ``subspace_mask`` are torchdrug's formulas) and mask 15% of their edges with the same
numbers (but the two libraries list a view's edges in different orders, so not the same edges). Without it
(``--independent-crops``) each side draws from its own stream, and a round's two sides encode different random
crops: up to a quarter more or fewer edges on one side in a round of 16 models (benchmarks/README.md). Batch i runs
on both sides back to back, alternating which goes first; a side's epoch time is the sum of its step times. Ratio =
torchdrug time / geoplm time (= geoplm / torchdrug steps per second), per round and per batch, as median and range.
Before the rounds: the first two batches (numba caches), then ``--warmup-epochs`` whole epochs (default 1), each
side's heap growing to an epoch's peak page by page (geoplm's first epoch 20-25% slower than its later ones,
torchdrug's 5-10%: benchmarks/README.md); their ratio is printed, not counted. A long pretraining run pays that
once.
``--profile N``: then one more epoch per side under cProfile: cumulative seconds of the main steps and the top-N
functions by own time (cProfile inflates Python-heavy code).
``--dense-bound``: then one more geoplm epoch under ``torch.profiler`` (shapes recorded): its dense products
(``aten::mm``, ``addmm``, ``addmm_``: every linear, fused aggregate + linear and their gradients), their own time in
the step, and each shape replayed alone (random operands, output preallocated, best of 5: warm caches, no page
faults). Printed: the ratio geoplm would reach if every dense product ran as fast as alone and all else stayed
as measured (torchdrug epoch / (geoplm epoch - dense in the step + dense alone)), and if only the dense products
alone were left (torchdrug epoch / dense alone): how far float32 products of these shapes can take the ratio.

**memory** (any environment with geoplm): the corpus of ``--proteins`` N real AlphaFold records (parsed once) and
the corpus of ``--scale`` x N (the same records under other ids), written as record shards of N / 2 records with
their manifest, as the workflow writes a dataset; for each, a fresh subprocess runs
``geoplm.pretraining.run.pretrain_run`` (the ``multiview_contrast`` task, 1 epoch, ``max_split_size`` N, so the
1x corpus is one split and the 10x corpus ten, streamed one at a time by ``Corpus``) and reports its own peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``), and its RSS after the imports, before the run. Printed: both peaks,
their ratio (10x / 1x; goal <= 1.2), and the record shards' size on disk (what holding the whole corpus would
add, at least).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import logging
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = Path(os.environ.get("GEOPLM_TEST_DATA") or REPO.parent / "shared" / "data")
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(HERE))

from bench_ec_epoch import evenly_spaced, print_profile, rdkit_reads, summary  # noqa: E402
from machine import machine_facts  # noqa: E402

LR = 1e-3  # mc_gearnet_edge.yaml: Adam, lr 1e-3
CROPS = ("subsequence", "subspace")
NOISES = ("identity", "random_edge_mask")


def alphafold_files(data: Path) -> list[Path]:
    """The PDB files of the mirror's AlphaFold DB models, one per UniProt entry (the newest model version), by
    name. (torchdrug's ``from_pdb`` reads PDB only; the mmCIF models are left out on both sides.)"""
    by_entry: dict[str, Path] = {}
    for path in sorted((data / "alphafold").glob("*.pdb")):
        name = path.name.removeprefix("alphafold.ebi.ac.uk_files_").removeprefix("foldcomp_test_af_")
        entry = name.removeprefix("AF-").split("-F1")[0].removesuffix(".pdb")
        by_entry[entry] = path  # sorted: the last (newest) version wins
    return [by_entry[key] for key in sorted(by_entry)]


def model_spec(hidden_dims: list[int]) -> dict:
    return {"type": "gearnet", "graph": "gearnet", "hidden_dims": hidden_dims, "short_cut": True,
            "batch_norm": True, "concat_hidden": True, "readout": "sum", "num_angle_bin": 8,
            "edge_input_dim": 59}  # fmt: skip


def pretraining_spec(batch_size: int, **extra) -> dict:
    return {"kind": "multiview_contrast", "epochs": 1, "batch_size": batch_size, "lr": LR, "optimizer": "adam",
            "crops": list(CROPS), "noises": list(NOISES), "max_length": 50, "min_neighbor": 15, "min_radius": 15.0,
            "edge_mask_rate": 0.15, "tau": 0.07, "num_mlp_layer": 2, **extra}  # fmt: skip


def gearnet_graph_settings() -> dict:
    from geoplm.config import graph_settings

    return graph_settings({"graphs": {"gearnet": {"sequential_max_distance": 2, "radius": 10.0, "knn_k": 10,
                                                  "min_distance": 5}}}, "gearnet")  # fmt: skip


# --- speed: torchdrug ------------------------------------------------------------------------------------


class CropSeeds:
    """Seeds for the crops of one side: :meth:`set` before a batch (``None``: leave torch's generator alone),
    :meth:`reseed` before each view's crop (view k of batch ``step`` of epoch ``epoch`` -> :func:`crop_seed`)."""

    def __init__(self):
        self.key, self.view = None, 0

    def set(self, key: tuple[int, int] | None) -> None:
        self.key, self.view = key, 0

    def reseed(self) -> None:
        if self.key is not None:
            torch.manual_seed(2 * crop_seed(*self.key) + self.view)
            self.view += 1


def crop_seed(epoch: int, step: int) -> int:
    """The seed of batch ``step`` of epoch ``epoch`` (its views: :class:`CropSeeds`), the same on both sides."""
    return 1_000_003 * (epoch + 1) + step


class TorchdrugSide:
    """torchdrug 0.2.1 with GearNet's multiview-contrast config, ``core.Engine``'s loop on the CPU."""

    name = "torchdrug"

    def __init__(self, hidden_dims: list[int], batch_size: int):
        from torchdrug import core, data, models, tasks, transforms, utils
        from torchdrug.layers import geometry
        from torchdrug.models import infograph
        from torchdrug_reference import graph_construction

        logging.getLogger("torchdrug").setLevel(logging.ERROR)

        class AlphaFoldModels(data.ProteinDataset):
            """torchdrug 0.2.1 ``datasets.AlphaFoldDB`` without its archives: ``load_pdbs`` of the given files
            (GearNet's config: ``atom_feature=None, bond_feature=None``, ``ProteinView("residue")``) and its
            ``get_item``."""

            def __init__(self, pdb_files):
                self.load_pdbs(pdb_files, transform=transforms.ProteinView("residue"), atom_feature=None,
                               bond_feature=None)  # fmt: skip
                if len(self.data) != len(pdb_files):
                    raise RuntimeError("torchdrug could not read every file")

            def get_item(self, index):  # datasets/alphafolddb.py, torchdrug 0.2.1
                protein = self.data[index].clone()
                if hasattr(protein, "residue_feature"):
                    with protein.residue():
                        protein.residue_feature = protein.residue_feature.to_dense()
                item = {"graph": protein}
                if self.transform:
                    item = self.transform(item)
                return item

        self.dataset_class = AlphaFoldModels
        self.data, self.utils, self.core, self.infograph = data, utils, core, infograph
        model = models.GearNet(input_dim=21, hidden_dims=hidden_dims, num_relation=7, edge_input_dim=59,
                               num_angle_bin=8, batch_norm=True, concat_hidden=True, short_cut=True,
                               readout="sum")  # fmt: skip
        self.seeds = seeds = CropSeeds()

        class Reseeded(torch.nn.Module):
            """A crop function, called after :meth:`CropSeeds.reseed` (no parameters; the same output otherwise)."""

            def __init__(self, crop):
                super().__init__()
                self.crop = crop

            def forward(self, graph):
                seeds.reseed()
                return self.crop(graph)

        self.crops = {
            "subsequence": Reseeded(geometry.SubsequenceNode(max_length=50)),
            "subspace": Reseeded(geometry.SubspaceNode(entity_level="residue", min_neighbor=15, min_radius=15.0)),
        }
        self.noises = {"identity": geometry.IdentityNode(), "random_edge_mask": geometry.RandomEdgeMask(mask_rate=0.15)}
        self.contrast = models.MultiviewContrast(model, crop_funcs=list(self.crops.values()),
                                                 noise_funcs=list(self.noises.values()), num_mlp_layer=2)  # fmt: skip
        self.task = tasks.Unsupervised(self.contrast, graph_construction_model=graph_construction())
        self.optimizer = torch.optim.Adam(self.task.parameters(), lr=LR)
        self.batch_size = batch_size
        self.engine = None

    def parse(self, paths: list[Path]):
        return self.dataset_class([str(p) for p in paths])

    def num_nodes(self, dataset) -> list[int]:
        ca = self.data.Protein.atom_name2id["CA"]
        return [int((protein.atom_name == ca).sum()) for protein in dataset.data]

    @contextmanager
    def views(self, choices):
        """``MultiviewContrast.forward`` draws each view's crop and noise function with ``random.sample``; with
        ``choices`` (``[crop 1, noise 1, crop 2, noise 2]`` by name) it gets those, in view order."""
        if choices is None:
            yield
            return
        crops = [self.crops[choices[0]], self.crops[choices[2]]]
        noises = [self.noises[choices[1]], self.noises[choices[3]]]
        module, contrast = self.infograph, self.contrast

        class Scripted:
            def sample(self, population, k):
                if k != 1:
                    raise RuntimeError("unexpected random.sample call")
                if list(population) == list(contrast.crop_funcs):
                    return [crops.pop(0)]
                if list(population) == list(contrast.noise_funcs):
                    return [noises.pop(0)]
                raise RuntimeError("unexpected random.sample population")

        original = module.random
        module.random = Scripted()
        try:
            yield
        finally:
            module.random = original
        if crops or noises:
            raise RuntimeError("MultiviewContrast did not draw two crops and two noises")

    def epoch(self, dataset, order: list[int], choices):
        """``core.Engine.train(num_epoch=1)``'s loop (one process, CPU, ``gradient_interval`` 1), one batch per
        ``next()``, samples in ``order``; ``choices(step)`` gives the views of each batch (or None)."""
        if self.engine is None:
            self.engine = self.core.Engine(self.task, dataset, None, None, self.optimizer, gpus=None,
                                           batch_size=self.batch_size, num_worker=0)  # fmt: skip
        engine, utils = self.engine, self.utils
        engine.train_set = dataset
        dataloader = self.data.DataLoader(dataset, engine.batch_size, sampler=order, num_workers=engine.num_worker)
        model = engine.model
        model.split = "train"
        model.train()
        for step, batch in enumerate(dataloader):
            with self.views(choices(step)):
                loss, metric = model(batch)
            if not loss.requires_grad:
                raise RuntimeError("Loss doesn't require grad")
            loss.backward()
            engine.optimizer.step()
            engine.optimizer.zero_grad()
            metric = utils.mean(utils.stack([metric], dim=0), dim=0)
            engine.meter.update(metric)
            yield


# --- speed: geoplm ---------------------------------------------------------------------------------------


class GeoplmSide:
    """geoplm: the ``multiview_contrast`` task, examples by its ``InputLoader``, ``train.fit``'s epoch loop."""

    name = "geoplm"

    def __init__(self, hidden_dims: list[int], batch_size: int, seed: int = 0):
        from geoplm.pretraining import get_pretraining_task
        from geoplm.train import build_optimizer

        self.task = get_pretraining_task(pretraining_spec(batch_size), "mc")
        self.task.bind("cpu", gearnet_graph_settings(), seed)
        self.seeds = CropSeeds()
        view = self.task.view

        def reseeded_view(*args, **kwargs):  # each view's crop after CropSeeds.reseed, as torchdrug's side
            self.seeds.reseed()
            return view(*args, **kwargs)

        self.task.view = reseeded_view
        torch.manual_seed(seed)
        self.net = self.task.build_model(model_spec(hidden_dims), 21, plm=False)
        self.optimizer = build_optimizer(self.task, self.net)
        self.loader = self.task.input_loader()
        self.batch_size = batch_size
        self.count = 0

    def parse(self, paths: list[Path]) -> list[dict]:
        from geoplm.structure import parse_structure

        return [{**parse_structure(path)[0], "split": "train"} for path in paths]

    def examples(self, records: list[dict]) -> list:
        """Records to examples by the task's ``InputLoader`` (what ``Corpus.load`` does for each split)."""
        from geoplm.train import deterministic

        with deterministic():
            examples = self.task.build_examples(records, {r["id"]: "train" for r in records}, self.loader)["train"]
        if len(examples) != len(records):
            raise RuntimeError(f"{len(records) - len(examples)} records made no example")
        return examples

    def order(self, count: int) -> list[int]:
        """The example order the next :meth:`Task.batches` will draw (a copy of the task's generator)."""
        rng = random.Random()
        rng.setstate(self.task.rng.getstate())
        order = list(range(count))
        rng.shuffle(order)
        return order

    def next_views(self) -> list[str]:
        """The crop and noise functions the next ``training_loss`` will draw: ``[crop 1, noise 1, crop 2,
        noise 2]`` (a copy of the task's generator; ``training_loss`` draws them in this order)."""
        rng = random.Random()
        rng.setstate(self.task.rng.getstate())
        s = self.task.settings
        return [rng.choice(list(s[key])) for key in ("crops", "noises", "crops", "noises")]

    def start(self, examples: list):
        """The batches of the next epoch (the shuffle of ``task.batches``), then one step per ``next()``."""
        from geoplm.train import deterministic

        epoch, self.count = self.count, self.count + 1
        self.net.train()
        batches = self.task.batches(examples, self.batch_size, epoch)
        return self._steps(batches, epoch, deterministic)

    def _steps(self, batches, epoch, deterministic):
        for batch in batches:  # fit's epoch loop
            with deterministic():
                self.optimizer.zero_grad()
                loss, parts, weight = self.task.training_loss(self.net, batch, epoch)
                loss.backward()
                self.optimizer.step()
            yield


def run_epoch(
    theirs, ours, dataset, examples, same_views: bool, limit: int | None = None, same_crops: bool = True
) -> dict:
    """One epoch per side in lockstep, batch by batch (same proteins in batch i), alternating which side runs
    batch i first; with ``same_crops`` each side's generator seeded alike before each view's crop (:class:`CropSeeds`).
    Returns ``{side: [seconds per step]}``."""
    gc.collect()
    count = len(examples) if limit is None else min(limit, len(examples))
    order = ours.order(len(examples))[:count]
    td_examples = examples  # geoplm's batches: the first `count` of its shuffle
    ours_steps = ours.start(td_examples)
    epoch = ours.count
    if limit is not None:
        ours_steps = _take(ours_steps, -(-count // ours.batch_size))
    views: dict[int, list[str]] = {}
    theirs_steps = theirs.epoch(dataset, order, lambda step: views.get(step) if same_views else None)
    steps = {theirs.name: [], ours.name: []}
    sides = {theirs.name: theirs_steps, ours.name: ours_steps}
    step = 0
    while sides:
        views[step] = ours.next_views()  # before either side runs batch `step` (geoplm's generator is at it)
        names = [n for n in (theirs.name, ours.name) if n in sides]
        for name in names if step % 2 == 0 else names[::-1]:
            (theirs if name == theirs.name else ours).seeds.set((epoch, step) if same_crops else None)
            start = time.perf_counter()
            try:
                next(sides[name])
            except StopIteration:
                del sides[name]
            else:
                steps[name].append(time.perf_counter() - start)
        step += 1
    if len(steps[theirs.name]) != len(steps[ours.name]):
        raise RuntimeError(f"different numbers of batches: { {k: len(v) for k, v in steps.items()} }")
    return steps


def _take(iterator, count: int):
    for _ in range(count):
        try:
            yield next(iterator)
        except StopIteration:
            return
    iterator.close()


def profile_steps(name: str) -> list[tuple[str, object]]:
    common = [("backward", torch.Tensor.backward), ("optimizer step (Adam)", torch.optim.Adam.step)]
    if name == "torchdrug":
        from torch.utils.data.dataloader import _BaseDataLoaderIter
        from torchdrug import layers, models
        from torchdrug.layers import geometry

        return [
            ("data loading (get_item, ProteinView, graph_collate)", _BaseDataLoaderIter.__next__),
            ("graph construction (GraphConstruction)", layers.GraphConstruction.forward),
            ("MultiviewContrast forward", models.MultiviewContrast.forward),
            ("  of which SubsequenceNode", geometry.SubsequenceNode.forward),
            ("  of which SubspaceNode", geometry.SubspaceNode.forward),
            ("  of which RandomEdgeMask", geometry.RandomEdgeMask.forward),
            ("  of which GearNet-Edge forward", models.GearNet.forward),
            ("    of which line graph (SpatialLineGraph)", layers.SpatialLineGraph.forward),
            *common,
        ]
    from geoplm import graph, inputs
    from geoplm.models.gearnet import GearNet, RelationalAdjacency
    from geoplm.pretraining import gearnet_tasks as mc

    return [
        ("training_loss", mc.MultiviewContrast.training_loss),
        ("  of which pack (the batch's nodes)", inputs.pack),
        ("  of which views (crop masks, their graphs, edge mask)", mc.MultiviewContrast.view),
        ("    of which subsequence_mask", mc.subsequence_mask),
        ("    of which subspace_mask", mc.subspace_mask),
        ("    of which build_gearnet_graph (the cropped nodes')", graph.build_gearnet_graph),
        ("    of which random_edge_mask + remove_edges", mc.remove_edges),
        ("  of which cat_graphs (both views in one pass)", graph.cat_graphs),
        ("  of which GearNet-Edge forward", GearNet.forward),
        ("    of which line graph (paired_line_graph)", graph.paired_line_graph),
        ("    of which sparse adjacencies (RelationalAdjacency.blocks)", RelationalAdjacency.blocks),
        ("    of which sparse adjacencies (RelationalAdjacency.plan: small views)", RelationalAdjacency.plan),
        ("  of which InfoNCE", mc.info_nce),
        *common,
    ]


def profile_epoch(side, theirs, ours, dataset, examples, top: int) -> None:
    order = ours.order(len(examples))
    if side is ours:
        steps = ours.start(examples)
    else:
        steps = theirs.epoch(dataset, order, lambda step: None)
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    for _ in steps:
        pass
    profiler.disable()
    print_profile(side.name, profiler, time.perf_counter() - start, profile_steps(side.name), top)


DENSE_OPS = ("aten::mm", "aten::addmm", "aten::addmm_")


def dense_bound(ours, examples, torchdrug_epoch: float, geoplm_epoch: float) -> None:
    """``--dense-bound`` (see the module docstring): one geoplm epoch's dense products, in the step and alone."""
    from collections import Counter

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in ours.start(examples):
            pass
    shapes, in_step = Counter(), 0.0
    for event in prof.events():
        if event.name in DENSE_OPS:
            first, second = event.input_shapes[1:3] if event.name != "aten::mm" else event.input_shapes[:2]
            shapes[(first[0], first[1], second[1])] += 1
            in_step += event.self_cpu_time_total / 1e6

    def best(m: int, k: int, n: int, repeats: int = 5) -> float:
        a, b, out = torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)
        torch.mm(a, b, out=out)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            times.append(time.perf_counter() - start)
        return min(times)

    alone = sum(best(*shape) * count for shape, count in shapes.items())
    flop = sum(2 * m * k * n * count for (m, k, n), count in shapes.items()) / 1e9
    print(f"dense bound: one geoplm epoch has {sum(shapes.values())} dense products ({len(shapes)} shapes), "
          f"{flop:.2f} GFLOP: {in_step:.3f} s in the step (under the profiler; {flop / in_step:.0f} GFLOP/s), "
          f"{alone:.3f} s alone ({flop / alone:.0f} GFLOP/s)")  # fmt: skip
    rest = geoplm_epoch - in_step + alone
    print(f"dense bound: median epochs torchdrug {torchdrug_epoch:.3f} s, geoplm {geoplm_epoch:.3f} s; with every "
          f"dense product as fast as alone: geoplm {rest:.3f} s, ratio {torchdrug_epoch / rest:.2f}x; the dense "
          f"products alone and nothing else: ratio {torchdrug_epoch / alone:.2f}x")  # fmt: skip


def speed(args) -> int:
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Unknown (residue|value)")
    warnings.filterwarnings("ignore", message="Using torch.cross without specifying the dim")
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True")
    for line in machine_facts(args.threads):
        print(line)
    logging.getLogger("geoplm").setLevel(logging.ERROR)
    hidden_dims = [args.hidden_dim] * args.num_layers
    files = alphafold_files(args.data)
    readable = [p for p in files if rdkit_reads(p)]
    skipped = [p.name for p in files if p not in readable]
    paths = evenly_spaced(readable, args.proteins)

    ours, theirs = GeoplmSide(hidden_dims, args.batch_size), TorchdrugSide(hidden_dims, args.batch_size)
    dataset = theirs.parse(paths)
    records = ours.parse(paths)
    from geoplm.graph import record_graph_inputs

    nodes = [len(record_graph_inputs(r)[0]) for r in records]
    if nodes != theirs.num_nodes(dataset):
        raise SystemExit(f"the two sides read different residues: {nodes} vs {theirs.num_nodes(dataset)}")
    examples = ours.examples(records)
    params = {"torchdrug": sum(p.numel() for p in theirs.task.parameters()),
              "geoplm": sum(p.numel() for p in ours.net.parameters())}  # fmt: skip
    batches = -(-len(paths) // args.batch_size)
    print(f"proteins: {len(paths)} AlphaFold DB models ({sum(nodes)} residues, {min(nodes)}-{max(nodes)}); "
          f"{len(skipped)} of {len(files)} PDB files left out (RDKit cannot read them: {', '.join(skipped) or '-'}); "
          f"{batches} batches of {args.batch_size}")  # fmt: skip
    print(
        f"model: GearNet-Edge {hidden_dims} + 2-layer projection MLP, InfoNCE (tau 0.07), Adam lr {LR}; "
        f"parameters torchdrug {params['torchdrug']:,}, geoplm {params['geoplm']:,}; views: "
        f"{'independent' if args.independent_views else 'same crop / noise functions per batch on both sides'}; crops: "
        f"{'each side its own' if args.independent_crops else 'the same (torch seeded alike before each crop)'}"
    )
    same = not args.independent_views

    crops = not args.independent_crops
    run_epoch(theirs, ours, dataset, examples, same, limit=2 * args.batch_size, same_crops=crops)  # numba caches
    for i in range(args.warmup_epochs):  # the heaps growing to an epoch's peak; shown, not in the medians
        steps = run_epoch(theirs, ours, dataset, examples, same, same_crops=crops)
        td, mine = sum(steps["torchdrug"]), sum(steps["geoplm"])
        print(f"warm-up epoch {i + 1} (not in the medians): torchdrug {td:.2f} s, geoplm {mine:.2f} s, ratio "
              f"{td / mine:.2f}x")  # fmt: skip

    rounds = []
    for i in range(args.rounds):
        steps = run_epoch(theirs, ours, dataset, examples, same, same_crops=crops)
        rounds.append(steps)
        td, mine = sum(steps["torchdrug"]), sum(steps["geoplm"])
        print(f"round {i + 1}: torchdrug {td:.2f} s ({len(steps['torchdrug']) / td:.2f} steps/s), geoplm "
              f"{mine:.2f} s ({len(steps['geoplm']) / mine:.2f} steps/s), ratio {td / mine:.2f}x; load "
              f"{os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    ratios = [sum(r["torchdrug"]) / sum(r["geoplm"]) for r in rounds]
    per_batch = [a / b for r in rounds for a, b in zip(r["torchdrug"], r["geoplm"], strict=True)]
    for name in ("torchdrug", "geoplm"):
        per_step = statistics.median(sum(r[name]) / len(r[name]) for r in rounds)
        print(f"{name}: median {per_step * 1e3:.0f} ms per step = {1 / per_step:.2f} steps/s "
              f"({args.batch_size / per_step:.1f} proteins/s)")  # fmt: skip
    print(f"steps/s ratio (geoplm / torchdrug = torchdrug / geoplm time): {summary(ratios)}; rounds "
          f"{', '.join(f'{r:.2f}' for r in ratios)}")  # fmt: skip
    print(f"per-batch ratio (same proteins, back to back): {summary(per_batch)} over {len(per_batch)} batches")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.profile:
        for side in (theirs, ours):
            gc.collect()
            profile_epoch(side, theirs, ours, dataset, examples, args.profile)
    if args.dense_bound:
        gc.collect()
        epochs = {name: statistics.median(sum(r[name]) for r in rounds) for name in ("torchdrug", "geoplm")}
        dense_bound(ours, examples, epochs["torchdrug"], epochs["geoplm"])
    return 0


# --- memory -------------------------------------------------------------------------------------------------


def write_corpus(records: list[dict], scale: int, shard_size: int, folder: Path) -> tuple[Path, list[Path]]:
    """``scale`` copies of the records (copy k > 0 under ids ``{id}-copy{k}``) as record shards of ``shard_size``
    records and their manifest (columns id, split, shard), as the workflow writes a dataset."""
    import pandas as pd

    from geoplm.structure import save_shard

    folder.mkdir(parents=True)
    corpus = [{**r, "id": r["id"] if k == 0 else f"{r['id']}-copy{k}"} for k in range(scale) for r in records]
    rows, shards = [], []
    for index, first in enumerate(range(0, len(corpus), shard_size)):
        members = corpus[first : first + shard_size]
        path = folder / f"{index:04d}.pt"
        save_shard(members, path)
        shards.append(path)
        rows += [{"id": r["id"], "split": "", "shard": f"{index:04d}"} for r in members]
    manifest = folder / "manifest.tsv"
    pd.DataFrame(rows).to_csv(manifest, sep="\t", index=False)
    return manifest, shards


def rss_mb() -> float:
    """This process's resident set now (MB), from /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def input_mb(records: list[dict]) -> float:
    """The size (MB) of the tensors of the records' ``ProteinInput`` s (what a split holds per protein)."""
    import dataclasses

    from geoplm.pretraining import get_pretraining_task

    loader = get_pretraining_task(pretraining_spec(4), "mc").input_loader()
    total = 0
    for record in records:
        protein = loader(record)
        for field in dataclasses.fields(protein):
            value = getattr(protein, field.name)
            values = value if isinstance(value, (list, tuple)) else [value]
            total += sum(v.numel() * v.element_size() for v in values if isinstance(v, torch.Tensor))
    return total / 2**20


def memory_child(args) -> int:
    """One ``pretrain_run`` epoch over the corpus in ``args.corpus``; prints a JSON line with the peak RSS."""
    from geoplm.pretraining.run import pretrain_run

    folder = Path(args.corpus)
    manifest, shards = folder / "manifest.tsv", sorted(folder.glob("*.pt"))
    before = rss_mb()
    start = time.perf_counter()
    out = Path(args.out)
    metrics = pretrain_run(
        pretraining_spec(args.batch_size, max_split_size=args.split_size, epochs_per_split=5),
        model_spec([args.hidden_dim] * args.num_layers), [manifest], shards, seed=0,
        encoder_path=out / "encoder.pt", metrics_path=out / "metrics.json", checkpoint_path=out / "model.pt",
        threads=args.threads, graph_settings=gearnet_graph_settings(), name="mc",
    )  # fmt: skip
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
    print(json.dumps({"peak_rss_mb": peak, "rss_before_mb": before, "seconds": seconds,
                      "corpus": metrics.get("corpus"), "passes": len(metrics["history"])}))  # fmt: skip
    return 0


def memory(args) -> int:
    for line in machine_facts(args.threads):
        print(line)
    logging.getLogger("geoplm").setLevel(logging.ERROR)
    from geoplm.structure import parse_structure

    paths = evenly_spaced(alphafold_files(args.data), args.proteins)
    records = [parse_structure(path)[0] for path in paths]
    residues = sum(len(r["sequence"]) for r in records)
    shard_size = max(1, len(records) // 2)
    print(f"corpus: {len(records)} AlphaFold DB models ({residues} residues) at 1x, x{args.scale} under other ids; "
          f"shards of {shard_size} records, max_split_size {len(records)}; multiview contrast, 1 epoch, GearNet-Edge "
          f"{[args.hidden_dim] * args.num_layers}, batch {args.batch_size}")  # fmt: skip
    print(f"inputs in memory (ProteinInput tensors of the task's InputLoader): {input_mb(records):.1f} MB at 1x")
    runs = [(1, len(records)), (args.scale, len(records))]
    if args.control:  # the whole 10x corpus as one split: what streaming saves
        runs.append((args.scale, args.scale * len(records)))
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_pretrain_") as tmp:
        for run, (scale, split_size) in enumerate(runs):
            folder = Path(tmp) / f"run{run}"
            _, shards = write_corpus(records, scale, shard_size, folder / "corpus")
            out = folder / "run"
            out.mkdir()
            script = str(Path(__file__).resolve())
            command = [sys.executable, script, "memory-child", "--corpus", str(folder / "corpus"), "--out", str(out),
                       "--split-size", str(split_size), "--batch-size", str(args.batch_size), "--hidden-dim",
                       str(args.hidden_dim), "--num-layers", str(args.num_layers),
                       "--threads", str(args.threads)]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stdout + done.stderr)
                raise SystemExit(f"the {scale}x run failed")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            result["shard_mb"] = sum(p.stat().st_size for p in shards) / 2**20
            if run < 2:
                results[scale] = result
            label = f"{scale}x" if run < 2 else f"control, {scale}x as one split (no streaming)"
            print(f"{label}: {result['corpus']['proteins']} proteins in splits {result['corpus']['splits']}, "
                  f"{result['passes']} loop passes, {result['seconds']:.1f} s; peak RSS "
                  f"{result['peak_rss_mb']:.0f} MB (RSS after the imports {result['rss_before_mb']:.0f} MB); record "
                  f"shards {result['shard_mb']:.1f} MB on disk", flush=True)  # fmt: skip
    one, many = results[1], results[args.scale]
    growth = (many["peak_rss_mb"] - many["rss_before_mb"]) / max(1e-9, one["peak_rss_mb"] - one["rss_before_mb"])
    print(f"peak RSS ratio {args.scale}x / 1x: {many['peak_rss_mb'] / one['peak_rss_mb']:.3f} (goal <= 1.2); "
          f"growth over the imports {growth:.3f}")  # fmt: skip
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    for mode in ("speed", "memory", "memory-child"):
        sub = modes.add_parser(mode)
        sub.add_argument("--data", default=DATA, type=Path, help="the mirror ($GEOPLM_TEST_DATA, ../shared/data)")
        sub.add_argument("--batch-size", default=4, type=int)
        sub.add_argument("--hidden-dim", default=128, type=int)
        sub.add_argument("--num-layers", default=4, type=int)
        sub.add_argument("--threads", default=2, type=int)
        if mode == "speed":
            sub.add_argument("--proteins", default=16, type=int, help="N of the AlphaFold DB models (0: all)")
            sub.add_argument("--rounds", default=5, type=int)
            sub.add_argument("--warmup-epochs", default=1, type=int, help="whole epochs before the rounds")
            sub.add_argument("--independent-views", action="store_true")
            sub.add_argument("--independent-crops", action="store_true", help="each side draws its own crops")
            sub.add_argument("--profile", default=0, type=int, help="then profile one epoch per side, top N")
            sub.add_argument("--dense-bound", action="store_true", help="then time geoplm's dense products alone")
        elif mode == "memory":
            sub.add_argument("--proteins", default=8, type=int, help="N, the 1x corpus")
            sub.add_argument("--scale", default=10, type=int)
            sub.add_argument("--control", action="store_true", help="also run the scaled corpus as one split")
        else:
            sub.add_argument("--corpus", required=True)
            sub.add_argument("--out", required=True)
            sub.add_argument("--split-size", required=True, type=int)
    args = parser.parse_args(argv)
    if args.mode == "speed":
        return speed(args)
    if args.mode == "memory":
        return memory(args)
    return memory_child(args)


if __name__ == "__main__":
    sys.exit(main())
