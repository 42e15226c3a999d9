"""Fine-tune Wan 2.1 text-to-video 1.3B (Wan-AI/Wan2.1-T2V-1.3B-Diffusers) on packed Wan latents.

The transformer of the pretrained directory, LoRA (default) or every parameter, on rows of
32,768 tokens: one 81-frame 480p clip (21 latent frames of 60 x 104, patched 1 x 2 x 2 is 32,760
tokens) or many shorter clips and images packed. bf16 compute; splash self-attention; every block
recomputed in the backward pass. See docs/wan.md for the walk from a downloaded directory to a
fine-tuned one and back to diffusers format.

Check that it fits, here, before spending pod hours (compiles for the slice; no TPU or weights needed):
    sora-jax aot --config experiments/wan2_1_t2v_1_3b.py:lora --topology v5p-8
    sora-jax aot --config experiments/wan2_1_t2v_1_3b.py:full --topology v5p-8
    sora-jax aot --config experiments/wan2_1_t2v_1_3b.py:lora-v6e --topology v6e-8

Train (on every host of the slice; see docs/pod_run.md):
    sora-jax train --config experiments/wan2_1_t2v_1_3b.py:lora --workdir gs://BUCKET/runs/wan_lora \\
        --config.wan.pretrained=/data/Wan2.1-T2V-1.3B-Diffusers --config.data.store=gs://BUCKET/wan_latents

Variants (``:ARG``): ``lora`` (default) and ``full`` for a v5p-8 (4 chips of 95 GiB), ``lora-v6e``
and ``full-v6e`` for a v6e-8 (8 chips of 32 GiB), ``720p`` (LoRA, rows of one 81-frame 720p clip,
v5p-8), and ``test``: the same code path on CPU with the tiny random Wan directory the tests ship.
"""

from sora_jax.config import base_config

VARIANTS = ("lora", "full", "lora-v6e", "full-v6e", "720p", "test")


def wan_config(dim: int, heads: int, depth: int, ffn_dim: int):
    """The base config set up for a Wan 2.1 text-to-video transformer of this size."""
    c = base_config()
    c.task = "wan"
    m = c.model
    m.patch_size = (1, 2, 2)
    m.channels = 16  # Wan VAE latent channels
    m.dim, m.heads, m.depth = dim, heads, depth
    m.text_dim = 4096  # UMT5-XXL states
    m.attention = "splash"
    m.remat = "full"
    m.dtype = "bfloat16"
    c.wan.ffn_dim = ffn_dim

    d = c.data
    d.seq_len = 32768  # one 81-frame 480p clip: 21 x 30 x 52 = 32,760 tokens
    d.max_clips_per_row = 8
    d.max_caption_tokens = 256  # Wan's pipeline keeps up to 512; captions are rarely past 256
    d.text_len = 1024
    d.store_weight = 1.0
    # In latents (a Wan latent is 4 frames after the first, and 8 x 8 pixels): up to 81 frames, 720p.
    d.frames = (1, 21)
    d.side = (8, 160)
    d.caption_dropout = 0.1  # the empty caption, for classifier-free guidance
    d.workers = 8

    f = c.diffusion
    f.prediction = "velocity"  # what Wan predicts
    f.shift_base_tokens = 1560  # ~ a 480p latent frame (30 x 52 tokens): the shift grows with clip size
    f.shift_max = 5.0  # Wan trains and samples with shifts of 3 (480p) to 5 (720p)
    f.sample_steps = 50
    f.guidance = 5.0

    c.optim.lr = 1e-5
    c.optim.warmup_steps = 100
    c.optim.weight_decay = 0.0
    c.optim.ema_decay = 0.0  # fine-tuning runs are short: sample the trained weights themselves
    c.train.steps = 5000
    c.train.log_every = 10
    c.train.sample_every = 500
    c.train.sample_prompts = ("a red ball falls and bounces on a wooden floor",)
    # In latents: 81 frames of 480 x 832.
    c.train.sample_frames, c.train.sample_height, c.train.sample_width = 21, 60, 104
    c.checkpoint.every = 250
    c.checkpoint.keep_period = 1000
    return c


def get_config(arg: str | None = None):
    variant = arg or "lora"
    if variant not in VARIANTS:
        raise ValueError(f"unknown wan2_1_t2v_1_3b variant {arg!r}; use one of {', '.join(VARIANTS)}")
    c = wan_config(dim=1536, heads=12, depth=30, ffn_dim=8960)  # head dim 128
    lora = variant in ("lora", "lora-v6e", "720p")
    if lora:
        c.lora.rank, c.lora.alpha = 32, 32.0
        c.optim.lr = 1e-4
    if variant in ("lora", "full", "720p"):  # v5p-8: 4 chips, FSDP over them, one row each
        c.data.batch_size = 4
        c.mesh.ici_data, c.mesh.ici_fsdp = 1, -1
    else:  # v6e-8: 8 chips of 32 GiB; a row's tokens split over 2 chips
        c.data.batch_size = 4
        c.mesh.ici_data, c.mesh.ici_fsdp, c.mesh.ici_sequence = 1, -1, 2
    if variant == "720p":  # 81 frames at 720 x 1280: 21 x 45 x 80 = 75,600 tokens a row
        c.data.seq_len = 75776
        c.wan.flow_shift = 5.0
        c.train.sample_height, c.train.sample_width = 90, 160
    if variant == "test":  # The tiny random Wan directory of the tests, on CPU, in seconds a step.
        m, d = c.model, c.data
        m.channels, m.dim, m.heads, m.depth, m.text_dim = 4, 32, 2, 2, 32
        m.attention, m.remat, m.dtype = "xla", "none", "float32"
        c.wan.ffn_dim = 40
        c.wan.rope_max_seq_len = 64
        c.lora.rank, c.lora.alpha = 4, 4.0
        d.seq_len, d.max_clips_per_row, d.text_len, d.max_caption_tokens = 128, 4, 64, 16
        d.batch_size, d.workers = 8, 0  # Rows split over up to 8 devices (the test suite has 8).
        d.frames, d.side = (1, 3), (4, 6)
        c.optim.lr, c.optim.warmup_steps = 1e-3, 2
        c.train.steps, c.train.log_every, c.train.sample_every = 6, 1, 0
        c.train.sample_frames, c.train.sample_height, c.train.sample_width = 3, 4, 4
        c.diffusion.sample_steps = 2
        c.checkpoint.every, c.checkpoint.keep_period = 3, 0
        c.mesh.ici_data, c.mesh.ici_fsdp, c.mesh.ici_sequence = -1, 1, 1
    return c
