"""Logical axis rules: activations have names of their own, apart from parameters and inputs."""

import json

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from experiments.world_tiny import get_config
from sora_jax.config import base_config, config_from_json, config_to_json
from sora_jax.model.attention import AttentionKernel
from sora_jax.model.dit import ACTIVATION, DiTBlock
from sora_jax.parallel.global_batch import BATCH_AXES
from sora_jax.parallel.mesh import make_mesh
from sora_jax.parallel.sharding import ACTIVATION_NAMES, axis_rules, logical_to_spec, named

# What the model constrained with before activations had names of their own.
SHARED_NAMES = {
    "activation_batch": "batch",
    "activation_length": "length",
    "activation_embed": "embed",
    "activation_heads": "heads",
}


def _shared(names):
    return tuple(SHARED_NAMES.get(name, name) for name in names)


def test_default_activation_rules_lay_activations_out_as_the_shared_names_did():
    rules = axis_rules(base_config())
    assert set(ACTIVATION_NAMES) <= dict(rules).keys()
    # Every activation layout the model constrains to (residual stream, RoPE angles, attention's
    # per-device queries/keys/values and segment ids), self-attention keys split or not.
    layouts = [
        ACTIVATION,
        ("activation_batch", "activation_length", None),
        ("activation_batch", "activation_length", "activation_heads", None),
        ("activation_batch", None, "activation_heads", None),
        ("activation_batch", "activation_length"),
        ("activation_batch", None),
    ]
    for names in layouts:
        assert logical_to_spec(names, rules) == logical_to_spec(_shared(names), rules), names


def test_an_activation_rule_and_the_input_rule_of_the_same_axis_are_independent():
    config = base_config()
    inputs = BATCH_AXES["patches"]
    default = axis_rules(config)
    config.mesh.rules.activation_batch = ("data",)
    rules = axis_rules(config)
    assert logical_to_spec(ACTIVATION, rules) == PartitionSpec("data", "sequence", None)
    assert logical_to_spec(inputs, rules) == logical_to_spec(inputs, default)

    config = base_config()
    config.mesh.rules.batch = ("data",)
    rules = axis_rules(config)
    assert logical_to_spec(inputs, rules) == PartitionSpec("data", "sequence", None)
    assert logical_to_spec(ACTIVATION, rules) == logical_to_spec(ACTIVATION, default)


def _block_output_sharding(rules: dict) -> tuple[jax.sharding.Mesh, jax.sharding.Sharding]:
    """Compile one DiT block on a 4 (data) x 2 (fsdp) mesh, its input ``x`` laid out as the input
    batch's patches are; return the mesh and the sharding of the block's (constrained) output."""
    config = get_config("test")
    config.mesh.ici_data, config.mesh.ici_fsdp = 4, 2
    for name, axes in rules.items():
        config.mesh.rules[name] = axes
    mesh, rules = make_mesh(config), axis_rules(config)
    m = config.model
    with nnx.use_eager_sharding(False):  # Names as metadata only, as build_model makes them.
        block = DiTBlock(m, AttentionKernel(m.attention, m.sequence_parallel, rules), nnx.Rngs(0))
    graphdef, state = nnx.split(block)
    b, length, clips, text_length = 8, 16, 1, 4
    x = jax.device_put(jnp.ones((b, length, m.dim)), named(mesh, BATCH_AXES["patches"], rules))
    extras = (
        jnp.zeros((b, clips, m.dim)),  # conditioning
        jnp.ones((b, length), jnp.int32),  # segment ids
        jnp.zeros((b, length, m.dim // m.heads // 2)),  # RoPE angles
        jnp.zeros((b, text_length, m.text_dim)),  # caption states
        jnp.ones((b, text_length), jnp.int32),  # caption segment ids
    )
    with jax.set_mesh(mesh):
        forward = jax.jit(lambda s, x, *e: nnx.merge(graphdef, s)(x, *e))
        compiled = forward.lower(state, x, *extras).compile()
    return mesh, compiled.output_shardings


def _is(mesh: jax.sharding.Mesh, sharding: jax.sharding.Sharding, spec: PartitionSpec) -> bool:
    return sharding.is_equivalent_to(NamedSharding(mesh, spec), 3)


def test_the_activation_rule_not_the_input_rule_lays_out_a_block_s_output():
    both = PartitionSpec(("data", "fsdp"), None, None)
    data = PartitionSpec("data", None, None)
    mesh, out = _block_output_sharding({})
    assert _is(mesh, out, both)
    # The input is split over data x fsdp as before; the activations follow their own rule.
    mesh, out = _block_output_sharding({"activation_batch": ("data",)})
    assert _is(mesh, out, data) and not _is(mesh, out, both)
    # And the other way round: the input rule changes, the activations stay where they were.
    mesh, out = _block_output_sharding({"batch": ("data",)})
    assert _is(mesh, out, both)


def test_a_config_json_written_before_the_activation_names_loads_with_their_defaults():
    stored = json.loads(config_to_json(get_config("test")))
    for name in ACTIVATION_NAMES:
        del stored["mesh"]["rules"][name]
    config = config_from_json(json.dumps(stored))
    assert axis_rules(config) == axis_rules(get_config("test"))
    assert dict(axis_rules(config))["activation_batch"] == ("data", "fsdp")
