"""The one training loop: every task of :mod:`geoplm.tasks`, docking included, is trained by :func:`fit`.

:func:`run` (the ``train_model`` rule, ``geoplm train``) reads a dataset's records, its manifest's splits and
the stored inputs (ESM-2 rows, cached graphs), lets the task make its examples, and calls :func:`fit`.

:func:`fit` is one run, seeded and deterministic (:func:`deterministic`):

1. the task learns what it needs from the training split (:meth:`~geoplm.tasks.base.Task.prepare`), the model
   is built (the zoo's encoder with the task's head, or the task's own model), and the optimizer (``adam``,
   ``adamw``, ``sgd``; ESM-2 parameters inside the model at ``esm_lr_ratio`` times the learning rate:
   :func:`geoplm.models.fusion.param_groups`) and scheduler (``plateau``: ``ReduceLROnPlateau`` stepped with
   the validation value of the selection metric after each evaluation; ``step``: ``StepLR`` stepped after
   every epoch) from the task's settings;
2. each epoch trains on shuffled batches (gradient-norm clipping when ``clip`` is set); every
   ``eval_interval`` epochs (and after the last) the validation split is evaluated as a whole
   (:meth:`~geoplm.tasks.base.Task.eval_batch` gathered, :meth:`~geoplm.tasks.base.Task.evaluate` once) and the
   selection metric decides whether this is the best epoch so far (``mode`` min or max, optionally by a
   relative margin); training stops early after ``patience`` evaluations without a new best;
3. the state after every epoch goes to ``<checkpoint>.resume.pt``; a rerun with the same settings continues
   from it, a rerun with other settings starts over; it is removed once the metrics are written;
4. the validation and test splits are evaluated with the weights of the best epoch (``test_weights: best``)
   or the last one; ``metrics.json`` holds each split's metrics (``splits``; ``test`` and ``valid`` for the
   first test split and the validation split), the per-epoch ``history``, the best epoch and the task's
   report; ``model.pt`` the weights (``encoder.*``, ``head.*``), the settings and the task's state (e.g. a
   regression's target normalisation), written once, atomically.

Under ``torchrun`` the same loop is data-parallel (``DistributedDataParallel``, torchdrug ``core.Engine``'s
scheme with ``batch_size`` as the global batch and evaluation gathered without padding): see
:mod:`geoplm.distributed`; a Snakemake job with ``resources: gpu=N`` starts it through
:func:`geoplm.distributed.launch`.

The references' loops this reproduces, per task family, are cited in :mod:`geoplm.tasks`: GGNN_Meets_PLM
``main.py`` (Wu et al.), GearNet / ESM-GearNet ``script/downstream.py`` with torchdrug's ``core.Engine``,
equidock_public ``src/train.py``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import pickle
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from geoplm import atomic, distributed, inputs
from geoplm.config import finetunes_esm
from geoplm.errors import GeoplmError
from geoplm.tasks import get_task
from geoplm.tasks.base import OPTIMIZERS, Task

log = logging.getLogger(__name__)


def settings_hash(*objects) -> str:
    """A short digest of a run's settings: a resume file written under other settings is ignored."""
    return hashlib.sha256(json.dumps(objects, sort_keys=True, default=str).encode()).hexdigest()[:16]


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """PyTorch's deterministic algorithms on (warn only) for the duration; the previous settings are
    restored afterwards. Multi-threaded CPU kernels otherwise sum in a varying order, and two runs
    with the same seed drift apart in the last digits.

    ``torch.utils.deterministic.fill_uninitialized_memory`` is switched off meanwhile: with deterministic
    algorithms on, torch otherwise fills every ``torch.empty`` with NaN, a debugging aid for code that reads
    memory it never wrote. No result here reads such memory (with the fill on, a NaN would have reached the
    tests' outputs, which compare runs bit for bit); the fill cost a few percent of a GearNet-Edge EC
    epoch (``benchmarks/bench_ec_epoch.py``)."""
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.utils.deterministic.fill_uninitialized_memory = fill


