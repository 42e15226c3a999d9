"""The flow loss with sound: each modality's mean over its own tokens and features, the audio weight,
noise of the audio tokens' own, and one compiled train step for every batch."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sora_jax.data.packing import token_widths
from sora_jax.data.pipeline import batch_stream
from sora_jax.diffusion.flow import flow_loss, video_noise
from sora_jax.diffusion.train_step import make_train_step
from sora_jax.parallel.global_batch import BatchLayout, batch_shardings, packed_axes
from sora_jax.parallel.mesh import make_mesh
from sora_jax.parallel.sharding import axis_rules
from sora_jax.train.optimizer import make_optimizer
from sora_jax.train.state import create_train_state
from sora_jax.train.trainer import JittedTrainStep
from tests.model.test_dit_audio import pack, sound_clip, sound_config


def config_and_batch(loss_weight=1.0):
    """Row 0: a clip with sound (8 frames) and an image; row 1: a clip with sound (4 frames)."""
    config = sound_config()
    config.diffusion.noise_correlation = 0.0
    config.diffusion.max_x0_weight = 0.0
    config.diffusion.loss_weight = "clip"
    config.audio.loss_weight = loss_weight
    a = sound_clip(config, 8, 16, 16, 0, [1, 5])
    image = sound_clip(config, 1, 16, 16, 1, [1], audio=False)
    b = sound_clip(config, 4, 16, 24, 2, [1, 7], fps=6.0)
    return config, pack(config, [[a, image], [b]])


def predictor_off_by(batch, key, video_error, audio_error, padding_error=100.0):
    """A velocity predictor off by ``video_error`` on every feature of a video token, ``audio_error``
    on an audio token's, and ``padding_error`` on the features beyond each token's own width and on
    padding tokens; it also records the noisy input it was given."""
    config = sound_config()
    video_width, audio_width = token_widths(config)
    modality, segments = np.asarray(batch["modality"]), np.asarray(batch["segment_ids"])
    width = np.where(modality == 1, audio_width, video_width)[..., None]
    own = np.arange(batch["patches"].shape[-1]) < width
    error = np.where(modality == 1, audio_error, video_error)[..., None]
    error = np.where(own & (segments > 0)[..., None], error, padding_error)
    seen = {}

    def predict(noisy, t):
        seen["noisy"] = noisy
        # The velocity target is noise - clean; flow_loss draws its noise from the second split key.
        noise = video_noise(jax.random.split(key)[1], batch, noisy.shape, 0.0) * own
        return noise - batch["patches"] + jnp.asarray(error, jnp.float32)

    return predict, seen, own


@pytest.mark.parametrize("loss_weight", [1.0, 0.5, 0.0])
def test_a_clip_s_loss_is_its_video_mean_plus_weighted_audio_mean_over_its_own_features(loss_weight):
    config, batch = config_and_batch(loss_weight)
    key = jax.random.key(0)
    predict, seen, own = predictor_off_by(batch, key, video_error=1.0, audio_error=3.0)
    loss, aux = flow_loss(predict, batch, key, config)
    # Padding features carry neither noise nor data, and their error (100) is not counted.
    assert not np.asarray(seen["noisy"])[~own].any()
    np.testing.assert_allclose(np.asarray(aux["clip_video_loss"])[:, :2], [[1.0, 1.0], [1.0, 0.0]], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(aux["clip_audio_loss"])[:, :2], [[9.0, 0.0], [9.0, 0.0]], rtol=1e-5)
    assert np.asarray(aux["clip_has_audio"])[:, :2].tolist() == [[True, False], [True, False]]
    with_sound = 1.0 + loss_weight * 9.0
    np.testing.assert_allclose(
        np.asarray(aux["clip_loss"])[:, :2], [[with_sound, 1.0], [with_sound, 0.0]], rtol=1e-5
    )
    assert float(loss) == pytest.approx((2 * with_sound + 1.0) / 3, rel=1e-5)


@pytest.mark.parametrize("clip_weighting", ["clip", "token"])
def test_at_audio_weight_zero_sound_leaves_the_loss_as_it_would_be_without(clip_weighting):
    key = jax.random.key(1)
    for loss_weight, changes in ((0.0, False), (1.0, True)):
        config, batch = config_and_batch(loss_weight)
        config.diffusion.loss_weight = clip_weighting
        losses = [
            float(flow_loss(predictor_off_by(batch, key, 2.0, audio_error)[0], batch, key, config)[0])
            for audio_error in (0.5, 4.0)
        ]
        assert (losses[0] != pytest.approx(losses[1])) == changes
        if not changes:  # Every video token is off by 2: the loss is 4 whatever the sound.
            assert losses[0] == pytest.approx(4.0, rel=1e-5)
    # A clip whose video is all given (video_to_audio) then has nothing in the loss.
    batch = dict(batch, cond_mask=batch["modality"] == 0)
    config.audio.loss_weight = 0.0
    loss, aux = flow_loss(predictor_off_by(batch, key, 2.0, 7.0)[0], batch, key, config)
    assert float(loss) == 0.0 and not np.asarray(aux["clip_valid"]).any()
    config.audio.loss_weight = 0.5
    loss, aux = flow_loss(predictor_off_by(batch, key, 2.0, 7.0)[0], batch, key, config)
    assert float(loss) == pytest.approx(0.5 * 49.0, rel=1e-5)
    assert np.asarray(aux["clip_valid"]).tolist() == np.asarray(aux["clip_has_audio"]).tolist()


def test_audio_tokens_get_noise_of_their_own_and_only_in_their_own_features():
    config, batch = config_and_batch()
    shape = batch["patches"].shape
    shared = np.asarray(video_noise(jax.random.key(0), batch, shape, 0.9))
    own = np.asarray(jax.random.normal(jax.random.key(0), shape))
    audio = np.asarray(batch["modality"]) == 1
    np.testing.assert_array_equal(shared[audio], own[audio])
    assert not np.allclose(shared[~audio], own[~audio])


def test_one_compiled_train_step_trains_every_batch_and_logs_each_modality_s_loss():
    config = sound_config()
    mesh = make_mesh(config)
    with jax.set_mesh(mesh):
        graphdef, state, shardings = create_train_state(config, mesh)
        layout = BatchLayout.of(config, mesh, packed_axes(config))
        step = JittedTrainStep(
            make_train_step(graphdef, config, make_optimizer(config)),
            shardings,
            batch_shardings(mesh, axis_rules(config), packed_axes(config)),
        )
        audio_tokens = set()
        for host_batch in itertools.islice(batch_stream(config, 8), 3):
            audio_tokens.add(int((host_batch["modality"] == 1).sum()))
            state, metrics = step(state, layout.to_global(host_batch))
            assert all(np.isfinite(float(metrics[k])) for k in ("loss", "video_loss", "audio_loss"))
            assert float(metrics["audio_loss"]) > 0.1
    assert step._cache_size() == 1 and len(audio_tokens) > 1
