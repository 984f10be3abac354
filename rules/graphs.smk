# Residue graphs (GearNet's 7 relations), built once per record shard and graph setting, and
# shared by every model and task that runs on that graph.


rule build_graphs:
    input:
        records=f"{RECORDS}/{{dataset}}/{{shard}}.pt",
    output:
        graphs=f"{GRAPHS}/{{dataset}}/{{graph}}/{{shard}}.pt",
    log:
        f"{LOGS}/graphs/{{dataset}}/{{graph}}/{{shard}}.log",
    benchmark:
        f"{BENCHMARKS}/graphs/{{dataset}}/{{graph}}/{{shard}}.tsv"
    conda:
        "../envs/structures.yaml"
    resources:
        mem_mb=4000,
    params:
        settings=lambda wildcards: geoplm_config.graph_settings(config, wildcards.graph),
    script:
        "../scripts/build_graphs.py"
