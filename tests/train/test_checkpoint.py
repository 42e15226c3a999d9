import jax
import numpy as np
from jax.sharding import Mesh

from experiments.world_tiny import get_config
from sora_jax.data.pipeline import batch_stream
from sora_jax.parallel.sharding import MESH_AXES
from sora_jax.train import checkpoint
from sora_jax.train.state import abstract_train_state, create_train_state
from sora_jax.train.step import make_train_step


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
    step = jax.jit(make_train_step(graphdef, config))
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
