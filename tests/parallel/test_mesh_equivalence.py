"""One train step's loss and gradients do not depend on how the mesh splits the work.

Every mesh runs the same model on the same batch and noise (float32); only the sharding of
parameters, rows, tokens and heads differs, and with it the order of floating-point reductions.
"""

import jax
import numpy as np
import pytest

from experiments.world_tiny import get_config
from sora_jax.data.pipeline import batch_stream
from sora_jax.diffusion.train_step import make_loss_fn
from sora_jax.parallel.global_batch import BatchLayout, batch_shardings, packed_axes
from sora_jax.parallel.mesh import make_mesh
from sora_jax.parallel.sharding import axis_rules
from sora_jax.train.state import create_train_state


def small_config(mesh_shape, attention="xla", sequence_parallel="all_to_all"):
    config = get_config("test")
    config.model.dim = 64
    config.model.heads = 8  # all-to-all over 8 sequence devices needs 8 heads
    config.model.attention = attention
    config.model.sequence_parallel = sequence_parallel
    config.data.batch_size = 8
    for axis, size in zip(("data", "fsdp", "sequence", "tensor"), mesh_shape, strict=True):
        config.mesh[f"ici_{axis}"] = size
    return config


HOST_BATCH = None


def host_batch():
    global HOST_BATCH
    if HOST_BATCH is None:
        HOST_BATCH = next(batch_stream(small_config((8, 1, 1, 1)), 8))
    return HOST_BATCH


def loss_and_grads(config, host: dict | None = None):
    """Loss and gradients of ``host`` (default: this module's batch) on ``config``'s mesh."""
    mesh = make_mesh(config)
    with jax.set_mesh(mesh):
        graphdef, state, shardings = create_train_state(config, mesh)
        host = host_batch() if host is None else host
        batch = BatchLayout.of(config, mesh, packed_axes(config)).to_global(host)
        batch_in = batch_shardings(mesh, axis_rules(config), packed_axes(config))
        grad_fn = jax.jit(
            jax.value_and_grad(make_loss_fn(graphdef, config), has_aux=True),
            in_shardings=(shardings.params, batch_in, None),
        )
        (loss, _), grads = grad_fn(state.params, batch, jax.random.key(3))
        return float(loss), jax.device_get(grads)


@pytest.fixture(scope="module")
def reference():
    return loss_and_grads(small_config((8, 1, 1, 1)))


def assert_agree(result: tuple[float, dict], reference: tuple[float, dict]) -> None:
    """The loss to 1e-5 relative, each gradient to 1e-5 of its largest reference entry."""
    (loss, grads), (ref_loss, ref_grads) = result, reference
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    flat_ref = jax.tree.leaves_with_path(ref_grads)
    flat = jax.tree.leaves(grads)
    assert len(flat) == len(flat_ref)
    for (path, expected), actual in zip(flat_ref, flat, strict=True):
        scale = np.abs(expected).max() + 1e-12
        np.testing.assert_allclose(
            actual / scale, expected / scale, atol=1e-5, err_msg=jax.tree_util.keystr(path)
        )


@pytest.mark.slow
@pytest.mark.parametrize(
    "mesh_shape, attention, sequence_parallel",
    [
        ((2, 4, 1, 1), "xla", "all_to_all"),
        ((2, 2, 1, 2), "xla", "all_to_all"),
        ((1, 2, 4, 1), "xla", "all_to_all"),
        ((1, 2, 4, 1), "ring", "all_to_all"),
        ((1, 1, 8, 1), "xla", "all_to_all"),
        ((1, 1, 8, 1), "ring", "all_to_all"),
        ((1, 1, 8, 1), "xla", "gather"),
    ],
)
def test_loss_and_gradients_agree_across_meshes(reference, mesh_shape, attention, sequence_parallel):
    assert_agree(loss_and_grads(small_config(mesh_shape, attention, sequence_parallel)), reference)


@pytest.mark.slow
def test_splash_kernel_in_the_model_agrees_with_xla_attention(reference):
    """The whole model with the Pallas splash kernel (run by the Pallas interpreter on CPU), its
    tokens and heads split over the mesh, computes the loss and gradients of dense attention."""
    config = small_config((1, 2, 2, 2), attention="splash")
    config.model.splash_interpret = True
    assert_agree(loss_and_grads(config), reference)


@pytest.mark.slow
def test_joint_text_attention_agrees_across_meshes():
    """MMDiT blocks: the caption stream, replicated over the sequence axis while the clip tokens
    are split over it, gives one loss and gradients however the mesh splits the work."""

    def joint(mesh_shape):
        config = small_config(mesh_shape)
        config.model.text_attention = "joint"
        return loss_and_grads(config)

    assert_agree(joint((1, 2, 2, 2)), joint((8, 1, 1, 1)))
