"""Diffusers' Wan ``transformer/`` directory and our :class:`~sora_jax.wan.transformer.WanTransformer`.

- :func:`transformer_config`: its ``config.json`` as our config keys (``model.*``, ``wan.*``);
- :func:`load_transformer`: its safetensors (one file, or shards listed by
  ``diffusion_pytorch_model.safetensors.index.json``; float32 or bfloat16) into the parameters of an
  abstract model, one parameter at a time, each placed directly with its sharding;
- :func:`export_transformer`: our parameters as such a directory, in diffusers' names and layouts,
  which ``WanTransformer3DModel.from_pretrained`` loads.

Layouts: ``torch.nn.Linear`` stores ``[out, in]``, our kernels are ``[in, out]``; the patch Conv3d
``[D, C, pt, ph, pw]`` is our dense kernel ``[pt * ph * pw * C, D]`` over ``(pt, ph, pw, C)``
patches; ``scale_shift_table`` s ``[1, n, D]`` are ``[n, D]``; block ``i``'s tensors
(``blocks.{i}.*``) are row ``i`` of our parameters stacked on the ``layers`` axis.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from sora_jax.errors import ConfigError
from sora_jax.text.hf_loading import Checkpoint, CheckpointError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
WEIGHTS_INDEX = "diffusion_pytorch_model.safetensors.index.json"
SUBFOLDER = "transformer"
CLASS_NAME = "WanTransformer3DModel"
# Written into exported configs: the first diffusers release with WanTransformer3DModel.
DIFFUSERS_VERSION = "0.33.0"
# diffusers' constructor defaults, which apply to keys a config.json leaves out.
DIFFUSERS_DEFAULTS: dict[str, Any] = {
    "patch_size": [1, 2, 2],
    "num_attention_heads": 40,
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 13824,
    "num_layers": 40,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "image_dim": None,
    "added_kv_proj_dim": None,
    "rope_max_seq_len": 1024,
    "pos_embed_seq_len": None,
}
# Settings of other Wan variants (image-to-video) that this transformer does not implement.
_UNSUPPORTED = {
    "image_dim": "an image embedder (image-to-video Wan)",
    "added_kv_proj_dim": "image key/value projections (image-to-video Wan)",
    "pos_embed_seq_len": "an image position embedding (Wan FLF2V)",
}
_ROPE_THETA = 10_000.0  # Fixed in diffusers' WanRotaryPosEmbed.
# Tensors diffusers itself skips when loading (WanTransformer3DModel._keys_to_ignore_on_load_unexpected).
_IGNORED = ("norm_added_q",)


class TransformerCheckpointError(CheckpointError, ConfigError):
    """A Wan transformer checkpoint that cannot fill the model (a missing or misshapen tensor, or a
    missing file). A ConfigError too: commands report it in one line, naming the file."""


# --- config --------------------------------------------------------------------------------------


def transformer_directory(directory: str | os.PathLike) -> Path:
    """The folder holding the transformer's config.json: ``<directory>/transformer`` or, when
    ``directory`` is itself that folder, ``directory``. Raises ConfigError when neither holds one."""
    root = Path(directory).expanduser()
    for candidate in (root / SUBFOLDER, root):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    if not root.is_dir():
        raise ConfigError(f"Wan directory {str(root)!r} does not exist or is not a directory")
    raise ConfigError(
        f"{str(root)!r} holds no Wan transformer: it has neither {SUBFOLDER}/{CONFIG_FILE} nor {CONFIG_FILE}"
    )


def _read_json(file: Path) -> dict:
    try:
        with open(file, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{file}: not valid JSON ({error})") from error


def transformer_config(directory: str | os.PathLike) -> dict[str, Any]:
    """Our config keys for the transformer in ``directory`` (a Wan directory or its ``transformer/``).

    Returns dotted keys: ``model.{patch_size, channels, dim, heads, depth, text_dim, rope_theta}``
    and ``wan.{ffn_dim, freq_dim, eps, cross_attn_norm, rope_max_seq_len}``.

    Raises:
        ConfigError: no config.json there, or a key that is unknown or set to something this
            transformer does not implement (named with the file).
    """
    file = transformer_directory(directory) / CONFIG_FILE
    stored = _read_json(file)
    if not isinstance(stored, dict):
        raise ConfigError(f"{file}: expected a JSON object of transformer settings")
    class_name = stored.get("_class_name", CLASS_NAME)
    if class_name != CLASS_NAME:
        raise ConfigError(f"{file}: key '_class_name' is {class_name!r}; only {CLASS_NAME} is supported")
    for key in stored:
        if not key.startswith("_") and key not in DIFFUSERS_DEFAULTS:
            raise ConfigError(f"{file}: key {key!r} is not a Wan 2.1 transformer setting this project knows")
    c = DIFFUSERS_DEFAULTS | {k: v for k, v in stored.items() if not k.startswith("_")}
    for key, what in _UNSUPPORTED.items():
        if c[key] is not None:
            raise ConfigError(
                f"{file}: key {key!r} is {c[key]!r}: {what} is not supported (text-to-video only)"
            )
    if c["qk_norm"] != "rms_norm_across_heads":
        raise ConfigError(
            f"{file}: key 'qk_norm' is {c['qk_norm']!r}; only 'rms_norm_across_heads' is supported"
        )
    if c["out_channels"] not in (None, c["in_channels"]):
        raise ConfigError(
            f"{file}: key 'out_channels' is {c['out_channels']!r}, but in_channels is {c['in_channels']!r}; "
            "only equal channel counts are supported"
        )
    if len(c["patch_size"]) != 3:
        raise ConfigError(f"{file}: key 'patch_size' must hold 3 sizes (t, h, w), got {c['patch_size']!r}")
    return {
        "model.patch_size": tuple(int(p) for p in c["patch_size"]),
        "model.channels": int(c["in_channels"]),
        "model.dim": int(c["num_attention_heads"] * c["attention_head_dim"]),
        "model.heads": int(c["num_attention_heads"]),
        "model.depth": int(c["num_layers"]),
        "model.text_dim": int(c["text_dim"]),
        "model.rope_theta": _ROPE_THETA,
        "wan.ffn_dim": int(c["ffn_dim"]),
        "wan.freq_dim": int(c["freq_dim"]),
        "wan.eps": float(c["eps"]),
        "wan.cross_attn_norm": bool(c["cross_attn_norm"]),
        "wan.rope_max_seq_len": int(c["rope_max_seq_len"]),
    }


def diffusers_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The ``config.json`` diffusers needs for the transformer of our ``config``.

    Raises ConfigError for a setting diffusers' Wan cannot express (a RoPE theta other than 10000).
    """
    m, w = config.model, config.wan
    if float(m.rope_theta) != _ROPE_THETA:
        raise ConfigError(
            f"config key 'model.rope_theta': {m.rope_theta} cannot be exported; diffusers' Wan fixes it "
            f"at {_ROPE_THETA:g}"
        )
    return {
        "_class_name": CLASS_NAME,
        "_diffusers_version": DIFFUSERS_VERSION,
        "added_kv_proj_dim": None,
        "attention_head_dim": m.dim // m.heads,
        "cross_attn_norm": bool(w.cross_attn_norm),
        "eps": float(w.eps),
        "ffn_dim": int(w.ffn_dim),
        "freq_dim": int(w.freq_dim),
        "image_dim": None,
        "in_channels": int(m.channels),
        "num_attention_heads": int(m.heads),
        "num_layers": int(m.depth),
        "out_channels": int(m.channels),
        "patch_size": [int(p) for p in m.patch_size],
        "pos_embed_seq_len": None,
        "qk_norm": "rms_norm_across_heads",
        "rope_max_seq_len": int(w.rope_max_seq_len),
        "text_dim": int(m.text_dim),
    }


