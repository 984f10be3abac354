"""Run every benchmark that can run here (``make bench``); each prints its own ratios.

Benchmarks against torchdrug need its separate environment (see benchmarks/README.md) and are
skipped, with the reason, where it is absent.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TORCHDRUG_PYTHON = HERE.parents[1] / "tdenv" / "bin" / "python"
#: (title, script, options) of the benchmarks run in the torchdrug environment, with their short default runs
TORCHDRUG_BENCHMARKS = (
    ("GearNet vs torchdrug 0.2.1", "bench_gearnet.py", ()),
    ("EC fine-tuning epoch of GearNet-Edge vs torchdrug 0.2.1 (16 chains, 128 x 4)", "bench_ec_epoch.py", ()),
    (  # one thread: with two, other jobs on the two cores made its step times swing 20x (benchmarks/README.md)
        "Multiview-contrast pretraining steps vs torchdrug 0.2.1 (16 AlphaFold DB models, 128 x 4, 3 rounds)",
        "bench_pretrain.py",
        ("speed", "--proteins", "16", "--rounds", "3", "--threads", "1"),
    ),
    (  # the README's figure: 10 AlphaFold models, 128 x 4, one thread
        "Your structures to per-protein GearNet-Edge embeddings vs the TorchDrug tutorials' route (10 models, 128 x 4)",
        "bench_apply.py",
        ("--files", "10", "--hidden-dim", "128", "--num-layers", "4", "--threads", "1"),
    ),
)

#: bench_pretrain.py's memory mode here: 1x and 10x corpus of 8 models, a small GearNet-Edge (about a minute)
PRETRAIN_MEMORY_OPTIONS = ("memory", "--proteins", "8", "--scale", "10", "--hidden-dim", "32", "--num-layers", "2")

#: bench_esm.py's short run here (its defaults, the issue's 80 chains and five rounds, take about two minutes)
ESM_OPTIONS = ("--chains", "24", "--long", "1", "--rounds", "3")


def main() -> int:
    failures = 0
    print("== parsing: throughput and peak memory, 1x vs 10x")
    failures += subprocess.run([sys.executable, str(HERE / "bench_parse.py")]).returncode != 0
    print(f"== pretraining: peak memory of one epoch, 1x vs 10x corpus ({' '.join(PRETRAIN_MEMORY_OPTIONS[1:])})",
          flush=True)  # fmt: skip
    failures += (
        subprocess.run([sys.executable, str(HERE / "bench_pretrain.py"), *PRETRAIN_MEMORY_OPTIONS]).returncode != 0
    )
    print(f"== ESM-2 embeddings vs fair-esm's extract.py ({' '.join(ESM_OPTIONS)}; full run: bench_esm.py)", flush=True)
    failures += subprocess.run([sys.executable, str(HERE / "bench_esm.py"), *ESM_OPTIONS]).returncode != 0
    for title, script, options in TORCHDRUG_BENCHMARKS:
        print(f"== {title}")
        if TORCHDRUG_PYTHON.exists():
            failures += subprocess.run([str(TORCHDRUG_PYTHON), str(HERE / script), *options]).returncode != 0
        else:
            print(f"skipped: no torchdrug environment at {TORCHDRUG_PYTHON} (benchmarks/torchdrug_env.sh builds it)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
