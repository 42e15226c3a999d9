"""Building blocks shared by the pretrained text encoders: named layers and key-padding attention.

Shapes: ``B`` captions, ``L`` tokens, ``N`` heads of ``H`` features. Parameters carry logical
axis names (``vocab``, ``embed``, ``heads``, ``mlp``) as metadata, like the rest of the project,
so that a rules table can place them on a mesh.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

# Hugging Face ``hidden_act`` / ``dense_act_fn`` names -> functions with the same numerics.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; supported: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def linear(
    in_dim: int,
    out_dim: int,
    names: tuple[str | None, str | None],
    rngs: nnx.Rngs,
    *,
    use_bias: bool,
    dtype: jnp.dtype,
) -> nnx.Linear:
    """A Linear layer, kernel ``[in, out]`` and bias ``[out]`` named by ``names``; params in ``dtype``."""
    return nnx.Linear(
        in_dim,
        out_dim,
        use_bias=use_bias,
        kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), names),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (names[1],)),
        dtype=dtype,
        param_dtype=dtype,
        rngs=rngs,
    )


def embedding(count: int, dim: int, names: tuple[str | None, str | None], rngs: nnx.Rngs, dtype) -> nnx.Embed:
    """A lookup table ``[count, dim]`` named by ``names``."""
    return nnx.Embed(
        count,
        dim,
        embedding_init=nnx.with_partitioning(nnx.initializers.normal(stddev=0.02), names),
        dtype=dtype,
        param_dtype=dtype,
        rngs=rngs,
    )


def layer_norm(dim: int, eps: float, rngs: nnx.Rngs, dtype) -> nnx.LayerNorm:
    """LayerNorm with scale and bias; statistics are computed in float32 whatever ``dtype`` is."""
    replicated = lambda init: nnx.with_partitioning(init, (None,))  # noqa: E731
    return nnx.LayerNorm(
        dim,
        epsilon=eps,
        scale_init=replicated(nnx.initializers.ones_init()),
        bias_init=replicated(nnx.initializers.zeros_init()),
        dtype=dtype,
        param_dtype=dtype,
        rngs=rngs,
    )


def rms_norm(dim: int, eps: float, rngs: nnx.Rngs, dtype) -> nnx.RMSNorm:
    """T5's layer norm: scale only, no mean subtraction, no bias."""
    return nnx.RMSNorm(
        dim,
        epsilon=eps,
        scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), (None,)),
        dtype=dtype,
        param_dtype=dtype,
        rngs=rngs,
    )


def key_padding_attention(
    q_blnh: jax.Array,
    k_blnh: jax.Array,
    v_blnh: jax.Array,
    mask_bl: jax.Array,
    *,
    scale: float,
    bias_1nll: jax.Array | None = None,
) -> jax.Array:
    """Softmax attention ``[B, L, N, H]`` in which no query attends to a padding key.

    ``mask [B, L]`` is True on real tokens. Logits and softmax are float32 (``scale`` times
    ``q.k`` plus the optional additive ``bias [1, N, L, L]``); padding queries still attend to
    the caption's real tokens, so every softmax row has an unmasked entry.
    """
    logits_bnlk = jnp.einsum("blnh,bknh->bnlk", q_blnh, k_blnh, preferred_element_type=jnp.float32) * scale
    if bias_1nll is not None:
        logits_bnlk = logits_bnlk + bias_1nll.astype(jnp.float32)
    logits_bnlk = jnp.where(mask_bl[:, None, None, :], logits_bnlk, jnp.finfo(jnp.float32).min)
    weights_bnlk = jax.nn.softmax(logits_bnlk, axis=-1).astype(v_blnh.dtype)
    return jnp.einsum("bnlk,bknh->blnh", weights_bnlk, v_blnh)