def load_resume(
    resume_path: Path,
    settings: str,
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    run_name: str = "",
    scheduler=None,
    rng: random.Random | None = None,
) -> dict | None:
    """Restore a run from its per-epoch resume file when it was written with the same ``settings``:
    weights, optimizer (and scheduler, Python RNG) and torch RNG state; return the loop state saved
    with it, or None (no file, or other settings: training starts over).

    A resume file that cannot be read or does not fit the run (truncated, damaged, missing keys, weights of
    other shapes) is set aside as ``<file>.unreadable`` with a warning naming both, everything it may have
    changed is put back, and None is returned: training starts over and gives the uninterrupted run's result.
    """
    if not resume_path.exists():
        return None
    try:
        saved = torch.load(resume_path, map_location="cpu", weights_only=True)
        if not isinstance(saved, dict):
            raise TypeError(f"a {type(saved).__name__}, not a resume dictionary")
    except Exception as error:  # truncated zip, unpickling errors, ...: any unreadable file
        _set_aside(resume_path, f"cannot be read ({type(error).__name__}: {error})")
        return None
    if saved.get("settings") != settings:
        log.info("ignoring %s: written with other settings", resume_path)
        return None
    before = (
        copy.deepcopy(net.state_dict()),
        copy.deepcopy(optimizer.state_dict()),
        None if scheduler is None else copy.deepcopy(scheduler.state_dict()),
        None if rng is None else rng.getstate(),
        torch.get_rng_state(),
    )
    try:
        net.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None and saved.get("scheduler") is not None:
            scheduler.load_state_dict(saved["scheduler"])
        if rng is not None and saved.get("rng") is not None:
            rng.setstate(saved["rng"])
        torch.set_rng_state(saved["torch_rng"])
        state = saved["state"]
        epoch = int(state["epoch"])
    except Exception as error:  # missing keys, other shapes, a damaged state
        net.load_state_dict(before[0])
        optimizer.load_state_dict(before[1])
        if scheduler is not None:
            scheduler.load_state_dict(before[2])
        if rng is not None:
            rng.setstate(before[3])
        torch.set_rng_state(before[4])
        _set_aside(resume_path, f"does not fit this run ({type(error).__name__}: {error})")
        return None
    log.info("resuming %s after epoch %d", run_name, epoch)
    return state


def _set_aside(resume_path: Path, reason: str) -> None:
    """Move an unusable resume file to ``<file>.unreadable`` (replacing an older one) and warn."""
    aside = resume_path.with_name(resume_path.name + ".unreadable")
    os.replace(resume_path, aside)
    log.warning("resume file %s %s; moved to %s, training starts over", resume_path, reason, aside)


def build_optimizer(task: Task, net: nn.Module, esm_lr_ratio: float = 0.1) -> torch.optim.Optimizer:
    """The task's optimizer (:data:`geoplm.tasks.base.OPTIMIZERS`: ``adam``, ``adamw``, ``sgd``) over the model's
    trainable parameters, ESM-2 parameters at ``esm_lr_ratio`` x ``lr``.

    Its multi-tensor (``foreach``) implementation on every device: the same arithmetic, step for step, as the
    per-parameter loop torch picks by default on the CPU (``tests/test_train.py``), in a tenth of the calls (torch's
    ``fused`` Adam is not: it rounds differently)."""
    from geoplm.models.fusion import param_groups

    s = task.settings
    lr = float(s["lr"])
    options: dict[str, Any] = {"lr": lr, "weight_decay": float(s["weight_decay"]), "foreach": True}
    if s["optimizer"] == "sgd":
        options["momentum"] = float(s["momentum"])
    return OPTIMIZERS[s["optimizer"]](param_groups(net, lr, esm_lr_ratio), **options)


#: scheduler ``type`` -> (torch class, stepped after every epoch (True) or after each evaluation (False))
SCHEDULERS = {
    "plateau": (torch.optim.lr_scheduler.ReduceLROnPlateau, False),
    "step": (torch.optim.lr_scheduler.StepLR, True),
}


def build_scheduler(task: Task, optimizer: torch.optim.Optimizer):
    """The task's learning-rate scheduler (:data:`SCHEDULERS`), or None.

    Raises:
        GeoplmError: an unknown scheduler type.
    """
    spec = dict(task.settings.get("scheduler") or {})
    if not spec:
        return None
    kind = spec.pop("type", "plateau")
    if kind not in SCHEDULERS:
        raise GeoplmError(f"tasks.{task.name}.scheduler.type: {kind!r} is not one of {', '.join(SCHEDULERS)}")
    return SCHEDULERS[kind][0](optimizer, **spec)


