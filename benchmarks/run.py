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
)

#: bench_esm.py's short run here (its defaults, the issue's 80 chains and five rounds, take about two minutes)
ESM_OPTIONS = ("--chains", "24", "--long", "1", "--rounds", "3")


def main() -> int:
    failures = 0
    print("== parsing: throughput and peak memory, 1x vs 10x")
    failures += subprocess.run([sys.executable, str(HERE / "bench_parse.py")]).returncode != 0
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
