"""Physics-world videos with their sound: text-to-audio-video, video-to-audio and audio-to-video.

world_tiny's recipe (4-frame patches, the timestep shift from 32 tokens, the clean-data weight
cap) at world_small's width and depth, with audio on: every clip of two or more frames carries its
sound as log-mel tokens in the same packed segment as its frames, on the same clock
(sora_jax/audio/). The world renders each impact it simulates (floor, walls, collisions) at its
exact moment, its timbre by material, pitch by size, loudness by speed. Its 3500 steps took 48
minutes on a 2-core CPU it had to itself (0.82 s a step at the median). Its benchmark (named at
the end) scores it in about 5 minutes more, and with ``--compare-steps 1000`` trains a run of each
audio representation beside it (17 min each here). Train it with:

    sora-jax train --config experiments/world_av.py --workdir runs/world_av

Then sample a video with its sound (an .mp4 with an AAC track and a .wav beside it):

    sora-jax sample --workdir runs/world_av --prompt "a large red ball falls and bounces twice" \
        --out runs/world_av/red_ball.mp4

or give a video and generate its sound (``--video FILE --add-sound``), and score sound and
picture against the scenes (``python -m benchmarks.world_av --workdir runs/world_av``).

``get_config("test")`` shrinks it to seconds for the test suite.
"""

from sora_jax.config import base_config
from sora_jax.testing import shrink_for_tests


def get_config(arg: str | None = None):
    c = base_config()
    c.model.patch_size = (4, 4, 4)
    # world_small's width and depth for 3500 steps: at world_tiny's (dim 128, depth 4) for 2000 steps
    # the text-to-video picture scored 0.10 and showed almost no bounces (0.06), so the sound had
    # nothing to keep time with (sync 0.00); now 0.39, bounces 0.21 and sync 0.20
    # (docs/BENCHMARKS.md, sound and picture).
    c.model.dim = 192
    c.model.depth = 6
    c.model.heads = 3
    c.model.qk_norm = False
    c.model.scan_layers = False
    c.audio.enabled = True
    # A caption says what the clip sounds like in a third of the clips ("with a loud thud").
    c.audio.caption_sounds = 0.3
    c.data.batch_size = 8
    # A 16 x 32 x 32 clip at 8 fps is 256 video tokens and 50 audio tokens (2 s of 40 ms tokens).
    c.data.seq_len = 320
    c.data.text_len = 160
    c.data.side = (24, 40)
    c.data.frames = (1, 16)
    c.conditioning.text_to_video = 0.6  # With audio on: text to audio and video together.
    c.conditioning.video_to_audio = 0.2
    c.conditioning.audio_to_video = 0.1
    c.conditioning.image_to_video = 0.1
    c.diffusion.shift_base_tokens = 32
    c.diffusion.max_x0_weight = 4.0
    c.train.steps = 3500
    c.optim.warmup_steps = 100
    c.checkpoint.every = 500
    c.train.sample_prompts = (
        "a large red ball falls and bounces on the floor twice",
        "a large blue box drops to the floor with a loud thud",
    )
    if arg == "test":
        shrink_for_tests(c)
        c.train.sample_prompts = c.train.sample_prompts[:1]
        c.data.seq_len = 160
        c.data.text_len = 256
        c.data.side = (16, 24)
        c.data.frames = (1, 8)
        c.train.sample_frames = 8
        c.train.sample_height = 16
        c.train.sample_width = 16
        c.eval.world_clips = 2
    elif arg is not None:
        raise ValueError(f"unknown world_av variant {arg!r}; use 'test' or nothing")
    return c
