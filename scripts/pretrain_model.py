"""Rule pretrain_model: one self-supervised pretraining run (geoplm.pretraining.run.pretrain_run), data-parallel on
the job's ``resources.gpu`` GPUs under torchrun when there are several (geoplm.distributed.launch_job)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from geoplm import distributed, steps  # noqa: E402

sm = snakemake  # noqa: F821

with steps.logged(sm.log[0]):
    distributed.launch_job(
        "geoplm.pretraining.run.pretrain_run",
        dict(
            spec=sm.params.spec,
            model=sm.params.model,
            manifests=list(sm.input.manifests),
            records=list(sm.input.records),
            seed=sm.params.seed,
            encoder_path=sm.output.encoder,
            metrics_path=sm.output.metrics,
            checkpoint_path=sm.output.checkpoint,
            run_name="/".join(["pretrain", sm.wildcards.model, sm.wildcards.plm, sm.wildcards.pretraining]),
            graph_settings=sm.params.graph,
            esm_checkpoint=sm.input.get("esm_checkpoint"),
            esm_settings=sm.params.esm,
            name=sm.wildcards.pretraining,
            model_name=sm.wildcards.model,
        ),
        steps.device(sm.config.get("device", "auto")),
        sm.resources.get("gpu", 1),
        sm.threads,
    )
