#!/usr/bin/env bash
# make test-cluster: Slurm and munge from Debian (first time), a one-node cluster on this machine (loopback
# only), tests/cluster/test_slurm.py against it, and the daemons stopped again whatever the outcome.
# Needs root (apt-get, the daemons), the venv with the Slurm plugin (make test-cluster installs it) and the
# test data folder ($GEOPLM_TEST_DATA or ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VENV:-.venv}
SLURM=tests/cluster/slurm.sh

[ -x "$VENV/bin/snakemake" ] || { echo "run.sh: no $VENV/bin/snakemake: make install" >&2; exit 1; }
"$VENV/bin/python" -c "import snakemake_executor_plugin_slurm" 2>/dev/null \
    || { echo "run.sh: the Slurm executor plugin is missing: $VENV/bin/pip install -e '.[cluster]'" >&2; exit 1; }

data=${GEOPLM_TEST_DATA:-../shared/data}
[ -d "$data" ] || { echo "run.sh: test data folder $data not found: set GEOPLM_TEST_DATA" >&2; exit 1; }

started=$(date +%s)
$SLURM install
trap '$SLURM stop' EXIT
trap 'exit 130' INT TERM
$SLURM start
eval "$($SLURM env)"  # SLURM_CONF for sbatch / squeue here and in the test
GEOPLM_TEST_CLUSTER=1 "$VENV/bin/pytest" -q -p no:cacheprovider -s tests/cluster
echo "run.sh: test-cluster passed in $(($(date +%s) - started)) s"
