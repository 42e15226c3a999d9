"""Physics-world text-to-video in latent space: the DiT learns vae_world's latents, samples decode to video.

Three steps, each resumable:

    sora-jax train --config experiments/vae_world.py --workdir runs/vae_world
    sora-jax encode --autoencoder runs/vae_world --world 2000 --frames 17 --output runs/world_latents
    sora-jax train --config experiments/world_latent.py --workdir runs/world_latent

Then sample (a 17-frame 32x32 video from 9 x 16 x 16 latents):
    sora-jax sample --workdir runs/world_latent --prompt "a small red ball falls" \
        --frames 17 --height 32 --width 32 --out runs/world_latent/red_ball.mp4

Shapes here are in latent units (vae_world compresses 2x2x2): clips of 1 to 9 latent frames and
8 to 16 latent pixels a side, tokens of 1 x 2 x 2 latents (one temporal group is one latent frame,
so image-to-video conditions on exactly the image's latents). Other paths:
``--config.model.autoencoder=DIR --config.data.store=STORE``.

``get_config("test")`` shrinks the model and the run to seconds for the test suite.
"""

from sora_jax.config import base_config
from sora_jax.testing import shrink_for_tests


def get_config(arg: str | None = None):
    c = base_config()
    c.model.autoencoder = "runs/vae_world"
    c.data.store = "runs/world_latents"
    c.model.channels = 8  # vae_world's autoencoder.latent_channels.
    c.model.patch_size = (1, 2, 2)
    c.model.dim = 128
    c.model.depth = 4
    c.model.heads = 4
    c.data.batch_size = 4
    c.data.seq_len = 1024
    c.data.side = (8, 16)
    c.data.frames = (1, 9)
    c.train.steps = 1000
    c.train.sample_frames = 9
    c.train.sample_height = 16
    c.train.sample_width = 16
    c.optim.warmup_steps = 50
    if arg == "test":
        shrink_for_tests(c)
        c.data.seq_len = 64
        c.data.side = (4, 8)
        c.data.frames = (1, 3)
        c.train.sample_frames = 3
        c.train.sample_height = 8
        c.train.sample_width = 8
    elif arg is not None:
        raise ValueError(f"unknown world_latent variant {arg!r}; use 'test' or nothing")
    return c
