"""Tiny physics-world text-to-video run: trains on a 2-core CPU in about ten minutes.

Run:
    sora-jax train --config experiments/world_tiny.py --workdir runs/world_tiny

Then sample:
    sora-jax sample --workdir runs/world_tiny --prompt "a small red ball falls" \
        --frames 16 --height 32 --width 32 --out runs/world_tiny/red_ball.mp4

``get_config("test")`` shrinks it further for the test suite (seconds, not minutes).
"""

from sora_jax.config import base_config, shrink_for_tests


def get_config(arg: str | None = None):
    c = base_config()
    c.model.patch_size = (2, 4, 4)
    c.model.dim = 128
    c.model.depth = 4
    c.model.heads = 4
    c.data.batch_size = 4
    c.data.seq_len = 512
    c.data.side = (24, 40)
    c.data.frames = (1, 16)
    c.train.steps = 1000
    c.optim.warmup_steps = 50
    if arg == "test":
        shrink_for_tests(c)
        c.data.seq_len = 128
        c.data.side = (16, 24)
        c.data.frames = (1, 8)
        c.train.sample_frames = 4
        c.train.sample_height = 16
        c.train.sample_width = 16
    elif arg is not None:
        raise ValueError(f"unknown world_tiny variant {arg!r}; use 'test' or nothing")
    return c
