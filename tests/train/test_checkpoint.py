import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import Mesh

from experiments.world_tiny import get_config
from sora_jax.data.pipeline import batch_stream
from sora_jax.diffusion.train_step import make_train_step
from sora_jax.parallel.sharding import MESH_AXES
from sora_jax.train import checkpoint
from sora_jax.train.optimizer import make_optimizer
from sora_jax.train.state import abstract_train_state, create_train_state


def _mesh(shape, devices):
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def test_saved_with_fsdp_on_8_devices_restores_data_parallel_on_4(tmp_path):
    config = get_config("test")
    config.mesh.ici_data, config.mesh.ici_fsdp = 1, 8
    fsdp = _mesh((1, 8, 1, 1), jax.devices())
    graphdef, state, _ = create_train_state(config, fsdp)
    sharded = [x for x in jax.tree.leaves(state.params) if not x.sharding.is_fully_replicated]
    assert sharded, "FSDP should split some parameters over the 8 devices"
    stream = batch_stream(config, 8)
    next(stream)
    mgr = checkpoint.manager(tmp_path, config)
    checkpoint.save(mgr, state, stream)
    mgr.wait_until_finished()

    config.mesh.ici_data, config.mesh.ici_fsdp = 4, 1
    data = _mesh((4, 1, 1, 1), jax.devices()[:4])
    restored_stream = batch_stream(config, 8)
    restored = checkpoint.restore(mgr, abstract_train_state(config, data), restored_stream)
    for before, after in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(np.asarray(before), np.asarray(after))
        assert len(after.sharding.device_set) in (1, 4)
    assert all(len(x.sharding.device_set) == 4 for x in jax.tree.leaves(restored.params))
    for a, b in zip(next(stream).values(), next(restored_stream).values(), strict=True):
        np.testing.assert_array_equal(a, b)  # The input continues where it stood.


def test_a_non_finite_step_skips_its_update_and_is_counted():
    config = get_config("test")
    mesh = _mesh((1, 1, 1, 1), jax.devices()[:1])
    graphdef, state, _ = create_train_state(config, mesh)
    step = jax.jit(make_train_step(graphdef, config, make_optimizer(config)))
    batch = next(batch_stream(config, 8))
    good, metrics = step(state, batch)
    assert int(metrics["skipped_nonfinite"]) == 0
    batch["patches"][0, 0, 0] = np.nan
    bad, metrics = step(good, batch)
    assert int(metrics["skipped_nonfinite"]) == 1 and int(bad.nonfinite_in_a_row) == 1
    assert int(bad.step) == 2
    for before, after in zip(jax.tree.leaves(good.params), jax.tree.leaves(bad.params), strict=True):
        np.testing.assert_array_equal(np.asarray(before), np.asarray(after))
    worse, _ = step(bad, batch)
    assert int(worse.nonfinite_in_a_row) == 2


def test_background_save_keeps_its_snapshot_when_the_next_step_donates_the_state(tmp_path):
    config = get_config("test")
    mesh = _mesh((1, 2, 1, 1), jax.devices()[:2])
    graphdef, state, shardings = create_train_state(config, mesh)
    # Pinned output shardings, as the train loop's step has: the new state comes back on the
    # shardings it went in on, so the second step reuses the first step's program.
    step = jax.jit(
        make_train_step(graphdef, config, make_optimizer(config)),
        out_shardings=(shardings, None),
        donate_argnums=(0,),
    )
    stream = batch_stream(config, 8)
    state, _ = step(state, next(stream))
    expected = jax.tree.map(np.asarray, state)
    saver = checkpoint.BackgroundSaver(checkpoint.manager(tmp_path, config))
    saver.save(1, state, stream)
    assert saver.latest_step == 1
    after, _ = step(state, next(stream))  # Frees the buffers of ``state`` while the save may still run.
    assert any(x.is_deleted() for x in jax.tree.leaves(state.params))
    assert step._cache_size() == 1  # One program: step 2 ran at once, not after a recompile.
    saver.close()

    reader = checkpoint.manager(tmp_path, read_only=True)
    restored = checkpoint.restore(reader, abstract_train_state(config, mesh), batch_stream(config, 8))
    assert int(restored.step) == 1
    ema = checkpoint.restore_params(reader, restored.ema_params)
    for want, got in zip(jax.tree.leaves(expected.ema_params), jax.tree.leaves(ema), strict=True):
        np.testing.assert_array_equal(want, np.asarray(got))  # The EMA alone, by partial restore.
    for name in checkpoint.PARTS:
        for want, got in zip(
            jax.tree.leaves(getattr(expected, name)), jax.tree.leaves(getattr(restored, name)), strict=True
        ):
            np.testing.assert_array_equal(want, np.asarray(got))


