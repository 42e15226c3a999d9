"""Wan 2.1 text-to-video sampling without PyTorch: diffusers' ``WanPipeline`` on our packed transformer.

    pipeline = WanPipeline.from_pretrained("/models/Wan2.1-T2V-1.3B-Diffusers")
    video = pipeline.generate("a red ball rolls across the field", frames=81, height=480, width=832)
    # uint8 [81, 480, 832, 3]

What diffusers' pipeline does, step for step (float32 results agree to float rounding):

- prompts: cleaned (:func:`clean_prompt`), tokenized to at most ``wan.text_pad_tokens`` (512, the
  pipeline's ``max_sequence_length``) tokens and encoded by the UMT5 encoder; only each prompt's
  own token states are kept, and the transformer stands for the pipeline's zero padding up to 512
  (:class:`~sora_jax.wan.transformer.CrossAttention`);
- the clip is one packed row (the prompt's) and, with guidance above 1, a second row with the
  negative prompt, in one batch: each step's velocities are ``uncond + g (cond - uncond)``;
- the timesteps and Euler steps of ``FlowMatchEulerDiscreteScheduler`` (:func:`flow_match_sigmas`),
  the transformer taking ``t = sigma`` (diffusers' timestep ``1000 sigma``, bit for bit);
- latents denormalised by the VAE's ``latents_mean``/``latents_std`` and decoded; the video is
  ``clip(x / 2 + 0.5, 0, 1)`` (``output_type="np"``), then ``round(255 x)`` as uint8.

The flow shift comes from ``scheduler/scheduler_config.json``: a ``FlowMatchEulerDiscreteScheduler``'s
``shift`` (its static-shift schedule is reproduced exactly), or the ``flow_shift`` of the
``UniPCMultistepScheduler`` that Wan's own diffusers directories ship; with neither,
``wan.flow_shift`` (3.0). This module always takes Euler steps: with UniPC's directories it samples
the same model at the same shift, but not UniPC's higher-order solver, so results differ from that
pipeline's numerically (and UniPC needs fewer steps for the same quality).
"""

from __future__ import annotations

import functools
import html
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from sora_jax.config import base_config
from sora_jax.data.packing import PackedClip, pack_rows
from sora_jax.data.patches import grid_size, patchify, unpatchify
from sora_jax.errors import ConfigError
from sora_jax.text.encoder import FrozenTextEncoder, load_text_encoder, text_encoder_dim
from sora_jax.wan.transformer import build_wan_transformer
from sora_jax.wan.transformer_weights import load_transformer, transformer_config
from sora_jax.wan.vae import WanVAE
from sora_jax.wan.vae_weights import load_vae, vae_config

PIPELINE_INDEX = "model_index.json"
PIPELINE_CLASS = "WanPipeline"
# Folders a Wan text-to-video directory must have; scheduler/ is optional (Wan's shift by default).
COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer")
SCHEDULER_CONFIG = Path("scheduler") / "scheduler_config.json"
# WanPipeline's max_sequence_length: prompts are cut to it and their states zero-padded to it.
MAX_SEQUENCE_LENGTH = 512
NUM_TRAIN_TIMESTEPS = 1000  # The transformer's timestep is 1000 t.
# Wan's defaults for a video: WanPipeline.__call__'s.
DEFAULT_FRAMES, DEFAULT_HEIGHT, DEFAULT_WIDTH = 81, 480, 832
DEFAULT_STEPS, DEFAULT_GUIDANCE = 50, 5.0
# FlowMatchEulerDiscreteScheduler settings that change its schedule; this sampler needs them off.
_SCHEDULE_VARIANTS = (
    "use_dynamic_shifting",
    "shift_terminal",
    "invert_sigmas",
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "stochastic_sampling",
)


# --- the schedule ---------------------------------------------------------------------------------