def _gather(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate what :meth:`Task.eval_batch` returned per batch: tensors along dim 0, lists extended."""
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            out.setdefault(key, []).append(value)
    return {
        key: torch.cat(values) if isinstance(values[0], Tensor) else [v for value in values for v in value]
        for key, values in out.items()
    }


def evaluate_split(task: Task, net: nn.Module, examples: Sequence) -> tuple[dict[str, float], dict[str, Any]]:
    """The metrics of a whole split (computed once on everything gathered; ``loss`` = summed loss / count) and
    the gathered outputs.

    In a group of several processes (:mod:`geoplm.distributed`) every process must call it: the evaluation
    batches are dealt round robin to the processes, and what each returns is gathered to all of them in batch
    order -- the one-process order, every example once (torchdrug ``Engine.evaluate`` pads its
    ``DistributedSampler`` instead, counting up to ``processes - 1`` examples twice)."""
    net.eval()
    rank, world_size = distributed.world()
    batches = task.batches(examples, int(task.settings["batch_size"]), None)
    mine = []
    with torch.no_grad():
        for index in range(rank, len(batches), world_size):
            mine.append((index, *task.eval_batch(net, batches[index])))
    done = sorted((item for part in distributed.gather(mine) for item in part), key=lambda item: item[0])
    parts, loss_sum, count = [], 0.0, 0.0
    for _, gathered, batch_loss, batch_count in done:
        parts.append(gathered)
        loss_sum += batch_loss
        count += batch_count
    gathered = _gather(parts)
    metrics = {"loss": loss_sum / max(count, 1.0), **task.evaluate(gathered)}
    return metrics, gathered


def _improved(value: float, best: float, selection: Mapping) -> bool:
    margin = float(selection.get("relative_improvement", 0.0))
    if math.isnan(value):
        return False
    if selection["mode"] == "min":
        return value < best * (1.0 - margin) if math.isfinite(best) else value < best
    return value > best * (1.0 + margin) if math.isfinite(best) else value > best


def fit(
    task: Task,
    model: Mapping,
    splits: Mapping[str, Sequence],
    seed: int,
    metrics_path: str | os.PathLike = "metrics.json",
    checkpoint_path: str | os.PathLike = "model.pt",
    run_name: str = "",
    device: str = "cpu",
    threads: int | None = None,
    input_dim: int | None = None,
    plm: bool = False,
    esm=None,
    graph_settings: Mapping | None = None,
    extra_settings: Any = None,
    model_name: str = "model",
    init: tuple[str, Any] | None = None,
    encoder_path: str | os.PathLike | None = None,
) -> dict:
    """Train one run of ``task`` on prepared examples and write its metrics (JSON) and weights (see the module
    docstring), with PyTorch's deterministic algorithms on.

    Args:
        task: the task object (:func:`geoplm.tasks.get_task`).
        model: the ``models`` config entry.
        splits: ``{split: [examples]}`` from the task's ``build_examples`` (every split of ``task.splits``).
        seed: seeds Python, NumPy and torch, and the task's batch order.
        input_dim: the node input width (21 one-hot, the ESM-2 width with stored embeddings).
        plm: whether the node input is ESM-2 (stored or in the model).
        esm: ``(model, alphabet, settings)`` of an ESM-2 fine-tuned inside the model.
        graph_settings: the model's graph (:func:`geoplm.config.graph_settings`).
        extra_settings: anything else that changes the run (hashed into the resume settings).
        model_name: the ``models`` entry's name, for messages.
        init: ``(source, weights)``: start from these weights (a state dict of the whole model, or of its
            ``encoder.*`` part only) instead of the seeded initialisation -- fine-tuning after a pretraining run
            (:func:`load_init`); ``source`` names it in messages and in ``metrics.json`` (``initialised_from``).
        encoder_path: also write the encoder's ``state_dict`` alone here (a pretraining run's output,
            ``encoder.pt``; keys as the references save an encoder, e.g. GearNet's ``layers.*``).

    A task without a ``valid`` split (a pretraining task, :mod:`geoplm.pretraining`) trains every epoch without
    evaluation, ends with the last weights, and may stream its training split (a
    :class:`geoplm.pretraining.base.Corpus`). Each epoch's ``history`` record has the training throughput
    (:func:`throughput`); a progress bar shows the batches on a terminal (tqdm).

    Under ``torchrun`` (``WORLD_SIZE`` > 1; :func:`geoplm.distributed.launch`) the run is data-parallel with
    ``DistributedDataParallel`` (:mod:`geoplm.distributed`): ``batch_size`` stays the global batch, each process
    computes the loss of its part of every batch, the evaluation gathers each split once to every process, the
    logged history (training losses, throughput summed over the processes) is the same on every process, and
    process 0 alone writes the files; every process returns the metrics.

    Returns:
        The metrics dictionary written to ``metrics_path``.

    Raises:
        GeoplmError: an empty split; ``init`` weights that do not fit the model (named keys and shapes); a
            ``batch_size`` smaller than the number of processes; processes that resumed from different epochs.
        ConfigError: a bad model or task setting.
    """
    run_label = run_name or "run"
    for name in task.splits:
        if not splits.get(name):
            raise GeoplmError(f"{run_label}: the {name} split is empty")
    with deterministic():
        if threads:
            torch.set_num_threads(threads)
        device = distributed.init(device)  # joins torchrun's process group (one process: nothing)
        rank, world_size = distributed.world()
        main = rank == 0
        if world_size > 1 and int(task.settings["batch_size"]) < world_size:
            raise GeoplmError(
                f"{run_label}: batch_size {task.settings['batch_size']} is the global batch and is smaller than the "
                f"{world_size} processes"
            )
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        task.bind(device, graph_settings, seed)
        task.prepare(splits["train"])
        net = task.build_model(model, input_dim, plm, esm=esm, name=model_name)
        net = distributed.sync_batch_norm(net, device).to(device)
        if init is not None:
            weights = init[1]
            if callable(weights):  # a published checkpoint, mapped onto the built encoder
                weights = {f"encoder.{k}": v for k, v in weights(net.encoder).items()}
            load_weights(net, weights, init[0], model_name)
        optimizer = build_optimizer(task, net, float(model.get("esm_lr_ratio", 0.1)))
        scheduler = build_scheduler(task, optimizer)
        per_epoch = bool(scheduler is not None and SCHEDULERS[task.settings["scheduler"].get("type", "plateau")][1])
        s, selection = task.settings, task.selection

        resume_path = Path(str(checkpoint_path) + ".resume.pt")
        identity = {name: _ids(splits[name]) for name in task.splits}
        settings = settings_hash(dict(s), dict(model), graph_settings, seed, identity, input_dim, extra_settings)
        # process 0 reads the resume file first (and sets an unusable one aside), then the others read what is left
        resumed = load_resume(resume_path, settings, net, optimizer, run_label, scheduler, task.rng) if main else None
        distributed.barrier()
        if not main:
            resumed = load_resume(resume_path, settings, net, optimizer, run_label, scheduler, task.rng)
        state = resumed or {
            "epoch": 0,
            "best_val": math.inf if selection["mode"] == "min" else -math.inf,
            "best_epoch": -1,
            "wait": 0,
            "best_state": None,
            "history": [],
        }
        ddp = None
        if world_size > 1:
            starts = distributed.gather(state["epoch"])
            if len(set(starts)) > 1:
                raise GeoplmError(f"{run_label}: the processes resumed from different epochs {starts} ({resume_path})")
            ddp = distributed.data_parallel(net, device)
            # each process's own torch generator: saved with the resume state, else seed + rank (GearNet's scripts)
            saved_rngs = state.get("rank_torch_rng")
            if resumed is not None and saved_rngs is not None and len(saved_rngs) == world_size:
                torch.set_rng_state(saved_rngs[rank])
            elif rank > 0:
                torch.manual_seed(seed + rank)

        started = time.time()
        epochs, interval = int(s["epochs"]), max(1, int(s["eval_interval"]))
        patience = s.get("patience")
        batch_size = int(s["batch_size"])
        validates = "valid" in task.splits  # pretraining tasks train only
        while state["epoch"] < epochs and (patience is None or state["wait"] < int(patience)):
            epoch = state["epoch"]
            lr = float(optimizer.param_groups[-1]["lr"])  # the base rate (ESM-2 groups come first)
            net.train()
            proteins, epoch_started = 0, time.perf_counter()
            if world_size > 1:  # the same batches on every process: process 0's generator
                task.rng.setstate(distributed.broadcast(task.rng.getstate()))
            batches = task.batches(splits["train"], batch_size, epoch)
            if rank > 0:  # the draws inside the losses (truncation windows) differ between processes
                task.rng.seed(f"{seed}/{rank}/{epoch}")
            steps: list[tuple[float, dict[str, float], float]] = []  # (fraction of the batch, parts, weight)
            bar = tqdm(batches, desc=f"{run_label} epoch {epoch}", unit="batch", disable=True if rank else None,
                       leave=False)  # fmt: skip
            for batch in bar:
                optimizer.zero_grad()
                if ddp is None:
                    proteins += len(batch)
                    loss, parts, weight = task.training_loss(net, batch, epoch)
                    loss.backward()
                    steps.append((1.0, parts, weight))
                else:
                    mine = distributed.shard(batch, rank, world_size)
                    proteins += len(mine)
                    fraction = len(mine) / len(batch)
                    # an empty part runs the batch's first example at weight 0: every process joins the all-reduce
                    work = mine or list(batch[:1])
                    loss, parts, weight = ddp(lambda m, work=work, epoch=epoch: task.training_loss(m, work, epoch))
                    # DDP averages the processes' gradients: sum_r fraction_r x grad_r, the whole batch's gradient
                    (loss * (fraction * world_size)).backward()
                    steps.append((fraction, parts, weight))
                if s.get("clip"):
                    nn.utils.clip_grad_norm_(net.parameters(), max_norm=float(s["clip"]), norm_type=2)
                optimizer.step()
            if per_epoch:
                scheduler.step()
            sums, weights = _epoch_sums(distributed.gather(steps))
            record: dict[str, Any] = {"epoch": epoch, "lr": lr}
            record.update({f"train_{k}": v / max(weights, 1.0) for k, v in sums.items()})
            record.update(_global_throughput(proteins, time.perf_counter() - epoch_started, device))
            if validates and ((epoch + 1) % interval == 0 or epoch + 1 == epochs):
                valid, _ = evaluate_split(task, net, splits["valid"])
                value = float(valid[selection["metric"]])
                record["valid_loss"] = valid["loss"]
                if selection["metric"] != "loss":
                    record[f"valid_{selection['metric']}"] = value
                if _improved(value, state["best_val"], selection):
                    state.update(
                        best_val=value,
                        best_epoch=epoch,
                        best_state={k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
                    )
                    if s["patience_resets"]:
                        state["wait"] = 0
                else:
                    state["wait"] += 1
                if scheduler is not None and not per_epoch:
                    scheduler.step(value)
            state["history"].append(record)
            log.info("%s epoch %d: %s", run_label, epoch, record)
            state["epoch"] = epoch + 1
            if world_size > 1:
                state["rank_torch_rng"] = distributed.gather(torch.get_rng_state())
            if main:
                atomic.torch_save(
                    {
                        "settings": settings,
                        "model": net.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": None if scheduler is None else scheduler.state_dict(),
                        "rng": task.rng.getstate(),
                        "torch_rng": torch.get_rng_state(),
                        "state": state,
                    },
                    resume_path,
                )

        if s["test_weights"] == "best" and state["best_state"] is not None:
            net.load_state_dict(state["best_state"])
        results, evaluations = {}, {}
        for name in ("valid", *task.test_splits) if validates else task.test_splits:
            results[name], evaluations[name] = evaluate_split(task, net, splits[name])
        test = task.test_splits[0] if task.test_splits else None
        metrics = {
            "run": run_name,
            "task_kind": s["kind"],
            "seed": seed,
            "test": results.get(test),
            "valid": results.get("valid"),
            "splits": results,
            "selection": dict(selection),
            "best_epoch": state["best_epoch"],
            "epochs_run": state["epoch"],
            "history": state["history"],
            "num_parameters": sum(p.numel() for p in net.parameters()),
            "node_input_dim": input_dim,
            "train_seconds": round(time.time() - started, 2),
            "device": str(device),
            "processes": world_size,
            "initialised_from": None if init is None else init[0],
        }
        metrics.update(task.report(splits, evaluations))
        if main:  # process 0 alone writes (torchdrug Engine.save), the others wait for it
            atomic.torch_save(
                {
                    "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                    "task": dict(s),
                    "task_state": task.state(),
                    "model_config": dict(model),
                    "input_dim": input_dim,
                },
                checkpoint_path,
            )
            if encoder_path is not None:  # the encoder's state_dict alone, as the references save a pretraining
                atomic.torch_save({k: v.detach().cpu() for k, v in net.encoder.state_dict().items()}, encoder_path)
            atomic.write_json(metrics_path, metrics)
            resume_path.unlink(missing_ok=True)
        distributed.barrier()
        log.info("%s %s: %s", run_label, test or "train", results.get(test) or state["history"][-1:])
        return metrics


def _epoch_sums(steps_by_rank: Sequence[Sequence[tuple[float, Mapping[str, float], float]]]):
    """An epoch's weighted sums of the logged loss parts and the summed weight, from every process's
    ``(fraction of the batch, parts, weight)`` per batch: a batch's part is ``sum_r fraction_r x part_r`` (the
    loss of the whole batch when the part is a mean over examples) at weight ``sum_r fraction_r x weight_r`` (one
    process: fraction 1, the batch's own part and weight)."""
    sums: dict[str, float] = {}
    weights = 0.0
    for index in range(len(steps_by_rank[0])):
        parts: dict[str, float] = {}
        weight = 0.0
        for steps in steps_by_rank:
            fraction, values, own_weight = steps[index]
            if fraction == 0.0:  # an empty part (its loss was multiplied by 0)
                continue
            for key, value in values.items():
                parts[key] = parts.get(key, 0.0) + fraction * value
            weight += fraction * own_weight
        for key, value in parts.items():
            sums[key] = sums.get(key, 0.0) + value * weight
        weights += weight
    return sums, weights


def _global_throughput(proteins: int, seconds: float, device: str | torch.device) -> dict[str, float]:
    """:func:`throughput` of the epoch over all processes: the proteins of every process over the slowest one's
    seconds, the largest peak memory."""
    own = throughput(proteins, seconds, device)
    everyone = distributed.gather((proteins, seconds, own["peak_memory_mb"]))
    if len(everyone) == 1:
        return own
    total, slowest = sum(p for p, _, _ in everyone), max(t for _, t, _ in everyone)
    return {"proteins_per_second": round(total / max(slowest, 1e-9), 3),
            "peak_memory_mb": max(m for _, _, m in everyone)}  # fmt: skip


def _file_stamp(path: str | os.PathLike | None) -> tuple | None:
    """A file's path, size and modification time: a rewritten start checkpoint (a pretraining rerun) makes a
    resume state built on the old one stale."""
    if path is None:
        return None
    stat = os.stat(path)
    return (str(path), stat.st_size, stat.st_mtime_ns)


def _ids(members) -> list[str]:
    """The example ids of a split: a list of examples, or a streamed corpus (its ``ids``, without reading it)."""
    ids = getattr(members, "ids", None)
    return list(ids) if ids is not None else [e.id for e in members]


#: the keys of an epoch's ``history`` record that time it (they differ between otherwise identical runs)
TIMING_KEYS = ("proteins_per_second", "peak_memory_mb")


def throughput(proteins: int, seconds: float, device: str | torch.device) -> dict[str, float]:
    """An epoch's training throughput: ``proteins_per_second`` and ``peak_memory_mb`` (CUDA: the peak allocated
    by torch on the device since the last reset, reset here; CPU: the process's peak resident set size)."""
    if str(device).startswith("cuda") and torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"proteins_per_second": round(proteins / max(seconds, 1e-9), 3), "peak_memory_mb": round(peak, 1)}


