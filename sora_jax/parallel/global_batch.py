"""Global batches: which rows each process loads, and how they become sharded ``jax.Array``s.

Rows of a packed batch are split over the mesh axes of the logical ``batch`` axis. A process loads
only the rows its own devices hold; processes whose devices hold the same rows (for example
because they split those rows' tokens over ``sequence``) load the same rows, and the input
pipeline gives them the same data because each row is packed from its own slice of the stream.
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding

from sora_jax.parallel.sharding import Rules, axis_rules, named

# Logical names of each packed-batch field's axes (the DiT's batch; other kinds of run declare
# their own fields the same way).
BATCH_AXES = {
    "patches": ("batch", "length", None),
    "segment_ids": ("batch", "length"),
    "positions": ("batch", "length", None),
    "cond_mask": ("batch", "length"),
    "text_tokens": ("batch", None),
    "text_embeddings": ("batch", None, None),  # Only with a frozen text encoder.
    "text_segment_ids": ("batch", None),
    "text_positions": ("batch", None),
    "clip_grid": ("batch", None, None),
    "clip_frames": ("batch", None),
    "clip_fps": ("batch", None),
    # Only with sound (audio.enabled).
    "modality": ("batch", "length"),
    "times": ("batch", "length"),
    "clip_audio": ("batch", None),
    # Only with frame-level conditioning (conditioning.frame_level).
    "given_frames": ("batch", "length"),
}
Axes = dict[str, tuple[str | None, ...]]  # batch field -> logical names of its axes
SOUND_FIELDS = ("modality", "times", "clip_audio")
OPTIONAL_FIELDS = ("text_embeddings", *SOUND_FIELDS, "given_frames")
PACKED_FIELDS = tuple(name for name in BATCH_AXES if name not in OPTIONAL_FIELDS)


def packed_axes(config: ml_collections.ConfigDict) -> Axes:
    """The packed-batch fields of a DiT run and their axes: the contract's, plus ``text_embeddings``
    when a frozen encoder's stored caption states replace the learned one's tokens, the sound
    fields with ``audio.enabled``, and ``given_frames`` with ``conditioning.frame_level``."""
    fields = PACKED_FIELDS
    if config.model.text_encoder != "learned":
        fields += ("text_embeddings",)
    if config.audio.enabled:
        fields += SOUND_FIELDS
    if config.conditioning.frame_level:
        fields += ("given_frames",)
    return {name: BATCH_AXES[name] for name in fields}


def batch_shardings(mesh: Mesh, rules: Rules, axes: Axes) -> dict[str, NamedSharding]:
    """Shardings of a batch's fields, from the logical names of their axes."""
    return {name: named(mesh, names, rules) for name, names in axes.items()}


@dataclasses.dataclass(frozen=True)
class BatchLayout:
    """This process's rows of every global batch of ``rows`` rows: the contiguous block
    ``first_row .. first_row + num_rows - 1`` that its devices hold."""

    mesh: Mesh
    rules: Rules
    axes: Axes
    rows: int
    first_row: int
    num_rows: int

    @classmethod
    def of(cls, config: ml_collections.ConfigDict, mesh: Mesh, axes: Axes) -> BatchLayout:
        """The layout of batches of fields ``axes`` (logical names; each splits rows over ``batch``)."""
        rules, rows = axis_rules(config), config.data.batch_size
        sharding = named(mesh, ("batch", None), rules)
        held = {
            (index[0].start or 0, rows if index[0].stop is None else index[0].stop)
            for index in sharding.addressable_devices_indices_map((rows, 1)).values()
        }
        first, stop = min(start for start, _ in held), max(end for _, end in held)
        covered = sum(end - start for start, end in held)
        if covered != stop - first:
            raise ValueError(
                f"process {jax.process_index()} holds rows {sorted(held)} of the batch, not one block; "
                "order the mesh so each process's devices hold contiguous rows"
            )
        return cls(mesh, rules, axes, rows, first, stop - first)

    def to_global(self, host_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's ``num_rows`` rows of each field to global arrays sharded over the mesh."""
        arrays = {}
        for name, local in host_batch.items():
            if local.shape[0] != self.num_rows:
                raise ValueError(f"{name} has {local.shape[0]} rows; this process holds {self.num_rows}")

            def shard(index: tuple[slice, ...], local: np.ndarray = local) -> np.ndarray:
                row = index[0]
                start = (row.start or 0) - self.first_row
                stop = (self.rows if row.stop is None else row.stop) - self.first_row
                return local[(slice(start, stop), *index[1:])]

            shape = (self.rows, *local.shape[1:])
            sharding = named(self.mesh, self.axes[name], self.rules)
            arrays[name] = jax.make_array_from_callback(shape, sharding, shard)
        return arrays
