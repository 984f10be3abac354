"""Speed ratio geoplm vs torchdrug 0.2.1: one EC fine-tuning epoch of GearNet-Edge, data loading included.

Both run in one process on the same real chains, interleaved batch by batch, so the ratios do not depend on
the shared machine's load as much as absolute times do. Run in the torchdrug environment
(benchmarks/torchdrug_env.sh), from the repository root (``src/`` is put on ``sys.path``)::

    /work/tdenv/bin/python benchmarks/bench_ec_epoch.py [--data ../shared/data] [--rounds 5] \
        [--chains 16] [--hidden-dim 128] [--num-layers 4] [--threads 2] [--breakdown] [--profile 0]

The defaults (what ``make bench`` runs) take 16 of the 56 chains and five rounds: about a minute on an idle
2-core machine (several times that while other jobs use the cores; see benchmarks/README.md). ``--chains 0``
takes all 56.

Chains: the EC training chains of the mirror (``chains/`` with DeepFRI's ``labels/deepfri_EC_GO``, read by the
``labelled_chains`` reader with task ``ec``, as ``tests/test_tasks.py`` does), sorted by id, less those RDKit
(torchdrug's PDB parser) cannot read (8 of 64: valence errors from close contacts; torchdrug's ``load_pdbs``
skips such files too); ``--chains N`` takes N of them evenly spaced. Each chain is written once (not timed) to
its own PDB file -- the ATOM/HETATM lines of exactly the residues of the reader's record, altloc blank or A --
as DeepFRI / torchdrug's EnzymeCommission ships one file per chain. Both sides read these files; the script
checks that they see the same residues with a Cα (torchdrug ``AlphaCarbonNode`` vs geoplm's nodes) and that
geoplm's record of each file equals the reader's record of the original file.

Model and training, the same on both sides: GearNet-Edge (``hidden_dims`` ``[--hidden-dim] * --num-layers``;
7 relations, ``edge_input_dim`` 59, 8 angle bins, batch norm, short cut, concat hidden, sum readout), the
3-layer MLP head to 538 EC numbers, mean BCE, AdamW (lr 1e-4, weight decay 0, GearNet's EC config), batch 2
(GearNet's per-GPU batch), shuffled; the graph (sequential |i-j| <= 2, radius 10 A and kNN 10 with
|i-j| >= 5, 59-d edge features) built on every batch. Weights differ (each side its own initialisation).

Timed, per round and side (two numbers each):

* **parse** -- the chain files to in-memory structures with their targets. torchdrug: ``load_pdbs`` of a
  ``data.ProteinDataset`` (RDKit ``MolFromPDBFile``, ``Protein.from_molecule`` with ``atom_feature=None,
  bond_feature=None``, as GearNet's EC config) with ``transforms.ProteinView("residue")``, targets as
  ``datasets.EnzymeCommission`` keeps them. geoplm: :func:`geoplm.structure.parse_structure` of each file
  and the reader's labels attached (the workflow does this in its parse rule, once, not per epoch).
* **epoch** -- one training epoch from those structures to the last optimizer step. torchdrug: the loop of
  ``core.Engine.train(num_epoch=1)`` (``gpus=None``, ``batch_size=2``, ``gradient_interval`` 1; the ``Engine``
  is built once, which runs the task's ``preprocess`` pass): its ``data.DataLoader`` (``get_item``: clone,
  dense residue features, ``ProteinView``, dense target; ``graph_collate``), ``task(batch)``
  (``MultipleBinaryClassification`` with its ``GraphConstruction``: graph, GearNet-Edge, MLP, BCE), backward,
  ``optimizer.step``, ``zero_grad``, its meter update. geoplm: ``task.build_examples`` (records to
  ``ProteinInput`` s and targets, :class:`geoplm.inputs.InputLoader` without cached graphs) and the epoch loop
  of :func:`geoplm.train.fit` (``task.batches``, ``zero_grad``, ``task.training_loss``: ``pack`` with the
  graph built on the batch, GearNet-Edge, head, BCE; backward, ``optimizer.step``), under
  :func:`geoplm.train.deterministic` as ``fit`` runs it. ``fit``'s per-epoch resume file and evaluation are
  not timed (torchdrug's ``train`` does neither).

Not timed: model, optimizer and ``Engine`` construction, done once; the rounds keep training the same two
models; a garbage collection before each parse and before the epochs (else the previous epoch's garbage is
collected in whichever parse comes first). A warm-up round on the first 4 chains first (numba's cached
kernels, allocator).

Interleaving: the load of the shared 2-core machine changes within seconds, so the two epochs run in lockstep,
batch by batch: batch i of torchdrug, then batch i of geoplm (alternating which goes first), with the same two
chains in batch i on both sides (torchdrug's loader draws the samples in the order geoplm's ``task.batches``
shuffles them to, instead of its ``DistributedSampler``'s permutation). A side's epoch time is the sum of its
batch times (geoplm's first batch includes ``build_examples``). Each round: both sides parse (alternating which
first), then the lockstep epoch. Ratios are torchdrug time / geoplm time (> 1: geoplm is faster; = geoplm /
torchdrug proteins per second), per round for the epoch, parse, and parse + epoch, printed as median and range
over the rounds; and per batch (same chains back to back) over all rounds.

``--breakdown``: afterwards one more epoch per side, batch by batch, with each step timed around the library
calls (data loading, graph construction, line graph, geoplm's sparse adjacencies per block size, the rest of
the forward pass, backward, optimizer step). ``--profile N``: then one more epoch per side under cProfile: the
cumulative seconds of the main steps and the top-N functions by own time.

The machine's OpenMP settings matter: torch's libgomp threads spin after every parallel region (the default
``OMP_WAIT_POLICY``), so when other jobs share the cores each of the thousands of small kernels per batch can
wait for a descheduled thread; the facts printed first include ``OMP_WAIT_POLICY`` and the load average.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import gzip
import inspect
import io
import logging
import os
import pstats
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
#: the mirror, as the tests find it (tests/conftest.py)
DATA = Path(os.environ.get("GEOPLM_TEST_DATA") or REPO.parent / "shared" / "data")
sys.path.insert(0, str(REPO / "src"))

NUM_CLASSES = 538  # DeepFRI's EC numbers (nrPDB-EC_2020.04_annot.tsv)
LR = 1e-4
BATCH_SIZE = 2
WARMUP_CHAINS = 4


def import_task_layer() -> None:
    """Import :mod:`geoplm.tasks.function`. The torchdrug environment has no scikit-learn, which
    :mod:`geoplm.metrics` imports at the top; nothing here evaluates, so a stub stands in for that one import
    (and is then taken out of ``sys.modules`` again, so that no other importer sees it)."""
    try:
        import sklearn  # noqa: F401
    except ImportError:
        import importlib.machinery
        import types

        def missing(name):
            raise AttributeError(f"sklearn.metrics.{name}: scikit-learn is not installed in this environment")

        stubs = {}
        for name in ("sklearn", "sklearn.metrics"):
            stubs[name] = types.ModuleType(name)
            stubs[name].__spec__ = importlib.machinery.ModuleSpec(name, None)
        stubs["sklearn"].metrics = stubs["sklearn.metrics"]
        stubs["sklearn.metrics"].__getattr__ = missing
        sys.modules.update(stubs)
        try:
            import geoplm.tasks.function  # noqa: F401
        finally:
            for name in stubs:
                sys.modules.pop(name, None)


# --- machine facts: benchmarks/machine.py ---------------------------------------------------------------

from machine import OPENMP_VARIABLES, machine_facts  # noqa: E402,F401  (the same facts in every benchmark)

# --- chains -------------------------------------------------------------------------------------------


def ec_training_records(data: Path) -> list[dict]:
    """The EC training chains of the mirror: the ``labelled_chains`` reader with the real DeepFRI labels
    (``tests/test_tasks.py::labelled_records`` with task ``ec``), sorted by id."""
    import pandas as pd

    from geoplm.datasets.chains import read_shard

    table = pd.read_csv(data / "chains" / "CHAINS.tsv", sep="\t", dtype=str, keep_default_na=False)
    other = table[~table["identified_by"].str.startswith(("file name", "HEADER"))]
    chain_map = dict(zip(other["file"], other["pdb_chain"], strict=True))
    files = sorted(p for p in (data / "chains").iterdir() if p.name != "CHAINS.tsv")
    labels = sorted((data / "labels" / "deepfri_EC_GO").iterdir())
    records, _ = read_shard([*files, *labels], 0, 1, {"task": "ec", "chain_map": chain_map}, "skip")
    return sorted((r for r in records if r["split"] == "train"), key=lambda r: r["id"])


def write_chain_file(record: dict, data: Path, folder: Path) -> Path:
    """The record's chain as its own PDB file: the first model's ATOM/HETATM lines of the record's residues
    (chain, residue number and insertion code), altloc blank or A."""
    source = data / "chains" / record["source"]
    opener = gzip.open if source.name.endswith(".gz") else open
    with opener(source, "rt") as handle:
        text = handle.read()
    chain = record["chain"] or " "
    residues = {(int(n), code or " ") for n, code in zip(record["residue_number"].tolist(), record["insertion_code"],
                                                         strict=True)}  # fmt: skip
    lines = []
    for line in text.splitlines():
        if line.startswith("ENDMDL"):
            break
        if line.startswith(("ATOM  ", "HETATM")) and line[21] == chain and line[16] in " A":
            if (int(line[22:26]), line[26]) in residues:
                lines.append(line)
    path = folder / f"{record['id']}.pdb"
    path.write_text("\n".join([*lines, "TER", "END"]) + "\n")
    return path


def rdkit_reads(path: Path) -> bool:
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    try:
        return Chem.MolFromPDBFile(str(path)) is not None
    finally:
        RDLogger.EnableLog("rdApp.*")


def evenly_spaced(items: list, count: int) -> list:
    if not count or count >= len(items):
        return list(items)
    return [items[(i * len(items)) // count] for i in range(count)]


# --- torchdrug ----------------------------------------------------------------------------------------


class TorchdrugSide:
    """torchdrug 0.2.1: a ``ProteinDataset`` loaded from the chain files, ``MultipleBinaryClassification`` with
    GearNet-Edge and ``GraphConstruction``, ``core.Engine`` on the CPU."""

    name = "torchdrug"

    def __init__(self, hidden_dims: list[int]):
        from torchdrug import core, data, models, tasks, transforms, utils
        from torchdrug_reference import graph_construction

        logging.getLogger("torchdrug").setLevel(logging.ERROR)  # "Preprocess training set", config dumps

        class ECChains(data.ProteinDataset):
            """torchdrug 0.2.1 ``datasets.EnzymeCommission`` without its archive: ``load_pdbs`` of the given
            files (GearNet's EC config: ``atom_feature=None, bond_feature=None``, ``ProteinView("residue")``)
            and its ``get_item``, targets kept as its positive indices."""

            def __init__(self, pdb_files, pos_targets, num_classes):
                self.load_pdbs(pdb_files, transform=transforms.ProteinView("residue"), atom_feature=None,
                               bond_feature=None)  # fmt: skip
                if len(self.data) != len(pdb_files):
                    raise RuntimeError("torchdrug could not read every chain file")
                self.targets = {str(i): i for i in range(num_classes)}  # the `tasks` property, as EnzymeCommission
                self.pos_targets = [torch.as_tensor(t, dtype=torch.long) for t in pos_targets]

            def get_item(self, index):  # datasets/enzyme_commission.py, torchdrug 0.2.1
                protein = self.data[index].clone()
                if hasattr(protein, "residue_feature"):
                    with protein.residue():
                        protein.residue_feature = protein.residue_feature.to_dense()
                item = {"graph": protein}
                if self.transform:
                    item = self.transform(item)
                indices = self.pos_targets[index].unsqueeze(0)
                values = torch.ones(len(self.pos_targets[index]))
                item["targets"] = utils.sparse_coo_tensor(indices, values, (len(self.tasks),)).to_dense()
                return item

        self.dataset_class = ECChains
        self.data, self.utils = data, utils
        model = models.GearNet(input_dim=21, hidden_dims=hidden_dims, num_relation=7, edge_input_dim=59,
                               num_angle_bin=8, batch_norm=True, concat_hidden=True, short_cut=True,
                               readout="sum")  # fmt: skip
        construction = graph_construction()  # torchdrug_reference.py: GearNet's GraphConstruction
        self.task = tasks.MultipleBinaryClassification(
            model, task=list(range(NUM_CLASSES)), criterion="bce", metric=("auprc@micro", "f1_max"),
            num_mlp_layer=3, graph_construction_model=construction,
        )  # fmt: skip
        self.optimizer = torch.optim.AdamW(self.task.parameters(), lr=LR, weight_decay=0.0)
        self.core = core
        self.engine = None

    def parse(self, paths: list[Path], records: list[dict]):
        return self.dataset_class([str(p) for p in paths], [r["labels"]["target"] for r in records], NUM_CLASSES)

    def epoch(self, dataset, order: list[int]):
        """``core.Engine.train(num_epoch=1)``'s loop (``gradient_interval`` 1, one process, CPU), one batch per
        ``next()``; the samples in ``order`` (the geoplm side's shuffle of this epoch) instead of the order of
        its ``DistributedSampler``."""
        if self.engine is None:  # once: runs the task's preprocess pass over the training set
            self.engine = self.core.Engine(self.task, dataset, dataset, dataset, self.optimizer, gpus=None,
                                           batch_size=BATCH_SIZE, num_worker=0)  # fmt: skip
        engine, utils = self.engine, self.utils
        engine.train_set = dataset
        dataloader = self.data.DataLoader(dataset, engine.batch_size, sampler=order, num_workers=engine.num_worker)
        model = engine.model
        model.split = "train"
        model.train()
        for batch in dataloader:
            loss, metric = model(batch)
            if not loss.requires_grad:
                raise RuntimeError("Loss doesn't require grad")
            loss = loss / 1
            loss.backward()
            engine.optimizer.step()
            engine.optimizer.zero_grad()
            metric = utils.mean(utils.stack([metric], dim=0), dim=0)
            engine.meter.update(metric)
            yield

    def num_nodes(self, dataset) -> list[int]:
        ca = self.data.Protein.atom_name2id["CA"]
        return [int((protein.atom_name == ca).sum()) for protein in dataset.data]


# --- geoplm ---------------------------------------------------------------------------------------------


class GeoplmSide:
    """geoplm: ``parse_structure`` records, ``kind: multilabel`` task, the epoch loop of ``train.fit``."""

    name = "geoplm"

    def __init__(self, hidden_dims: list[int], seed: int = 0):
        from geoplm.config import graph_settings
        from geoplm.tasks import get_task
        from geoplm.train import build_optimizer

        spec = {"kind": "multilabel", "dataset": "ec", "epochs": 1, "batch_size": BATCH_SIZE, "lr": LR,
                "optimizer": "adamw", "weight_decay": 0.0, "num_mlp_layer": 3, "num_classes": NUM_CLASSES}  # fmt: skip
        self.model_spec = {"type": "gearnet", "graph": "gearnet", "hidden_dims": hidden_dims, "short_cut": True,
                           "batch_norm": True, "concat_hidden": True, "readout": "sum", "num_angle_bin": 8,
                           "edge_input_dim": 59}  # fmt: skip
        settings = graph_settings({"graphs": {"gearnet": {"sequential_max_distance": 2, "radius": 10.0, "knn_k": 10,
                                                          "min_distance": 5}}}, "gearnet")  # fmt: skip
        self.task = get_task(spec, "ec")
        self.task.bind("cpu", settings, seed)
        torch.manual_seed(seed)
        self.net = self.task.build_model(self.model_spec, 21, plm=False)
        self.optimizer = build_optimizer(self.task, self.net)
        self.loader = self.task.input_loader()
        self.count = 0

    def parse(self, paths: list[Path], records: list[dict]) -> list[dict]:
        from geoplm.structure import parse_structure

        out = []
        for path, reference in zip(paths, records, strict=True):
            (record,) = parse_structure(path, source=reference["source"])
            out.append({**record, "id": reference["id"], "labels": reference["labels"], "split": "train"})
        return out

    def order(self, count: int) -> list[int]:
        """The example order :meth:`Task.batches` will draw for the next epoch (a copy of the task's generator)."""
        rng = random.Random()
        rng.setstate(self.task.rng.getstate())
        order = list(range(count))
        rng.shuffle(order)
        return order

    def epoch(self, records: list[dict]):
        """``build_examples`` with the first batch, then the epoch loop of :func:`geoplm.train.fit`, one batch per
        ``next()``, each under :func:`geoplm.train.deterministic` as ``fit`` runs (entered per batch here, so
        that the other side's batches in between run without it)."""
        from geoplm.train import deterministic

        epoch, self.count = self.count, self.count + 1
        with deterministic():
            examples = self.task.build_examples(records, {r["id"]: "train" for r in records}, self.loader)["train"]
            if len(examples) != len(records):  # batch i must hold the same chains on both sides
                raise RuntimeError(f"{len(records) - len(examples)} records made no example")
            self.net.train()
            batches = self.task.batches(examples, BATCH_SIZE, epoch)
        for batch in batches:  # fit's epoch loop
            with deterministic():
                self.optimizer.zero_grad()
                loss, parts, weight = self.task.training_loss(self.net, batch, epoch)
                loss.backward()
                self.optimizer.step()
            yield

    def num_nodes(self, records: list[dict]) -> list[int]:
        from geoplm.graph import record_graph_inputs

        return [len(record_graph_inputs(r)[0]) for r in records]


# --- timing and profile -----------------------------------------------------------------------------------


def run_round(theirs, ours, paths, records, ours_first: bool) -> dict:
    """One round: both sides parse the chain files (one after the other), then run their epochs in lockstep,
    batch by batch (the same chains in batch i on both sides), alternating which side runs batch i first.

    Returns ``{"parse": {side: s}, "epoch": {side: s}, "steps": {side: [s per batch]}}``.
    """
    sides = (ours, theirs) if ours_first else (theirs, ours)
    parse, parsed = {}, {}
    for side in sides:
        gc.collect()  # not timed: the garbage of the previous epoch is collected before either side parses
        start = time.perf_counter()
        parsed[side.name] = side.parse(paths, records)
        parse[side.name] = time.perf_counter() - start
    gc.collect()
    order = ours.order(len(records))
    epochs = {theirs.name: theirs.epoch(parsed[theirs.name], order), ours.name: ours.epoch(parsed[ours.name])}
    total = {name: 0.0 for name in epochs}
    steps = {name: [] for name in epochs}
    step = 0
    while epochs:
        names = [side.name for side in sides if side.name in epochs]
        for name in names if step % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            try:
                next(epochs[name])
            except StopIteration:
                del epochs[name]
            else:
                steps[name].append(time.perf_counter() - start)
            total[name] += time.perf_counter() - start
        step += 1
    if len(steps[ours.name]) != len(steps[theirs.name]):
        counts = {name: len(times) for name, times in steps.items()}
        raise RuntimeError(f"different numbers of batches: {counts}")
    return {"parse": parse, "epoch": total, "steps": steps}


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f}x (range {min(values):.2f}x-{max(values):.2f}x)"


def profile_steps(name: str) -> list[tuple[str, object]]:
    """(label, function) of the steps whose cumulative time the profile of side ``name`` prints."""
    from torch.utils.data.dataloader import _BaseDataLoaderIter

    common = [("backward", torch.Tensor.backward), ("optimizer step (AdamW)", torch.optim.Adam.step)]
    if name == "torchdrug":
        from torchdrug import layers, models

        return [
            ("data loading (get_item, ProteinView, graph_collate)", _BaseDataLoaderIter.__next__),
            ("graph construction (GraphConstruction)", layers.GraphConstruction.forward),
            ("  of which edge features (edge_gearnet)", layers.GraphConstruction.edge_gearnet),
            ("GearNet-Edge forward", models.GearNet.forward),
            ("  of which line graph (SpatialLineGraph)", layers.SpatialLineGraph.forward),
            *common,
        ]
    from geoplm import graph, inputs
    from geoplm.models.gearnet import GearNet, RelationalAdjacency
    from geoplm.tasks.base import Task
    from geoplm.tasks.function import MultiLabelFunction

    return [
        ("build_examples (records -> inputs, targets)", Task.build_examples),
        ("pack (graph construction on the batch)", inputs.pack),
        ("  of which build_gearnet_graph", graph.build_gearnet_graph),
        ("GearNet-Edge forward", GearNet.forward),
        ("  of which line graph (paired_line_graph)", graph.paired_line_graph),
        ("  of which sparse adjacencies (RelationalAdjacency.blocks)", RelationalAdjacency.blocks),
        ("head + BCE (criterion)", MultiLabelFunction.criterion),
        *common,
    ]


def profile_epoch(side, ours, paths, records, top: int) -> None:
    parsed = side.parse(paths, records)
    epoch = side.epoch(parsed) if side is ours else side.epoch(parsed, ours.order(len(records)))
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    for _ in epoch:
        pass
    profiler.disable()
    print_profile(side.name, profiler, time.perf_counter() - start, profile_steps(side.name), top)


def print_profile(
    name: str, profiler: cProfile.Profile, total: float, steps: list[tuple[str, object]], top: int
) -> None:
    """One profiled epoch: the cumulative time of each ``(label, function)`` step, then the ``top`` functions by own
    time (shared by the benchmarks' ``--profile`` modes)."""
    stats = pstats.Stats(profiler)
    print(f"-- {name}: one epoch under cProfile, {total:.2f} s")
    for label, function in steps:
        code = inspect.unwrap(function).__code__
        entry = stats.stats.get((code.co_filename, code.co_firstlineno, code.co_name))
        if entry is None:
            print(f"   {label}: (not called)")
            continue
        calls, _, _, cumulative, _ = entry
        print(f"   {label}: {cumulative:.2f} s ({100 * cumulative / total:.0f}%), {calls} calls")
    buffer = io.StringIO()
    pstats.Stats(profiler, stream=buffer).sort_stats("tottime").print_stats(top)
    lines = buffer.getvalue().splitlines()
    start_line = next((i for i, line in enumerate(lines) if line.strip().startswith("ncalls")), 0)
    print("\n".join(lines[start_line:]))


def breakdown(theirs, ours, paths: list[Path], records: list[dict]) -> None:
    """Where each side's epoch goes, step by step, timed around the library calls of one more epoch (batch by
    batch, alternating the side that goes first, same chains per batch). Graph construction, line graph and
    (geoplm) the sparse adjacencies are timed once more outside the forward pass, which rebuilds them, and
    subtracted from it ("rest of the forward")."""
    from torchdrug import layers

    from geoplm.inputs import pack
    from geoplm.models.gearnet import _CHUNK_ELEMENTS, RelationalAdjacency, line_graph_adjacency
    from geoplm.train import deterministic

    dataset, parsed = theirs.parse(paths, records), ours.parse(paths, records)
    theirs.epoch(dataset, list(range(len(records)))).close()  # builds the Engine (task.preprocess) if needed
    task, net, optimizer = ours.task, ours.net, ours.optimizer
    td_task, td_optimizer = theirs.engine.model, theirs.engine.optimizer
    td_line = layers.SpatialLineGraph(8)
    # the block sizes RelationalAdjacency.linear uses, layer by layer (a new size builds the blocks anew)
    encoder = net.encoder

    def block_rows(pairs):
        return sorted({max(64, _CHUNK_ELEMENTS // max(a, b)) for a, b in pairs})

    node_rows = block_rows((layer.input_dim, layer.output_dim) for layer in encoder.layers)
    line_rows = block_rows((layer.input_dim, layer.output_dim) for layer in encoder.edge_layers)
    pairs = zip(encoder.edge_layers, encoder.layers, strict=True)
    edge_to_node_rows = block_rows((edge.output_dim, layer.output_dim) for edge, layer in pairs)
    print(f"-- block sizes (rows) of the forward's relation blocks: residue graph {node_rows}, line graph {line_rows}, "
          f"edge to residue {edge_to_node_rows}")  # fmt: skip
    times = {"torchdrug": {}, "geoplm": {}}

    def add(side, key, seconds):
        times[side][key] = times[side].get(key, 0.0) + seconds

    start = time.perf_counter()
    with deterministic():
        examples = task.build_examples(parsed, {r["id"]: "train" for r in parsed}, ours.loader)["train"]
    add("geoplm", "build_examples", time.perf_counter() - start)
    net.train()
    td_task.train()

    def torchdrug_batch(indices):
        t0 = time.perf_counter()
        batch = theirs.data.graph_collate([dataset[i] for i in indices])
        t1 = time.perf_counter()
        graph = td_task.graph_construction_model(batch["graph"])
        t2 = time.perf_counter()
        td_line(graph)
        t3 = time.perf_counter()
        loss, _ = td_task(batch)
        t4 = time.perf_counter()
        loss.backward()
        t5 = time.perf_counter()
        td_optimizer.step()
        td_optimizer.zero_grad()
        t6 = time.perf_counter()
        for key, seconds in (("data loading (get_item, graph_collate)", t1 - t0), ("graph construction", t2 - t1),
                             ("line graph", t3 - t2), ("rest of the forward (GearNet-Edge, MLP, BCE)", t4-2*t3+t1),
                             ("backward", t5 - t4), ("optimizer step", t6 - t5)):  # fmt: skip
            add("torchdrug", key, seconds)

    def geoplm_batch(batch):
        with deterministic():
            t0 = time.perf_counter()
            optimizer.zero_grad()
            packed = pack([e.proteins[0] for e in batch], task.device, task.graph_settings)
            t1 = time.perf_counter()
            _, line_adjacency, _ = line_graph_adjacency(packed.graph, 8)  # what the forward builds
            t2 = time.perf_counter()
            parts = {}
            for kind, adjacency, block_rows in (
                ("residue graph", RelationalAdjacency.from_graph(packed.graph), node_rows),
                ("line graph", getattr(line_adjacency, "pairs", line_adjacency), line_rows),  # over pairs
                ("edge to residue", RelationalAdjacency.edge_to_node(packed.graph), edge_to_node_rows),
            ):
                for rows in block_rows:
                    start = time.perf_counter()
                    adjacency.blocks(torch.float32, rows)
                    parts[f"  of which {kind}, blocks of {rows} rows"] = time.perf_counter() - start
            t3 = time.perf_counter()
            loss, _, _ = task.training_loss(net, batch, 0)  # packs again and rebuilds all of the above
            t4 = time.perf_counter()
            loss.backward()
            t5 = time.perf_counter()
            optimizer.step()
            t6 = time.perf_counter()
        for key, seconds in (("pack (graph construction)", t1 - t0), ("line graph", t2 - t1),
                             ("sparse adjacencies (RelationalAdjacency.blocks)", t3 - t2), *parts.items(),
                             ("rest of the forward (GearNet-Edge, MLP, BCE)", t4 - 2 * t3 + t0),
                             ("backward", t5 - t4), ("optimizer step", t6 - t5)):  # fmt: skip
            add("geoplm", key, seconds)

    order = ours.order(len(examples))
    for step, first in enumerate(range(0, len(order), BATCH_SIZE)):
        indices = order[first : first + BATCH_SIZE]
        calls = [(torchdrug_batch, indices), (geoplm_batch, [examples[i] for i in indices])]
        for call, argument in calls if step % 2 == 0 else calls[::-1]:
            call(argument)
    print("-- breakdown of one epoch (seconds, share of the side's epoch)")
    for side, parts in times.items():
        total = sum(seconds for key, seconds in parts.items() if not key.startswith(" "))
        print(f"   {side}: {total:.2f} s")
        for key, seconds in parts.items():
            print(f"     {key}: {seconds:.2f} s ({100 * seconds / total:.0f}%)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DATA, type=Path, help="the mirror ($GEOPLM_TEST_DATA, ../shared/data)")
    parser.add_argument("--rounds", default=5, type=int)
    parser.add_argument("--chains", default=16, type=int, help="use N of the chains, evenly spaced (0: all 56)")
    parser.add_argument("--hidden-dim", default=128, type=int)
    parser.add_argument("--num-layers", default=4, type=int)
    parser.add_argument("--threads", default=2, type=int)
    parser.add_argument("--profile", default=0, type=int, help="then profile one epoch per side, top N functions")
    parser.add_argument("--breakdown", action="store_true", help="then time the steps of one epoch per side")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import_task_layer()
    hidden_dims = [args.hidden_dim] * args.num_layers

    import warnings

    warnings.filterwarnings("ignore", message="Unknown (residue|value)")  # torchdrug on TPO: glycine, as always
    warnings.filterwarnings("ignore", message="Using torch.cross without specifying the dim")  # torchdrug
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True")  # torchdrug's meter

    for line in machine_facts(args.threads):
        print(line)
    logging.getLogger("geoplm").setLevel(logging.ERROR)  # the reader's notes on the mirror's files
    with tempfile.TemporaryDirectory(prefix="bench_ec_epoch_") as folder:
        return benchmark(args, hidden_dims, Path(folder))


def benchmark(args, hidden_dims: list[int], folder: Path) -> int:
    """Everything after the machine facts (``main``), with the chain files written to ``folder``."""
    records = ec_training_records(args.data)
    paths = [write_chain_file(r, args.data, folder) for r in records]
    readable = [i for i, p in enumerate(paths) if rdkit_reads(p)]
    skipped = [records[i]["id"] for i in range(len(records)) if i not in set(readable)]
    chosen = evenly_spaced(readable, args.chains)
    records, paths = [records[i] for i in chosen], [paths[i] for i in chosen]

    ours, theirs = GeoplmSide(hidden_dims), TorchdrugSide(hidden_dims)
    parsed = ours.parse(paths, records)
    nodes = ours.num_nodes(parsed)
    if nodes != theirs.num_nodes(theirs.parse(paths, records)):
        raise SystemExit("the two sides read different residues")
    for mine, reference in zip(parsed, records, strict=True):
        same = mine["sequence"] == reference["sequence"] and torch.equal(
            mine["backbone"].nan_to_num(), reference["backbone"].nan_to_num()
        )
        if not same:
            raise SystemExit(f"{reference['id']}: the chain file does not give the reader's record")
    params = {side.name: sum(p.numel() for p in net.parameters())
              for side, net in ((ours, ours.net), (theirs, theirs.task))}  # fmt: skip
    print(
        f"chains: {len(records)} EC training chains ({sum(nodes)} residues with a Cα, {min(nodes)}-{max(nodes)}), "
        f"{len(skipped)} left out (RDKit cannot read them: {', '.join(skipped)}); "
        f"{-(-len(records) // BATCH_SIZE)} batches of {BATCH_SIZE}"
    )
    print(f"model: GearNet-Edge {hidden_dims} + 3-layer MLP to {NUM_CLASSES}, AdamW lr {LR}; parameters "
          f"torchdrug {params['torchdrug']:,}, geoplm {params['geoplm']:,}")  # fmt: skip

    run_round(theirs, ours, paths[:WARMUP_CHAINS], records[:WARMUP_CHAINS], False)  # warm-up, not timed

    n = len(records)
    results = []
    for i in range(args.rounds):
        result = run_round(theirs, ours, paths, records, ours_first=i % 2 == 1)
        results.append(result)
        (p_td, p_ours), (e_td, e_ours) = ((result[k]["torchdrug"], result[k]["geoplm"]) for k in ("parse", "epoch"))
        print(f"round {i + 1}: epoch torchdrug {e_td:.2f} s ({n / e_td:.2f} proteins/s), geoplm {e_ours:.2f} s "
              f"({n / e_ours:.2f} proteins/s), ratio {e_td / e_ours:.2f}x; parse torchdrug {p_td:.2f} s, "
              f"geoplm {p_ours:.2f} s, ratio {p_td / p_ours:.2f}x; parse + epoch ratio "
              f"{(p_td + e_td) / (p_ours + e_ours):.2f}x; load {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip

    def ratios(key):
        return [r[key]["torchdrug"] / r[key]["geoplm"] for r in results]

    for name in ("torchdrug", "geoplm"):
        epoch = statistics.median(r["epoch"][name] for r in results)
        total = statistics.median(r["epoch"][name] + r["parse"][name] for r in results)
        print(f"{name}: epoch median {epoch:.2f} s = {n / epoch:.2f} proteins/s; parse + epoch median {total:.2f} s "
              f"= {n / total:.2f} proteins/s")  # fmt: skip
    epoch_ratios, parse_ratios = ratios("epoch"), ratios("parse")
    total_ratios = [(r["epoch"]["torchdrug"] + r["parse"]["torchdrug"]) / (r["epoch"]["geoplm"] + r["parse"]["geoplm"])
                    for r in results]  # fmt: skip
    batch_ratios = [a / b for r in results for a, b in zip(r["steps"]["torchdrug"], r["steps"]["geoplm"], strict=True)]
    print(f"epoch ratio (torchdrug / geoplm time = geoplm / torchdrug proteins/s): {summary(epoch_ratios)}; "
          f"rounds {', '.join(f'{r:.2f}' for r in epoch_ratios)}")  # fmt: skip
    print(f"per-batch ratio (same chains, run back to back): {summary(batch_ratios)} over {len(batch_ratios)} batches")
    print(f"parse ratio: {summary(parse_ratios)}; parse + epoch ratio: {summary(total_ratios)}")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    if args.breakdown:
        breakdown(theirs, ours, paths, records)
    if args.profile:
        for side in (theirs, ours):
            profile_epoch(side, ours, paths, records, args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
