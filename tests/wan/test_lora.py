"""LoRA on the pretrained Wan transformer: adapters start as the base, fold into it exactly, and are
all a LoRA run trains, keeps moments for and checkpoints; the base stays as loaded.

The base is the tiny checkpoint diffusers wrote (``data/tiny_wan/transformer``).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from sora_jax.config import base_config
from sora_jax.data.packing import PackedClip, pack_rows
from sora_jax.data.patches import grid_size, patchify
from sora_jax.errors import ConfigError
from sora_jax.kinds.registry import run_kind
from sora_jax.parallel.mesh import make_mesh
from sora_jax.train import checkpoint, lora
from sora_jax.train.state import abstract_train_state, count_params, create_train_state
from sora_jax.wan.transformer import build_wan_transformer
from sora_jax.wan.transformer_weights import load_transformer, transformer_config

TINY = Path(__file__).parent / "data" / "tiny_wan"
LAYOUT = dict(seq_len=96, patch_dim=16, max_clips=3, text_len=16, text_dim=20)


def lora_config(rank: int = 2, **lora_keys: object) -> ml_collections.ConfigDict:
    """The tiny checkpoint's transformer as a LoRA run (data and text are given by the tests)."""
    config = base_config()
    config.task = "wan"
    for dotted, value in transformer_config(TINY).items():
        section, key = dotted.split(".")
        config[section][key] = value
    config.wan.pretrained = str(TINY)
    config.wan.text_pad_tokens = 16
    config.lora.rank, config.lora.alpha = rank, 2.0 * rank
    config.lora.update(lora_keys)
    config.diffusion.prediction = "velocity"
    config.optim.lr, config.optim.warmup_steps, config.optim.ema_decay = 1e-2, 1, 0.0
    config.train.steps = 100
    config.data.seq_len, config.data.max_clips_per_row, config.data.text_len = 96, 3, 16
    config.mesh.ici_data, config.mesh.ici_fsdp = 2, 4  # Adapters and base sharded like the kernels.
    return config


def packed_batch(rows: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """``rows`` rows of two random clips each, with random caption states."""
    rng = np.random.default_rng(seed)
    packed = []
    for _ in range(rows):
        clips = []
        for frames, side, words in ((2, 8, 5), (1, 4, 3)):
            latents = rng.normal(size=(frames, side, side, 4)).astype(np.float32)
            patches, positions = patchify(latents, (1, 2, 2))
            clips.append(
                PackedClip(
                    patches,
                    positions,
                    grid_size(frames, side, side, (1, 2, 2)),
                    frames,
                    16.0,
                    np.zeros(words, np.int32),
                    text_embedding=rng.normal(size=(words, 20)).astype(np.float32),
                )
            )
        packed.append(clips)
    return pack_rows(packed, **LAYOUT)


def velocity(model: nnx.Module, batch: dict, t: float = 0.6) -> np.ndarray:
    b = jax.tree.map(jnp.asarray, batch)
    timesteps = jnp.full(b["clip_grid"].shape[:2], t, jnp.float32)
    return np.asarray(model(b["patches"], timesteps, b))


def test_adapters_start_as_the_base_and_fold_into_it_exactly():
    config = lora_config(rank=3, targets=("attention.query", "attention.value", "mlp_in"))
    graphdef, shapes = jax.eval_shape(lambda: nnx.split(build_wan_transformer(config, 0), nnx.Param))
    base = load_transformer(TINY, shapes)
    plain = nnx.merge(graphdef, base)
    adapted = build_wan_transformer(config, 0)
    adapted_names = lora.add_adapters(adapted, config, nnx.Rngs(1))
    assert any("cross_attention.query" in n for n in adapted_names)
    assert not any("attention.key" in n for n in adapted_names)
    adapted_graph, adapters, _ = lora.split(adapted)
    batch = packed_batch()
    start = nnx.merge(adapted_graph, adapters, base)
    np.testing.assert_array_equal(velocity(start, batch), velocity(plain, batch))  # lora_b starts at 0.

    # Random lora_b: the adapted model equals the plain one with W + (alpha / r) A B.
    keys = iter(jax.random.split(jax.random.key(2), 100))
    moved = jax.tree.map(
        lambda v: jax.random.normal(next(keys), v.shape) * 0.3 if v.ndim and v.shape[-2] == 3 else v, adapters
    )
    ours = velocity(nnx.merge(adapted_graph, moved, base), batch)
    folded = velocity(nnx.merge(graphdef, lora.merged(moved, base, lora.lora_scale(config))), batch)
    assert np.abs(ours - velocity(plain, batch)).max() > 1e-2  # The adapters do change the output.
    np.testing.assert_allclose(ours, folded, rtol=1e-4, atol=1e-4 * np.abs(folded).max())


def test_targets_matching_nothing_are_refused():
    config = lora_config(targets=("attn.q_proj",))
    with pytest.raises(ConfigError, match=r"lora\.targets.*match no linear layer"):
        lora.add_adapters(build_wan_transformer(config, 0), config, nnx.Rngs(0))


def test_a_lora_run_trains_and_checkpoints_only_the_adapters(tmp_path):
    config = lora_config()
    mesh = make_mesh(config)
    kind = run_kind(config)
    with jax.set_mesh(mesh):
        graphdef, state, shardings = create_train_state(config, mesh, kind)
        adapters = count_params(state.params)
        assert {p[-1] for p in nnx.to_flat_state(state.params).paths} == {"lora_a", "lora_b"}
        assert adapters < count_params(state.frozen) / 10
        # The optimizer's moments are the adapters' (two per adapter value), not the base's.
        assert count_params(state.opt_state) <= 2 * adapters + 10
        base = jax.device_get(state.frozen)
        expected = load_transformer(TINY, jax.eval_shape(lambda: state.frozen))
        jax.tree.map(np.testing.assert_array_equal, base, jax.device_get(expected))
        # The base is sharded by its logical names (FSDP over the mesh's fsdp axis).
        ffn = nnx.to_flat_state(state.frozen)
        assert any(len(a.sharding.device_set) > 1 and not a.sharding.is_fully_replicated for a in ffn.leaves)

        step = jax.jit(kind.train_step(graphdef), donate_argnums=(0,))
        batch = jax.tree.map(jnp.asarray, packed_batch())
        losses = []
        for _ in range(30):
            state, metrics = step(state, batch)
            losses.append(float(metrics["loss"]))
        assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5]), losses
        jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.frozen), base)  # Untouched.

        mgr = checkpoint.manager(tmp_path, config)
        checkpoint.save(mgr, state, _NoData())
        mgr.wait_until_finished()
        saved = mgr.item_metadata(int(state.step))["state"]
        paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(saved)[0]]
        params = [p for p in paths if p.startswith("['params']") or p.startswith("['ema_params']")]
        assert params and all("lora_" in p for p in params), params  # No base kernel is saved.
        restored = checkpoint.restore(mgr, abstract_train_state(config, mesh), _NoData(), int(state.step))
        mgr.close()
        same = np.testing.assert_array_equal
        jax.tree.map(same, jax.device_get(restored.params), jax.device_get(state.params))
        assert restored.frozen is None  # The trainer attaches the base again at every start.


class _NoData:
    """An input iterator with no position, for a checkpoint of the state alone."""

    def get_state(self) -> dict:
        return {}

    def set_state(self, state: dict) -> None:
        pass

    def start_prefetch(self) -> None:
        pass
