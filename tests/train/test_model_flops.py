"""The analytic FLOP count that step-time benchmarks and ahead-of-time estimates divide by."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments.world_tiny import get_config
from sora_jax.data.packing import PackedClip, pack_rows
from sora_jax.data.patches import grid_size, patchify
from sora_jax.model.dit import build_model
from sora_jax.train.metrics import model_flops_per_token


def _flops(text_attention: str, caption_tokens: int) -> tuple[float, float]:
    """``(analytic, XLA's)`` FLOPs of a train step's forward and backward pass on one row that a
    16 x 32 x 32 clip and its caption of ``caption_tokens`` tokens fill exactly (so no attention
    is masked out). The learned text encoder has no blocks, which the analytic count leaves out."""
    config = get_config()
    config.model.text_attention, config.model.depth, config.model.text_depth = text_attention, 2, 0
    config.data.max_caption_tokens = caption_tokens
    patch = tuple(config.model.patch_size)
    patches, positions = patchify(np.zeros((16, 32, 32, 3), np.float32), patch)
    caption = np.arange(1, caption_tokens + 1, dtype=np.int32)
    clip = PackedClip(patches, positions, grid_size(16, 32, 32, patch), 16, 8.0, caption)
    row = pack_rows(
        [[clip]], seq_len=len(patches), patch_dim=patches.shape[1], max_clips=1, text_len=caption_tokens
    )
    batch = jax.tree.map(jnp.asarray, row)
    graphdef, state = nnx.split(build_model(config, 0))

    def loss(state: nnx.State) -> jax.Array:
        return jnp.mean(nnx.merge(graphdef, state)(batch["patches"], jnp.full((1, 1), 0.5), batch) ** 2)

    compiled = jax.jit(jax.grad(loss)).lower(state).compile().cost_analysis()["flops"]
    return model_flops_per_token(config, len(patches)) * len(patches), compiled


@pytest.mark.parametrize("text_attention", ["cross", "joint"])
def test_analytic_flops_track_what_xla_compiles_and_what_a_longer_caption_adds(text_attention):
    (short, short_xla), (long, long_xla) = (_flops(text_attention, n) for n in (8, 64))
    # XLA also counts elementwise work (norms, activations, softmax), which the analytic count omits.
    assert 0.9 * short_xla < short < short_xla and 0.9 * long_xla < long < long_xla
    added, added_xla = long - short, long_xla - short_xla
    if text_attention == "joint":  # A stream of its own: at 64 tokens a quarter of the clip's more.
        assert 0.75 * added_xla < added < 1.05 * added_xla
    else:  # Attention over more keys; the count leaves out the caption tokens' own key/value projections.
        assert 0.5 * added_xla < added < added_xla
