# geoplm: GearNet, ESM-GearNet and Wu et al. (2023), end to end.
# Run one table at a time: `snakemake --cores N table_toy_position` (see README.md).

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, schema="config/schema.yaml")


include: "rules/common.smk"
include: "rules/download.smk"
include: "rules/structures.smk"
include: "rules/embeddings.smk"
include: "rules/graphs.smk"
include: "rules/train.smk"
include: "rules/tables.smk"


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
