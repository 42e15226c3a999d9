"""Reading a Hugging Face-format model directory without PyTorch.

A directory holds ``config.json``, the weights as ``*.safetensors`` (one file, or shards listed by
``model.safetensors.index.json``) and ``tokenizer.json``. Weights are read with
``safetensors``' numpy backend, one tensor at a time, and written into an abstract NNX module
(built with ``nnx.eval_shape``, so no random initialisation is ever computed) through a map from
the module's parameter paths to checkpoint names.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
PIPELINE_INDEX = "model_index.json"  # A diffusers pipeline directory: one folder per component.
SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_FILE = "model.safetensors"

# Safetensors dtypes numpy cannot name; these are read through the JAX backend (ml_dtypes) instead.
_NON_NUMPY_DTYPES = {"BF16", "F8_E4M3", "F8_E5M2"}


class CheckpointError(ValueError):
    """A checkpoint lacks a weight the model needs, or holds one of the wrong shape."""


def model_directory(path: str | Path) -> Path:
    """``path`` as a directory that exists, or FileNotFoundError naming it.

    A diffusers pipeline directory (``model_index.json``, e.g. a Wan model) stands for its
    ``text_encoder/`` folder, whose tokenizer is the sibling ``tokenizer/`` (:func:`tokenizer_file`).
    """
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(
            f"text encoder directory {str(directory)!r} does not exist or is not a directory"
        )
    if (directory / PIPELINE_INDEX).is_file() and not (directory / CONFIG_FILE).is_file():
        return model_directory(directory / "text_encoder")
    return directory


def tokenizer_file(directory: Path) -> Path:
    """``tokenizer.json`` beside the weights (transformers' layout) or in the sibling
    ``tokenizer/`` folder (a diffusers pipeline's ``text_encoder/``)."""
    sibling = directory.parent / "tokenizer" / TOKENIZER_FILE
    if not (directory / TOKENIZER_FILE).is_file() and sibling.is_file():
        return sibling
    return required_file(directory, TOKENIZER_FILE, "tokenizer")


def required_file(directory: Path, name: str, what: str) -> Path:
    file = directory / name
    if not file.is_file():
        present = sorted(p.name for p in directory.iterdir())
        raise FileNotFoundError(f"{what} {name!r} is missing from {str(directory)!r} (it holds {present})")
    return file


def read_config(directory: Path) -> dict:
    """The parsed ``config.json`` of ``directory``."""
    with open(required_file(directory, CONFIG_FILE, "model config"), encoding="utf-8") as f:
        return json.load(f)


@dataclasses.dataclass(frozen=True)
class Weight:
    """Where one parameter comes from: the first of ``names`` the checkpoint holds.

    ``transpose``: the checkpoint stores the matrix as ``[out, in]`` (``torch.nn.Linear``); our
    kernels are ``[in, out]``.
    """

    names: tuple[str, ...]
    transpose: bool = False


def weight(*names: str, transpose: bool = False) -> Weight:
    return Weight(tuple(names), transpose)


class Checkpoint:
    """The tensors of a directory's safetensors files, read lazily by name."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._file_of: dict[str, Path] = {}
        for file in self._files():
            with safe_open(file, framework="np") as handle:
                for name in handle.keys():
                    self._file_of[name] = file

    def _files(self) -> list[Path]:
        index = self.directory / SAFETENSORS_INDEX
        if index.is_file():
            with open(index, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            missing = [s for s in shards if not (self.directory / s).is_file()]
            if missing:
                raise FileNotFoundError(
                    f"{SAFETENSORS_INDEX} in {str(self.directory)!r} lists missing shards {missing}"
                )
            return [self.directory / s for s in shards]
        if (self.directory / SAFETENSORS_FILE).is_file():
            return [self.directory / SAFETENSORS_FILE]
        files = sorted(self.directory.glob("*.safetensors"))
        if not files:
            present = sorted(p.name for p in self.directory.iterdir())
            raise FileNotFoundError(
                f"no *.safetensors weights in {str(self.directory)!r} (it holds {present}); PyTorch "
                "'.bin' checkpoints are not read: save the model with safe_serialization=True"
            )
        return files

    def find(self, candidates: Iterable[str]) -> str | None:
        return next((n for n in candidates if n in self._file_of), None)

    def read(self, name: str) -> np.ndarray:
        """The tensor ``name`` as a numpy array (bfloat16 and float8 as ``ml_dtypes`` arrays)."""
        file = self._file_of[name]
        with safe_open(file, framework="np") as handle:
            if handle.get_slice(name).get_dtype() not in _NON_NUMPY_DTYPES:
                return handle.get_tensor(name)
        with safe_open(file, framework="flax") as handle:
            return np.asarray(handle.get_tensor(name))


def abstract_params(module: nnx.Module) -> dict[tuple, nnx.Param]:
    """The module's parameters by path, e.g. ``("layers", 0, "attention", "query", "kernel")``."""
    return {path: node for path, node in nnx.iter_graph(module) if isinstance(node, nnx.Param)}


def load_params(module: nnx.Module, weights: Mapping[tuple, Weight], checkpoint: Checkpoint) -> nnx.Module:
    """Fill every parameter of the abstract ``module`` from ``checkpoint`` as ``weights`` maps them.

    Each tensor is cast to the parameter's dtype. Raises CheckpointError naming the weight that is
    missing or misshapen. Checkpoint tensors no parameter asks for (a pooler, a decoder) are ignored.
    """
    params = abstract_params(module)
    unmapped = sorted(set(params) ^ set(weights), key=str)
    if unmapped:  # A bug in a weight map, not in the user's checkpoint.
        raise RuntimeError(f"parameter paths and weight map disagree on {unmapped}")
    for path, param in params.items():
        spec = weights[path]
        name = checkpoint.find(spec.names)
        if name is None:
            alternatives = f" (nor any of {list(spec.names[1:])})" if len(spec.names) > 1 else ""
            raise CheckpointError(
                f"weight {spec.names[0]!r}{alternatives} is missing from the checkpoint in "
                f"{str(checkpoint.directory)!r}; parameter {'.'.join(map(str, path))} needs it"
            )
        array = checkpoint.read(name)
        expected = param.get_value()
        stored_shape = tuple(reversed(expected.shape)) if spec.transpose else tuple(expected.shape)
        if tuple(array.shape) != stored_shape:
            raise CheckpointError(
                f"weight {name!r} has shape {tuple(array.shape)} in the checkpoint, but the config in "
                f"{str(checkpoint.directory)!r} implies {stored_shape}"
            )
        if spec.transpose:
            array = array.T
        param.set_value(jnp.asarray(array, dtype=expected.dtype))
    return module
