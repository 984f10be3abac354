# Training: one job per (task, model, node features, pretraining, seed).


rule train_model:
    input:
        unpack(train_inputs),
    output:
        metrics=f"{RESULTS}/train/{{task}}/{{model}}/{{plm}}/{{pretrain}}/seed{{seed}}/metrics.json",
        checkpoint=f"{RESULTS}/train/{{task}}/{{model}}/{{plm}}/{{pretrain}}/seed{{seed}}/model.pt",
    log:
        f"{LOGS}/train/{{task}}/{{model}}/{{plm}}/{{pretrain}}/seed{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/train/{{task}}/{{model}}/{{plm}}/{{pretrain}}/seed{{seed}}.tsv"
    conda:
        torch_env("train")
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=24 * 60,
    params:
        task=lambda wildcards: config["tasks"][wildcards.task],
        model=lambda wildcards: config["models"][wildcards.model],
        graph=lambda wildcards: geoplm_config.graph_settings(
            config, config["models"][wildcards.model].get("graph", "gearnet")
        ),
        esm=train_esm_params,
        pretrain=train_pretrain_params,
    script:
        "../scripts/train_model.py"