#: the parts of a checkpoint a run can start from (:func:`load_init`)
INIT_PARTS = ("model", "encoder", "encoder_state", "published")


def load_init(path: str | os.PathLike, part: str = "model") -> tuple[str, Any]:
    """The weights to start a run from:

    * ``"model"``: a finished run's ``model.pt``, encoder and head (fine-tuning the same task family, e.g.
      EquiDock pretrained on DIPS then trained on DB5.5, Wu et al. Table 3);
    * ``"encoder"``: its ``encoder.*`` weights only (the new task's head starts afresh);
    * ``"encoder_state"``: a pretraining run's ``encoder.pt``, the encoder's bare ``state_dict`` (as GearNet's
      ``script/pretrain.py`` saves it), loaded strictly into the encoder;
    * ``"published"``: an authors' published torchdrug checkpoint, its keys mapped onto the encoder's
      (:func:`geoplm.pretraining.published.encoder_weights`); returned as a function of the built encoder.

    Returns:
        ``(source, weights)``: ``source`` names the file and part in messages; ``weights`` a state dict with
        ``encoder.`` / ``head.`` keys, or (``published``) a function ``encoder -> encoder state dict``.

    Raises:
        GeoplmError: the file is not such a checkpoint, or ``part`` is none of :data:`INIT_PARTS`.
    """
    if part not in INIT_PARTS:
        raise GeoplmError(f"{path}: cannot start from part {part!r} of it ({', '.join(INIT_PARTS)})")
    source = f"{path} ({part})"
    if part == "published":
        from geoplm.pretraining.published import encoder_weights

        return source, lambda encoder: encoder_weights(path, encoder)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        weights = state if part == "encoder_state" else state["model"]
    except (OSError, RuntimeError, KeyError, TypeError, pickle.UnpicklingError) as error:
        kind = "pretraining run's encoder.pt" if part == "encoder_state" else "training run's model.pt"
        raise GeoplmError(f"{path}: not a {kind} ({error})") from error
    if not isinstance(weights, Mapping) or not all(isinstance(v, Tensor) for v in weights.values()):
        raise GeoplmError(f"{path}: not a state dict of tensors")
    if part == "encoder_state":
        weights = {f"encoder.{k}": v for k, v in weights.items()}
    elif part == "encoder":
        weights = {k: v for k, v in weights.items() if k.startswith("encoder.")}
    return source, weights


