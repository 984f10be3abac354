# geoplm: GearNet, ESM-GearNet and Wu et al. (2023), end to end.
# Run one table at a time: `snakemake --cores N table_toy_position` (see README.md).

import sys
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.0")

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from geoplm import config as geoplm_config  # noqa: E402

# The config files, in merge order: the workflow's, then each --configfile (Snakemake has parsed those already).
CONFIG_FILES = [
    geoplm_config.display_path(path)
    for path in [geoplm_config.CATALOGUE, "config/config.yaml", *workflow.config_settings.configfiles]
    if Path(path).exists()
]

# A config error stops the workflow with one message (no traceback) naming the file, line and key path:
# YAML syntax errors and duplicate keys (Snakemake's own message names neither file nor line) ...
with geoplm_config.exit_on_config_error():
    for path in CONFIG_FILES:
        geoplm_config.read_yaml(path)


configfile: geoplm_config.CATALOGUE  # the download catalogue (sources), then the settings


configfile: "config/config.yaml"


# ... then every model / task / graph entry's keys by its type or kind, the schema and the names entries use
# (in the main process: a job's own process, on a cluster or with --mode subprocess, gets the checked config)
if workflow.is_main_process:
    with geoplm_config.exit_on_config_error():
        geoplm_config.check_config(config, files=CONFIG_FILES)

validate(config, schema="config/schema.yaml")  # passes now; fills in the schema's defaults


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/download.smk"
include: "rules/structures.smk"
include: "rules/embeddings.smk"
include: "rules/graphs.smk"
include: "rules/pretrain.smk"
include: "rules/train.smk"
include: "rules/tables.smk"
include: "rules/apply.smk"
include: "rules/report.smk"


rule all:
    """Prepare every dataset: records, manifest and skipped report (`snakemake --cores N`)."""
    default_target: True
    input:
        # a function: the mirror is searched only when this target is built, not at every parse
        lambda wildcards: all_datasets(),


rule tables:
    """Every table of the config (each is also a target of its own: `snakemake table_<name>`)."""
    input:
        all_tables(),
