# The Snakemake report (`snakemake report_<table> ...` then `snakemake report_<table> ... --report report.html`;
# `make report` for the demo tables): per table its HTML page (reproduced beside published), a plot of the
# reproduced against the published values and the learning curves of every training run; the tables' figures.

from geoplm import report as geoplm_report

REPORT = f"{RESULTS}/report"


rule report_table:
    input:
        csv=f"{RESULTS}/tables/{{table}}.csv",
        metrics=lambda wildcards: table_inputs(wildcards.table),
    output:
        html=report(
            f"{REPORT}/{{table}}/{{table}}.html",
            caption="../report/table.rst",
            category="Tables",
            subcategory="{table}",
        ),
        comparison=report(
            f"{REPORT}/{{table}}/{{table}}_reproduced_vs_published.png",
            caption="../report/comparison.rst",
            category="Tables",
            subcategory="{table}",
        ),
        curves=report(
            f"{REPORT}/{{table}}/{{table}}_learning_curves.png",
            caption="../report/learning_curves.rst",
            category="Tables",
            subcategory="{table}",
        ),
    log:
        f"{LOGS}/report/{{table}}.log",
    benchmark:
        f"{BENCHMARKS}/report/{{table}}.tsv"
    localrule: True
    conda:
        "../envs/tables.yaml"
    params:
        # the table's title, caption, paper, seeds and task / model settings, for the page and the captions
        settings=lambda wildcards: geoplm_report.table_settings(config, wildcards.table),
    script:
        "../scripts/report_table.py"


for _table in config["tables"]:

    rule:
        name:
            f"report_{_table}"
        default_target: False
        input:
            f"{REPORT}/{_table}/{_table}.html",
            f"{REPORT}/{_table}/{_table}_reproduced_vs_published.png",
            f"{REPORT}/{_table}/{_table}_learning_curves.png",
            f"{RESULTS}/tables/{_table}.csv",
            f"{RESULTS}/tables/{_table}.md",
            (
                [f"{RESULTS}/figures/{_table}.png"]
                if "figure" in config["tables"][_table]
                else []
            ),
        localrule: True
