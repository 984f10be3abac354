#!/usr/bin/env bash
# Build the torchdrug 0.2.1 reference environment used by benchmarks/torchdrug_reference.py and
# benchmarks/bench_gearnet.py (never by the tests or CI: they only read tests/fixtures/torchdrug_gearnet.pt).
#
# Usage:  bash benchmarks/torchdrug_env.sh [VENV_DIR]      (default VENV_DIR: /work/tdenv)
#
# Idempotent: an existing venv is reused, pip skips what is already installed, and the script exits early
# once torchdrug imports. Takes ~17 min the first time on CPU, almost all of it compiling torch-scatter and
# torch-cluster from source against the installed torch (there are no wheels for torch 2.13; MAX_JOBS=2
# keeps the compiler's memory in check). Everything is CPU-only.
#
# Pins and why:
#   torch==2.13.0           same torch as geoplm's venv, so both sides run the same kernels
#   torch-scatter/-cluster  torchdrug's hard dependencies (scatter_add, radius_graph, knn_graph);
#                           built with --no-build-isolation against that torch
#   rdkit-pypi==2022.9.5    torchdrug's Protein.from_pdb parses PDB files with RDKit
#   numpy<2, pandas<3       torchdrug 0.2.1 / this rdkit predate numpy 2
#   torchdrug==0.2.1        --no-deps (its pins would pull an old torch) and --ignore-requires-python
#   fair-esm==2.0.0         torchdrug.models imports esm (same pin as geoplm); --no-deps
#   biopython, pyyaml, scipy, numba  geoplm's own deps, so benchmarks/bench_gearnet.py can import geoplm from src/
set -euo pipefail

VENV="${1:-/work/tdenv}"
PY="$VENV/bin/python"

if [ -x "$PY" ] && "$PY" -c "import torchdrug.models, torch_cluster, torch_scatter, rdkit, Bio, yaml, scipy, numba" 2>/dev/null; then
    echo "torchdrug environment already complete: $VENV"
    exit 0
fi

[ -x "$PY" ] || python3 -m venv "$VENV"
PIP="$VENV/bin/pip"

"$PIP" install torch==2.13.0 ninja
MAX_JOBS=2 "$PIP" install --no-build-isolation torch-scatter torch-cluster
"$PIP" install decorator matplotlib tqdm networkx jinja2 lmdb "rdkit-pypi==2022.9.5" "numpy<2" "pandas<3"
"$PIP" install --no-deps --ignore-requires-python torchdrug==0.2.1
"$PIP" install --no-deps fair-esm==2.0.0
"$PIP" install biopython pyyaml scipy "numba>=0.61"

"$PY" -c "import torchdrug, torch; print('torchdrug', torchdrug.__version__, 'torch', torch.__version__)"
