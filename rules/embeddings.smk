# ESM-2 per-residue embeddings, cached by sequence hash and shared by every dataset and task.


rule build_random_esm:
    output:
        model=f"{RESOURCES}/esm/random_init/{{plm}}.pt",
        regression=f"{RESOURCES}/esm/random_init/{{plm}}-contact-regression.pt",
    log:
        f"{LOGS}/embeddings/{{plm}}/build_random_esm.log",
    benchmark:
        f"{BENCHMARKS}/embeddings/{{plm}}/build_random_esm.tsv"
    conda:
        torch_env("esm")
    params:
        random_init=lambda wildcards: config["plms"][wildcards.plm]["random_init"],
    script:
        "../scripts/build_random_esm.py"


rule embed_esm:
    input:
        unpack(embed_inputs),
    output:
        index=f"{EMBEDDINGS}/{{plm}}/index/{{dataset}}/{{shard}}.tsv",
    log:
        f"{LOGS}/embeddings/{{plm}}/{{dataset}}/{{shard}}.log",
    benchmark:
        f"{BENCHMARKS}/embeddings/{{plm}}/{{dataset}}/{{shard}}.tsv"
    conda:
        torch_env("esm")
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
    params:
        settings=lambda wildcards: plm_params(wildcards.plm),
        store=lambda wildcards, output: embedding_store(output.index),
    script:
        "../scripts/embed_esm.py"
