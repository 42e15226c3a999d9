import jax.numpy as jnp
import numpy as np
import pytest

from sora_jax.autoencoder.streaming import (
    blend_weights,
    decode_chunked,
    decode_tiled,
    encode_chunked,
    encode_tiled,
    safe_margin,
    tile_starts,
)

# Chunks compute the same sums as the whole video, on differently shaped arrays: XLA may order
# the float32 additions differently, nothing more (measured differences ~1e-6 on values of ~1).
CHUNK_TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def _video(frames, height=8, width=8, seed=0):
    # One clip of 8x8 pixels, as in test_vae_model: the whole-video programs compile once for both.
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.uniform(-1, 1, (1, frames, height, width, 3)), jnp.float32)


@pytest.mark.parametrize("chunk_frames", [2, 6])
def test_chunked_encode_equals_whole_video(micro_vae, chunk_frames):
    video = _video(9)  # chunk 2: frames [0, 3), [3, 5), [5, 7), [7, 9); chunk 6: [0, 7), [7, 9).
    whole = encode_chunked(micro_vae, video)
    chunked = encode_chunked(micro_vae, video, chunk_frames)
    assert chunked.mean.shape == whole.mean.shape == (1, 5, 4, 4, 4)
    np.testing.assert_allclose(chunked.mean, whole.mean, **CHUNK_TOLERANCE)
    np.testing.assert_allclose(chunked.logvar, whole.logvar, **CHUNK_TOLERANCE)


def test_chunked_encode_is_exact_with_per_frame_group_norm(micro_group_vae):
    video = _video(9, seed=1)
    whole = encode_chunked(micro_group_vae, video)
    np.testing.assert_allclose(encode_chunked(micro_group_vae, video, 2).mean, whole.mean, **CHUNK_TOLERANCE)


@pytest.mark.parametrize("chunk_latents", [1, 3])
def test_chunked_decode_equals_whole_video(micro_vae, chunk_latents):
    latents = jnp.asarray(np.random.default_rng(2).normal(size=(1, 5, 4, 4, 4)), jnp.float32)
    whole = decode_chunked(micro_vae, latents)
    chunked = decode_chunked(micro_vae, latents, chunk_latents)
    assert chunked.shape == whole.shape == (1, 9, 8, 8, 3)
    np.testing.assert_allclose(chunked, whole, **CHUNK_TOLERANCE)


def test_chunks_must_hold_whole_latent_frames(micro_vae):
    with pytest.raises(ValueError, match="multiple of the temporal factor 2"):
        encode_chunked(micro_vae, _video(9), 3)


def test_blend_weights_are_a_partition_of_unity_that_skips_the_margin():
    overlap, margin, length = 10, 3, 24
    left = blend_weights(length, cut_before=False, cut_after=True, overlap=overlap, margin=margin)
    right = blend_weights(length, cut_before=True, cut_after=False, overlap=overlap, margin=margin)
    np.testing.assert_allclose(left[-overlap:] + right[:overlap], 1.0, atol=1e-6)
    assert np.all(right[:margin] == 0) and np.all(left[-margin:] == 0)
    assert np.all(left[: length - overlap] == 1) and np.all(np.diff(right[:overlap]) >= 0)


@pytest.mark.parametrize(("size", "tile", "overlap"), [(80, 54, 27), (100, 30, 10), (30, 40, 10)])
def test_tiles_cover_the_frame_and_overlap_enough(size, tile, overlap):
    starts = tile_starts(size, tile, overlap)
    assert starts[0] == 0 and min(starts[-1] + tile, size) == size
    assert all(a + tile - b >= overlap for a, b in zip(starts, starts[1:], strict=False))


def test_tiled_encode_and_decode_equal_the_whole_frame(micro_vae):
    """With the blending margin at the receptive reach every blended value is a convex combination of
    exact tile values, so tiles agree with the whole frame to float tolerance (rms norms)."""
    margin = safe_margin(micro_vae)  # 26 pixels for this VAE.
    overlap, tile = 2 * margin + 2, 4 * margin + 4
    image = _video(1, height=160, width=112, seed=3)  # 2 x 2 tiles of 108 pixels.
    whole = encode_chunked(micro_vae, image)
    tiled = encode_tiled(micro_vae, image, tile, overlap, margin)
    np.testing.assert_allclose(tiled.mean, whole.mean, **CHUNK_TOLERANCE)
    np.testing.assert_allclose(tiled.logvar, whole.logvar, **CHUNK_TOLERANCE)

    decoded = decode_chunked(micro_vae, whole.mean)
    np.testing.assert_allclose(
        decode_tiled(micro_vae, whole.mean, tile, overlap, margin), decoded, **CHUNK_TOLERANCE
    )

    # Without the margin, values that saw a tile's zero padding are blended in: an approximation.
    approximate = decode_tiled(micro_vae, whole.mean, tile, overlap, 0)
    assert np.abs(np.asarray(approximate - decoded)).max() > 1e-3


def test_a_trained_autoencoder_encodes_large_frames_in_exact_tiles(micro_vae):
    """``sora-jax encode --tile`` sets ``TrainedAutoencoder.tile``: frames larger than a tile are
    encoded tile by tile with the exact margin, and equal the whole-frame encoding."""
    from sora_jax.autoencoder.trained import TrainedAutoencoder

    whole = TrainedAutoencoder(micro_vae, micro_vae.config, "micro", 0)
    frames = np.asarray((_video(3, height=160, width=112, seed=4)[0] + 1.0) * 127.5, np.uint8)
    tiled = TrainedAutoencoder(micro_vae, micro_vae.config, "micro", 0, tile=108)
    assert tiled.tiling() == (54, 26)
    np.testing.assert_allclose(tiled.encode(frames), whole.encode(frames), **CHUNK_TOLERANCE)
    too_small = TrainedAutoencoder(micro_vae, micro_vae.config, "micro", 0, tile=64)
    with pytest.raises(ValueError, match="at least 108"):
        too_small.tiling()
