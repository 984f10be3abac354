"""Data-parallel training with PyTorch ``DistributedDataParallel`` (DDP): one process per GPU under ``torchrun``
inside one Snakemake job, the same code on 1 or N processes.

The reference is torchdrug 0.2.1's ``core.Engine`` (``torchdrug/core/engine.py``), which GearNet's
``script/downstream.py`` and ``script/pretrain.py`` drive under ``python -m torch.distributed.launch``:

* ``Engine.__init__``: ``comm.init_process_group("nccl" on GPUs, else "gloo", init_method="env://")``; with more
  than one process the task is converted with ``nn.SyncBatchNorm.convert_sync_batchnorm``;
* ``Engine.train``: ``DistributedDataParallel(task, find_unused_parameters=True)``; each process reads its part
  of the data through a ``DistributedSampler`` with ``batch_size`` items *per process* (the global batch is
  ``batch_size x processes``); the logged metrics are averaged over the processes (``comm.reduce(metric,
  op="mean")``);
* ``Engine.evaluate``: each process predicts its ``DistributedSampler`` part of the split and ``comm.cat``
  gathers the predictions -- the sampler pads the split to a multiple of the process count, so up to
  ``processes - 1`` examples are counted twice;
* ``Engine.save``: process 0 writes, then ``comm.synchronize()``;
* the scripts seed ``torch.manual_seed(args.seed + comm.get_rank())``.

Here (:func:`geoplm.train.fit`):

* a task's ``batch_size`` is the **global** batch: every process makes the same shuffled batches (the run's
  generator, synchronised from process 0 each epoch) and computes the loss on its contiguous part of each batch
  (:func:`shard`); each part's loss is scaled by ``part size x processes / batch size`` so that DDP's gradient
  average is the gradient of the whole batch's loss (exact for a loss that is a mean over the batch's examples;
  a mean over residues is weighted by examples, as torchdrug weights each process equally). A run on N
  processes therefore follows the one-process run on the same batch size (to float rounding) -- to reproduce a
  torchdrug config of ``batch_size`` b on g GPUs, set ``batch_size`` to b x g;
* the loss is computed inside DDP's forward (:class:`LossClosure`): tasks call ``model.encoder`` and
  ``model.head`` themselves, which would bypass DDP's gradient synchronisation;
* a process whose part of a batch is empty (the last batch of an epoch smaller than the process count) runs
  the batch's first example with its loss times 0, so that it still takes part in the gradient all-reduce;
* evaluation: whole evaluation batches are dealt round robin to the processes and gathered to all of them
  (:func:`gather`) in the one-process order, every example exactly once (no padding), and the metrics are
  computed once on the gathered split;
* batch norm: converted to ``SyncBatchNorm`` on CUDA, as the reference does; torch's ``SyncBatchNorm`` runs on
  GPUs only (it raises on CPU tensors), so on CPU (gloo) batch norm keeps per-process statistics and such a
  model does not follow the one-process run (a warning says so);
* process 0 writes the metrics, weights and resume files; every process reads the resume file; every
  process's torch generator state goes into the resume file (processes > 0 are seeded ``seed + rank`` as the
  reference's scripts do), so a resumed run continues exactly.

Launching (:func:`launch`): a Snakemake job (``resources: gpu=N``) calls its work through :func:`launch`; with N
> 1 processes the work is re-executed under ``python -m torch.distributed.run --standalone
--nproc_per_node=N -m geoplm.distributed <arguments file>`` (:func:`main`), its output streamed into the job's
log, and process 0's return value handed back.
"""

from __future__ import annotations

import collections
import importlib
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from geoplm.errors import GeoplmError

log = logging.getLogger(__name__)

#: environment variable: the number of processes a job launches whatever its device and ``resources.gpu``
#: (e.g. 2 CPU processes on gloo, for a test)
PROCESSES_ENV = "GEOPLM_PROCESSES"


def world() -> tuple[int, int]:
    """``(rank, world size)`` of the running process group; ``(0, 1)`` when there is none (one process)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this is process 0 (the one that writes files), or the only process."""
    return world()[0] == 0


def local_rank() -> int:
    """This process's rank on its machine (torchrun's ``LOCAL_RANK``; 0 outside torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def init(device: str | torch.device) -> str:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``)
    when ``WORLD_SIZE`` > 1 and no group exists yet: nccl on CUDA (the process's GPU is ``LOCAL_RANK``), gloo on
    CPU (torchdrug ``core.Engine.__init__``).

    Returns:
        The device this process computes on: ``cuda:<LOCAL_RANK>`` for a CUDA device in a group of several
        processes, else ``device`` unchanged.

    Raises:
        GeoplmError: a CUDA run with fewer visible GPUs than ``LOCAL_RANK`` + 1.
    """
    device = str(device)
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 and not dist.is_initialized():
        return device
    cuda = device.startswith("cuda")
    if cuda:
        index = local_rank()
        if index >= torch.cuda.device_count():
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            raise GeoplmError(
                f"process {os.environ.get('RANK')} (local rank {index}) needs GPU {index}, but only "
                f"{torch.cuda.device_count()} are visible (CUDA_VISIBLE_DEVICES={visible})"
            )
        torch.cuda.set_device(index)
        device = f"cuda:{index}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", init_method="env://")
        log.info("process %d of %d joined the %s process group", dist.get_rank(), dist.get_world_size(),
                 dist.get_backend())  # fmt: skip
    return device


