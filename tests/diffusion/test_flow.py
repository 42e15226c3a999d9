import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.world_tiny import get_config
from sora_jax.diffusion.flow import (
    flow_loss,
    resolution_shift,
    sample_timesteps,
    shift_timesteps,
    video_noise,
)
from sora_jax.diffusion.sampler import guided, integrate, timestep_grid


def _config():
    """world_tiny's test config with per-frame noise and the plain velocity loss: these tests derive
    the noise and the loss by hand."""
    config = get_config("test")
    config.diffusion.noise_correlation = 0.0
    config.diffusion.max_x0_weight = 0.0
    return config


def _batch(rows=2, length=12, clips=3, patch_dim=5):
    rng = np.random.default_rng(0)
    segment_ids = np.array([[1] * 5 + [2] * 4 + [0] * 3, [1] * 12])[:rows]
    return {
        "patches": jnp.asarray(rng.normal(size=(rows, length, patch_dim)), jnp.float32),
        "segment_ids": jnp.asarray(segment_ids, jnp.int32),
        "cond_mask": jnp.zeros((rows, length), bool),
        "clip_grid": jnp.ones((rows, clips, 3), jnp.int32),
    }


def test_flow_loss_is_zero_for_the_true_velocity():
    config = _config()
    batch = _batch()
    key = jax.random.key(3)
    _, noise_key = jax.random.split(key)
    noise = jax.random.normal(noise_key, batch["patches"].shape)
    true_velocity = lambda noisy, t: noise - batch["patches"]  # noqa: E731
    loss, aux = flow_loss(true_velocity, batch, key, config)
    assert float(loss) == pytest.approx(0.0, abs=1e-10)
    assert aux["clip_valid"].tolist() == [[True, True, False], [True, False, False]]
    # A zero prediction's loss is E|noise - x0|^2 per feature: about 2 for unit-variance data.
    zero_loss, _ = flow_loss(lambda noisy, t: jnp.zeros_like(noisy), batch, key, config)
    assert 1.0 < float(zero_loss) < 3.5


def test_flow_loss_weights_clips_equally_and_skips_padding_and_conditioning():
    config = _config()
    config.diffusion.loss_weight = "clip"
    batch = _batch()
    # An error of 1 on clip 1 of row 0 only (5 tokens), 3 on clip 2 (4 tokens), 100 on padding.
    error = jnp.asarray(
        np.select(
            [np.asarray(batch["segment_ids"]) == 1, np.asarray(batch["segment_ids"]) == 2],
            [1.0, 3.0],
            100.0,
        )
    )
    error = error.at[1].set(0.0)
    key = jax.random.key(0)
    _, noise_key = jax.random.split(key)
    noise = jax.random.normal(noise_key, batch["patches"].shape)
    predict = lambda noisy, t: noise - batch["patches"] + error[..., None]  # noqa: E731
    loss, _ = flow_loss(predict, batch, key, config)
    assert float(loss) == pytest.approx((1.0 + 9.0 + 0.0) / 3, rel=1e-5)
    batch["cond_mask"] = batch["segment_ids"] == 2  # Conditioning tokens leave the loss.
    loss, aux = flow_loss(predict, batch, key, config)
    assert float(loss) == pytest.approx((1.0 + 0.0) / 2, rel=1e-5)


def test_frames_given_inside_generated_tokens_are_seen_clean_and_left_out_of_the_loss():
    config = _config()
    config.model.patch_size = (2, 1, 1)  # Features 0-2 are a token's first frame, 3-5 its second.
    batch = _batch(patch_dim=6)
    batch["given_frames"] = jnp.zeros((2, 12), jnp.int32).at[0, :5].set(1)  # Clip 1: frame 0 given.
    key = jax.random.key(0)
    _, noise_key = jax.random.split(key)
    noise = jax.random.normal(noise_key, batch["patches"].shape)
    seen = {}

    def predict(noisy, t):
        seen["noisy"] = noisy
        # Off by 1 on the second frame's features and by 50 on the first's (the given frame).
        return noise - batch["patches"] + jnp.asarray([50.0] * 3 + [1.0] * 3)

    loss, _ = flow_loss(predict, batch, key, config, timesteps=jnp.float32(0.5))
    given = np.zeros((2, 12, 6), bool)
    given[0, :5, :3] = True
    np.testing.assert_array_equal(np.asarray(seen["noisy"])[given], np.asarray(batch["patches"])[given])
    assert not np.isclose(np.asarray(seen["noisy"])[~given], np.asarray(batch["patches"])[~given]).any()
    # Clip 1 is scored on its generated frame only (error 1); the other clips on every feature.
    other = (50.0**2 + 1.0) / 2
    assert float(loss) == pytest.approx((5 * 1.0 + 4 * other + 12 * other) / 21, rel=1e-5)


