"""diffusers' ``vae/`` folder of a Wan 2.1 model <-> :class:`~sora_jax.wan.vae.WanVAE`, without PyTorch.

A folder holds ``config.json`` (``AutoencoderKLWan``'s keys) and the weights as
``diffusion_pytorch_model.safetensors``, or shards listed by
``diffusion_pytorch_model.safetensors.index.json``; float32, bfloat16 or float16 tensors.

Names map one to one: our parameter path with the inner ``conv`` of each causal convolution
dropped, ``kernel`` read as ``weight`` and ``resample`` as ``resample.1`` (diffusers' spatial
resampling conv sits second in an ``nn.Sequential``) is diffusers' tensor name, e.g.
``("decoder", "up_blocks", 0, "upsamplers", 0, "resample", "conv", "kernel")`` is
``decoder.up_blocks.0.upsamplers.0.resample.1.weight``. Layouts: ``nn.Conv3d`` weights
``[out, in, kt, kh, kw]`` and ``nn.Conv2d`` weights ``[out, in, kh, kw]`` (the spatial resampling
convs and the attention projections) become channels-last kernels ``[kt, kh, kw, in, out]``; norm
scales ``[C, 1, 1, 1]`` (``[C, 1, 1]`` in attention) become ``[C]``.

Every problem with a user's folder (a missing file or tensor, a tensor of the wrong shape, a config
key this VAE does not cover) is a ConfigError naming the file and the key or tensor.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from sora_jax.errors import ConfigError
from sora_jax.text.hf_loading import CONFIG_FILE, Checkpoint, abstract_params
from sora_jax.wan.vae import WanVAE
from sora_jax.wan.vae_config import DEFAULTS, WanVAEConfig

VAE_FOLDER = "vae"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
WEIGHTS_INDEX = "diffusion_pytorch_model.safetensors.index.json"
EXPORT_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def vae_directory(directory: str | Path) -> Path:
    """The VAE folder of ``directory``: ``<directory>/vae`` for a diffusers Wan model, or
    ``directory`` itself when it holds the VAE's ``config.json``. ConfigError if neither."""
    path = Path(directory).expanduser()
    if not path.is_dir():
        raise ConfigError(f"Wan model directory {str(path)!r} does not exist or is not a directory")
    for candidate in (path / VAE_FOLDER, path):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    raise ConfigError(
        f"no Wan VAE in {str(path)!r}: expected {str(path / VAE_FOLDER / CONFIG_FILE)!r} (a diffusers "
        f"Wan model) or {str(path / CONFIG_FILE)!r} (its vae folder)"
    )


def vae_config(directory: str | Path) -> dict[str, Any]:
    """The VAE's ``config.json`` (of ``<directory>/vae`` or ``directory``), validated, with
    diffusers' defaults for the keys it leaves out.

    ConfigError naming the file and the key for an unknown key, a bad value or an unsupported
    setting (``is_residual: true``, ``patch_size`` and other Wan 2.2 settings).
    """
    file = vae_directory(directory) / CONFIG_FILE
    try:
        with open(file, encoding="utf-8") as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{file}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{file}: expected a JSON object of AutoencoderKLWan settings")
    WanVAEConfig.from_dict(config, source=str(file))
    return {**copy.deepcopy(DEFAULTS), **config}


