"""Dense segment-masked attention, as XLA computes it here, against jax's own softmax attention."""

import jax
import jax.numpy as jnp
import numpy as np

from sora_jax.model.attention import dense_attention, segment_mask


def _inputs(dtype=jnp.float32):
    rng = np.random.default_rng(0)
    # Large logits (no qk-norm): the softmax must still be stable.
    q, k, v = (jnp.asarray(rng.normal(size=(2, 24, 3, 8)) * 4, dtype) for _ in range(3))
    # Two rows of packed clips, the second ending in padding (segment 0).
    segments = jnp.asarray([[1] * 10 + [2] * 9 + [3] * 5, [1] * 15 + [0] * 9], jnp.int32)
    return q, k, v, segments


def _reference(q, k, v, segments):
    mask = segment_mask(segments, segments)
    return jax.nn.dot_product_attention(q, k, v, mask=mask)


def test_dense_attention_matches_softmax_attention_and_its_gradients():
    q, k, v, segments = _inputs()
    ours = lambda q, k, v: dense_attention(q, k, v, segments, segments)  # noqa: E731
    ref = lambda q, k, v: _reference(q, k, v, segments)  # noqa: E731
    np.testing.assert_allclose(ours(q, k, v), ref(q, k, v), atol=2e-5, rtol=2e-5)
    loss = lambda f: lambda *a: jnp.sum(jnp.sin(f(*a)))  # noqa: E731
    for got, want in zip(
        jax.grad(loss(ours), argnums=(0, 1, 2))(q, k, v),
        jax.grad(loss(ref), argnums=(0, 1, 2))(q, k, v),
        strict=True,
    ):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_tokens_attend_only_within_their_clip():
    q, k, v, segments = _inputs()
    out = dense_attention(q, k, v, segments, segments)
    # Changing clip 2's keys and values leaves clips 1 and 3 as they were.
    k2 = k.at[0, 10:19].set(0.0)
    v2 = v.at[0, 10:19].set(9.0)
    moved = dense_attention(q, k2, v2, segments, segments)
    np.testing.assert_array_equal(moved[0, :10], out[0, :10])
    np.testing.assert_array_equal(moved[0, 19:], out[0, 19:])
    assert not np.allclose(moved[0, 10:19], out[0, 10:19])


def test_bfloat16_inputs_are_as_close_to_float32_as_jax_s_own_attention():
    q, k, v, segments = _inputs(jnp.bfloat16)
    out = dense_attention(q, k, v, segments, segments)
    assert out.dtype == jnp.bfloat16
    exact = _reference(*(x.astype(jnp.float32) for x in (q, k, v)), segments)
    ours = np.abs(np.asarray(out, np.float32) - exact)
    theirs = np.abs(np.asarray(_reference(q, k, v, segments), np.float32) - exact)
    # Both round the weights to bfloat16 before the weighted sum (8 bits of mantissa).
    assert ours.mean() <= 1.5 * theirs.mean() and ours.max() < 0.2
