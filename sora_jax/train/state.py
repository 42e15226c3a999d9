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
    # Parameters the run uses but does not train (a pretrained base under LoRA, sora_jax.train.lora),
    # or None. Never checkpointed: the kind loads them again at every start (RunKind.load_frozen).
    frozen: Any = None


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


def _initializer(config: ml_collections.ConfigDict) -> Callable[..., TrainState]:
    """``init(params=None)``: the first train state, around ``params`` (the seed's when None)."""
    kind = run_kind(config)
    optimizer = kind.optimizer()

    def init(params: Any = None) -> TrainState:
        if params is None:
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
    config: ml_collections.ConfigDict, mesh: Mesh, kind: Any = None
) -> tuple[nnx.GraphDef, TrainState, TrainState]:
    """Initialise parameters, EMA and optimizer state, sharded on ``mesh``: from ``config.seed``, or
    from the pretrained checkpoint the run's kind loads (:meth:`RunKind.load_params`), and attach
    the frozen parameters (:func:`attach_frozen`).

    ``kind``: the run's kind, if the caller has it (it keeps what it loads); else one is made.

    Returns (graphdef, state, state_shardings).
    """
    init = _initializer(config)
    abstract = jax.eval_shape(init)
    shardings = state_shardings(abstract, mesh, axis_rules(config))
    kind = kind or run_kind(config)
    loaded = kind.load_params(placed(abstract.params, shardings.params))
    if loaded is None:
        state = jax.jit(init, out_shardings=shardings)()
    else:  # Only moments are created: the parameters were placed where they belong as they loaded.
        state = jax.jit(init, out_shardings=shardings, donate_argnums=(0,))(loaded)
    state, shardings = attach_frozen(kind, state, shardings, mesh)
    return model_graphdef(config), state, shardings


def placed(abstract: Any, shardings: Any) -> Any:
    """``abstract``'s shapes and dtypes as ShapeDtypeStructs carrying the matching ``shardings``."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def attach_frozen(
    kind: Any, state: TrainState, shardings: TrainState, mesh: Mesh
) -> tuple[TrainState, TrainState]:
    """``state`` and its shardings with the kind's frozen parameters (None for most kinds), loaded
    already sharded by their logical names; called at every start, fresh or resumed."""
    abstract = kind.abstract_frozen()
    if abstract is None:
        return state, shardings
    frozen_shardings = state_shardings(abstract, mesh, axis_rules(kind.config))
    frozen = kind.load_frozen(placed(abstract, frozen_shardings))
    return state.replace(frozen=frozen), shardings.replace(frozen=frozen_shardings)


def abstract_train_state(config: ml_collections.ConfigDict, mesh: Mesh) -> TrainState:
    """Shapes, dtypes and shardings of the train state, frozen parameters included, without
    allocating it (for restore, and for ``aot``'s compile)."""
    abstract = jax.eval_shape(_initializer(config))
    state = placed(abstract, state_shardings(abstract, mesh, axis_rules(config)))
    frozen = run_kind(config).abstract_frozen()
    if frozen is None:
        return state
    return state.replace(frozen=placed(frozen, state_shardings(frozen, mesh, axis_rules(config))))


def abstract_params(config: ml_collections.ConfigDict, mesh: Mesh) -> Any:
    """Shapes, dtypes and shardings of the parameters alone (what an EMA restore fills), without
    building the optimizer state."""
    abstract = jax.eval_shape(lambda: run_kind(config).init(config.seed)[1])
    return placed(abstract, state_shardings(abstract, mesh, axis_rules(config)))


def count_params(params: Any) -> int:
    return sum(x.size for x in jax.tree.leaves(params))