class DiffusersCheckpoint(Checkpoint):
    """The tensors of a diffusers model folder (``diffusion_pytorch_model*.safetensors``)."""

    def _files(self) -> list[Path]:
        index = self.directory / WEIGHTS_INDEX
        if index.is_file():
            with open(index, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            missing = [s for s in shards if not (self.directory / s).is_file()]
            if missing:
                raise ConfigError(f"{index} lists shards that are missing: {missing}")
            return [self.directory / s for s in shards]
        if (self.directory / WEIGHTS_FILE).is_file():
            return [self.directory / WEIGHTS_FILE]
        present = sorted(p.name for p in self.directory.iterdir())
        raise ConfigError(
            f"VAE weights {WEIGHTS_FILE!r} (or {WEIGHTS_INDEX!r} and its shards) are missing from "
            f"{str(self.directory)!r} (it holds {present}); PyTorch '.bin' weights are not read: "
            "save the model with safe_serialization=True"
        )

    @property
    def names(self) -> set[str]:
        return set(self._file_of)


@dataclasses.dataclass(frozen=True)
class TensorLayout:
    """How one of our parameters is stored by diffusers: its name, shape and the two conversions."""

    name: str
    stored_shape: tuple[int, ...]
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_diffusers: Callable[[np.ndarray], np.ndarray]


def tensor_layout(path: tuple, shape: tuple[int, ...]) -> TensorLayout:
    """The diffusers tensor behind our parameter at ``path`` with our ``shape``."""
    parts = [str(p) for p in path]
    if parts[-2:] in (["conv", "kernel"], ["conv", "bias"]):  # CausalConv3d's inner nnx.Conv.
        parts = [*parts[:-2], "weight" if parts[-1] == "kernel" else "bias"]
    name = ".".join("resample.1" if p == "resample" else p for p in parts)
    conv2d = ".resample.1." in name or ".attentions." in name
    if parts[-1] == "gamma":
        stored = (shape[0], 1, 1) if ".attentions." in name else (shape[0], 1, 1, 1)
        return TensorLayout(name, stored, lambda a: a.reshape(shape), lambda a: a.reshape(stored))
    if parts[-1] == "bias":
        return TensorLayout(name, shape, lambda a: a, lambda a: a)
    kt, kh, kw, cin, cout = shape
    if conv2d:  # [out, in, kh, kw] <-> [1, kh, kw, in, out]
        return TensorLayout(
            name,
            (cout, cin, kh, kw),
            lambda a: a.transpose(2, 3, 1, 0)[None],
            lambda a: a[0].transpose(3, 2, 0, 1),
        )
    return TensorLayout(  # [out, in, kt, kh, kw] <-> [kt, kh, kw, in, out]
        name,
        (cout, cin, kt, kh, kw),
        lambda a: a.transpose(2, 3, 4, 1, 0),
        lambda a: a.transpose(4, 3, 0, 1, 2),
    )


@functools.lru_cache(maxsize=4)
def _abstract_vae(config: WanVAEConfig, dtype: jnp.dtype) -> tuple[nnx.GraphDef, nnx.State]:
    """The graph and parameter shapes of a WanVAE; tracing its construction takes seconds, so it is
    done once per config (each load merges a copy: its parameters are its own)."""
    # Logical names are metadata only: whatever mesh is active around the load (a trainer's, whose
    # axes are not these names) must not resolve them.
    no_mesh = jax.sharding.AbstractMesh((), ())
    with jax.sharding.use_abstract_mesh(no_mesh):
        return nnx.split(nnx.eval_shape(lambda: WanVAE(config, nnx.Rngs(0), dtype=dtype)))


def load_vae(directory: str | Path, dtype: jnp.dtype = jnp.float32) -> WanVAE:
    """The Wan 2.1 VAE of a diffusers model folder (``<directory>/vae``) or of a vae folder.

    Built abstractly (``nnx.eval_shape``: no random initialisation is computed) and filled tensor by
    tensor, cast to ``dtype`` (parameters and computation; norms and softmax in float32).
    ConfigError naming the file or tensor for: a missing folder, config or weights file, a config
    this VAE does not cover, a missing tensor, one of the wrong shape (expected and found), or
    tensors the config does not describe.
    """
    folder = vae_directory(directory)
    config = vae_config(folder)
    checkpoint = DiffusersCheckpoint(folder)
    vae = nnx.merge(*_abstract_vae(WanVAEConfig.from_dict(config), jnp.dtype(dtype)), copy=True)
    described = set()
    for path, param in abstract_params(vae).items():
        layout = tensor_layout(path, tuple(param.shape))
        described.add(layout.name)
        if checkpoint.find([layout.name]) is None:
            raise ConfigError(
                f"weight {layout.name!r} is missing from the VAE weights in {str(folder)!r}; its "
                f"{CONFIG_FILE} implies it"
            )
        array = checkpoint.read(layout.name)
        if tuple(array.shape) != layout.stored_shape:
            raise ConfigError(
                f"weight {layout.name!r} in {str(folder)!r} has shape {tuple(array.shape)}, but its "
                f"{CONFIG_FILE} implies {layout.stored_shape}"
            )
        param.set_value(jnp.asarray(layout.to_ours(array).astype(dtype)))  # Cast on the host.
    extra = sorted(checkpoint.names - described)
    if extra:
        raise ConfigError(
            f"the VAE weights in {str(folder)!r} hold {len(extra)} tensors its {CONFIG_FILE} does not "
            f"describe, e.g. {extra[:3]}: is this a Wan 2.1 VAE, and its config the right one?"
        )
    return vae


def export_vae(vae: WanVAE, directory: str | Path, dtype: jnp.dtype = jnp.float32) -> Path:
    """Write ``vae`` as diffusers' ``save_pretrained`` does: ``directory/config.json`` and
    ``directory/diffusion_pytorch_model.safetensors`` (diffusers' names and layouts, in ``dtype``:
    float32, bfloat16 or float16). ``directory`` is the vae folder itself (``<model>/vae``).

    Checks ``dtype`` and the destination, and converts every tensor, before writing anything; each
    file appears whole (written aside, then renamed). Returns ``directory``.
    """
    dtype = jnp.dtype(dtype)
    if dtype not in EXPORT_DTYPES:
        raise ConfigError(f"VAE export dtype {dtype.name!r}: use one of {[d.name for d in EXPORT_DTYPES]}")
    folder = Path(directory).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"VAE export destination {str(folder)!r} exists and is not a directory")
    tensors = {}
    for path, param in abstract_params(vae).items():
        layout = tensor_layout(path, tuple(param.shape))
        array = np.asarray(param.get_value()).astype(dtype)  # On the host: no program per shape.
        tensors[layout.name] = np.ascontiguousarray(layout.to_diffusers(array))
    config_text = json.dumps(vae.config.to_dict(), indent=2, sort_keys=True) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    weights_part, config_part = folder / f".{WEIGHTS_FILE}.part", folder / f".{CONFIG_FILE}.part"
    save_file(tensors, weights_part, metadata={"format": "pt"})
    config_part.write_text(config_text, encoding="utf-8")
    os.replace(weights_part, folder / WEIGHTS_FILE)
    os.replace(config_part, folder / CONFIG_FILE)
    return folder
