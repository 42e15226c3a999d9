"""The video diffusion transformer (``task = "dit"``): rectified flow on packed rows of clips.

- model: :class:`~sora_jax.model.dit.VideoDiT`; train step: :mod:`sora_jax.diffusion.train_step`;
- batches: the packed-batch contract (:mod:`sora_jax.data.packing`) from the grain pipeline
  (:func:`~sora_jax.data.pipeline.batch_stream`), every clip shape in one static shape;
- evaluation: the flow loss per timestep band (:mod:`sora_jax.eval.validation`) and, asked for,
  physics-world scores (:mod:`sora_jax.eval.world_eval`); samples: the run's ``train.sample_prompts``;
- ``sora-jax sample``: a prompt, optionally around given images or videos (:mod:`sora_jax.eval.inputs`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from sora_jax.data.packing import empty_batch, token_widths
from sora_jax.data.pipeline import batch_stream, validate_packing_section
from sora_jax.diffusion.conditioning import validate_conditioning_section
from sora_jax.diffusion.flow import validate_diffusion_section
from sora_jax.diffusion.train_step import make_train_step
from sora_jax.kinds.base import Batch, Meter, RunKind, Sampler, SampleRequest, Scorer, TrainStep
from sora_jax.model.dit import build_model, validate_model_section
from sora_jax.model.text import frozen_text_dim
from sora_jax.parallel.global_batch import packed_axes
from sora_jax.train.metrics import model_flops_per_token


class PackedMeter(Meter):
    """Tokens a second, model TFLOP/s and the distinct clip shapes packed so far."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        flops_per_token: Callable[[ml_collections.ConfigDict, float], float] = model_flops_per_token,
    ) -> None:
        self.config = config
        self.flops_per_token = flops_per_token  # (config, mean clip tokens) -> training FLOPs a token
        self.clip_shapes: set[tuple[int, int, int]] = set()  # (frames, height, width) in pixels

    def see(self, host_batch: Batch) -> None:
        grid, frames = host_batch["clip_grid"].reshape(-1, 3), host_batch["clip_frames"].reshape(-1)
        _, ph, pw = self.config.model.patch_size
        seen = zip(frames, grid, strict=True)
        self.clip_shapes |= {(int(f), int(h) * ph, int(w) * pw) for f, (_, h, w) in seen if f}

    def figures(self, metrics: dict[str, float], seconds: float) -> dict[str, float]:
        mean_clip = metrics["tokens"] / max(metrics["clips"], 1.0)
        flops = self.flops_per_token(self.config, mean_clip) * metrics["tokens"]
        return {
            "tokens_per_s": metrics["tokens"] / seconds,
            "tflops_per_s": flops / seconds / 1e12,
            "distinct_clip_shapes": len(self.clip_shapes),
        }

    def summary(self) -> str:
        return f"{len(self.clip_shapes)} distinct clip shapes" if self.clip_shapes else ""


