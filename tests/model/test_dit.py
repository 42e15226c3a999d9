import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments.world_tiny import get_config
from sora_jax.data.packing import PackedClip, pack_rows
from sora_jax.data.patches import grid_size, patchify
from sora_jax.model.dit import build_model
from sora_jax.model.rope import apply_rope, axis_dims, rope_angles
from tests.perturb import perturbed


def test_rope_scores_depend_only_on_relative_position():
    rng = np.random.default_rng(0)
    head_dim = 24
    q = jnp.asarray(rng.normal(size=(1, 1, 1, head_dim)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(1, 1, 1, head_dim)), jnp.float32)
    dims = axis_dims(head_dim)

    def score(pos_q, pos_k):
        aq = rope_angles(jnp.asarray([[pos_q]]), dims, 10_000.0)
        ak = rope_angles(jnp.asarray([[pos_k]]), dims, 10_000.0)
        return float(jnp.sum(apply_rope(q, aq) * apply_rope(k, ak)))

    base = score((1, 2, 3), (4, 0, 5))
    np.testing.assert_allclose(score((11, 7, 2), (14, 5, 4)), base, rtol=1e-4)
    assert abs(score((1, 2, 3), (4, 1, 5)) - base) > 1e-3  # A different offset scores differently.
    assert sum(dims) == head_dim and all(d % 2 == 0 for d in dims)


@nnx.jit
def _apply(model, noisy, timesteps, batch):
    return model(noisy, timesteps, batch)


def _perturbed_model(config):
    """A model whose zero-initialised layers are made non-zero, so outputs depend on everything."""
    model = build_model(config, 0)
    graphdef, params = nnx.split(model, nnx.Param)
    return nnx.merge(graphdef, perturbed(params, seed=1))


def _clip(config, frames, height, width, seed, caption):
    patch = tuple(config.model.patch_size)
    video = np.random.default_rng(seed).normal(size=(frames, height, width, 3)).astype(np.float32)
    patches, positions = patchify(video, patch)
    return PackedClip(
        patches,
        positions,
        grid_size(frames, height, width, patch),
        frames,
        8.0,
        np.asarray(caption, np.int32),
    )


@pytest.mark.parametrize("text_attention", ["cross", "joint"])
def test_packed_rows_give_each_clip_the_output_it_gets_alone(text_attention):
    config = get_config("test")
    config.model.text_attention = text_attention
    model = _perturbed_model(config)
    a = _clip(config, 4, 16, 16, 0, [1, 5, 9])
    b = _clip(config, 2, 16, 24, 1, [1, 7])
    c = _clip(config, 1, 8, 8, 2, [1])
    layout = dict(seq_len=96, patch_dim=a.patches.shape[1], max_clips=3, text_len=8)
    packed = pack_rows([[b, a, c]], **layout)
    alone = pack_rows([[a]], **layout)
    t_packed = jnp.asarray([[0.3, 0.7, 0.5]])
    t_alone = jnp.asarray([[0.7, 0.0, 0.0]])
    noisy_packed = jnp.asarray(packed["patches"])
    out_packed = _apply(model, noisy_packed, t_packed, jax.tree.map(jnp.asarray, packed))
    out_alone = _apply(model, jnp.asarray(alone["patches"]), t_alone, jax.tree.map(jnp.asarray, alone))
    in_packed = packed["segment_ids"][0] == 2
    np.testing.assert_allclose(
        np.asarray(out_packed[0][in_packed]),
        np.asarray(out_alone[0][: a.num_tokens]),
        atol=2e-5,
        rtol=1e-5,
    )
    # The clip's neighbours do influence their own tokens: the output is not trivially constant.
    assert float(jnp.abs(out_packed[0][packed["segment_ids"][0] == 1]).mean()) > 1e-3


@pytest.mark.parametrize("text_attention", ["cross", "joint"])
def test_fresh_model_predicts_zero_velocity(text_attention):
    config = get_config("test")
    config.model.text_attention = text_attention
    model = build_model(config, 0)
    clip = _clip(config, 2, 16, 16, 0, [1, 2])
    batch = pack_rows([[clip]], seq_len=40, patch_dim=clip.patches.shape[1], max_clips=2, text_len=4)
    out = _apply(
        model, jnp.asarray(batch["patches"]), jnp.full((1, 2), 0.5), jax.tree.map(jnp.asarray, batch)
    )
    assert out.shape == batch["patches"].shape and out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out), 0.0)  # adaLN-Zero and zero final layer.


