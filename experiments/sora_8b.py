"""A 10.2B-parameter video DiT on latent patches, for a v5p-256 slice (128 chips).

The data, optimiser and schedule of ``sora_1b.py``, with a model 2.7x as wide and a little deeper.
Rows of 65,536 tokens are split over 4 chips by all-to-all sequence parallelism around splash
attention; parameters and optimizer state are sharded over the other 32 (FSDP); 64 rows a step.

Check that it fits, here, before spending pod hours (no TPU needed):
    sora-jax aot --config experiments/sora_8b.py --topology v5p-256
Two slices over the data-centre network (the slices split the data):
    sora-jax aot --config experiments/sora_8b.py --topology v5p-256 --num-slices 2

Train (on every host; see docs/pod_run.md):
    sora-jax train --config experiments/sora_8b.py --workdir gs://BUCKET/runs/sora_8b
"""

from pathlib import Path

from sora_jax.config import load_config


def get_config(arg: str | None = None):
    if arg is not None:
        raise ValueError(f"sora_8b has no variants, got {arg!r}")
    c = load_config(str(Path(__file__).with_name("sora_1b.py")))
    m = c.model
    m.dim = 4096
    m.depth = 28
    m.heads = 32  # head dim 128
    m.text_dim = 2048
    m.text_heads = 16

    c.data.batch_size = 64  # two rows per group of 4 chips
    c.mesh.ici_data, c.mesh.ici_fsdp, c.mesh.ici_sequence = 1, -1, 4

    c.optim.lr = 1e-4
    c.optim.warmup_steps = 4000
    c.train.steps = 300_000
    c.checkpoint.every = 500
    return c
