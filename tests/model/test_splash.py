"""Splash attention equals the dense segment-masked attention, and compiles for real TPU topologies."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from sora_jax.model.attention import segment_mask
from sora_jax.model.splash import block_size, splash_attention
from sora_jax.parallel.tpu import topology_devices


def dense_attention(q, k, v, q_segments, kv_segments):
    return jax.nn.dot_product_attention(q, k, v, mask=segment_mask(q_segments, kv_segments))


def random_qkv(seed, b, length, kv_length, heads, head_dim, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(b, length, heads, head_dim))
    k = rng.normal(size=(b, kv_length, heads, head_dim))
    v = rng.normal(size=(b, kv_length, heads, head_dim))
    return tuple(jnp.asarray(t, dtype) for t in (q, k, v))


def segments(rows: list[list[tuple[int, int]]], length: int) -> jax.Array:
    """``[B, length]`` ids from per-row ``(segment id, token count)`` runs; the rest is padding (0)."""
    ids = np.zeros((len(rows), length), np.int32)
    for row, runs in enumerate(rows):
        start = 0
        for segment, count in runs:
            ids[row, start : start + count] = segment
            start += count
    return jnp.asarray(ids)


def test_block_size_rounds_to_lanes_and_caps_at_512():
    assert [block_size(n) for n in (1, 96, 128, 200, 512, 513, 4096)] == [128, 128, 128, 256, 512, 512, 512]


def test_packed_self_attention_matches_dense():
    # 200 tokens: not a multiple of the 256-token block, so the kernel sees added keys and queries.
    q, k, v = random_qkv(0, 2, 200, 200, heads=2, head_dim=32)
    ids = segments([[(1, 70), (2, 80)], [(3, 190)]], 200)

    out = splash_attention(q, k, v, ids, ids, interpret=True)

    assert out.shape == q.shape
    np.testing.assert_allclose(out, dense_attention(q, k, v, ids, ids), atol=2e-5, rtol=2e-5)


def test_packed_clip_does_not_see_its_row_neighbours():
    q, k, v = random_qkv(1, 1, 160, 160, heads=1, head_dim=16)
    ids = segments([[(1, 60), (2, 100)]], 160)
    # Changing clip 2's keys and values must leave clip 1's outputs untouched.
    k2, v2 = k.at[:, 60:].multiply(-3.0), v.at[:, 60:].add(5.0)

    out = splash_attention(q, k, v, ids, ids, interpret=True)
    out2 = splash_attention(q, k2, v2, ids, ids, interpret=True)

    np.testing.assert_array_equal(out[:, :60], out2[:, :60])
    assert not np.allclose(out[:, 60:], out2[:, 60:])


def test_cross_attention_to_shorter_text_matches_dense():
    # 300 video tokens attend to 40 text tokens (K != L, neither a multiple of the block).
    q, k, v = random_qkv(2, 2, 300, 40, heads=2, head_dim=16)
    video_ids = segments([[(1, 100), (2, 150)], [(3, 300)]], 300)
    text_ids = segments([[(1, 10), (2, 20)], [(3, 40)]], 40)  # row 1's text has no padding

    out = splash_attention(q, k, v, video_ids, text_ids, interpret=True)
    ref = dense_attention(q, k, v, video_ids, text_ids)

    assert out.shape == q.shape
    assert np.isfinite(np.asarray(out)).all(), "queries with no matching key must stay finite"
    # Row 0's padding (id 0) matches row 0's text padding; every row-1 token is a clip token.
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=2e-5)


def test_query_with_no_matching_key_is_finite():
    q, k, v = random_qkv(3, 1, 64, 24, heads=1, head_dim=8)
    video_ids = segments([[(1, 40)]], 64)  # 24 padding queries (id 0) ...
    text_ids = segments([[(1, 24)]], 24)  # ... and no text padding for them to attend to

    out = splash_attention(q, k, v, video_ids, text_ids, interpret=True)

    assert np.isfinite(np.asarray(out)).all()
    np.testing.assert_allclose(
        out[:, :40], dense_attention(q, k, v, video_ids, text_ids)[:, :40], atol=2e-5, rtol=2e-5
    )


@pytest.mark.slow
def test_gradients_match_dense():
    q, k, v = random_qkv(4, 2, 150, 40, heads=2, head_dim=16)
    video_ids = segments([[(1, 60), (2, 70)], [(3, 150)]], 150)
    text_ids = segments([[(1, 15), (2, 20)], [(3, 30)]], 40)
    real = (video_ids > 0)[:, :, None, None]

    def loss(attention):
        def value(q, k, v):
            out = attention(q, k, v, video_ids, text_ids)
            return jnp.sum(jnp.where(real, out, 0.0) ** 2)

        return value

    splash_loss = loss(lambda *a: splash_attention(*a, interpret=True))
    grads = jax.grad(splash_loss, argnums=(0, 1, 2))(q, k, v)
    ref_grads = jax.grad(loss(dense_attention), argnums=(0, 1, 2))(q, k, v)

    for grad, ref in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(grad, ref, atol=1e-4, rtol=1e-4)


def test_bfloat16_inputs_give_bfloat16_close_to_float32():
    q, k, v = random_qkv(5, 1, 128, 128, heads=2, head_dim=64)
    ids = segments([[(1, 50), (2, 78)]], 128)
    as_bf16 = [t.astype(jnp.bfloat16) for t in (q, k, v)]

    out = splash_attention(*as_bf16, ids, ids, interpret=True)

    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(out.astype(jnp.float32), dense_attention(q, k, v, ids, ids), atol=3e-2)


def test_mismatched_shapes_are_rejected():
    q, k, v = random_qkv(6, 1, 16, 8, heads=2, head_dim=8)
    ids = jnp.ones((1, 16), jnp.int32)
    with pytest.raises(ValueError, match="segment ids"):
        splash_attention(q, k, v, ids, ids)
    with pytest.raises(ValueError, match=r"\[B,K,N,H\]"):
        splash_attention(q, k[:, :, :1], v, ids, ids[:, :8])


@pytest.mark.parametrize(("accelerator", "head_dim"), [("v5p-8", 128), ("v6e-4", 64)])
def test_compiles_under_shard_map_for_tpu(accelerator, head_dim):
    devices = topology_devices(accelerator)  # 4 chips
    mesh = Mesh(np.array(devices).reshape(2, 2), ("data", "tensor"))
    rows, length, text_length, heads = 4, 1000, 96, 4
    tokens_spec, ids_spec = P("data", None, "tensor"), P("data")

    def attention(q, k, v, q_ids, kv_ids):
        # Pallas calls carry no varying-manual-axes types, hence check_vma=False.
        return jax.shard_map(
            splash_attention,
            mesh=mesh,
            in_specs=(tokens_spec,) * 3 + (ids_spec,) * 2,
            out_specs=tokens_spec,
            check_vma=False,
        )(q, k, v, q_ids, kv_ids)

    def loss(q, k, v, q_ids, kv_ids):
        return jnp.sum(attention(q, k, v, q_ids, kv_ids).astype(jnp.float32) ** 2)

    def abstract(shape, dtype, spec):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))

    args = (
        abstract((rows, length, heads, head_dim), jnp.bfloat16, tokens_spec),
        abstract((rows, text_length, heads, head_dim), jnp.bfloat16, tokens_spec),
        abstract((rows, text_length, heads, head_dim), jnp.bfloat16, tokens_spec),
        abstract((rows, length), jnp.int32, ids_spec),
        abstract((rows, text_length), jnp.int32, ids_spec),
    )
    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(*args).compile()

    # The Pallas kernel became a Mosaic custom call, not a fallback.
    assert "tpu_custom_call" in set(re.findall(r'custom_call_target="([^"]+)"', compiled.as_text()))
    memory = compiled.memory_analysis()
    assert memory is not None
    # Sizes are per device: each holds half the rows and half the heads of q, k, v (bf16) and half
    # the rows of the int32 ids; the layout may pad a little.
    per_device = (2 * length * 2 * head_dim + 2 * 2 * text_length * 2 * head_dim) * 2 + 2 * (
        length + text_length
    ) * 4
    assert per_device <= memory.argument_size_in_bytes < 1.1 * per_device
    assert memory.temp_size_in_bytes > 0