def load_weights(net: nn.Module, weights: Mapping[str, Tensor], source: str, model_name: str = "model") -> None:
    """Load ``weights`` into ``net``: all of its parameters and buffers, or (keys all ``encoder.*``) all of its
    encoder's.

    Raises:
        GeoplmError: keys missing or unexpected, or shapes that differ, named with ``source``.
    """
    own = net.state_dict()
    expected = (
        {k for k in own if k.startswith("encoder.")} if all(k.startswith("encoder.") for k in weights) else set(own)
    )
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    shapes = [f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}" for k in set(weights) & expected
              if weights[k].shape != own[k].shape]  # fmt: skip
    if missing or unexpected or shapes:
        raise GeoplmError(
            f"{source}: its weights do not fit model {model_name}: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"other shapes {sorted(shapes)[:5]}"
        )
    net.load_state_dict({**own, **weights})


def carve_validation(splits: dict[str, list], fraction: float, seed: int = 0) -> None:
    """Move a seeded ``fraction`` of the training examples (at least one) to the validation split, by example
    group where examples have one (a CASP target, a complex), for datasets without a validation split."""
    train = splits["train"]
    units = sorted({e.group or e.id for e in train})
    random.Random(seed).shuffle(units)
    chosen = set(units[: max(1, int(round(fraction * len(units))))])
    splits["valid"] = splits.get("valid", []) + [e for e in train if (e.group or e.id) in chosen]
    splits["train"] = [e for e in train if (e.group or e.id) not in chosen]


