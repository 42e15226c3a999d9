"""With sound, one train step's loss and gradients still do not depend on how the mesh splits the work:
audio tokens are tokens of the row like any other, whether rows, parameters or tokens are split."""

import jax
import numpy as np
import pytest

from sora_jax.data.pipeline import batch_stream
from tests.parallel.test_mesh_equivalence import loss_and_grads as mesh_loss_and_grads
from tests.parallel.test_mesh_equivalence import small_config


def sound_config(mesh_shape, attention="xla", sequence_parallel="all_to_all"):
    config = small_config(mesh_shape, attention, sequence_parallel)
    config.audio.enabled = True
    config.diffusion.noise_correlation = 0.5  # Audio tokens keep their own noise inside shared draws.
    return config


HOST_BATCH = None


def host_batch():
    global HOST_BATCH
    if HOST_BATCH is None:
        HOST_BATCH = next(batch_stream(sound_config((8, 1, 1, 1)), 8))
        assert (HOST_BATCH["modality"] == 1).sum() > 100
    return HOST_BATCH


def loss_and_grads(config):
    return mesh_loss_and_grads(config, host_batch())


@pytest.fixture(scope="module")
def reference():
    return loss_and_grads(sound_config((8, 1, 1, 1)))


@pytest.mark.slow
@pytest.mark.parametrize(
    "mesh_shape, attention, sequence_parallel",
    [
        ((2, 4, 1, 1), "xla", "all_to_all"),
        ((1, 2, 4, 1), "xla", "all_to_all"),
        ((1, 1, 8, 1), "ring", "all_to_all"),
    ],
)
def test_loss_and_gradients_with_sound_agree_across_meshes(
    reference, mesh_shape, attention, sequence_parallel
):
    ref_loss, ref_grads = reference
    loss, grads = loss_and_grads(sound_config(mesh_shape, attention, sequence_parallel))
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    flat_ref = jax.tree.leaves_with_path(ref_grads)
    assert any("audio_embed" in jax.tree_util.keystr(path) for path, _ in flat_ref)
    for (path, expected), actual in zip(flat_ref, jax.tree.leaves(grads), strict=True):
        scale = np.abs(expected).max() + 1e-12
        np.testing.assert_allclose(
            actual / scale, expected / scale, atol=1e-5, err_msg=jax.tree_util.keystr(path)
        )