@pytest.mark.parametrize("text_attention", ["cross", "joint"])
def test_scan_and_loop_over_blocks_agree(text_attention):
    config = get_config("test")
    config.model.text_attention = text_attention
    clip = _clip(config, 4, 16, 16, 3, [1, 4])
    batch = jax.tree.map(
        jnp.asarray,
        pack_rows([[clip]], seq_len=64, patch_dim=clip.patches.shape[1], max_clips=1, text_len=4),
    )
    outputs = []
    for scan, remat in ((True, "full"), (False, "none")):
        config.model.scan_layers, config.model.remat = scan, remat
        model = _perturbed_model(config)
        outputs.append(np.asarray(_apply(model, batch["patches"], jnp.full((1, 1), 0.4), batch)))
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-5)


def test_bfloat16_compute_keeps_float32_parameters_and_tracks_float32_output():
    config = get_config("test")
    clip = _clip(config, 2, 16, 16, 4, [1, 3])
    batch = jax.tree.map(
        jnp.asarray, pack_rows([[clip]], seq_len=32, patch_dim=clip.patches.shape[1], max_clips=1, text_len=4)
    )
    reference = np.asarray(_apply(_perturbed_model(config), batch["patches"], jnp.full((1, 1), 0.6), batch))
    config.model.dtype = "bfloat16"
    model = _perturbed_model(config)
    assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype("float32")}
    out = np.asarray(_apply(model, batch["patches"], jnp.full((1, 1), 0.6), batch))
    assert out.dtype == np.float32
    assert np.abs(out - reference).mean() < 0.05 * np.abs(reference).mean()


def test_a_frozen_text_encoder_s_stored_states_condition_the_model(tmp_path):
    from sora_jax.config import load_config
    from sora_jax.eval.generate import prompt_batch
    from sora_jax.text.tiny import write_tiny_bert

    bert = write_tiny_bert(tmp_path / "tiny-bert")  # 32-wide states.
    config = load_config(
        "experiments/world_tiny.py:test", [f"model.text_encoder={bert}", f"data.store={tmp_path}"]
    )
    model = _perturbed_model(config)
    assert model.text_encoder.embed.kernel.shape == (32, config.model.text_dim)
    states = np.random.default_rng(0).normal(size=(2, 5, 32)).astype(np.float32)
    outputs = []
    for prompt_states in states:
        batch = prompt_batch(config, "ignored", 2, 16, 16, prompt_states)
        assert batch["text_embeddings"].shape == (2, config.data.max_caption_tokens, 32)
        assert batch["text_segment_ids"][0].sum() == 5 and batch["text_segment_ids"][1].sum() == 1
        np.testing.assert_array_equal(batch["text_embeddings"][1], 0.0)  # The null caption.
        noisy = jnp.asarray(batch["patches"]) + 0.5
        outputs.append(
            np.asarray(_apply(model, noisy, jnp.full((2, 1), 0.5), jax.tree.map(jnp.asarray, batch)))
        )
    np.testing.assert_array_equal(outputs[0][1], outputs[1][1])  # Same null caption, same output.
    assert np.abs(outputs[0][0] - outputs[1][0]).mean() > 1e-4  # Other states, other output.


def test_caption_means_average_each_clip_s_own_caption_tokens():
    from sora_jax.model.dit import caption_means

    text = jnp.arange(12, dtype=jnp.float32).reshape(1, 6, 2)  # Token k has features (2k, 2k + 1).
    segments = jnp.asarray([[1, 1, 2, 2, 2, 0]])
    means = caption_means(text, segments, 3)
    np.testing.assert_allclose(np.asarray(means[0]), [[1.0, 2.0], [6.0, 7.0], [0.0, 0.0]])


