# The two commands of the README:  make demo  |  make test   (and on a Slurm-less Debian as root: make test-cluster)
# Both create .venv on first use and install everything the project needs into it.

PYTHON ?= python3
VENV ?= .venv
CORES ?= 2
# The CPU build of PyTorch; GPU users: make demo TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH ?= torch==2.13.0
MIRROR ?= $(abspath ../shared/data)
SNAKEMAKE = $(VENV)/bin/snakemake
# the workstation settings (one GPU job at a time), named: profiles/slurm runs without them
PROFILE ?= profiles/workstation

.PHONY: install demo test test-cluster lint dryrun bench clean report

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet $(TORCH)
	$(VENV)/bin/pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

DEMO_TABLES = table_toy_position table_docking_db5 table_gearnet_function table_gearnet_fold table_esm_gearnet_fusion \
	table_wu_mqa table_wu_docking table_wu_ppi table_gearnet_pretrained

# The demo's small training jobs run single-threaded, $(CORES) at a time: faster than one two-threaded job on
# small graphs, and immune to OpenMP's spinning waiters when other jobs share the cores (benchmarks/README.md).
# `--resources gpu=$(CORES)` lifts the profile's one-GPU-job limit for them (on a GPU they share it: demo widths).
DEMO_RUN = --profile $(PROFILE) --cores $(CORES) --configfile config/demo.yaml --set-threads train_model=1 \
	--resources gpu=$(CORES)
demo: install
	GEOPLM_MIRROR=$$( [ -d "$(MIRROR)" ] && echo "$(MIRROR)" ) \
	  $(SNAKEMAKE) $(DEMO_TABLES) $(DEMO_RUN)
	@for table in $(DEMO_TABLES:table_%=%); do echo; cat demo/results/tables/$$table.md; done
	@echo "Tables written to demo/results/tables/ (CSV and Markdown), figures to demo/results/figures/"
	@# your own structures: the sheet config/demo_structures.tsv through the EC run above (README "Your own structures")
	GEOPLM_MIRROR=$$( [ -d "$(MIRROR)" ] && echo "$(MIRROR)" ) \
	  $(SNAKEMAKE) embed $(DEMO_RUN) --quiet rules

# The Snakemake report of the demo tables (demo/results/report.html, self-contained: open it in a browser): builds what is
# missing of the demo first (the report pages are cheap once `make demo` has run), then writes the report.
report: install
	GEOPLM_MIRROR=$$( [ -d "$(MIRROR)" ] && echo "$(MIRROR)" ) \
	  $(SNAKEMAKE) $(DEMO_TABLES:table_%=report_%) $(DEMO_RUN)
	$(SNAKEMAKE) $(DEMO_TABLES:table_%=report_%) --configfile config/demo.yaml --report demo/results/report.html
	@echo "Report written to demo/results/report.html"

test: install
	$(VENV)/bin/pytest -q
	$(MAKE) lint dryrun

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(SNAKEMAKE) --lint
	$(SNAKEMAKE) --lint --configfile config/demo.yaml

dryrun: install
	$(SNAKEMAKE) all tables --dry-run --quiet rules --configfile config/config.yaml --profile $(PROFILE)

# profiles/slurm on a one-node Slurm started here (tests/cluster/run.sh): root, Debian (apt-get), ~5 minutes
test-cluster: $(VENV)/.installed-cluster
	VENV=$(VENV) tests/cluster/run.sh

$(VENV)/.installed-cluster: $(VENV)/.installed
	$(VENV)/bin/pip install --quiet -e ".[cluster]"
	touch $@

bench: install
	$(VENV)/bin/python benchmarks/run.py

clean:
	rm -rf .snakemake resources results logs demo benchmarks/download benchmarks/structures \
	  benchmarks/embeddings benchmarks/train benchmarks/tables benchmarks/pretrain benchmarks/graphs \
	  benchmarks/figures benchmarks/report benchmarks/embed
