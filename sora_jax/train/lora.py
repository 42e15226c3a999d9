"""Low-rank adapters (LoRA, Hu et al. 2021): fine-tune a frozen pretrained model through small matrices.

``config.lora.rank > 0`` gives every ``nnx.Linear`` whose dotted parameter path contains one of
``config.lora.targets`` two adapter matrices beside its kernel ``W [..., in, out]``:
``lora_a [..., in, r]`` (random) and ``lora_b [..., r, out]`` (zero), and the layer computes
``x W + b + (alpha / r) (x lora_a) lora_b``. Leading axes (the ``layers`` axis of blocks stacked for
``lax.scan``) are kept, so a scanned block slices its adapters with its kernels, and the adapters
carry the kernel's logical axis names on the ``in`` and ``out`` axes, so they shard as it does.

The adapters are :class:`flax.nnx.LoRAParam` s: :func:`split` separates them from the base
parameters, which keep exactly the paths they have without adapters (a checkpoint loader or
exporter of the plain model reads and writes them unchanged). A LoRA run trains, keeps moments
for and checkpoints only the adapters; the base is ``TrainState.frozen``, loaded at every start.
Because ``lora_b`` starts at zero, the adapted model starts as the base model exactly.
:func:`merged` folds the adapters into the kernels for sampling and export.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from sora_jax.errors import ConfigError


def lora_scale(config: ml_collections.ConfigDict) -> float:
    """``alpha / rank`` (alpha 0 means alpha = rank)."""
    lo = config.lora
    return (lo.alpha or lo.rank) / lo.rank


class LoRADense(nnx.Linear):
    """An ``nnx.Linear`` with adapters; its ``kernel`` and ``bias`` stay where the plain layer has them."""

    def __call__(self, x: jax.Array) -> jax.Array:
        y = super().__call__(x)
        a = self.lora_a[...].astype(self.dtype or x.dtype)
        b = self.lora_b[...].astype(self.dtype or x.dtype)
        return y + self.lora_scale * ((x.astype(a.dtype) @ a) @ b)


def _dotted(path: tuple) -> str:
    return ".".join(str(part) for part in path)


def add_adapters(model: nnx.Module, config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> list[str]:
    """Replace, in place, every targeted ``nnx.Linear`` of ``model`` by a :class:`LoRADense` holding
    the same kernel and bias; returns the dotted paths of the adapted layers.

    Raises:
        ConfigError: no layer matches ``lora.targets`` (a typo would otherwise train nothing).
    """
    lo, adapted = config.lora, []
    targets = tuple(lo.targets)
    linears = [(path, node) for path, node in nnx.iter_graph(model) if isinstance(node, nnx.Linear)]
    for path, linear in linears:
        name = _dotted(path)
        if isinstance(linear, LoRADense) or not any(t in name for t in targets):
            continue
        kernel = linear.kernel
        *lead, d_in, d_out = kernel.shape
        names = kernel.get_metadata().get("out_sharding") or (None,) * kernel.ndim
        *lead_names, in_name, out_name = names
        # float32 whatever the base's dtype: the adapters are what the optimizer updates.
        dtype = jnp.float32
        # Kaiming-like scale for A; B at zero so the adapted model starts as the base.
        a = jax.random.normal(rngs.params(), (*lead, d_in, lo.rank), dtype) / jnp.sqrt(d_in).astype(dtype)
        adapter = LoRADense.__new__(LoRADense)
        vars(adapter).update(vars(linear))  # The same kernel, bias and settings: the same paths.
        with nnx.use_eager_sharding(False):  # Names only: the trainer places them, as the kernels.
            adapter.lora_a = nnx.LoRAParam(a, out_sharding=(*lead_names, in_name, None))
            adapter.lora_b = nnx.LoRAParam(
                jnp.zeros((*lead, lo.rank, d_out), dtype), out_sharding=(*lead_names, None, out_name)
            )
        adapter.lora_scale = lora_scale(config)
        parent = model
        for part in path[:-1]:
            parent = parent[part] if isinstance(part, int) else getattr(parent, part)
        setattr(parent, path[-1], adapter)
        adapted.append(name)
    if not adapted:
        raise ConfigError(
            f"config key 'lora.targets': {list(targets)} match no linear layer of the model; "
            f"its layers include {', '.join(_dotted(p) for p, _ in linears[:6])}"
        )
    return adapted


def split(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """``(graphdef, adapters, base)``: the adapters (LoRAParams) and every other parameter."""
    return nnx.split(model, nnx.LoRAParam, nnx.Param)


def merged(adapters: nnx.State, base: nnx.State, scale: float) -> nnx.State:
    """The base parameters with each adapted kernel replaced by ``W + scale * lora_a @ lora_b``:
    the plain model's parameters, for sampling without adapters and for export."""
    flat_adapters = dict(nnx.to_flat_state(adapters))
    out = []
    for path, variable in nnx.to_flat_state(base):
        a = flat_adapters.get((*path[:-1], "lora_a"))
        if path[-1] == "kernel" and a is not None:
            b = flat_adapters[(*path[:-1], "lora_b")]
            kernel = variable[...]
            delta = jnp.einsum("...ir,...ro->...io", a[...].astype(jnp.float32), b[...].astype(jnp.float32))
            variable = variable.replace(
                value=(kernel.astype(jnp.float32) + scale * delta).astype(kernel.dtype)
            )
        out.append((path, variable))
    return nnx.from_flat_state(out)