# --- the map between parameter paths and diffusers' tensors ----------------------------------------

# How a stored tensor becomes our parameter (and back): "linear" transposes [out, in] to [in, out],
# "patch" turns the Conv3d kernel into the dense one, "table" drops the leading 1, "copy" keeps it.
_TOP: dict[tuple[str, ...], tuple[str, str]] = {
    ("patch_embed", "kernel"): ("patch_embedding.weight", "patch"),
    ("patch_embed", "bias"): ("patch_embedding.bias", "copy"),
    ("time_in", "kernel"): ("condition_embedder.time_embedder.linear_1.weight", "linear"),
    ("time_in", "bias"): ("condition_embedder.time_embedder.linear_1.bias", "copy"),
    ("time_out", "kernel"): ("condition_embedder.time_embedder.linear_2.weight", "linear"),
    ("time_out", "bias"): ("condition_embedder.time_embedder.linear_2.bias", "copy"),
    ("time_proj", "kernel"): ("condition_embedder.time_proj.weight", "linear"),
    ("time_proj", "bias"): ("condition_embedder.time_proj.bias", "copy"),
    ("text_in", "kernel"): ("condition_embedder.text_embedder.linear_1.weight", "linear"),
    ("text_in", "bias"): ("condition_embedder.text_embedder.linear_1.bias", "copy"),
    ("text_out", "kernel"): ("condition_embedder.text_embedder.linear_2.weight", "linear"),
    ("text_out", "bias"): ("condition_embedder.text_embedder.linear_2.bias", "copy"),
    ("final_table",): ("scale_shift_table", "table"),
    ("final", "kernel"): ("proj_out.weight", "linear"),
    ("final", "bias"): ("proj_out.bias", "copy"),
}
_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "out": "to_out.0"}
_BLOCK: dict[tuple[str, ...], tuple[str, str]] = {
    ("cross_norm", "scale"): ("norm2.weight", "copy"),
    ("cross_norm", "bias"): ("norm2.bias", "copy"),
    ("mlp_in", "kernel"): ("ffn.net.0.proj.weight", "linear"),
    ("mlp_in", "bias"): ("ffn.net.0.proj.bias", "copy"),
    ("mlp_out", "kernel"): ("ffn.net.2.weight", "linear"),
    ("mlp_out", "bias"): ("ffn.net.2.bias", "copy"),
    ("modulation_table",): ("scale_shift_table", "table"),
}
for _ours, _theirs in (("self_attention", "attn1"), ("cross_attention", "attn2")):
    for _layer, _name in _ATTENTION.items():
        _BLOCK[(_ours, _layer, "kernel")] = (f"{_theirs}.{_name}.weight", "linear")
        _BLOCK[(_ours, _layer, "bias")] = (f"{_theirs}.{_name}.bias", "copy")
    _BLOCK[(_ours, "query_norm", "scale")] = (f"{_theirs}.norm_q.weight", "copy")
    _BLOCK[(_ours, "key_norm", "scale")] = (f"{_theirs}.norm_k.weight", "copy")


