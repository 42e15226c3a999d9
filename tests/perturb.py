"""Parameters made to look trained, for tests whose property needs every layer live."""

from typing import TypeVar

import jax
import jax.numpy as jnp
import numpy as np

Tree = TypeVar("Tree")


def perturbed(params: Tree, seed: int, scale: float = 0.05) -> Tree:
    """``params`` (a pytree of arrays, e.g. an ``nnx.State``) with ``scale`` x N(0, 1) added to every
    leaf, drawn from ``seed``, in each leaf's dtype.

    Zero-initialised layers (adaLN-Zero, output heads) become non-zero, so outputs depend on every
    parameter. The noise is drawn on the host: a ``jax.random`` draw per leaf would compile a sampler
    for every parameter shape, tens of seconds for noise that only needs to be fixed.
    """
    rng = np.random.default_rng(seed)
    leaves, tree = jax.tree.flatten(params)
    noisy = [
        jnp.asarray(np.asarray(p) + scale * rng.standard_normal(p.shape).astype(p.dtype)) for p in leaves
    ]
    return jax.tree.unflatten(tree, noisy)
