"""Fine-tune Wan 2.1 text-to-video 14B (Wan-AI/Wan2.1-T2V-14B-Diffusers) on packed Wan latents.

The settings of ``wan2_1_t2v_1_3b.py`` on the 14B transformer (width 5120 in 40 heads of 128,
40 blocks, feed-forward 13,824).

Check that it fits, here (compiles for the slice; no TPU or weights needed):
    sora-jax aot --config experiments/wan2_1_t2v_14b.py:full --topology v5p-64
    sora-jax aot --config experiments/wan2_1_t2v_14b.py:lora --topology v5p-8

Variants (``:ARG``): ``full`` (default; every parameter, FSDP over a v5p-64's 32 chips) and
``lora`` (adapters on the frozen bf16 transformer, a v5p-8's 4 chips).
"""

from pathlib import Path

from sora_jax.config import load_config


def get_config(arg: str | None = None):
    variant = arg or "full"
    if variant not in ("full", "lora"):
        raise ValueError(f"unknown wan2_1_t2v_14b variant {arg!r}; use full or lora")
    c = load_config(str(Path(__file__).with_name("wan2_1_t2v_1_3b.py")) + f":{variant}")
    m = c.model
    m.dim, m.heads, m.depth = 5120, 40, 40
    c.wan.ffn_dim = 13824
    if variant == "full":  # v5p-64: 32 chips, FSDP; a row's tokens over 2 chips
        c.data.batch_size = 16
        c.mesh.ici_data, c.mesh.ici_fsdp, c.mesh.ici_sequence = 1, -1, 2
    else:  # v5p-8: the frozen base in bf16, sharded over the 4 chips; one row each
        m.param_dtype = "bfloat16"
        c.data.batch_size = 4
        c.mesh.ici_data, c.mesh.ici_fsdp = 1, -1
    return c
