"""The interface between a kind of run and the commands that train, compile, evaluate and sample it.

A kind is bound to one config. The trainer asks it for the model's parameters (:meth:`RunKind.init`),
the optimizer, the un-jitted train step, the batch it consumes (each field's logical axes and one
row's shape) and the stream of those batches; ``evaluate`` and the trainer for its sampler and
evaluator; ``sora-jax aot`` for its abstract batch and FLOPs; ``data-stats`` for a description of
its batches; ``sample`` for a video made from a prompt. The DiT (:mod:`sora_jax.kinds.video_dit`)
and the video autoencoder (:mod:`sora_jax.kinds.autoencoder`) implement it.

Contracts every kind keeps:

- ``init(seed)`` builds the model without placing it (it is traced inside the trainer's jitted
  initialiser): parameters carry logical axis names as metadata, which the config's rules map to
  the mesh. The same seed gives the same parameters.
- The train step is a pure function ``(TrainState, batch) -> (TrainState, metrics)`` of global
  arrays; randomness comes from ``fold_in(config.seed, state.step)``, so a resumed run continues
  bit for bit. Its metrics include ``loss`` and the :func:`~sora_jax.train.step.make_update` ones.
- The batch stream yields this process's rows of every global batch as numpy arrays, in a fixed
  order set by the seed, and is a grain iterator whose position is checkpointed with the state.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import optax

from sora_jax.errors import ConfigError

Batch = dict[str, Any]
# (TrainState, batch) -> (TrainState, metrics); see sora_jax.train.state.TrainState.
TrainStep = Callable[[Any, Batch], tuple[Any, dict[str, jax.Array]]]
Sampler = Callable[[Any], list["np.ndarray | Sample"]]  # EMA parameters -> videos (with their sound)
Scorer = Callable[[Any], dict[str, float]]  # EMA parameters -> named scores


# Seeds a request may give: jax.random.key keeps 32 bits (a larger seed would repeat a smaller one).
MAX_SEED = 2**32 - 1
EDIT_STRENGTH = 0.6  # An edit's strength when none is given: the input's layout kept, its details redone.
SAMPLERS = ("euler", "heun")
EXTENSIONS = ("forward", "backward")


@dataclasses.dataclass(frozen=True)
class Sample:
    """A generated video with its sound: uint8 ``frames [T, H, W, 3]`` and float32 ``sound``
    ``[samples, C]`` in [-1, 1] at ``sample_rate`` (what a run with sound makes; a kind without
    sound returns bare frames)."""

    frames: np.ndarray
    sound: np.ndarray
    sample_rate: int


@dataclasses.dataclass(frozen=True)
class SampleRequest:
    """What ``sora-jax sample`` asks of a trained run: a video for ``prompt``, optionally around given
    images or videos (paths). None means the run's own setting (for ``extend``: forward; for
    ``strength``: :data:`EDIT_STRENGTH`). At most one of ``image``, ``video``, ``interpolate``,
    ``connect``, ``edit`` and ``audio`` is given; ``extend`` goes with ``video``, ``given_frames`` with
    ``video`` or ``connect``, ``strength`` with ``edit``, ``cond_guidance`` with given frames;
    ``add_sound`` with ``video`` (its frames are kept and their sound is made), and ``audio`` (a
    sound file whose picture is made) only from a run with sound. ``fps`` is the video's frame rate
    (None: the run's ``train.sample_fps``), which sets how long a clip's sound lasts.

    :meth:`validate` checks all of that without the run; a kind's ``generate`` checks what needs
    the run's config (sizes against its patches) before it loads parameters."""

    prompt: str
    seed: int = 0
    step: int | None = None  # The checkpoint (default: the latest).
    frames: int | None = None
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    guidance: float | None = None
    sampler: str | None = None
    cond_guidance: float | None = None
    guidance_interval: tuple[float, float] | None = None  # Times t (1 = noise) guidance acts at.
    image: str | None = None
    video: str | None = None
    extend: str | None = None
    interpolate: tuple[str, str] | None = None
    connect: tuple[str, str] | None = None
    edit: str | None = None
    given_frames: int | None = None
    strength: float | None = None
    add_sound: bool = False
    audio: str | None = None
    fps: float | None = None

    def given_files(self) -> list[tuple[str, str]]:
        """``(flag, path)`` of every image and video the request gives, in flag order."""
        files = []
        for flag, given in self._modes():
            paths = given if isinstance(given, tuple | list) else [given] if given is not None else []
            files += [(flag, path) for path in paths]
        return files

    def validate(self) -> None:
        """Checks what a request can get wrong whatever run it asks: counts, finite numbers, each
        mode's inputs, and that the given files exist, so that nothing is loaded or generated for a
        request that cannot work. Messages name the ``sora-jax sample`` flag and what it takes.

        Raises:
            ConfigError: the first flag that cannot work.
        """
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"--seed {self.seed}: must be an integer in 0 .. {MAX_SEED}")
        if self.step is not None and self.step < 0:
            raise ConfigError(f"--step {self.step}: must be a checkpoint's step, >= 0")
        shape = {"--frames": self.frames, "--height": self.height, "--width": self.width}
        if None in shape.values() and any(v is not None for v in shape.values()):
            raise ConfigError("give all of --frames, --height and --width, or none (the run's sample shape)")
        for flag, value in shape.items():
            if value is not None and value < 1:
                raise ConfigError(f"{flag} {value}: must be >= 1")
        # Zero steps would integrate nothing: the video would be the starting noise.
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"--steps {self.steps}: must be >= 1 (leave it out for the run's own)")
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise ConfigError(f"--sampler {self.sampler!r}: must be one of {', '.join(SAMPLERS)}")
        for flag, scale in (("--guidance", self.guidance), ("--cond-guidance", self.cond_guidance)):
            # A NaN or infinite scale makes every velocity NaN: an all-black video.
            if scale is not None and not math.isfinite(scale):
                raise ConfigError(f"{flag} {scale}: must be a finite number (1 disables it)")
        if self.guidance_interval is not None:
            lo, hi = self.guidance_interval
            if not 0.0 <= lo <= hi <= 1.0:  # Also false for NaN.
                raise ConfigError(
                    f"--guidance-interval {lo:g} {hi:g}: must be two times LO HI with 0 <= LO <= HI <= 1"
                )
        self._check_modes()
        for flag, path in self.given_files():
            if not Path(path).is_file():
                raise ConfigError(f"{flag} {path}: no such file")

    def _modes(self) -> list[tuple[str, str | tuple[str, str] | None]]:
        return [
            ("--image", self.image),
            ("--video", self.video),
            ("--interpolate", self.interpolate),
            ("--connect", self.connect),
            ("--edit", self.edit),
            ("--audio", self.audio),
        ]

    def _check_modes(self) -> None:
        """One mode at most, with its inputs; a flag that only a mode reads is refused without it
        rather than silently ignored."""
        modes = [flag for flag, given in self._modes() if given is not None]
        if len(modes) > 1:
            raise ConfigError(f"{' and '.join(modes)}: give one of them at most")
        for flag, pair in (("--interpolate", self.interpolate), ("--connect", self.connect)):
            if pair is not None and len(pair) != 2:
                raise ConfigError(f"{flag}: give two files, A B")
        if self.add_sound:
            if self.video is None:
                raise ConfigError("--add-sound makes the sound of a video: give --video FILE")
            for flag, value in (("--extend", self.extend), ("--given-frames", self.given_frames)):
                if value is not None:
                    raise ConfigError(f"{flag} with --add-sound: the whole video is kept; leave {flag} out")
        if self.extend is not None:
            if self.extend not in EXTENSIONS:
                raise ConfigError(f"--extend {self.extend!r}: must be one of {', '.join(EXTENSIONS)}")
            if self.video is None:
                raise ConfigError(f"--extend {self.extend} extends a video: give --video FILE")
        if self.given_frames is not None:
            if self.video is None and self.connect is None:
                raise ConfigError("--given-frames counts frames of given videos: give --video or --connect")
            if self.given_frames < 1:
                raise ConfigError(f"--given-frames {self.given_frames}: must be >= 1")
        if self.strength is not None:
            if self.edit is None:
                raise ConfigError("--strength is how much of a video --edit redoes: give --edit FILE")
            if not (math.isfinite(self.strength) and 0.0 < self.strength <= 1.0):
                raise ConfigError(f"--strength {self.strength}: must be a number in (0, 1]")
        if self.cond_guidance is not None and not set(modes) - {"--edit"}:
            raise ConfigError(
                "--cond-guidance scales the given frames: give --image, --video, --interpolate or --connect"
            )


