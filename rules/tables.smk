# Tables: published values beside reproduced mean ± std over seeds; one target rule per table.


rule make_table:
    input:
        metrics=lambda wildcards: table_inputs(wildcards.table),
        published="config/published_values.tsv",
    output:
        csv=report(
            f"{RESULTS}/tables/{{table}}.csv",
            caption="../report/csv.rst",
            category="Tables",
            subcategory="{table}",
        ),
        markdown=report(
            f"{RESULTS}/tables/{{table}}.md",
            caption="../report/csv.rst",
            category="Tables",
            subcategory="{table}",
        ),
    log:
        f"{LOGS}/tables/{{table}}.log",
    benchmark:
        f"{BENCHMARKS}/tables/{{table}}.tsv"
    localrule: True
    conda:
        "../envs/tables.yaml"
    params:
        table=lambda wildcards: config["tables"][wildcards.table],
    script:
        "../scripts/make_table.py"


rule make_figure:
    input:
        csv=f"{RESULTS}/tables/{{table}}.csv",
    output:
        png=report(
            f"{RESULTS}/figures/{{table}}.png",
            caption="../report/figure.rst",
            category="Tables",
            subcategory="{table}",
        ),
    log:
        f"{LOGS}/figures/{{table}}.log",
    benchmark:
        f"{BENCHMARKS}/figures/{{table}}.tsv"
    localrule: True
    conda:
        "../envs/tables.yaml"
    params:
        table=lambda wildcards: config["tables"][wildcards.table],
    script:
        "../scripts/make_figure.py"


for _table in config["tables"]:

    rule:
        name:
            f"table_{_table}"
        default_target: False
        input:
            f"{RESULTS}/tables/{_table}.csv",
            f"{RESULTS}/tables/{_table}.md",
            (
                [f"{RESULTS}/figures/{_table}.png"]
                if "figure" in config["tables"][_table]
                else []
            ),
        localrule: True