def shard_bounds(size: int, world_size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each process's contiguous part of ``size`` items: sizes differ by at most one, the
    first processes taking the extra items (so process 0's part is never empty)."""
    base, extra = divmod(int(size), int(world_size))
    bounds, start = [], 0
    for rank in range(world_size):
        stop = start + base + (1 if rank < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def shard(batch: Sequence, rank: int, world_size: int) -> list:
    """Process ``rank``'s contiguous part of a global batch (:func:`shard_bounds`); the parts of all processes,
    in rank order, make up the batch."""
    start, stop = shard_bounds(len(batch), world_size)[rank]
    return list(batch[start:stop])


def gather(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order, on every process (``all_gather_object``); ``[obj]`` alone."""
    rank, size = world()
    if size == 1:
        return [obj]
    out: list[Any] = [None] * size
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any, src: int = 0) -> Any:
    """Process ``src``'s ``obj`` on every process (``broadcast_object_list``); ``obj`` itself alone."""
    if world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    """Wait for every process (``Engine.save``'s ``comm.synchronize()``); nothing alone."""
    if world()[1] > 1:
        dist.barrier()


class LossClosure(nn.Module):
    """A module whose forward runs ``compute(model)``: the tasks compute their losses by calling the model's parts
    (``model.encoder``, ``model.head``), so the loss is computed inside DDP's forward through this wrapper, and
    DDP sees (and synchronises the gradients of) every parameter it used."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, compute: Callable[[nn.Module], Any]) -> Any:
        return compute(self.model)


def sync_batch_norm(model: nn.Module, device: str | torch.device) -> nn.Module:
    """In a group of several processes, the model with its batch norm layers converted to ``SyncBatchNorm`` on
    CUDA (torchdrug ``Engine.__init__``; the parameters and buffers are the same objects, the state dict keys
    unchanged); on CPU the model unchanged, with a warning when it has batch norm (``SyncBatchNorm`` raises on CPU
    tensors: statistics stay per process, and the run does not follow a one-process run)."""
    if world()[1] == 1:
        return model
    norms = [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return model
    if str(device).startswith("cuda"):
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if is_main():
        log.warning(
            "%d batch norm layers (%s, ...) keep per-process statistics: torch's SyncBatchNorm needs CUDA, so this "
            "CPU run on %d processes does not follow a one-process run", len(norms), norms[0], world()[1],
        )  # fmt: skip
    return model


def data_parallel(model: nn.Module, device: str | torch.device) -> nn.Module:
    """``DistributedDataParallel(LossClosure(model), find_unused_parameters=True)`` (torchdrug ``Engine.train``;
    ``device_ids`` the process's GPU on CUDA); calling it with ``compute`` runs ``compute(model)``. DDP broadcasts
    process 0's parameters and buffers when it is built."""
    wrapper = LossClosure(model)
    if str(device).startswith("cuda"):
        index = torch.device(device).index
        return nn.parallel.DistributedDataParallel(wrapper, device_ids=[index if index is not None else local_rank()],
                                                   find_unused_parameters=True)  # fmt: skip
    return nn.parallel.DistributedDataParallel(wrapper, find_unused_parameters=True)


# --- launching -------------------------------------------------------------------------------------------------


def processes(requested: int | None, device: str) -> int:
    """How many processes a job runs: ``$GEOPLM_PROCESSES`` when set (any device: e.g. 2 CPU processes on gloo);
    else on CUDA the ``requested`` GPUs (a Snakemake job's ``resources.gpu``), at most as many as are visible
    (with a warning when fewer); else 1.

    Raises:
        GeoplmError: ``$GEOPLM_PROCESSES`` is not a positive integer.
    """
    forced = os.environ.get(PROCESSES_ENV)
    if forced:
        try:
            count = int(forced)
            if count < 1:
                raise ValueError(forced)
        except ValueError:
            raise GeoplmError(f"${PROCESSES_ENV}={forced!r}: not a positive number of processes") from None
        return count
    requested = int(requested or 1)
    if requested <= 1 or not str(device).startswith("cuda"):
        return 1
    visible = torch.cuda.device_count()
    if visible < requested:
        log.warning("%d GPUs requested but %d visible: training on %d processes", requested, visible, max(visible, 1))
    return max(1, min(requested, visible))


def _resolve(target: str) -> Callable:
    """The function a dotted name (``package.module.function`` or ``package.module:function``) names.

    Raises:
        GeoplmError: no such module or function.
    """
    module_name, _, name = target.replace(":", ".").rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise GeoplmError(f"cannot launch {target!r}: {error}") from error


def _plain(obj: Any) -> Any:
    """``obj`` with str subclasses (Snakemake's file names), mappings, lists and tuples made plain, so that the
    workers unpickle it without the caller's classes."""
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, Mapping):
        return {_plain(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_plain(v) for v in obj) if type(obj) in (list, tuple) else [_plain(v) for v in obj]
    return obj


def launch(target: str, kwargs: Mapping[str, Any], nproc: int = 1, tail: int = 40) -> Any:
    """Run ``target(**kwargs)`` on ``nproc`` data-parallel processes and return process 0's result.

    With ``nproc`` <= 1, or inside a process group already (a job started under torchrun), the function is called
    here. Otherwise the arguments are pickled to a temporary folder and the work re-executed under
    ``python -m torch.distributed.run --standalone --nproc_per_node=<nproc> -m geoplm.distributed <file>``
    (:func:`main`; the workers see this interpreter's ``sys.path``; str subclasses such as Snakemake's file names
    are passed as plain strings, mappings as dicts); the workers' output (process 0 at INFO, the
    others' warnings) is logged here line by line, and the folder removed afterwards.

    Args:
        target: the function's dotted name (``geoplm.train.train_run``); importable by the workers.
        kwargs: its keyword arguments (picklable).
        nproc: the number of processes (:func:`processes`).
        tail: how many of the workers' last output lines a failure message quotes.

    Raises:
        GeoplmError: the target cannot be imported, or the workers failed (exit status and their last lines).
    """
    function = _resolve(target)
    if nproc <= 1 or world()[1] > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return function(**kwargs)
    folder = Path(tempfile.mkdtemp(prefix="geoplm-torchrun-"))
    try:
        arguments = folder / "arguments.pkl"
        with open(arguments, "wb") as handle:
            job = {"target": target, "kwargs": _plain(dict(kwargs)), "result": str(folder / "result.pkl")}
            pickle.dump(job, handle)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={int(nproc)}",
                   "-m", "geoplm.distributed", str(arguments)]  # fmt: skip
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in [*sys.path, env.get("PYTHONPATH", "")] if p)
        env.pop(PROCESSES_ENV, None)
        log.info("launching %s on %d processes: %s", target, nproc, " ".join(command))
        last: collections.deque[str] = collections.deque(maxlen=tail)
        failures: list[str] = []  # the workers' own error lines (main)
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as run:
            assert run.stdout is not None
            for line in run.stdout:
                line = line.rstrip("\n")
                last.append(line)
                if f" {FAILED} " in line and len(failures) < 10:
                    failures.append(line.split(f" {FAILED} ", 1)[1])
                log.info("%s", line)
            status = run.wait()
        if status != 0:
            raise GeoplmError(
                f"{target} on {nproc} processes (torchrun) failed with exit status {status}: "
                + ("; ".join(failures) or "no worker error reported")
                + "; the last lines:\n"
                + "\n".join(last)
            )
        with open(folder / "result.pkl", "rb") as handle:
            return pickle.load(handle)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def launch_job(target: str, kwargs: Mapping[str, Any], device: str, gpus: int | None, threads: int) -> Any:
    """A Snakemake job's run of ``target`` on its resources (rules ``train_model``, ``pretrain_model``): on
    :func:`processes` ``(gpus, device)`` processes (:func:`launch`), with ``device`` and the job's ``threads``
    shared among them (at least one each) added to ``kwargs`` as ``device=`` and ``threads=``.

    Raises:
        GeoplmError: as :func:`processes` and :func:`launch`.
    """
    nproc = processes(gpus, device)
    return launch(target, {**kwargs, "device": device, "threads": max(1, threads // nproc)}, nproc)


#: what a worker's log line of its own failure says (:func:`main`; quoted by :func:`launch`)
FAILED = "WORKER FAILED"


def main(argv: Sequence[str] | None = None) -> int:
    """A torchrun worker (:func:`launch`): read the arguments file, log to stderr (process 0 at INFO, the others
    warnings only, each line naming its rank), call the target, write process 0's result next to the arguments,
    leave the process group. A failure is logged (``WORKER FAILED rank <r>: <error>``, quoted by :func:`launch`)
    and raised: torchrun's ``record`` puts its traceback in the failure summary and stops the other processes.

    Raises:
        GeoplmError: no arguments file given.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        raise GeoplmError("usage: python -m geoplm.distributed <arguments file written by geoplm.distributed.launch>")
    with open(argv[0], "rb") as handle:
        job = pickle.load(handle)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s rank {rank} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    try:
        result = _resolve(job["target"])(**job["kwargs"])
    except BaseException as error:  # logged for launch's message; exiting non-zero makes torchrun stop the others
        log.error("%s rank %d: %s: %s", FAILED, rank, type(error).__name__, error)
        raise
    if is_main():
        partial = job["result"] + ".part"
        with open(partial, "wb") as handle:
            pickle.dump(result, handle)
        os.replace(partial, job["result"])
    if dist.is_available() and dist.is_initialized():
        barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    from torch.distributed.elastic.multiprocessing.errors import record

    sys.exit(record(main)())
