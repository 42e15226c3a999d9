"""The train state and how it is created, already sharded, on the mesh.

What the parameters and optimizer are comes from the run's kind (:mod:`sora_jax.kinds`); the state
around them is the same for every kind.

Following the eval_shape -> shardings -> jit(init, out_shardings) pattern: the state is first
traced abstractly to learn its shapes and logical axis names, the names are mapped to the mesh,
and only then is it materialised, each parameter directly on the devices that hold it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sora_jax.kinds.registry import run_kind
from sora_jax.parallel.sharding import Rules, axis_rules, logical_to_spec


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training; a pytree of arrays (``step`` is an int32 scalar)."""

    step: jax.Array
    params: Any  # An nnx.State, or a dict of them for a kind with several networks.
    ema_params: Any
    opt_state: optax.OptState
    # Steps in a row whose loss or gradient was not finite (their updates were skipped). Not
    # checkpointed: a resumed run starts counting afresh.
    nonfinite_in_a_row: jax.Array


def model_graphdef(config: ml_collections.ConfigDict) -> Any:
    """The structure of the model the run's kind trains (no arrays are allocated)."""
    graphdef, _ = jax.eval_shape(lambda: run_kind(config).init(0))
    return graphdef


def state_shardings(abstract: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for a pytree whose Variables carry logical names (others: replicated)."""
    specs = nnx.get_partition_spec(abstract)
    return jax.tree.map(
        lambda spec: NamedSharding(mesh, logical_to_spec(tuple(spec), rules)),
        specs,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def _initializer(config: ml_collections.ConfigDict) -> Callable[[], TrainState]:
    kind = run_kind(config)
    optimizer = kind.optimizer()

    def init() -> TrainState:
        _, params = kind.init(config.seed)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            ema_params=params,
            opt_state=optimizer.init(params),
            nonfinite_in_a_row=jnp.zeros((), jnp.int32),
        )

    return init


def create_train_state(
    config: ml_collections.ConfigDict, mesh: Mesh
) -> tuple[nnx.GraphDef, TrainState, TrainState]:
    """Initialise parameters, EMA and optimizer state from ``config.seed``, sharded on ``mesh``.

    Returns (graphdef, state, state_shardings).
    """
    init = _initializer(config)
    abstract = jax.eval_shape(init)
    shardings = state_shardings(abstract, mesh, axis_rules(config))
    state = jax.jit(init, out_shardings=shardings)()
    return model_graphdef(config), state, shardings


def abstract_train_state(config: ml_collections.ConfigDict, mesh: Mesh) -> TrainState:
    """Shapes, dtypes and shardings of the train state, without allocating it (for restore)."""
    abstract = jax.eval_shape(_initializer(config))
    shardings = state_shardings(abstract, mesh, axis_rules(config))
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def abstract_params(config: ml_collections.ConfigDict, mesh: Mesh) -> Any:
    """Shapes, dtypes and shardings of the parameters alone (what an EMA restore fills), without
    building the optimizer state."""
    abstract = jax.eval_shape(lambda: run_kind(config).init(config.seed)[1])
    shardings = state_shardings(abstract, mesh, axis_rules(config))
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def count_params(params: Any) -> int:
    return sum(x.size for x in jax.tree.leaves(params))