def _predict_with_errors(batch, key, errors):
    """A velocity predictor off by ``errors[segment]`` (padding: 100) on every feature."""
    segments = np.asarray(batch["segment_ids"])
    error = jnp.asarray(np.select([segments == s for s in errors], list(errors.values()), 100.0))
    _, noise_key = jax.random.split(key)
    noise = jax.random.normal(noise_key, batch["patches"].shape)
    return lambda noisy, t: noise - batch["patches"] + error[..., None]


def test_token_weighted_loss_counts_each_clip_by_its_tokens():
    config = _config()
    config.diffusion.loss_weight = "token"
    batch = _batch(rows=1)  # Clip 1: 5 tokens off by 1; clip 2: 4 tokens off by 3; 3 of padding.
    key = jax.random.key(0)
    loss, aux = flow_loss(_predict_with_errors(batch, key, {1: 1.0, 2: 3.0}), batch, key, config)
    assert float(loss) == pytest.approx((5 * 1.0 + 4 * 9.0) / 9, rel=1e-5)
    np.testing.assert_allclose(np.asarray(aux["clip_loss"][0, :2]), [1.0, 9.0], rtol=1e-5)


def test_capped_clean_data_weight_lowers_only_nearly_clean_clips():
    config = _config()
    config.diffusion.loss_weight = "clip"
    config.diffusion.max_x0_weight = 4.0
    batch = _batch(rows=1)
    key = jax.random.key(0)
    predict = _predict_with_errors(batch, key, {1: 1.0, 2: 1.0})
    # Clean-data weight 1 / t^2: 25 at t = 0.2, capped to 4 (x 0.16); 1.56 at t = 0.8, kept.
    _, aux = flow_loss(predict, batch, key, config, timesteps=jnp.asarray([[0.2, 0.8, 0.5]]))
    np.testing.assert_allclose(np.asarray(aux["clip_loss"][0, :2]), [1.0, 1.0], rtol=1e-5)  # Evaluation.
    capped, _ = flow_loss(predict, batch, key, config)
    config.diffusion.max_x0_weight = 0.0
    uncapped, aux = flow_loss(predict, batch, key, config)
    t = np.asarray(aux["clip_t"][0, :2])
    expected = np.mean(np.minimum(1.0, 4.0 * t**2))
    assert float(capped) == pytest.approx(float(uncapped) * expected, rel=1e-5)


def test_video_noise_is_shared_through_time_at_each_spatial_patch():
    from sora_jax.eval.generate import prompt_batch

    config = _config()
    pt = config.model.patch_size[0]
    batch = {k: jnp.asarray(v) for k, v in prompt_batch(config, "a red ball", 8 * pt, 32, 32).items()}
    shape = (2, batch["segment_ids"].shape[1], 32)  # 64 tokens x 32 features a temporal patch.
    groups = lambda n: np.asarray(n[0]).reshape(8, -1, 32)  # noqa: E731 - [T', H' W', P]
    shared = groups(video_noise(jax.random.key(0), batch, shape, 0.6))
    independent = groups(video_noise(jax.random.key(0), batch, shape, 0.0))
    assert abs(shared.std() - 1.0) < 0.05 and abs(independent.std() - 1.0) < 0.05
    corr = lambda a, b: np.corrcoef(a.ravel(), b.ravel())[0, 1]  # noqa: E731
    assert abs(corr(shared[0], shared[5]) - 0.6) < 0.1  # Same (h, w), other temporal patch.
    assert abs(corr(shared[0, :-1], shared[5, 1:])) < 0.1  # Other (h, w).
    assert abs(corr(independent[0], independent[5])) < 0.1
    # Without sharing it is the plain normal draw, as before the option existed.
    np.testing.assert_array_equal(
        np.asarray(video_noise(jax.random.key(0), batch, shape, 0.0)),
        np.asarray(jax.random.normal(jax.random.key(0), shape)),
    )


def test_timesteps_lie_in_the_unit_interval_and_shift_with_clip_size():
    config = get_config("test").diffusion
    tokens = jnp.asarray([[config.shift_base_tokens, 16 * config.shift_base_tokens]] * 4096)
    t = sample_timesteps(jax.random.key(0), tokens, config)
    assert float(t.min()) > 0.0 and float(t.max()) < 1.0
    assert float(t[:, 1].mean()) > float(t[:, 0].mean()) + 0.1  # Big clips see more noise.
    assert float(resolution_shift(jnp.asarray(16 * config.shift_base_tokens), config)) == 4.0
    np.testing.assert_allclose(shift_timesteps(jnp.asarray([0.0, 1.0]), 3.0), [0.0, 1.0])


