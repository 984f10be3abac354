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

from geoplm import atomic, inputs
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
    trainable parameters, ESM-2 parameters at ``esm_lr_ratio`` x ``lr``."""
    from geoplm.models.fusion import param_groups

    s = task.settings
    lr = float(s["lr"])
    options: dict[str, Any] = {"lr": lr, "weight_decay": float(s["weight_decay"])}
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
    the gathered outputs."""
    net.eval()
    parts, loss_sum, count = [], 0.0, 0.0
    with torch.no_grad():
        for batch in task.batches(examples, int(task.settings["batch_size"]), None):
            gathered, batch_loss, batch_count = task.eval_batch(net, batch)
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
    init: tuple[str, Mapping[str, Tensor]] | None = None,
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

    Returns:
        The metrics dictionary written to ``metrics_path``.

    Raises:
        GeoplmError: an empty split; ``init`` weights that do not fit the model (named keys and shapes).
        ConfigError: a bad model or task setting.
    """
    run_label = run_name or "run"
    for name in task.splits:
        if not splits.get(name):
            raise GeoplmError(f"{run_label}: the {name} split is empty")
    with deterministic():
        if threads:
            torch.set_num_threads(threads)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        task.bind(device, graph_settings, seed)
        task.prepare(splits["train"])
        net = task.build_model(model, input_dim, plm, esm=esm, name=model_name).to(device)
        if init is not None:
            load_weights(net, init[1], init[0], model_name)
        optimizer = build_optimizer(task, net, float(model.get("esm_lr_ratio", 0.1)))
        scheduler = build_scheduler(task, optimizer)
        per_epoch = bool(scheduler is not None and SCHEDULERS[task.settings["scheduler"].get("type", "plateau")][1])
        s, selection = task.settings, task.selection

        resume_path = Path(str(checkpoint_path) + ".resume.pt")
        identity = {name: [e.id for e in splits[name]] for name in task.splits}
        settings = settings_hash(dict(s), dict(model), graph_settings, seed, identity, input_dim, extra_settings)
        state = load_resume(resume_path, settings, net, optimizer, run_label, scheduler, task.rng) or {
            "epoch": 0,
            "best_val": math.inf if selection["mode"] == "min" else -math.inf,
            "best_epoch": -1,
            "wait": 0,
            "best_state": None,
            "history": [],
        }

        started = time.time()
        epochs, interval = int(s["epochs"]), max(1, int(s["eval_interval"]))
        patience = s.get("patience")
        batch_size = int(s["batch_size"])
        while state["epoch"] < epochs and (patience is None or state["wait"] < int(patience)):
            epoch = state["epoch"]
            lr = float(optimizer.param_groups[-1]["lr"])  # the base rate (ESM-2 groups come first)
            net.train()
            sums: dict[str, float] = {}
            weights = 0.0
            for batch in task.batches(splits["train"], batch_size, epoch):
                optimizer.zero_grad()
                loss, parts, weight = task.training_loss(net, batch, epoch)
                loss.backward()
                if s.get("clip"):
                    nn.utils.clip_grad_norm_(net.parameters(), max_norm=float(s["clip"]), norm_type=2)
                optimizer.step()
                for key, value in parts.items():
                    sums[key] = sums.get(key, 0.0) + value * weight
                weights += weight
            if per_epoch:
                scheduler.step()
            record: dict[str, Any] = {"epoch": epoch, "lr": lr}
            record.update({f"train_{k}": v / max(weights, 1.0) for k, v in sums.items()})
            if (epoch + 1) % interval == 0 or epoch + 1 == epochs:
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
        for name in ("valid", *task.test_splits):
            results[name], evaluations[name] = evaluate_split(task, net, splits[name])
        test = task.test_splits[0]
        metrics = {
            "run": run_name,
            "task_kind": s["kind"],
            "seed": seed,
            "test": results[test],
            "valid": results["valid"],
            "splits": results,
            "selection": dict(selection),
            "best_epoch": state["best_epoch"],
            "epochs_run": state["epoch"],
            "history": state["history"],
            "num_parameters": sum(p.numel() for p in net.parameters()),
            "node_input_dim": input_dim,
            "train_seconds": round(time.time() - started, 2),
            "device": str(device),
            "initialised_from": None if init is None else init[0],
        }
        metrics.update(task.report(splits, evaluations))
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
        atomic.write_json(metrics_path, metrics)
        resume_path.unlink(missing_ok=True)
        log.info("%s %s: %s", run_label, test, results[test])
        return metrics


def load_init(path: str | os.PathLike, part: str = "model") -> tuple[str, dict[str, Tensor]]:
    """The weights of a finished run's ``model.pt`` to start another run from: ``part`` ``"model"`` (encoder and
    head: fine-tuning the same task family, e.g. EquiDock pretrained on DIPS then trained on DB5.5, Wu et al.
    Table 3) or ``"encoder"`` (the ``encoder.*`` weights; the new task's head starts afresh).

    Raises:
        GeoplmError: the file is not a run's checkpoint, or ``part`` is neither.
    """
    if part not in ("model", "encoder"):
        raise GeoplmError(f"{path}: cannot start from part {part!r} of it (model, encoder)")
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)["model"]
    except (OSError, RuntimeError, KeyError, pickle.UnpicklingError) as error:
        raise GeoplmError(f"{path}: not a training run's model.pt ({error})") from error
    if part == "encoder":
        weights = {k: v for k, v in weights.items() if k.startswith("encoder.")}
    return f"{path} ({part})", weights


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
        extra_settings=(esm_settings, sorted(split_of.items()), str(init_checkpoint), init_part),
        model_name=model_name or "model",
        init=None if init_checkpoint is None else load_init(init_checkpoint, init_part),
    )
