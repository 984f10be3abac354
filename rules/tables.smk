# Tables: published values beside reproduced mean ± std over seeds; one target rule per table.


rule make_table:
    input:
        metrics=lambda wildcards: table_inputs(wildcards.table),
        published="config/published_values.tsv",
    output:
        csv=report(f"{RESULTS}/tables/{{table}}.csv", category="Tables"),
        markdown=report(f"{RESULTS}/tables/{{table}}.md", category="Tables"),
    log:
        "logs/tables/{table}.log",
    benchmark:
        "benchmarks/tables/{table}.tsv"
    localrule: True
    conda:
        "../envs/tables.yaml"
    params:
        table=lambda wildcards: config["tables"][wildcards.table],
    script:
        "../scripts/make_table.py"


for _table in config["tables"]:

    rule:
        name:
            f"table_{_table}"
        default_target: False
        input:
            f"{RESULTS}/tables/{_table}.csv",
            f"{RESULTS}/tables/{_table}.md",
        localrule: True
