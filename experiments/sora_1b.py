"""A 1.3B-parameter video DiT on latent patches, for a v5p-64 or v6e-64 slice.

Rows of 65,536 tokens: one 16-second 720p clip of a 4x8x8 video autoencoder's 16-channel latents,
patched 1x2x2, or many shorter clips packed. Splash attention; bf16 compute with float32
parameters; every block recomputed in the backward pass.

Check that it fits, here, before spending pod hours (compiles for the slice; no TPU needed):
    sora-jax aot --config experiments/sora_1b.py --topology v5p-64
    sora-jax aot --config experiments/sora_1b.py:v6e-64 --topology v6e-64

Train (on every host of the slice; see docs/pod_run.md):
    sora-jax train --config experiments/sora_1b.py --workdir gs://BUCKET/runs/sora_1b

Variants (``:ARG``): ``v5p-64`` (default), ``v6e-64``, ``av-v5p-64``: the v5p-64 preset with
sound (every clip's audio as log-mel tokens in its own segment, 25 a second: a 16-second clip adds
400 tokens to its 65,536), and ``smoke``: the same model family shrunk to compile in seconds for a
v5p-8, as the test suite does.

    sora-jax aot --config experiments/sora_1b.py:av-v5p-64 --topology v5p-64
"""

from sora_jax.config import base_config


def get_config(arg: str | None = None):
    c = base_config()
    m = c.model
    m.channels = 16  # latent channels
    m.patch_size = (1, 2, 2)
    m.dim = 1536
    m.depth = 24
    m.heads = 12  # head dim 128, the width TPU matrix units want
    m.text_dim = 1024
    m.text_depth = 4
    m.text_heads = 8
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

    c.optim.lr = 2e-4
    c.optim.warmup_steps = 2000
    c.optim.ema_decay = 0.9999
    c.train.steps = 200_000
    c.train.log_every = 10
    c.train.sample_every = 5000
    c.checkpoint.every = 1000
    c.checkpoint.keep_period = 10_000

    variant = arg or "v5p-64"
    if variant == "av-v5p-64":  # Sound and picture: the v5p-64 layout, audio tokens in every row.
        c.audio.enabled = True
        c.audio.channels = 2
        c.audio.caption_sounds = 0.3
        c.conditioning.video_to_audio = 0.1
        c.conditioning.audio_to_video = 0.05
        variant = "v5p-64"
    if variant == "v5p-64":  # 32 chips of 95 GiB: two rows per chip, fully sharded.
        d.batch_size = 64
        c.mesh.ici_data, c.mesh.ici_fsdp = 1, -1
    elif variant == "v6e-64":  # 64 chips of 32 GiB: a row's tokens split over 2 chips.
        d.batch_size = 64
        c.mesh.ici_data, c.mesh.ici_fsdp, c.mesh.ici_sequence = 1, -1, 2
    elif variant == "smoke":  # v5p-8 (4 chips): the same code path in seconds.
        m.dim, m.depth, m.heads = 256, 2, 2
        m.text_dim, m.text_depth, m.text_heads, m.text_vocab_size = 128, 1, 2, 1024
        d.seq_len, d.text_len, d.batch_size = 2048, 256, 4
        c.train.sample_frames = 8
        c.mesh.ici_data, c.mesh.ici_fsdp, c.mesh.ici_sequence = 1, 2, 2
    else:
        raise ValueError(f"unknown sora_1b variant {arg!r}; use v5p-64, v6e-64, av-v5p-64 or smoke")
    return c
