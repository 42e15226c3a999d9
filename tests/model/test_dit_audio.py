"""The DiT with sound: audio tokens of a clip share its segment, and the model keeps each clip's tokens
(video and audio) to themselves, whatever shares the row."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.world_tiny import get_config
from sora_jax.audio.codec import audio_token_times, clip_samples, codec_from_config
from sora_jax.data.packing import PackedClip, pack_rows, token_widths
from sora_jax.data.patches import grid_size, patchify
from sora_jax.diffusion.flow import flow_loss, velocity_predictor
from sora_jax.model.dit import build_model
from tests.perturb import perturbed


def sound_config():
    config = get_config("test")
    config.audio.enabled = True
    return config


def sound_clip(config, frames, height, width, seed, caption, fps=8.0, audio=True):
    """A clip of random frames and, with ``audio``, random sound of exactly its duration."""
    patch = tuple(config.model.patch_size)
    rng = np.random.default_rng(seed)
    video = rng.normal(size=(frames, height, width, 3)).astype(np.float32)
    patches, positions = patchify(video, patch)
    sound = {}
    if audio:
        codec = codec_from_config(config.audio)
        samples = clip_samples(frames, fps, codec.sample_rate)
        waveform = np.clip(0.3 * rng.normal(size=(samples, codec.channels)), -1, 1).astype(np.float32)
        tokens = codec.encode(waveform)
        times = audio_token_times(len(tokens), codec.token_samples, codec.sample_rate, fps, patch[0])
        sound = dict(audio_patches=tokens, audio_times=times)
    grid = grid_size(frames, height, width, patch)
    return PackedClip(patches, positions, grid, frames, fps, np.asarray(caption, np.int32), **sound)


def pack(config, rows, seq_len=128, max_clips=3):
    batch = pack_rows(
        rows,
        seq_len=seq_len,
        patch_dim=max(token_widths(config)),
        max_clips=max_clips,
        text_len=8,
        audio=True,
    )
    return jax.tree.map(jnp.asarray, batch)


def perturbed_model(config):
    """A model whose zero-initialised layers are made non-zero, so outputs depend on everything."""
    graphdef, params = nnx.split(build_model(config, 0), nnx.Param)
    return nnx.merge(graphdef, perturbed(params, seed=1))


@nnx.jit
def apply(model, noisy, timesteps, batch):
    return model(noisy, timesteps, batch)


def test_a_clip_s_video_and_audio_outputs_do_not_depend_on_what_shares_its_row():
    config = sound_config()
    model = perturbed_model(config)
    a = sound_clip(config, 8, 16, 16, 0, [1, 5, 9])
    b = sound_clip(config, 4, 16, 24, 1, [1, 7], fps=6.0)
    c = sound_clip(config, 1, 8, 8, 2, [1], audio=False)  # An image: no sound.
    packed, alone = pack(config, [[b, a, c]]), pack(config, [[a]])
    assert int(packed["modality"].sum()) == a.num_audio_tokens + b.num_audio_tokens > 0
    out_packed = apply(model, packed["patches"], jnp.asarray([[0.3, 0.7, 0.5]]), packed)
    out_alone = apply(model, alone["patches"], jnp.asarray([[0.7, 0.0, 0.0]]), alone)
    in_packed = np.asarray(packed["segment_ids"][0]) == 2
    np.testing.assert_allclose(
        np.asarray(out_packed[0][in_packed]), np.asarray(out_alone[0][: a.num_tokens]), atol=2e-5
    )
    # Each modality's output is zero beyond its own width, and the heads differ.
    video_width, audio_width = token_widths(config)
    modality = np.asarray(packed["modality"][0])
    out = np.asarray(out_packed[0])
    assert not out[modality == 0, video_width:].any() and not out[modality == 1, audio_width:].any()
    assert np.abs(out[modality == 1, :audio_width]).mean() > 1e-3


def test_a_clip_s_loss_does_not_depend_on_what_shares_its_row():
    """Same row position, same draws: clip 1's video, audio and whole loss are those it has alone."""
    config = sound_config()
    config.diffusion.noise_correlation = 0.5
    model = perturbed_model(config)
    a = sound_clip(config, 8, 16, 16, 0, [1, 5, 9])
    b = sound_clip(config, 4, 16, 24, 1, [1, 7], fps=6.0)
    key = jax.random.key(4)

    def losses(batch):
        _, aux = flow_loss(velocity_predictor(model, batch, config.diffusion), batch, key, config)
        return {name: float(aux[name][0, 0]) for name in ("clip_loss", "clip_video_loss", "clip_audio_loss")}

    together, alone = losses(pack(config, [[a, b]])), losses(pack(config, [[a]]))
    assert together["clip_audio_loss"] > 0 and together["clip_video_loss"] > 0
    for name, value in alone.items():
        np.testing.assert_allclose(together[name], value, rtol=2e-5, err_msg=name)


def test_rope_places_audio_tokens_by_their_times():
    """Shifting the times of a clip's audio tokens changes what its video tokens make of them."""
    config = sound_config()
    model = perturbed_model(config)
    batch = pack(config, [[sound_clip(config, 8, 16, 16, 0, [1, 5])]])
    t = jnp.asarray([[0.5, 0.0, 0.0]])
    out = apply(model, batch["patches"], t, batch)
    shifted = dict(batch, times=jnp.where(batch["modality"] == 1, batch["times"] + 0.5, batch["times"]))
    moved = apply(model, batch["patches"], t, shifted)
    video = np.asarray(batch["modality"][0]) == 0
    assert np.abs(np.asarray(out[0][video]) - np.asarray(moved[0][video])).max() > 1e-4
    # A shift of every token's time together changes nothing: only time differences matter.
    together = apply(model, batch["patches"], t, dict(batch, times=batch["times"] + 3.0))
    np.testing.assert_allclose(np.asarray(together), np.asarray(out), atol=2e-5)


def test_sound_adds_its_layers_and_leaves_every_other_parameter_as_it_was():
    config = get_config("test")
    _, plain = nnx.split(build_model(config, 0), nnx.Param)
    _, with_sound = nnx.split(build_model(sound_config(), 0), nnx.Param)
    plain = {jax.tree_util.keystr(p): v for p, v in jax.tree.leaves_with_path(plain)}
    sound = {jax.tree_util.keystr(p): v for p, v in jax.tree.leaves_with_path(with_sound)}
    added = sorted(set(sound) - set(plain))
    assert set(plain) <= set(sound)
    assert all(name.split("'")[1] in ("audio_embed", "audio_marker", "audio_final") for name in added), added
    for name, value in plain.items():
        np.testing.assert_array_equal(np.asarray(sound[name]), np.asarray(value), err_msg=name)
    # A fresh model predicts zero for audio tokens too (zero-initialised output head).
    batch = pack(sound_config(), [[sound_clip(sound_config(), 8, 16, 16, 0, [1])]])
    fresh = build_model(sound_config(), 0)
    assert not np.asarray(apply(fresh, batch["patches"], jnp.asarray([[0.5, 0, 0]]), batch)).any()