class Meter:
    """Throughput figures of the training loop: fed every host batch, asked at each log step.

    This default counts clips (the ``clips`` metric every train step reports).
    """

    def see(self, host_batch: Batch) -> None:
        """Note what one host batch held (called for every step)."""

    def figures(self, metrics: dict[str, float], seconds: float) -> dict[str, float]:
        """Figures to log beside ``metrics`` (one step's), given ``seconds`` a step."""
        return {"clips_per_s": metrics.get("clips", 0.0) / seconds}

    def summary(self) -> str:
        """A phrase for the end-of-run log line, or ''."""
        return ""


class RunKind(abc.ABC):
    """What a run trains; see the module docstring for the contracts."""

    def __init__(self, config: ml_collections.ConfigDict) -> None:
        self.config = config

    @classmethod
    def validate(cls, config: ml_collections.ConfigDict) -> None:
        """Checks of the config sections this kind reads, run before anything compiles.

        Raises:
            ConfigError: naming the key that cannot work.
        """
        return  # The shared sections are checked by sora_jax.config.validate.

    # --- the model and its training ---------------------------------------------------------------
    @abc.abstractmethod
    def init(self, seed: int) -> tuple[Any, Any]:
        """``(graphdef, params)``: the model's structure and its parameters from ``seed`` (pytrees of
        ``nnx.GraphDef`` and ``nnx.State``; several networks may be dicts of them)."""

    def load_params(self, abstract: Any) -> Any | None:
        """The first trainable parameters of a fresh run from a pretrained checkpoint, each placed
        as ``abstract`` (``init``'s parameters as ShapeDtypeStructs with shardings) says; None
        (the default): they come from the seed."""
        return None

    def abstract_frozen(self) -> Any | None:
        """Shapes, dtypes and logical axis names (an abstract ``nnx.State``) of parameters the run
        uses but never trains, such as a pretrained base under LoRA; None (the default): none."""
        return None

    def load_frozen(self, abstract: Any) -> Any:
        """The frozen parameters, placed as ``abstract`` (:meth:`abstract_frozen` with shardings)
        says; loaded at every start, since checkpoints do not hold them."""
        raise NotImplementedError(f"{type(self).__name__} declares frozen parameters but cannot load them")

    def optimizer(self) -> optax.GradientTransformation:
        """The optimizer over ``params`` (default: the config's ``optim`` section for all of them)."""
        from sora_jax.train.optimizer import make_optimizer

        return make_optimizer(self.config)

    @abc.abstractmethod
    def train_step(self, graphdef: Any) -> TrainStep:
        """The un-jitted train step; the trainer jits it with shardings and donates the state."""

    # --- the batch it consumes --------------------------------------------------------------------
    @abc.abstractmethod
    def batch_axes(self) -> dict[str, tuple[str | None, ...]]:
        """Logical axis names of each batch field (the first is the row axis, ``batch``)."""

    @abc.abstractmethod
    def batch_row(self) -> dict[str, jax.ShapeDtypeStruct]:
        """Shape and dtype of one row of each batch field (leading axis 1)."""

    @abc.abstractmethod
    def batches(self, first_row: int, num_rows: int) -> Iterator[Batch]:
        """Rows ``first_row .. first_row + num_rows - 1`` of every global batch, step after step:
        a checkpointable grain iterator of numpy arrays."""

    def describe_batches(self, batches: list[Batch], seconds: float) -> dict[str, float]:
        """Figures of global batches for ``sora-jax data-stats``: ``batches[0]`` was drawn before
        the clock started, ``batches[1:]`` in ``seconds`` (rates count those). Default: rows a
        second and bytes a row."""
        rows = [len(next(iter(b.values()))) for b in batches]
        row_bytes = sum(a.nbytes for b in batches for a in b.values()) / sum(rows)
        return {"rows_per_s": sum(rows[1:]) / seconds, "bytes_per_row": row_bytes}

    # --- what it makes ----------------------------------------------------------------------------
    @abc.abstractmethod
    def sampler(self, graphdef: Any) -> Sampler:
        """The videos written beside checkpoints (``train.sample_*``), from EMA parameters."""

    @abc.abstractmethod
    def evaluator(self, graphdef: Any, world: bool = False) -> Scorer:
        """Held-out scores of EMA parameters; with ``world``, also physics-world scores of generated
        videos (ConfigError where the kind does not generate them)."""

    def generate(self, run: Any, request: SampleRequest) -> np.ndarray | Sample:
        """A uint8 video ``[T, H, W, 3]`` for ``request`` from a trained run of this kind (a
        :class:`~sora_jax.train.trained_run.TrainedRun`), or a :class:`Sample` with its sound."""
        raise ConfigError(f"a {self.config.task!r} run does not generate videos from a prompt")

    # --- throughput -------------------------------------------------------------------------------
    def meter(self) -> Meter:
        return Meter()

    def work_per_step(self) -> tuple[int, str]:
        """How much one global batch holds, and in what unit (reported by ``aot``)."""
        return self.config.data.batch_size, "rows"

    def flops_per_step(self) -> float | None:
        """Analytic model FLOPs of one train step over the whole batch, or None if not counted."""
        return None

    def with_depth(self, depth: int) -> ml_collections.ConfigDict | None:
        """The config with ``depth`` unrolled repeated blocks, for ``aot``'s step-time estimate
        (a per-block cost is the difference of depth 1 and 2); None: the model has no such stack."""
        return None

    def uncosted_flops_per_step(self) -> float:
        """FLOPs of kernels that XLA's cost analysis does not see (custom kernels), all chips."""
        return 0.0

    def abstract_batch(self, mesh: jax.sharding.Mesh) -> dict[str, jax.ShapeDtypeStruct]:
        """The global batch's shapes, dtypes and shardings (``data.batch_size`` rows)."""
        from sora_jax.parallel.global_batch import batch_shardings
        from sora_jax.parallel.sharding import axis_rules

        shardings = batch_shardings(mesh, axis_rules(self.config), self.batch_axes())
        rows = self.config.data.batch_size
        return {
            name: jax.ShapeDtypeStruct((rows, *row.shape[1:]), row.dtype, sharding=shardings[name])
            for name, row in self.batch_row().items()
        }