def run(*args, **kwargs) -> dict:
    """Train one run (see :func:`train_run`)."""
    return train_run(*args, **kwargs)


def train_run(
    task: Mapping,
    model: Mapping,
    manifest: str | os.PathLike,
    records: Sequence[str | os.PathLike],
    embedding_indexes: Sequence[str | os.PathLike],
    seed: int,
    metrics_path: str | os.PathLike = "metrics.json",
    checkpoint_path: str | os.PathLike = "model.pt",
    run_name: str = "",
    device: str = "cpu",
    threads: int | None = None,
    graphs: Sequence[str | os.PathLike] = (),
    graph_settings: Mapping | None = None,
    esm_checkpoint: str | os.PathLike | None = None,
    esm_settings: Mapping | None = None,
    task_name: str | None = None,
    model_name: str | None = None,
    init_checkpoint: str | os.PathLike | None = None,
    init_part: str = "model",
) -> dict:
    """Train one run of a ``tasks`` entry on a dataset's files and write its metrics and best weights
    (:func:`fit`); resume after an interruption.

    Args:
        task: a ``tasks`` config entry (``kind`` picks the task in :data:`geoplm.tasks.TASKS`).
        model: a ``models`` config entry.
        manifest: the dataset manifest (id, split, ...).
        records: the dataset's record shards.
        embedding_indexes: ESM-2 index TSVs (empty: residue one-hot features).
        seed: seeds Python, NumPy and torch.
        graphs: cached graph shards from ``build_graphs`` (empty: graphs built per batch).
        graph_settings: the ``graphs`` entry the model runs on (relation count, on-the-fly build).
        esm_checkpoint: the plm's fair-esm ESM-2 checkpoint, for a model that runs ESM-2 inside itself
            (``freeze_esm: false``): ESM-2 then reads each chain's sequence and is fine-tuned at
            ``esm_lr_ratio`` (0.1) times the learning rate; the stored embeddings are not used.
        esm_settings: the plm's settings (``repr_layer``, ``window``, ``stride``, ``toks_per_batch``,
            ``checksum``) for ``esm_checkpoint``.
        task_name, model_name: the ``tasks`` and ``models`` entries' names, for messages.
        init_checkpoint, init_part: start from a finished run's weights (:func:`load_init`; the workflow's
            ``pretrain`` wildcard, a ``pretrained`` config entry).

    Returns:
        The metrics dictionary written to ``metrics_path``.

    Raises:
        GeoplmError: an empty split, a missing embedding, an unknown model type, or an ESM-2 to fine-tune
            without its checkpoint. ConfigError: an unknown task kind or setting.
    """
    from geoplm.steps import read_tsv
    from geoplm.structure import load_shard

    if threads:
        torch.set_num_threads(threads)
    job = get_task(task, task_name or run_name or "task")
    frame = read_tsv(manifest)
    split_of = dict(zip(frame["id"], frame["split"], strict=True))
    esm = None
    if finetunes_esm(model):
        if esm_checkpoint is None:
            raise GeoplmError(
                f"{run_name or model}: freeze_esm: false fine-tunes ESM-2 inside the model and needs the plm's "
                "ESM-2 checkpoint (esm_checkpoint)"
            )
        from geoplm.esm import load_esm2

        esm_settings = dict(esm_settings or {})
        esm = (*load_esm2(esm_checkpoint, esm_settings.get("checksum")), esm_settings)
        embedding_indexes = ()  # the ESM inside the model replaces the stored embeddings
    loader = job.input_loader(
        embeddings=inputs.load_embedding_index(embedding_indexes) if embedding_indexes else None,
        graphs=inputs.load_graphs(graphs) if graphs else None,
        esm_inputs=esm is not None,
    )
    all_records = [record for path in records for record in load_shard(path) if record["id"] in split_of]
    splits = job.build_examples(all_records, split_of, loader)
    if job.settings.get("valid_fraction"):
        carve_validation(splits, float(job.settings["valid_fraction"]))
    log.info("%s: %s", run_name, {name: len(members) for name, members in splits.items()})
    for name in job.splits:
        if not splits.get(name):
            raise GeoplmError(
                f"{manifest}: the {name} split is empty ({sum(len(m) for m in splits.values())} usable examples "
                f"in all; splits in the manifest: {', '.join(sorted(set(split_of.values())))})"
            )
    input_dim = job.input_dim(splits["train"][0])
    return fit(
        job,
        model,
        splits,
        seed,
        metrics_path,
        checkpoint_path,
        run_name,
        device,
        threads,
        input_dim,
        plm=loader.uses_embeddings or esm is not None,
        esm=esm,
        graph_settings=graph_settings,
        extra_settings=(esm_settings, sorted(split_of.items()), _file_stamp(init_checkpoint), init_part),
        model_name=model_name or "model",
        init=None if init_checkpoint is None else load_init(init_checkpoint, init_part),
    )
