# Training: one job per (task, model, node features, pretraining, seed).


rule train_model:
    input:
        unpack(train_inputs),
    output:
        metrics=f"{RESULTS}/train/{{task}}/{{model}}/{{plm}}/{{pretrain}}/seed{{seed}}/metrics.json",
        checkpoint=f"{RESULTS}/train/{{task}}/{{model}}/{{plm}}/{{pretrain}}/seed{{seed}}/model.pt",
    params:
        task=lambda wildcards: config["tasks"][wildcards.task],
        model=lambda wildcards: config["models"][wildcards.model],
        embeddings=EMBEDDINGS,
        plm_layer=lambda wildcards: (
            config["plms"][wildcards.plm]["repr_layer"] if wildcards.plm != "none" else None
        ),
    log:
        "logs/train/{task}/{model}/{plm}/{pretrain}/seed{seed}.log",
    benchmark:
        "benchmarks/train/{task}/{model}/{plm}/{pretrain}/seed{seed}.tsv"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=24 * 60,
    conda:
        "../envs/train.yaml"
    script:
        "../scripts/train_model.py"