def _tensor_names(path: tuple[str, ...], depth: int) -> tuple[list[str], str]:
    """Diffusers' tensor names for our parameter ``path`` (one per block for block parameters)."""
    if path[0] == "blocks":
        name, layout = _BLOCK[path[1:]]
        return [f"blocks.{i}.{name}" for i in range(depth)], layout
    name, layout = _TOP[path]
    return [name], layout


def _to_ours(tensor: np.ndarray, layout: str) -> np.ndarray:
    if layout == "linear":
        return tensor.T
    if layout == "patch":  # [D, C, pt, ph, pw] -> [pt, ph, pw, C, D] -> [P, D]
        return tensor.transpose(2, 3, 4, 1, 0).reshape(-1, tensor.shape[0])
    if layout == "table":
        return tensor[0]
    return tensor


def _to_theirs(array: np.ndarray, layout: str, patch_shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`_to_ours`; ``patch_shape`` is ``(pt, ph, pw, C)``."""
    if layout == "linear":
        return array.T
    if layout == "patch":
        return array.reshape(*patch_shape, array.shape[-1]).transpose(4, 3, 0, 1, 2)
    if layout == "table":
        return array[None]
    return array


def _stored_shape(shape: tuple[int, ...], layout: str, patch_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape diffusers stores for one of our (per-block) parameter shapes."""
    if layout == "linear":
        return tuple(reversed(shape))
    if layout == "patch":
        pt, ph, pw, channels = patch_shape
        return (shape[1], channels, pt, ph, pw)
    if layout == "table":
        return (1, *shape)
    return tuple(shape)


def _path(keys: tuple) -> tuple[str, ...]:
    """A pytree key path of an nnx.State as a parameter path (``("blocks", "mlp_in", "kernel")``)."""
    parts = []
    for key in keys:
        if isinstance(key, jax.tree_util.DictKey):
            parts.append(str(key.key))
        elif isinstance(key, jax.tree_util.GetAttrKey):
            if key.name != "value":  # The Variable's own field, not a module attribute.
                parts.append(key.name)
        elif isinstance(key, jax.tree_util.SequenceKey):
            parts.append(str(key.idx))
        else:
            parts.append(str(key))
    return tuple(parts)


def _is_block(path: tuple[str, ...]) -> bool:
    return path[0] == "blocks"


# --- loading ---------------------------------------------------------------------------------------


class _DiffusersCheckpoint(Checkpoint):
    """The tensors of a diffusers model folder (``diffusion_pytorch_model*.safetensors``)."""

    def _files(self) -> list[Path]:
        index = self.directory / WEIGHTS_INDEX
        if index.is_file():
            shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
            missing = [s for s in shards if not (self.directory / s).is_file()]
            if missing or not shards:
                raise TransformerCheckpointError(
                    f"{index}: lists shards that are missing: {missing}"
                    if missing
                    else f"{index}: no weight_map"
                )
            return [self.directory / s for s in shards]
        if (self.directory / WEIGHTS_FILE).is_file():
            return [self.directory / WEIGHTS_FILE]
        present = sorted(p.name for p in self.directory.iterdir())
        raise TransformerCheckpointError(
            f"the Wan transformer weights {WEIGHTS_FILE!r} (or {WEIGHTS_INDEX!r} and its shards) are missing "
            f"from {str(self.directory)!r} (it holds {present}); PyTorch '.bin' weights are not read"
        )

    def names(self) -> set[str]:
        return set(self._file_of)

    def file_of(self, name: str) -> Path:
        return self._file_of[name]


def load_transformer(
    directory: str | os.PathLike, abstract_state: nnx.State, shardings: Any = None
) -> nnx.State:
    """The parameters of ``abstract_state`` (a WanTransformer's, from ``jax.eval_shape``: shapes and
    dtypes only) read from the diffusers checkpoint in ``directory`` (a Wan directory or its
    ``transformer/``).

    Each parameter is read, one tensor at a time (the blocks' tensors stacked on the ``layers``
    axis), cast to the parameter's dtype and placed with its sharding: from ``shardings`` (a pytree
    of ``NamedSharding`` matching ``abstract_state``), else the abstract leaf's own ``.sharding``
    when it has one, else on the default device. Host memory holds one parameter at a time; no
    random initialisation is ever computed.

    Raises:
        ConfigError: the directory or its config.json is missing or unsupported.
        TransformerCheckpointError (a CheckpointError and a ConfigError): weights missing, a
            tensor missing, of the wrong shape, or one the model has no place for.
    """
    folder = transformer_directory(directory)
    checkpoint = _DiffusersCheckpoint(folder)
    stored = transformer_config(folder)
    patch_shape = (*stored["model.patch_size"], stored["model.channels"])
    depth = stored["model.depth"]
    used: set[str] = set()

    def load(keys: tuple, abstract: Any, sharding: Any = None) -> jax.Array:
        path = _path(keys)
        names, layout = _tensor_names(path, depth)
        shape = tuple(abstract.shape[1:]) if _is_block(path) else tuple(abstract.shape)
        if _is_block(path) and abstract.shape[0] != depth:
            raise TransformerCheckpointError(
                f"{folder / CONFIG_FILE} has num_layers={depth}, but the model has {abstract.shape[0]} blocks"
            )
        expected = _stored_shape(shape, layout, patch_shape)
        tensors = []
        for name in names:
            if name not in checkpoint.names():
                raise TransformerCheckpointError(
                    f"tensor {name!r} is missing from the Wan transformer weights in {str(folder)!r}; "
                    f"parameter {'.'.join(path)} needs it"
                )
            tensor = checkpoint.read(name)
            if tuple(tensor.shape) != expected:
                raise TransformerCheckpointError(
                    f"tensor {name!r} in {str(checkpoint.file_of(name))!r} has shape {tuple(tensor.shape)}, "
                    f"but the model expects {expected}"
                )
            tensors.append(_to_ours(tensor, layout).astype(abstract.dtype))
            used.add(name)
        host = np.stack(tensors) if _is_block(path) else tensors[0]
        if sharding is None:
            sharding = getattr(abstract, "sharding", None)
        if isinstance(sharding, jax.sharding.Sharding):
            return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
        return jnp.asarray(host)

    if shardings is None:
        state = jax.tree_util.tree_map_with_path(load, abstract_state)
    else:
        state = jax.tree_util.tree_map_with_path(load, abstract_state, shardings)
    unused = sorted(n for n in checkpoint.names() - used if not any(i in n for i in _IGNORED))
    if unused:
        raise TransformerCheckpointError(
            f"the Wan transformer weights in {str(folder)!r} hold tensors this model has no place for, "
            f"e.g. {unused[:3]} ({len(unused)} in all): a different Wan variant?"
        )
    return state


# --- export ----------------------------------------------------------------------------------------


def _host(array: jax.Array) -> np.ndarray:
    """The whole of ``array`` on this host (gathered across processes when it spans several)."""
    if isinstance(array, jax.Array) and not array.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return np.asarray(jax.device_get(array))


def _shard_plan(sizes: list[tuple[str, int]], max_shard_bytes: int) -> list[list[str]]:
    """Tensor names grouped into files of at most ``max_shard_bytes`` (a bigger tensor alone)."""
    shards: list[list[str]] = [[]]
    filled = 0
    for name, size in sizes:
        if shards[-1] and filled + size > max_shard_bytes:
            shards.append([])
            filled = 0
        shards[-1].append(name)
        filled += size
    return shards


def export_transformer(
    params: nnx.State | nnx.Module,
    config: ml_collections.ConfigDict,
    directory: str | os.PathLike,
    dtype: str = "float32",
    max_shard_bytes: int = 10 * 2**30,
) -> Path:
    """Write ``params`` (a WanTransformer's parameters, or the module) as ``<directory>/transformer/``:
    ``config.json`` and ``diffusion_pytorch_model.safetensors`` in diffusers' names and layouts
    (``dtype`` float32 or bfloat16), split into ``diffusion_pytorch_model-0000i-of-0000n.safetensors``
    with an index when over ``max_shard_bytes``, as diffusers' ``save_pretrained`` does. Returns the
    folder. Only process 0 writes (every process must call it when parameters span processes).

    Each file is written under a temporary name and renamed, and weight files of an earlier export
    that this one does not write are removed, so the folder never mixes two exports' shards.

    Raises:
        ConfigError: an unknown ``dtype``, a config diffusers cannot express, or a ``directory``
            that is a file (checked before anything is written).
    """
    if dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"export dtype {dtype!r} is not one of float32, bfloat16")
    out_dtype = jnp.dtype(dtype)
    meta = diffusers_config(config)
    folder = Path(directory).expanduser() / SUBFOLDER
    for parent in (folder.parent, folder):
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"export directory {str(parent)!r} is a file, not a directory")
    if isinstance(params, nnx.Module):
        params = nnx.state(params, nnx.Param)
    m = config.model
    patch_shape = (*m.patch_size, m.channels)

    leaves = {_path(keys): leaf for keys, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    expected = set(_TOP) | {
        ("blocks", *p) for p in _BLOCK if p[0] != "cross_norm" or config.wan.cross_attn_norm
    }
    if set(leaves) != expected:
        raise ValueError(f"not a WanTransformer's parameters: {sorted(set(leaves) ^ expected)} differ")

    # Tensor by tensor: (name, our parameter path, block index or None, layout).
    tensors: list[tuple[str, tuple[str, ...], int | None, str]] = []
    for path in sorted(leaves):
        names, layout = _tensor_names(path, m.depth)
        for i, name in enumerate(names):
            tensors.append((name, path, i if _is_block(path) else None, layout))
    itemsize = out_dtype.itemsize
    sizes = [
        (name, int(np.prod(leaves[path].shape[1 if block is not None else 0 :])) * itemsize)
        for name, path, block, _ in tensors
    ]
    plan = _shard_plan(sizes, max_shard_bytes)
    files = (
        [WEIGHTS_FILE]
        if len(plan) == 1
        else [f"diffusion_pytorch_model-{i + 1:05d}-of-{len(plan):05d}.safetensors" for i in range(len(plan))]
    )
    file_of = {name: files[i] for i, names in enumerate(plan) for name in names}
    writer = jax.process_index() == 0
    if writer:
        folder.mkdir(parents=True, exist_ok=True)

    def shard_tensors() -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        # Parameters in path order, each fetched to the host once; a file is written when full.
        pending: dict[str, dict[str, np.ndarray]] = {f: {} for f in files}
        expected_count = {f: 0 for f in files}
        for name in file_of:
            expected_count[file_of[name]] += 1
        current_path, host = None, None
        for name, path, block, layout in tensors:
            if path != current_path:
                current_path, host = path, _host(leaves[path])
            value = host[block] if block is not None else host
            pending[file_of[name]][name] = np.ascontiguousarray(
                _to_theirs(np.asarray(value), layout, patch_shape).astype(out_dtype)
            )
            if len(pending[file_of[name]]) == expected_count[file_of[name]]:
                yield file_of[name], pending.pop(file_of[name])

    for file, shard in shard_tensors():
        if writer:
            _atomic(folder / file, lambda tmp, shard=shard: save_file(shard, tmp, metadata={"format": "pt"}))
    if not writer:
        return folder
    index = folder / WEIGHTS_INDEX
    if len(files) > 1:
        content = {
            "metadata": {"total_size": sum(size for _, size in sizes)},
            "weight_map": dict(sorted(file_of.items())),
        }
        _atomic(index, lambda tmp: Path(tmp).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n"))
    for stale in folder.glob("diffusion_pytorch_model*"):
        if stale.name not in files and not (len(files) > 1 and stale == index):
            stale.unlink()
    _atomic(
        folder / CONFIG_FILE,
        lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n"),
    )
    return folder


def _atomic(file: Path, write: Callable[[str], object]) -> None:
    """Run ``write`` on a temporary name beside ``file``, then rename it to ``file``."""
    tmp = file.with_name(f".{file.name}.tmp")
    write(str(tmp))
    os.replace(tmp, file)