def _shifted32(sigma: np.ndarray, shift: float) -> np.ndarray:
    """The shift in float32, as the scheduler's constructor computes it on torch float32 tensors."""
    sigma = np.asarray(sigma, np.float32)
    return np.float32(shift) * sigma / (np.float32(1.0) + np.float32(shift - 1.0) * sigma)


def flow_match_sigmas(steps: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """``sigmas [steps + 1]`` (ending in 0) and ``timesteps [steps]`` (``1000 sigma``), float32, exactly
    as ``FlowMatchEulerDiscreteScheduler(shift=shift).set_timesteps(steps)`` makes them.

    The scheduler shifts twice on purpose (its smallest training sigma is already shifted when
    ``set_timesteps`` spaces the steps and shifts them again), partly in float32 and partly in
    float64; the same arithmetic in the same precisions here gives the same bits.
    An Euler step from ``sigmas[i]`` to ``sigmas[i + 1]`` is ``x + (sigmas[i + 1] - sigmas[i]) v``.
    """
    if steps < 1:
        raise ConfigError(f"steps {steps}: must be >= 1")
    if not (math.isfinite(shift) and shift > 0):
        raise ConfigError(f"flow shift {shift}: must be a positive number")
    n = NUM_TRAIN_TIMESTEPS
    # The constructor: training sigmas (k / n for k = n .. 1) shifted in float32; set_timesteps
    # reads the largest and smallest back as Python floats.
    sigma_max = float(_shifted32(np.float32(n) / np.float32(n), shift))
    sigma_min = float(_shifted32(np.float32(1.0) / np.float32(n), shift))
    sigmas = np.linspace(sigma_max * n, sigma_min * n, steps) / n  # float64 from here ...
    sigmas = (shift * sigmas / (1 + (shift - 1) * sigmas)).astype(np.float32)  # ... to float32.
    timesteps = sigmas * np.float32(n)
    return np.concatenate([sigmas, np.zeros(1, np.float32)]), timesteps


def scheduler_shift(directory: str | Path, default: float) -> float:
    """The flow shift of the Wan directory's ``scheduler/scheduler_config.json``; ``default`` without one.

    Raises:
        ConfigError: naming the file and key of a schedule Euler steps at a static shift cannot
            follow (dynamic shifting, Karras sigmas, ... or a scheduler that is not flow matching).
    """
    file = Path(directory).expanduser() / SCHEDULER_CONFIG
    if not file.is_file():
        return default
    settings = _read_json(file)
    kind = settings.get("_class_name")
    if kind == "FlowMatchEulerDiscreteScheduler":
        for key in _SCHEDULE_VARIANTS:
            if settings.get(key):  # Truthy turns the variant on, as in diffusers.
                raise ConfigError(
                    f"{file}: key {key!r} is {settings[key]!r}; this sampler follows the static shift "
                    "schedule only (false or null)"
                )
        timesteps = settings.get("num_train_timesteps", NUM_TRAIN_TIMESTEPS)
        if timesteps != NUM_TRAIN_TIMESTEPS:
            raise ConfigError(
                f"{file}: key 'num_train_timesteps' is {timesteps!r}; Wan's transformer was trained on "
                f"{NUM_TRAIN_TIMESTEPS}"
            )
        shift = settings.get("shift", 1.0)  # diffusers' default.
    elif settings.get("use_flow_sigmas") and "flow_shift" in settings:  # Wan's UniPC, DPM-Solver++.
        shift = settings["flow_shift"]
    else:
        raise ConfigError(
            f"{file}: scheduler {kind!r} is not a flow-matching schedule with a shift (expected "
            "FlowMatchEulerDiscreteScheduler, or one with use_flow_sigmas and flow_shift)"
        )
    if not isinstance(shift, int | float) or not shift > 0:
        raise ConfigError(f"{file}: the flow shift {shift!r} must be a positive number")
    return float(shift)


# --- prompts --------------------------------------------------------------------------------------


def clean_prompt(text: str) -> str:
    """WanPipeline's ``prompt_clean``: HTML entities unescaped (twice), whitespace runs made one space,
    ends stripped.

    diffusers first runs ``ftfy.fix_text`` when ftfy is installed; ftfy is not a dependency here.
    It leaves printable ASCII unchanged, so for such prompts this is exactly the pipeline's text;
    text with mojibake, curly quotes, full-width forms or terminal escapes may tokenize differently.
    """
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def _text_length(tokens: int, limit: int) -> int:
    """Caption slots of a batch: a power of two from 16 up (one compiled step serves many prompts),
    at most ``limit``."""
    return min(max(16, 1 << (max(tokens, 1) - 1).bit_length()), max(limit, tokens))


# --- shapes and directories -----------------------------------------------------------------------


def _nearest(value: int, unit: int, offset: int = 0) -> str:
    below = offset + max(value - offset, 0) // unit * unit
    return " or ".join(str(v) for v in (below, below + unit) if v >= max(1, offset))


def latent_shape(
    frames: int, height: int, width: int, *, temporal: int, spatial: int, patch: Sequence[int]
) -> tuple[int, int, int]:
    """``(T', H', W')`` latents of a ``frames x height x width`` video.

    Raises:
        ConfigError: naming ``--frames`` unless ``1 + temporal k``, or ``--height``/``--width`` unless
            a multiple of ``spatial`` times the transformer's patch (16 in Wan), with the nearest
            valid values (WanPipeline would round them down silently).
    """
    if frames < 1 or (frames - 1) % temporal:
        raise ConfigError(
            f"--frames {frames}: Wan makes 1 + {temporal} k frames (k = 0, 1, ...); the nearest valid "
            f"counts are {_nearest(frames, temporal, 1)}"
        )
    for flag, size, side_patch in (("--height", height, patch[1]), ("--width", width, patch[2])):
        unit = spatial * side_patch
        if size < unit or size % unit:
            raise ConfigError(
                f"{flag} {size}: must be a multiple of {unit} (the VAE's {spatial} pixels a latent times "
                f"the transformer's patch of {side_patch}); the nearest valid sizes are "
                f"{_nearest(size, unit)}"
            )
    return 1 + (frames - 1) // temporal, height // spatial, width // spatial


def _read_json(file: Path) -> dict[str, Any]:
    try:
        settings = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{file}: not valid JSON ({error})") from None
    if not isinstance(settings, dict):
        raise ConfigError(f"{file}: expected a JSON object")
    return settings


def pipeline_directory(directory: str | Path) -> Path:
    """``directory`` checked as a diffusers Wan 2.1 text-to-video directory, before anything loads.

    Raises:
        ConfigError: no ``model_index.json``, another pipeline (image-to-video, Wan 2.2's two
            experts), or a missing component folder, named in one line.
    """
    root = Path(directory).expanduser()
    index_file = root / PIPELINE_INDEX
    if not index_file.is_file():
        raise ConfigError(f"{root}: not a diffusers Wan directory (it has no {PIPELINE_INDEX})")
    index = _read_json(index_file)
    if index.get("_class_name") != PIPELINE_CLASS:
        raise ConfigError(
            f"{index_file}: _class_name is {index.get('_class_name')!r}; only {PIPELINE_CLASS} "
            "(Wan 2.1 text-to-video) is supported"
        )
    second = index.get("transformer_2")
    if (isinstance(second, list) and any(second)) or index.get("boundary_ratio") is not None:
        raise ConfigError(f"{index_file}: a second transformer (Wan 2.2's two experts) is not supported")
    if index.get("expand_timesteps"):
        raise ConfigError(f"{index_file}: expand_timesteps (Wan 2.2 TI2V) is not supported")
    for name in COMPONENTS:
        if not (root / name).is_dir():
            raise ConfigError(
                f"{root}: the Wan directory has no {name}/ folder (it needs {', '.join(COMPONENTS)})"
            )
    return root


def pipeline_config(directory: str | Path, dtype: str = "float32") -> ml_collections.ConfigDict:
    """The run config of a Wan directory: the base config, ``task = "wan"``, its transformer's
    settings (``transformer/config.json``), its parts as ``wan.pretrained``, ``model.autoencoder`` and
    ``model.text_encoder``, its flow shift (:func:`scheduler_shift`), compute and parameter ``dtype``."""
    root = pipeline_directory(directory)
    config = base_config()
    config.task = "wan"
    for dotted, value in transformer_config(root).items():
        section, key = dotted.split(".")
        config[section][key] = value
    config.wan.pretrained = config.model.autoencoder = config.model.text_encoder = str(root)
    config.wan.flow_shift = scheduler_shift(root, config.wan.flow_shift)
    config.model.dtype = config.model.param_dtype = dtype
    return config


def _load_encoder(path: str, dtype: jnp.dtype) -> FrozenTextEncoder:
    try:
        return load_text_encoder(path, dtype)
    except (FileNotFoundError, ValueError) as error:  # Missing files, unsupported or broken weights.
        raise ConfigError(f"the UMT5 encoder of {path}: {error}") from None


def _check_parts(config: ml_collections.ConfigDict) -> None:
    """The UMT5 encoder (``model.text_encoder``) and the VAE (``model.autoencoder``) fit the
    transformer, from their configs alone: raises ConfigError before any weight is read."""
    m = config.model
    try:
        width = text_encoder_dim(m.text_encoder)
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(f"the UMT5 encoder of {m.text_encoder}: {error}") from None
    if width != m.text_dim:
        raise ConfigError(
            f"{m.text_encoder}: the transformer reads {m.text_dim}-wide caption states (text_dim), but "
            f"the UMT5 encoder's are {width} wide"
        )
    z_dim = vae_config(m.autoencoder)["z_dim"]
    if z_dim != m.channels:
        raise ConfigError(
            f"{m.autoencoder}: the transformer takes {m.channels} latent channels (in_channels), but the "
            f"VAE makes {z_dim} (z_dim)"
        )


# --- sampling -------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=0)
def _euler_step(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    latents_np: jax.Array,
    sigma: jax.Array,
    sigma_next: jax.Array,
    guidance: jax.Array,
    batch: dict[str, jax.Array],
) -> jax.Array:
    """One guided Euler step of a clip's latent tokens ``[N, P]`` (float32) from ``sigma`` to
    ``sigma_next``; ``batch`` holds the clip once per row: captioned, then (for guidance) negative."""
    rows = batch["segment_ids"].shape[0]
    noisy = jnp.broadcast_to(latents_np, (rows, *latents_np.shape))
    velocity = nnx.merge(graphdef, params)(noisy, jnp.full((rows, 1), sigma, jnp.float32), batch)
    if rows == 2:
        velocity = velocity[1] + guidance * (velocity[0] - velocity[1])
    else:
        velocity = velocity[0]
    return latents_np + (sigma_next - sigma) * velocity


class WanPipeline:
    """A Wan 2.1 text-to-video model ready to sample: transformer, VAE, UMT5 encoder and config.

    Build it with :meth:`from_pretrained` (a diffusers directory) or :meth:`from_run` (a trained or
    fine-tuned run). The transformer step is compiled once per latent shape, caption length bucket
    and guidance on/off; prompts and seeds reuse it.
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        graphdef: nnx.GraphDef,
        params: nnx.State,
        vae: WanVAE,
        text_encoder: FrozenTextEncoder,
    ) -> None:
        self.config = config
        self.graphdef, self.params = graphdef, params
        self.vae, self.text_encoder = vae, text_encoder

    @classmethod
    def from_pretrained(cls, directory: str | Path, dtype: str | jnp.dtype = jnp.float32) -> WanPipeline:
        """A diffusers Wan 2.1 directory (``model_index.json``, ``transformer/``, ``vae/``,
        ``text_encoder/``, ``tokenizer/``, optionally ``scheduler/``).

        The transformer and the text encoder compute and keep parameters in ``dtype``; the VAE runs
        in float32, as Wan's examples run it. Raises ConfigError (one line, naming the folder, file
        or tensor) for anything missing or unsupported; missing folders and settings that do not
        fit together are found before any weight is read.
        """
        dtype = jnp.dtype(dtype)
        config = pipeline_config(directory, dtype.name)
        _check_parts(config)
        root = config.wan.pretrained
        graphdef, abstract = jax.eval_shape(lambda: nnx.split(build_wan_transformer(config, 0), nnx.Param))
        text_encoder = _load_encoder(root, dtype)
        vae = load_vae(root)
        return cls(config, graphdef, load_transformer(root, abstract), vae, text_encoder)

    @classmethod
    def from_run(cls, kind: Any, params: nnx.State) -> WanPipeline:
        """A Wan run's transformer (``kind``: its :class:`~sora_jax.kinds.wan.WanKind`; ``params``: the
        parameters it trains, e.g. EMA; under LoRA the adapters, folded into the base here) with
        the VAE and UMT5 encoder of its config (``model.autoencoder``, ``model.text_encoder``: the
        parts of ``wan.pretrained`` by default) and its ``wan.flow_shift``."""
        config = kind.config
        if config.task != "wan":
            raise ConfigError(f"config key 'task': {config.task!r}; a Wan pipeline samples Wan runs")
        m = config.model
        if m.text_encoder == "learned" or not m.autoencoder:
            raise ConfigError(
                "a Wan run samples through the UMT5 encoder and the Wan VAE: set wan.pretrained (a Wan "
                "directory), or model.text_encoder and model.autoencoder"
            )
        _check_parts(config)
        text_encoder = _load_encoder(m.text_encoder, jnp.dtype(m.dtype))
        vae = load_vae(m.autoencoder)
        return cls(config, kind.plain_graphdef(), kind.model_params(params), vae, text_encoder)

    # --- pieces ------------------------------------------------------------------------------------
    @property
    def max_prompt_tokens(self) -> int:
        """Tokens a prompt keeps (the pipeline's ``max_sequence_length``): the padding the transformer
        stands for (``wan.text_pad_tokens``), or Wan's 512 in a run without padding."""
        return self.config.wan.text_pad_tokens or MAX_SEQUENCE_LENGTH

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """``(T', H', W')`` of a video; ConfigError with the nearest valid sizes (:func:`latent_shape`)."""
        return latent_shape(
            frames,
            height,
            width,
            temporal=self.vae.temporal_factor,
            spatial=self.vae.spatial_factor,
            patch=tuple(self.config.model.patch_size),
        )

    def encode_prompts(self, prompts: Sequence[str]) -> list[np.ndarray]:
        """Each prompt's UMT5 states of its own tokens ``[n_i, text_dim]`` (float32), end token
        included: cleaned and cut as WanPipeline does; the padding states it drops are zeros there."""
        cleaned = [clean_prompt(p) for p in prompts]
        hidden, mask = self.text_encoder.encode(cleaned, self.max_prompt_tokens)
        hidden, counts = np.asarray(hidden, np.float32), np.asarray(mask).sum(axis=1)
        return [states[:count] for states, count in zip(hidden, counts, strict=True)]

    def _batch(self, shape: tuple[int, int, int], states: list[np.ndarray]) -> dict[str, jax.Array]:
        """One row per caption, each holding the whole clip (one segment)."""
        patch = tuple(self.config.model.patch_size)
        patches, positions = patchify(np.zeros((*shape, self.config.model.channels), np.float32), patch)
        grid = grid_size(*shape, patch)
        rows = [
            [
                PackedClip(
                    patches, positions, grid, shape[0], 0.0, np.zeros(len(s), np.int32), text_embedding=s
                )
            ]
            for s in states
        ]
        batch = pack_rows(
            rows,
            seq_len=len(patches),
            patch_dim=patches.shape[1],
            max_clips=1,
            text_len=_text_length(max(len(s) for s in states), self.max_prompt_tokens),
            text_dim=states[0].shape[1],
        )
        read = ("segment_ids", "positions", "text_embeddings", "text_segment_ids")  # What the model reads.
        return {name: jnp.asarray(batch[name]) for name in read}

    # --- sampling ----------------------------------------------------------------------------------
    def sample_latents(
        self,
        prompt: str,
        negative_prompt: str = "",
        *,
        frames: int = DEFAULT_FRAMES,
        height: int = DEFAULT_HEIGHT,
        width: int = DEFAULT_WIDTH,
        steps: int = DEFAULT_STEPS,
        guidance: float = DEFAULT_GUIDANCE,
        shift: float | None = None,
        seed: int = 0,
        noise: np.ndarray | None = None,
    ) -> np.ndarray:
        """The denoised latents ``[T', H', W', C]`` (float32, the transformer's normalised space: what
        WanPipeline holds before decoding) of a ``frames x height x width`` video.

        ``noise`` ``[T', H', W', C]`` is where sampling starts (diffusers' ``latents``, channels last);
        by default it is drawn from ``seed``. ``guidance > 1`` enables classifier-free guidance
        against ``negative_prompt`` (as WanPipeline: at 1 or below only the prompt's row runs).
        ``shift`` defaults to the model's (``wan.flow_shift``).
        """
        shape = self.latent_shape(frames, height, width)
        if not math.isfinite(guidance):
            raise ConfigError(f"--guidance {guidance}: must be a finite number (1 disables it)")
        sigmas, _ = flow_match_sigmas(steps, self.config.wan.flow_shift if shift is None else shift)
        channels = self.config.model.channels
        if noise is None:
            noise = jax.random.normal(jax.random.key(seed), (*shape, channels), jnp.float32)
        elif tuple(noise.shape) != (*shape, channels):
            raise ValueError(f"noise of shape {tuple(noise.shape)}; this video needs {(*shape, channels)}")
        captions = [prompt, negative_prompt] if guidance > 1.0 else [prompt]
        batch = self._batch(shape, self.encode_prompts(captions))
        patch = tuple(self.config.model.patch_size)
        latents_np = jnp.asarray(patchify(np.asarray(noise, np.float32), patch)[0])
        scale = jnp.float32(guidance)
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:], strict=True):
            latents_np = _euler_step(self.graphdef, self.params, latents_np, sigma, sigma_next, scale, batch)
        return unpatchify(np.asarray(latents_np), grid_size(*shape, patch), patch, shape[0])

    def decode(self, latents_thwc: np.ndarray) -> np.ndarray:
        """Latents ``[T', H', W', C]`` (normalised) -> video ``[T, H, W, 3]`` float32 in [0, 1]: what
        WanPipeline returns with ``output_type="np"``."""
        latents = self.vae.denormalize_latents(jnp.asarray(latents_thwc, jnp.float32)[None])
        video = self.vae.decode(latents)[0]
        return np.asarray(jnp.clip(video * 0.5 + 0.5, 0.0, 1.0))

    def generate(
        self,
        prompt: str,
        negative_prompt: str = "",
        *,
        frames: int = DEFAULT_FRAMES,
        height: int = DEFAULT_HEIGHT,
        width: int = DEFAULT_WIDTH,
        steps: int = DEFAULT_STEPS,
        guidance: float = DEFAULT_GUIDANCE,
        shift: float | None = None,
        seed: int = 0,
        noise: np.ndarray | None = None,
    ) -> np.ndarray:
        """A uint8 video ``[frames, height, width, 3]`` for ``prompt``; see :meth:`sample_latents`.

        Pixels are ``round(255 x)`` of :meth:`decode`'s, as diffusers turns its frames into images.
        """
        latents = self.sample_latents(
            prompt,
            negative_prompt,
            frames=frames,
            height=height,
            width=width,
            steps=steps,
            guidance=guidance,
            shift=shift,
            seed=seed,
            noise=noise,
        )
        return np.round(self.decode(latents) * 255.0).astype(np.uint8)
