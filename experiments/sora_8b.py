"""A 10.2B-parameter video DiT on latent patches, for a v5p-256 slice (128 chips).

Rows of 65,536 tokens (a 16-second 720p clip of 16-channel 4x8x8 latents, patched 1x2x2), each
split over 4 chips by all-to-all sequence parallelism around splash attention; parameters and
optimizer state sharded over the other 32 (FSDP); 64 rows a step; bf16 compute, float32
parameters, every block recomputed in the backward pass.

Check that it fits, here, before spending pod hours (no TPU needed):
    sora-jax aot --config experiments/sora_8b.py --topology v5p-256
Two slices over the data-centre network (the slices split the data):
    sora-jax aot --config experiments/sora_8b.py --topology v5p-256 --num-slices 2

Train (on every host; see docs/pod_run.md):
    sora-jax train --config experiments/sora_8b.py --workdir gs://BUCKET/runs/sora_8b
"""

from sora_jax.config import base_config


def get_config(arg: str | None = None):
    if arg is not None:
        raise ValueError(f"sora_8b has no variants, got {arg!r}")
    c = base_config()
    m = c.model
    m.channels = 16
    m.patch_size = (1, 2, 2)
    m.dim = 4096
    m.depth = 28
    m.heads = 32  # head dim 128
    m.text_dim = 2048
    m.text_depth = 4
    m.text_heads = 16
    m.text_vocab_size = 32768
    m.attention = "splash"
    m.sequence_parallel = "all_to_all"
    m.remat = "full"
    m.dtype = "bfloat16"

    d = c.data
    d.seq_len = 65536
    d.max_clips_per_row = 16
    d.max_caption_tokens = 64
    d.text_len = 1024
    d.side = (64, 1280)
    d.frames = (1, 128)
    d.workers = 8
    d.batch_size = 64  # two rows per group of 4 chips

    c.mesh.ici_data, c.mesh.ici_fsdp, c.mesh.ici_sequence = 1, -1, 4

    c.optim.lr = 1e-4
    c.optim.warmup_steps = 4000
    c.optim.ema_decay = 0.9999
    c.train.steps = 300_000
    c.train.log_every = 10
    c.train.sample_every = 5000
    c.checkpoint.every = 500
    c.checkpoint.keep_period = 10_000
    return c
