"""Tiny causal 3D video autoencoder on physics-world clips: 6000 steps, under an hour on a 2-core CPU.

2x2x2 compression (time, height, width) to 8 latent channels: a 9-frame 32x32 clip becomes
5 x 16 x 16 x 8 latents, 3.5 times fewer values than its pixels. The physics world's 1-pixel stripes
and small objects need the detail: at 4x4 spatial compression this network stays near 21 dB for
hundreds of steps, its reconstructions grey and blurred. Reconstruction (L1) + KL.

Run:
    sora-jax train --config experiments/vae_world.py --workdir runs/vae_world
    sora-jax evaluate --workdir runs/vae_world   # PSNR and SSIM on held-out clips

``get_config("gan")`` adds the patch discriminator's adversarial loss from half-way through;
``get_config("test")`` shrinks the run to seconds for the test suite.
"""

from sora_jax.config import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.task = "autoencoder"
    a = c.autoencoder
    a.channels = 16
    a.channel_multipliers = (1, 2)
    a.blocks_per_level = 1
    a.temporal_downsample = (True,)
    a.latent_channels = 8
    a.norm = "group"  # Per-frame GroupNorm learns several times faster than RMS at this width.
    a.groups = 4
    a.kl_weight = 1e-6
    a.disc_channels = 16
    a.disc_layers = 2

    c.data.dense_clip = (9, 32, 32)
    c.data.batch_size = 4  # Learning here is limited by the number of updates more than by batch size.
    c.optim.lr = 2e-3
    c.optim.warmup_steps = 100
    c.optim.weight_decay = 0.0
    c.optim.ema_decay = 0.99
    c.train.steps = 6000
    c.train.log_every = 10
    c.checkpoint.every = 1000
    c.eval.batches = 8  # Held-out clips scored by sora-jax evaluate: eval.batches x batch_size.

    if arg == "gan":
        a.disc_weight = 0.1
        a.disc_start = c.train.steps // 2
    elif arg == "test":
        a.channels = 8
        c.data.dense_clip = (5, 16, 16)
        c.data.batch_size = 8  # One clip per device of the tests' eight.
        c.train.steps = 4
        c.train.log_every = 1
        c.checkpoint.every = 2
        c.optim.warmup_steps = 2
        c.eval.batches = 1
    elif arg is not None:
        raise ValueError(f"unknown vae_world variant {arg!r}; use 'gan', 'test' or nothing")
    return c
