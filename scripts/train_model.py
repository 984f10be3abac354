"""Rule train_model: train and evaluate one run (geoplm.train.train_run), data-parallel on the job's
``resources.gpu`` GPUs under torchrun when there are several (geoplm.distributed.launch_job)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from geoplm import distributed, steps  # noqa: E402

sm = snakemake  # noqa: F821

with steps.logged(sm.log[0]):
    distributed.launch_job(
        "geoplm.train.train_run",
        dict(
            task=sm.params.task,
            task_name=sm.wildcards.task,
            model_name=sm.wildcards.model,
            model=sm.params.model,
            manifest=sm.input.manifest,
            records=list(sm.input.records),
            embedding_indexes=list(sm.input.get("embeddings", [])),
            graphs=list(sm.input.get("graphs", [])),
            graph_settings=sm.params.graph,
            esm_checkpoint=sm.input.get("esm_checkpoint"),
            esm_settings=sm.params.esm,
            seed=int(sm.wildcards.seed),
            metrics_path=sm.output.metrics,
            checkpoint_path=sm.output.checkpoint,
            run_name="/".join([sm.wildcards.task, sm.wildcards.model, sm.wildcards.plm, sm.wildcards.pretrain]),
            init_checkpoint=sm.input.get("init_checkpoint"),
            init_part=sm.params.pretrain.get("part", "model"),
        ),
        steps.device(sm.config.get("device", "auto")),
        sm.resources.get("gpu", 1),
        sm.threads,
    )
