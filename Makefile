# The two commands of the README:  make demo  |  make test
# Both create .venv on first use and install everything the project needs into it.

PYTHON ?= python3
VENV ?= .venv
CORES ?= 2
# The CPU build of PyTorch; GPU users: make demo TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH ?= torch==2.13.0
MIRROR ?= $(abspath ../shared/data)
SNAKEMAKE = $(VENV)/bin/snakemake

.PHONY: install demo test lint dryrun bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet $(TORCH)
	$(VENV)/bin/pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

DEMO_TABLES = table_toy_position table_docking_db5 table_gearnet_function table_gearnet_fold table_esm_gearnet_fusion \
	table_wu_mqa table_wu_docking table_wu_scale table_wu_ppi

# The demo's small training jobs run single-threaded, $(CORES) at a time: faster than one two-threaded job on
# small graphs, and immune to OpenMP's spinning waiters when other jobs share the cores (benchmarks/README.md).
demo: install
	GEOPLM_MIRROR=$$( [ -d "$(MIRROR)" ] && echo "$(MIRROR)" ) \
	  $(SNAKEMAKE) $(DEMO_TABLES) --cores $(CORES) --configfile config/demo.yaml --set-threads train_model=1
	@for table in $(DEMO_TABLES:table_%=%); do echo; cat results/tables/$$table.md; done
	@echo "Tables written to results/tables/ (CSV and Markdown), figures to results/figures/"
	@# your own structures: the sheet config/demo_structures.tsv through the EC run above (README "Your own structures")
	GEOPLM_MIRROR=$$( [ -d "$(MIRROR)" ] && echo "$(MIRROR)" ) \
	  $(SNAKEMAKE) embed --cores $(CORES) --configfile config/demo.yaml --quiet rules

test: install
	$(VENV)/bin/pytest -q
	$(MAKE) lint dryrun

lint: install
	$(VENV)/bin/ruff check $(wildcard src tests scripts benchmarks)
	$(SNAKEMAKE) --lint
	$(SNAKEMAKE) --lint --configfile config/demo.yaml

dryrun: install
	$(SNAKEMAKE) all tables --dry-run --quiet rules --configfile config/config.yaml

bench: install
	$(VENV)/bin/python benchmarks/run.py

clean:
	rm -rf .snakemake resources results logs benchmarks/download benchmarks/structures \
	  benchmarks/embeddings benchmarks/train benchmarks/tables