def test_a_uniform_share_of_timesteps_reaches_low_noise_for_large_clips():
    config = get_config("test").diffusion
    tokens = jnp.full((20_000, 2), 16 * config.shift_base_tokens)  # Shifted by 4.
    shifted = sample_timesteps(jax.random.key(0), tokens, config)
    # Without the option: the draw of runs before it, and almost nothing below t = 0.1.
    normal = jax.random.normal(jax.random.key(0), tokens.shape)
    unmixed = shift_timesteps(jax.nn.sigmoid(config.logit_mean + config.logit_std * normal), 4.0)
    np.testing.assert_array_equal(np.asarray(shifted), np.asarray(unmixed))
    assert float((shifted < 0.1).mean()) < 0.002
    config.uniform_t = 0.25
    mixed = np.asarray(sample_timesteps(jax.random.key(0), tokens, config))
    assert 0.0 <= mixed.min() and mixed.max() <= 1.0
    # A quarter of the draws spread evenly over [0, 1]: 2.5% of all below 0.1, 5% in [0.4, 0.6].
    assert abs(float((mixed < 0.1).mean()) - 0.025) < 0.004
    shifted_mass = float(((shifted > 0.4) & (shifted < 0.6)).mean())
    assert abs(float(((mixed > 0.4) & (mixed < 0.6)).mean()) - (0.75 * shifted_mass + 0.05)) < 0.01
    config.uniform_t = 1.0
    assert abs(float(sample_timesteps(jax.random.key(1), tokens, config).mean()) - 0.5) < 0.01


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_sampler_integrates_a_straight_flow_exactly(method):
    target = jnp.asarray([[0.5, -2.0], [1.5, 3.0]])
    noise = jnp.asarray([[1.0, 1.0], [-1.0, 0.0]])
    # The exact velocity field of straight paths from noise to one point: v = (x - target) / t.
    velocity = lambda x, t: (x - target) / t  # noqa: E731
    for shift in (1.0, 3.0):
        out = integrate(velocity, noise, timestep_grid(7, shift), method)
        np.testing.assert_allclose(out, target, atol=1e-5)


def test_euler_reaches_the_end_of_a_constant_flow_and_heun_is_second_order():
    noise = jnp.ones((3,))
    np.testing.assert_allclose(
        integrate(lambda x, t: jnp.full_like(x, 2.0), noise, timestep_grid(5), "euler"),
        -1.0,
        atol=1e-6,
    )
    # dx/dt = x: exact x(0) = x(1) / e. Heun's error is far below Euler's at equal steps.
    errors = {
        m: abs(float(integrate(lambda x, t: x, noise, timestep_grid(8), m)[0]) - np.exp(-1.0))
        for m in ("euler", "heun")
    }
    assert errors["heun"] < errors["euler"] / 5


def test_guidance_extrapolates_from_unconditional_to_conditional():
    velocity = guided(lambda x, t: jnp.stack([x + 1.0, x]), scale=3.0)
    np.testing.assert_allclose(velocity(jnp.zeros(2), 0.5), 3.0)


def test_dual_guidance_scales_conditioning_and_text_separately():
    # Rows: caption and frames (5), frames only (3), neither (0).
    velocity = guided(lambda x, t: jnp.stack([x + 5.0, x + 3.0, x]), scale=2.0, cond_scale=1.5)
    np.testing.assert_allclose(velocity(jnp.zeros(2), 0.5), 1.5 * 3.0 + 2.0 * 2.0)


def test_guidance_acts_only_inside_its_interval_of_times():
    # Outside (lo, hi) both scales are 1: the fully conditioned row's velocity as it is.
    rows = lambda x, t: jnp.stack([x + 5.0, x + 3.0, x])  # noqa: E731
    two = guided(lambda x, t: rows(x, t)[:2], scale=3.0, interval=(0.3, 0.8))
    three = guided(rows, scale=2.0, cond_scale=1.5, interval=(0.3, 0.8))
    x = jnp.zeros(2)
    for t, inside in ((0.1, False), (0.3, True), (0.5, True), (0.8, True), (0.95, False)):
        np.testing.assert_allclose(two(x, jnp.float32(t)), 3.0 + 3.0 * 2.0 if inside else 5.0)
        np.testing.assert_allclose(three(x, jnp.float32(t)), 1.5 * 3.0 + 2.0 * 2.0 if inside else 5.0)


def test_a_guidance_interval_outside_the_times_is_refused_by_name():
    from sora_jax.diffusion.flow import validate_diffusion_section
    from sora_jax.errors import ConfigError

    for interval in ((0.6, 0.2), (0.0, 1.5), (0.5,)):
        section = get_config("test").diffusion
        section.guidance_interval = interval
        with pytest.raises(ConfigError, match="diffusion.guidance_interval"):
            validate_diffusion_section(section)