class _DiskFullManager(ocp.CheckpointManager):
    """A real manager whose storage fails on the second save (fault injection)."""

    def save(self, step, *args, **kwargs):
        if step > 0:
            raise OSError(f"no space left on device writing step {step}")
        return super().save(step, *args, **kwargs)


def test_a_failed_background_save_raises_in_the_train_loop(tmp_path):
    config = get_config("test")
    mesh = _mesh((1, 1, 1, 1), jax.devices()[:1])
    _, state, _ = create_train_state(config, mesh)
    stream = batch_stream(config, 8)
    mgr = _DiskFullManager(checkpoint.checkpoint_dir(tmp_path), item_handlers=checkpoint.item_handlers())
    saver = checkpoint.BackgroundSaver(mgr)
    saver.save(0, state, stream)
    saver.wait_until_finished()
    saver.save(5, state, stream)  # Returns at once; the failure happens on the saver thread ...
    with pytest.raises(OSError, match="step 5"):
        saver.wait_until_finished()  # ... and is raised where the loop waits.


def test_checkpoints_of_the_earlier_one_item_per_part_layout_still_restore(tmp_path):
    config = get_config("test")
    mesh = _mesh((1, 1, 1, 1), jax.devices()[:1])
    _, state, _ = create_train_state(config, mesh)
    stream = batch_stream(config, 8)
    mgr = checkpoint.manager(tmp_path, config)
    parts = {name: checkpoint._pure(getattr(state, name)) for name in checkpoint.PARTS}
    legacy = {name: ocp.args.StandardSave(tree) for name, tree in parts.items()}
    legacy[checkpoint.DATA] = grain.checkpoint.CheckpointSave(stream)
    mgr.save(0, args=ocp.args.Composite(**legacy))
    mgr.wait_until_finished()
    assert not (tmp_path / "checkpoints" / "0" / checkpoint.STATE).exists()

    abstract = abstract_train_state(config, mesh)
    restored = checkpoint.restore(mgr, abstract, batch_stream(config, 8))
    ema = checkpoint.restore_params(mgr, abstract.ema_params)
    for want, got in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(np.asarray(want), np.asarray(got))
    for want, got in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(ema), strict=True):
        np.testing.assert_array_equal(np.asarray(want), np.asarray(got))


def test_a_checkpoint_in_the_earlier_layout_of_one_item_per_part_still_restores(tmp_path):
    """Runs written before the state became one item keep resuming and sampling."""
    config = get_config("test")
    mesh = _mesh((1, 1, 1, 1), jax.devices()[:1])
    _, state, _ = create_train_state(config, mesh)
    stream = batch_stream(config, 8)
    next(stream)
    mgr = checkpoint.manager(tmp_path, config)
    parts = {name: ocp.args.StandardSave(checkpoint._pure(getattr(state, name))) for name in checkpoint.PARTS}
    position = grain.checkpoint.CheckpointSave(stream)
    mgr.save(3, args=ocp.args.Composite(**parts, **{checkpoint.DATA: position}), force=True)
    mgr.wait_until_finished()
    assert not (tmp_path / "checkpoints" / "3" / checkpoint.STATE).exists()

    restored = checkpoint.restore(mgr, abstract_train_state(config, mesh), batch_stream(config, 8))
    assert int(restored.step) == 3
    for before, after in zip(jax.tree.leaves(state.params), jax.tree.leaves(restored.params), strict=True):
        np.testing.assert_array_equal(np.asarray(before), np.asarray(after))
    ema = checkpoint.restore_params(mgr, abstract_train_state(config, mesh).ema_params, 3)
    for before, after in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(ema), strict=True):
        np.testing.assert_array_equal(np.asarray(before), np.asarray(after))