def test_the_pooled_caption_conditions_every_token_of_its_clip_only_when_enabled():
    config = get_config("test")
    clip = _clip(config, 2, 16, 16, 0, [1, 2, 3])
    other = _clip(config, 2, 16, 16, 0, [1, 5, 6])
    layout = dict(seq_len=40, patch_dim=clip.patches.shape[1], max_clips=1, text_len=4)
    batches = [jax.tree.map(jnp.asarray, pack_rows([[c]], **layout)) for c in (clip, other)]
    for pooled in (True, False):
        config.model.text_pooled = pooled
        model = _perturbed_model(config)
        assert hasattr(model, "caption_in") == pooled
        outs = [_apply(model, b["patches"], jnp.full((1, 1), 0.5), b) for b in batches]
        assert float(jnp.abs(outs[0] - outs[1]).mean()) > 1e-4  # Cross-attention reads words either way.


def test_joint_attention_reads_the_caption_both_ways_within_its_clip_only():
    """A clip's outputs follow its own caption's words; its caption's stream, which only its clip
    reads, is a real second stream: a joint model has its own text layers in every block."""
    config = get_config("test")
    config.model.text_attention, config.model.text_pooled = "joint", False
    model = _perturbed_model(config)
    assert hasattr(model.blocks.attention, "caption_attention")
    assert not hasattr(model.blocks, "cross_attention")
    a, b = _clip(config, 2, 16, 16, 0, [1, 2, 3]), _clip(config, 2, 16, 16, 1, [1, 4])
    a_recaptioned = _clip(config, 2, 16, 16, 0, [1, 5, 6])
    layout = dict(seq_len=40, patch_dim=a.patches.shape[1], max_clips=2, text_len=8)
    outs = []
    for first in (a, a_recaptioned):
        batch = jax.tree.map(jnp.asarray, pack_rows([[first, b]], **layout))
        outs.append(np.asarray(_apply(model, batch["patches"], jnp.asarray([[0.5, 0.5]]), batch)[0]))
    segments = pack_rows([[a, b]], **layout)["segment_ids"][0]
    assert np.abs(outs[0][segments == 1] - outs[1][segments == 1]).mean() > 1e-4  # Its own words.
    np.testing.assert_allclose(outs[0][segments == 2], outs[1][segments == 2], atol=1e-6)  # Not b's.


def _has_scope(hlo: str, *names: str) -> bool:
    """Whether an op's name stack holds the scopes ``names`` in a row: ``/block_0/mlp/``, also as
    autodiff wraps them (``jvp(block_0)/mlp/``, ``transpose(jvp(block_0))/mlp/``)."""
    path = "/".join(rf"(?:\w+\()*{re.escape(name)}\)*" for name in names)
    return re.search(rf"[/(]{path}/", hlo) is not None


@pytest.mark.parametrize(
    ("text_attention", "parts"),
    [
        ("cross", ("modulation", "self_attention", "cross_attention", "mlp")),
        ("joint", ("modulation", "joint_attention", "mlp")),
    ],
)
def test_named_scopes_name_the_model_s_parts_in_the_hlo(text_attention, parts):
    config = get_config("test")
    config.model.text_attention = text_attention
    clip = _clip(config, 2, 16, 16, 0, [1, 2])
    batch = jax.tree.map(
        jnp.asarray, pack_rows([[clip]], seq_len=40, patch_dim=clip.patches.shape[1], max_clips=1, text_len=4)
    )
    # Unrolled blocks are named by index; scanned ones (here also rematerialised) share one name.
    for scan, remat, blocks in ((False, "none", ("block_0", "block_1")), (True, "full", ("block",))):
        config.model.scan_layers, config.model.remat = scan, remat
        graphdef, state = nnx.split(build_model(config, 0))

        def loss(state, graphdef=graphdef):
            out = nnx.merge(graphdef, state)(batch["patches"], jnp.full((1, 1), 0.5), batch)
            return jnp.mean(out**2)

        # The lowered module's locations become the compiled ops' metadata, what profilers show;
        # the backward pass (and its recomputation under remat) carries the names too.
        forward = jax.jit(loss).lower(state).compile().as_text()
        train = jax.jit(jax.grad(loss)).lower(state).as_text(debug_info=True)
        for hlo in (forward, train):
            for name in ("patch_embed", "conditioning", "text_encoder", "final_layer"):
                assert _has_scope(hlo, name), name
            for block in blocks:
                for part in parts:
                    assert _has_scope(hlo, block, part), (block, part)
            assert _has_scope(hlo, "block_0") != scan