def test_data_prediction_turns_the_clean_clip_into_the_true_velocity():
    from sora_jax.diffusion.flow import token_timesteps, velocity_predictor

    config = get_config("test").diffusion
    batch = _batch()
    noise = jax.random.normal(jax.random.key(0), batch["patches"].shape)
    t_clip = jnp.asarray([[0.3, 0.9, 0.5], [0.02, 0.5, 0.5]])
    t_token = token_timesteps(t_clip, batch)
    noisy = (1 - t_token) * batch["patches"] + t_token * noise
    velocity = velocity_predictor(lambda x, t, b: b["patches"], batch, config)(noisy, t_clip)
    exact = np.asarray(t_token[..., 0] >= config.min_t) & np.asarray(batch["segment_ids"] > 0)
    np.testing.assert_allclose(
        np.asarray(velocity)[exact], np.asarray(noise - batch["patches"])[exact], atol=1e-5
    )
    # Below min_t the division is floored, so the velocity stays bounded.
    assert np.isfinite(np.asarray(velocity)).all() and not exact[1].any()


def test_preconditioning_starts_from_the_best_linear_guess_and_scales_the_rest_to_unit_size():
    from sora_jax.diffusion.flow import preconditioning

    sigma = 0.4
    rng = np.random.default_rng(0)
    x0 = sigma * rng.standard_normal(200_000)
    noise = rng.standard_normal(200_000)
    for t in (0.05, 0.3, 0.7, 0.95):
        noisy = (1 - t) * x0 + t * noise
        skip, out, scale_in = (float(v) for v in preconditioning(jnp.asarray(t), sigma))
        best = np.dot(noisy, x0) / np.dot(noisy, noisy)  # Least-squares slope of x0 on x_t.
        assert skip == pytest.approx(best, rel=0.02, abs=2e-3)
        assert np.std((x0 - skip * noisy) / out) == pytest.approx(1.0, rel=0.02)  # Unit target.
        assert np.std(scale_in * noisy) == pytest.approx(1.0, rel=0.02)  # Unit input.
    # Clean (given) tokens come back as they are; pure noise leaves the network x0 alone.
    np.testing.assert_allclose(preconditioning(jnp.asarray(0.0), sigma)[:2], [1.0, 0.0])
    np.testing.assert_allclose(preconditioning(jnp.asarray(1.0), sigma)[:2], [0.0, sigma], rtol=1e-6)


def test_preconditioned_prediction_keeps_given_tokens_and_adds_the_scaled_correction():
    from sora_jax.diffusion.flow import clean_predictor, preconditioning, token_timesteps, velocity_predictor

    config = get_config("test").diffusion
    config.prediction = "preconditioned"
    batch = _batch()
    batch["cond_mask"] = batch["cond_mask"].at[0, :2].set(True)  # Two given tokens (t = 0).
    noise = jax.random.normal(jax.random.key(0), batch["patches"].shape)
    t_clip = jnp.asarray([[0.3, 0.9, 0.5], [0.6, 0.5, 0.5]])
    t_token = token_timesteps(t_clip, batch)
    noisy = (1 - t_token) * batch["patches"] + t_token * noise
    seen = {}

    def network(x, t, b):
        seen["input"] = x
        return jnp.ones_like(x)

    clean = np.asarray(clean_predictor(network, batch, config)(noisy, t_clip))
    skip, out, scale_in = preconditioning(t_token, config.sigma_data)
    np.testing.assert_allclose(clean, np.asarray(skip * noisy + out), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(seen["input"]), np.asarray(scale_in * noisy), rtol=1e-6)
    np.testing.assert_allclose(clean[0, :2], np.asarray(batch["patches"])[0, :2], rtol=1e-6)
    # The velocity is derived from that clean guess as for the data target.
    velocity = velocity_predictor(network, batch, config)(noisy, t_clip)
    np.testing.assert_allclose(
        np.asarray(velocity)[0, 2:], np.asarray((noisy - clean) / t_token)[0, 2:], rtol=1e-4, atol=1e-5
    )


def test_a_velocity_network_s_clean_guess_is_the_noisy_clip_less_t_velocities():
    from sora_jax.diffusion.flow import clean_predictor, token_timesteps

    config = get_config("test").diffusion
    config.prediction = "velocity"
    batch = _batch()
    noise = jax.random.normal(jax.random.key(0), batch["patches"].shape)
    t_clip = jnp.asarray([[0.3, 0.9, 0.5], [0.6, 0.5, 0.5]])
    t_token = token_timesteps(t_clip, batch)
    noisy = (1 - t_token) * batch["patches"] + t_token * noise
    true_velocity = lambda x, t, b: noise - b["patches"]  # noqa: E731
    clean = clean_predictor(true_velocity, batch, config)(noisy, t_clip)
    np.testing.assert_allclose(np.asarray(clean), np.asarray(batch["patches"]), atol=1e-5)
