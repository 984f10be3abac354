"""What a benchmark ran on, printed with its figures so that a number can be traced: CPU model, cores and load,
threads and OpenMP settings, the torch build (BLAS, parallel backend), library versions, the geoplm commit."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
#: OpenMP settings that change CPU timings (waiting threads spin or sleep)
OPENMP_VARIABLES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def machine_facts(threads: int) -> list[str]:
    """CPU model and cores, load, thread count, torch build, library versions, git commit."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"torch": torch.__version__}
    for name in ("torchdrug", "torch_cluster", "torch_scatter", "rdkit", "numba", "Bio"):
        try:
            versions[name] = str(__import__(name).__version__)
        except (ImportError, AttributeError):
            versions[name] = "absent"
    config = torch.__config__.show()
    blas = next((part.split("=", 1)[1] for part in config.replace("\n", ",").split(",") if "BLAS_INFO" in part), "?")
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
        commit += " (uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return [
        f"CPU: {cpu}, {os.cpu_count()} logical cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"threads: torch {torch.get_num_threads()} (--threads {threads}), interop {torch.get_num_interop_threads()}; "
        + ", ".join(f"{k}={os.environ.get(k, 'unset')}" for k in OPENMP_VARIABLES),
        f"torch build: {torch.__version__} (git {torch.version.git_version[:10]}), BLAS {blas}, "
        "parallel: "
        + "; ".join(
            line.strip()
            for line in torch.__config__.parallel_info().splitlines()
            if line.startswith(("OpenMP", "ATen parallel backend", "Intel(R) oneAPI"))
        ),
        "versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + f", python {platform.python_version()}",
        f"geoplm commit: {commit}",
    ]