class VideoDiTKind(RunKind):
    """The DiT of ``config.model`` trained on packed rows; see the module docstring."""

    @classmethod
    def validate(cls, config: ml_collections.ConfigDict) -> None:
        """The model, packing, diffusion and conditioning sections, each checked by its owner (sound:
        the audio tasks need ``audio.enabled``, a latent DiT has none yet, a clip fits a row with it)."""
        validate_model_section(config)
        validate_packing_section(config)
        validate_diffusion_section(config.diffusion)
        validate_conditioning_section(config.conditioning, audio=config.audio.enabled)

    def init(self, seed: int) -> tuple[nnx.GraphDef, nnx.State]:
        return nnx.split(build_model(self.config, seed), nnx.Param)

    def train_step(self, graphdef: nnx.GraphDef) -> TrainStep:
        return make_train_step(graphdef, self.config, self.optimizer())

    def batch_axes(self) -> dict[str, tuple[str | None, ...]]:
        return packed_axes(self.config)

    def batch_row(self) -> dict[str, jax.ShapeDtypeStruct]:
        m, d = self.config.model, self.config.data
        patch_dim, audio = max(token_widths(self.config)), self.config.audio.enabled
        frame_level = self.config.conditioning.frame_level
        row = empty_batch(
            1, d.seq_len, patch_dim, d.max_clips_per_row, d.text_len, frozen_text_dim(m), audio, frame_level
        )
        return {name: jax.ShapeDtypeStruct(a.shape, a.dtype) for name, a in row.items()}

    def batches(self, first_row: int, num_rows: int) -> Iterator[Batch]:
        return batch_stream(self.config, num_rows, first_row, self.config.data.batch_size)

    def describe_batches(self, batches: list[Batch], seconds: float) -> dict[str, float]:
        """Packing efficiency (non-padding token fraction), ``clips_per_row`` (mean),
        ``distinct_shapes`` (clip (frames, height, width) in pixels), ``images`` (fraction of
        one-frame clips), ``full_length_tokens`` (the share of video tokens in clips with as many
        patches in time as the longest duration, ``data.frames[1]``, has) and ``tokens_per_s``
        (non-padding tokens of ``batches[1:]`` over ``seconds``); with sound also ``audio_tokens``
        (their share of the non-padding tokens) and ``clips_with_sound`` (the share of clips that
        have audio tokens)."""
        pt, ph, pw = self.config.model.patch_size
        tokens = np.array([(b["segment_ids"] > 0).sum() for b in batches])
        frames = np.concatenate([b["clip_frames"].reshape(-1) for b in batches])
        grids = np.concatenate([b["clip_grid"].reshape(-1, 3) for b in batches])
        used = frames > 0
        video_tokens = grids[used].prod(axis=1)
        full_length = grids[used][:, 0] == -(-self.config.data.frames[1] // pt)
        shapes = {
            (int(f), int(g[1]) * ph, int(g[2]) * pw) for f, g in zip(frames[used], grids[used], strict=True)
        }
        figures = {
            "packing_efficiency": float(tokens.sum() / sum(b["segment_ids"].size for b in batches)),
            "clips_per_row": float(used.sum() / sum(b["segment_ids"].shape[0] for b in batches)),
            "distinct_shapes": len(shapes),
            "images": float((frames[used] == 1).mean()),
            "full_length_tokens": float(video_tokens[full_length].sum() / video_tokens.sum()),
            "tokens_per_s": float(tokens[1:].sum() / seconds),
        }
        if "modality" in batches[0]:
            audio = sum(int(((b["modality"] == 1) & (b["segment_ids"] > 0)).sum()) for b in batches)
            sounding = np.concatenate([b["clip_audio"].reshape(-1) for b in batches])[used]
            figures["audio_tokens"] = audio / float(tokens.sum())
            figures["clips_with_sound"] = float(sounding.mean())
        return figures

    def sampler(self, graphdef: nnx.GraphDef) -> Sampler:
        from sora_jax.eval.generate import prompt_sampler

        return prompt_sampler(graphdef, self.config)

    def evaluator(self, graphdef: nnx.GraphDef, world: bool = False) -> Scorer:
        from sora_jax.eval.validation import FlowValidation
        from sora_jax.eval.world_eval import WorldEvaluation

        validation = FlowValidation(graphdef, self.config)
        world_scores = WorldEvaluation(graphdef, self.config).scores if world else None

        def score(params: nnx.State) -> dict[str, float]:
            scores = validation(params)
            return scores | world_scores(params) if world_scores is not None else scores

        return score

    def generate(self, run: Any, request: SampleRequest) -> np.ndarray:
        from sora_jax.eval.requests import generate_for_request

        return generate_for_request(run, request)

    def meter(self) -> Meter:
        return PackedMeter(self.config)

    def work_per_step(self) -> tuple[int, str]:
        d = self.config.data
        return d.batch_size * d.seq_len, "tokens"

    def flops_per_step(self) -> float:
        # Rows of the presets hold one long clip: every token attends to the whole row.
        d = self.config.data
        return model_flops_per_token(self.config, d.seq_len) * d.batch_size * d.seq_len

    def with_depth(self, depth: int) -> ml_collections.ConfigDict:
        probe = self.config.copy_and_resolve_references()
        with probe.unlocked():
            probe.model.depth, probe.model.scan_layers = depth, False
        return probe

    def uncosted_flops_per_step(self) -> float:
        """Splash attention's training FLOPs, which XLA does not cost: scores and weighted sums over
        the whole row (self) and the text (cross), forward and backward."""
        m, d = self.config.model, self.config.data
        if m.attention != "splash":
            return 0.0
        per_token = 2 * 2 * (d.seq_len + d.text_len) * m.dim
        return 3.0 * m.depth * per_token * d.batch_size * d.seq_len
