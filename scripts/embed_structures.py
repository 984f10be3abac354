"""Rule embed_structures: one shard of a sheet of structures through an encoder (geoplm.apply.embed_shard)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from geoplm import apply, steps  # noqa: E402

sm = snakemake  # noqa: F821

with steps.logged(sm.log[0]):
    device = steps.device(sm.config.get("device", "auto"))
    embed = sm.params.embed
    spec = apply.resolve_encoder(sm.config, sm.params.encoder, sm.params.model, sm.params.plm,
                                 int(embed.get("seed", 0)), results=sm.params.results)  # fmt: skip
    loaded = apply.load_encoder(spec, sm.config, device, sm.input.get("manifest"), truncate=embed.get("truncate"))
    apply.embed_shard(sm.input.sheet, loaded, int(sm.wildcards.shard), int(embed["shards"]), sm.output.shard,
                      sm.output.skipped, int(embed["max_residues"]), device)  # fmt: skip
