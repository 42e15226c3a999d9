"""Wan 2.1 text-to-video (``task = "wan"``): the Wan transformer trained on packed rows of Wan-VAE latents.

Everything but the network is the DiT's (:mod:`sora_jax.kinds.video_dit`): packed batches of any
clip shapes from a latent store (``data.store``, made by ``sora-jax encode`` with the Wan VAE and
the UMT5 encoder), the rectified-flow loss with per-clip timesteps (Wan's flow matching: the same
path and velocity, timestep ``1000 t``), sharding, resume. What it adds:

- the model: :class:`~sora_jax.wan.transformer.WanTransformer` (``model.*`` and ``wan.*``);
- a start from pretrained weights: ``wan.pretrained``, a diffusers-format Wan directory, loaded
  straight onto the mesh (:mod:`sora_jax.wan.transformer_weights`);
- LoRA (``lora.rank > 0``, :mod:`sora_jax.train.lora`): adapters are the trained parameters, the
  pretrained transformer is ``TrainState.frozen``; samples, evaluation and export use the merged
  weights.

Wan takes no conditioning frames here (text-to-video only): its pretrained network has no input for
them, so the conditioning tasks other than ``text_to_video`` are refused.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from sora_jax.data.packing import empty_batch
from sora_jax.diffusion.conditioning import TASKS, validate_conditioning_section
from sora_jax.diffusion.flow import validate_diffusion_section
from sora_jax.errors import ConfigError
from sora_jax.kinds.base import Batch, Meter, Sampler, SampleRequest, Scorer
from sora_jax.kinds.video_dit import PackedMeter, VideoDiTKind
from sora_jax.model.dit import MODEL_CHOICES
from sora_jax.parallel.global_batch import BATCH_AXES, PACKED_FIELDS
from sora_jax.train import lora


class WanKind(VideoDiTKind):
    """Wan 2.1's transformer on packed rows, from scratch, fully fine-tuned or with LoRA."""

    def __init__(self, config: ml_collections.ConfigDict) -> None:
        super().__init__(with_pretrained_parts(config))
        self._frozen: nnx.State | None = None  # The LoRA base, once loaded (load_frozen).

    @classmethod
    def validate(cls, config: ml_collections.ConfigDict) -> None:
        """The Wan model keys, LoRA, packing, diffusion and conditioning (text-to-video only)."""
        from sora_jax.data.pipeline import validate_packing_section

        validate_wan_sections(config)
        validate_packing_section(config)
        validate_diffusion_section(config.diffusion)
        if tuple(config.diffusion.guidance_interval) != (0.0, 1.0):
            raise ConfigError(
                "config key 'diffusion.guidance_interval': a Wan run samples through Wan's pipeline, "
                "which guides at every step; leave it at (0.0, 1.0)"
            )
        validate_conditioning_section(config.conditioning)
        given = [task for task in TASKS[1:] if config.conditioning[task] > 0]
        given += ["frame_level"] if config.conditioning.frame_level else []
        if given:
            raise ConfigError(
                f"config key 'conditioning.{given[0]}': a Wan text-to-video run takes no given frames; "
                "set the weights of every task but text_to_video to 0 (and frame_level to False)"
            )

    # --- the batch: the DiT's, with UMT5 states of model.text_dim ------------------------------------
    def batch_axes(self) -> dict[str, tuple[str | None, ...]]:
        return {name: BATCH_AXES[name] for name in (*PACKED_FIELDS, "text_embeddings")}

    def batch_row(self) -> dict[str, jax.ShapeDtypeStruct]:
        m, d = self.config.model, self.config.data
        patch_dim = math.prod(m.patch_size) * m.channels
        row = empty_batch(1, d.seq_len, patch_dim, d.max_clips_per_row, d.text_len, m.text_dim)
        return {name: jax.ShapeDtypeStruct(a.shape, a.dtype) for name, a in row.items()}

    def batches(self, first_row: int, num_rows: int) -> Iterator[Batch]:
        if self.config.model.text_encoder == "learned":
            raise ValueError(
                "a Wan run reads the caption states of its UMT5 encoder from data.store: set "
                "wan.pretrained (a Wan directory) or model.text_encoder (its text_encoder folder)"
            )
        return super().batches(first_row, num_rows)

    # --- the model and its parameters ---------------------------------------------------------------
    @property
    def uses_lora(self) -> bool:
        return self.config.lora.rank > 0

    def _model(self, seed: int) -> nnx.Module:
        from sora_jax.wan.transformer import build_wan_transformer

        model = build_wan_transformer(self.config, seed)
        if self.uses_lora:
            lora.add_adapters(model, self.config, nnx.Rngs(params=seed + 1))
        return model

    def init(self, seed: int) -> tuple[nnx.GraphDef, nnx.State]:
        """The transformer's parameters, or under LoRA its adapters alone (the graph holds both)."""
        model = self._model(seed)
        if self.uses_lora:
            graphdef, adapters, _ = lora.split(model)
            return graphdef, adapters
        return nnx.split(model, nnx.Param)

    def plain_graphdef(self) -> nnx.GraphDef:
        """The transformer's structure without adapters: what merged parameters fill."""
        from sora_jax.wan.transformer import build_wan_transformer

        graphdef, _ = jax.eval_shape(lambda: nnx.split(build_wan_transformer(self.config, 0), nnx.Param))
        return graphdef

    def load_params(self, abstract: nnx.State) -> nnx.State | None:
        """Full fine-tuning starts from ``wan.pretrained``; LoRA and from-scratch runs from the seed."""
        if not self.config.wan.pretrained or self.uses_lora:
            return None
        return self._load_pretrained(abstract)

    def abstract_frozen(self) -> nnx.State | None:
        if not self.uses_lora:
            return None
        return jax.eval_shape(lambda: lora.split(self._model(self.config.seed))[2])

    def load_frozen(self, abstract: nnx.State) -> nnx.State:
        """The pretrained transformer under the adapters, loaded once per process.

        Raises:
            ConfigError: no ``wan.pretrained`` (``aot`` compiles a LoRA run without it; training
                needs the weights the adapters adapt).
        """
        if not self.config.wan.pretrained:
            raise ConfigError(
                "config key 'lora.rank': LoRA adapts a pretrained model; set wan.pretrained to a Wan "
                "directory"
            )
        if self._frozen is None:
            self._frozen = self._load_pretrained(abstract)
        return self._frozen

    def _load_pretrained(self, abstract: nnx.State) -> nnx.State:
        from sora_jax.wan.transformer_weights import load_transformer

        shardings = jax.tree.map(lambda a: a.sharding, abstract)
        return load_transformer(self.config.wan.pretrained, abstract, shardings)

    def model_params(self, params: nnx.State) -> nnx.State:
        """Parameters of the plain transformer (:meth:`plain_graphdef`) from what the run trains:
        the same under full training, the base with the adapters folded in under LoRA."""
        if not self.uses_lora:
            return params
        if self._frozen is None:  # Sampling or evaluating outside the trainer: load it on this mesh.
            from sora_jax.parallel.mesh import make_mesh
            from sora_jax.parallel.sharding import axis_rules
            from sora_jax.train.state import placed, state_shardings

            abstract, mesh = self.abstract_frozen(), make_mesh(self.config)
            self.load_frozen(placed(abstract, state_shardings(abstract, mesh, axis_rules(self.config))))
        return lora.merged(params, self._frozen, lora.lora_scale(self.config))

    # --- what it makes: Wan's pipeline on the run's (merged) parameters ------------------------------
    def sampler(self, graphdef: nnx.GraphDef) -> Sampler:
        """The ``train.sample_prompts`` videos as Wan samples them (:class:`~sora_jax.wan.pipeline.
        WanPipeline`: flow-matching Euler with ``wan.flow_shift``, guidance ``diffusion.guidance``)."""

        def sample(params: nnx.State) -> list[np.ndarray]:
            from sora_jax.wan.pipeline import WanPipeline

            pipeline = WanPipeline.from_run(self, params)
            request = self._run_request(SampleRequest(prompt=""))
            return [
                pipeline.generate(prompt, seed=i, **self._pipeline_arguments(request))
                for i, prompt in enumerate(self.config.train.sample_prompts)
            ]

        return sample

    def generate(self, run: Any, request: SampleRequest) -> np.ndarray:
        """``sora-jax sample`` of a Wan run: Wan's pipeline on checkpoint ``request.step``; sizes
        default to the run's ``train.sample_*`` (in latents), steps and guidance to its own."""
        from sora_jax.wan.pipeline import WanPipeline
        from sora_jax.wan.sample_command import pipeline_request

        step = request.step
        request = pipeline_request(dataclasses.replace(self._run_request(request), step=None))
        pipeline = WanPipeline.from_run(self, run.params(step))
        return pipeline.generate(request.prompt, seed=request.seed, **self._pipeline_arguments(request))

    def _run_request(self, request: SampleRequest) -> SampleRequest:
        """``request`` with what it leaves out taken from the run: the sample size (in pixels of the
        run's Wan VAE), steps and guidance."""
        from sora_jax.wan.vae_config import WanVAEConfig
        from sora_jax.wan.vae_weights import vae_config

        t, f = self.config.train, self.config.diffusion
        vae = WanVAEConfig.from_dict(vae_config(self.config.model.autoencoder))
        ft, fs = vae.temporal_factor, vae.spatial_factor
        run = dict(
            frames=1 + ft * (t.sample_frames - 1),
            height=fs * t.sample_height,
            width=fs * t.sample_width,
            steps=f.sample_steps,
            guidance=f.guidance,
        )
        return dataclasses.replace(request, **{k: v for k, v in run.items() if getattr(request, k) is None})

    def _pipeline_arguments(self, request: SampleRequest) -> dict[str, Any]:
        return dict(
            frames=request.frames,
            height=request.height,
            width=request.width,
            steps=request.steps,
            guidance=request.guidance,
            shift=self.config.wan.flow_shift,
        )

    def evaluator(self, graphdef: nnx.GraphDef, world: bool = False) -> Scorer:
        if world:
            raise ConfigError("evaluate --world scores physics-world runs; a Wan run has no world scores")
        score = super().evaluator(self.plain_graphdef() if self.uses_lora else graphdef)
        return lambda params: score(self.model_params(params))

    # --- throughput: Wan's FLOPs ------------------------------------------------------------------
    def meter(self) -> Meter:
        return PackedMeter(self.config, wan_flops_per_token)

    def flops_per_step(self) -> float:
        d = self.config.data  # Rows of the presets hold one long clip: every token attends to the row.
        return wan_flops_per_token(self.config, d.seq_len) * d.batch_size * d.seq_len

    def with_depth(self, depth: int) -> ml_collections.ConfigDict:
        probe = super().with_depth(depth)
        with probe.unlocked():
            probe.wan.pretrained = ""  # The estimate compiles only; it loads nothing.
        return probe

    def uncosted_flops_per_step(self) -> float:
        """Splash self-attention's FLOPs (cross-attention runs in XLA, which costs it)."""
        m, d = self.config.model, self.config.data
        if m.attention != "splash":
            return 0.0
        passes = 2.0 if self.uses_lora else 3.0  # As wan_flops_per_token counts them.
        return passes * m.depth * 2 * 2 * d.seq_len * m.dim * d.batch_size * d.seq_len


def wan_flops_per_token(config: ml_collections.ConfigDict, attended_tokens: float) -> float:
    """Training FLOPs per video token of the Wan transformer (2 a multiply-add): its blocks'
    projections, self-attention over ``attended_tokens`` keys, cross-attention over a caption of
    ``data.max_caption_tokens`` (+ the padding's key), the feed-forward, patch embedding and head.

    Full training counts 3x the forward pass (forward, and gradients of activations and weights);
    LoRA 2x, since the frozen weights get no gradient (the adapters' matmuls are negligible).
    """
    m, w, d = config.model, config.wan, config.data
    dim, patch_dim = m.dim, math.prod(m.patch_size) * m.channels
    per_block = (
        2 * 4 * dim * dim  # self-attention q, k, v, out
        + 2 * 2 * attended_tokens * dim  # its scores and weighted sum
        + 2 * 2 * dim * dim  # cross-attention q and out (k, v are per caption token)
        + 2 * 2 * (d.max_caption_tokens + 1) * dim
        + 2 * 2 * dim * w.ffn_dim  # feed-forward
    )
    forward = m.depth * per_block + 2 * patch_dim * dim + 2 * dim * patch_dim
    return (2.0 if config.lora.rank > 0 else 3.0) * forward


def with_pretrained_parts(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config`` with ``model.text_encoder`` and ``model.autoencoder``, where not set, taken from
    ``wan.pretrained`` (its ``text_encoder/`` + ``tokenizer/`` and ``vae/``), as diffusers pairs them."""
    m, pretrained = config.model, config.wan.pretrained
    if not pretrained or (m.text_encoder != "learned" and m.autoencoder):
        return config
    resolved = config.copy_and_resolve_references()
    with resolved.unlocked():
        if resolved.model.text_encoder == "learned":
            resolved.model.text_encoder = pretrained
        resolved.model.autoencoder = resolved.model.autoencoder or pretrained
    return resolved


def validate_wan_sections(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first ``model.*``, ``wan.*`` or ``lora.*`` key a Wan run cannot use."""
    config = with_pretrained_parts(config)
    m, w, lo = config.model, config.wan, config.lora

    def fail(key: str, problem: str) -> None:
        raise ConfigError(f"config key '{key}': {problem}")

    if m.dim % m.heads:
        fail("model.dim", f"{m.dim} does not divide into model.heads={m.heads} heads")
    if (m.dim // m.heads) % 2:
        fail("model.heads", f"head dim {m.dim // m.heads} must be even for the rotary embedding")
    for key, allowed in MODEL_CHOICES:
        if m[key] not in allowed:
            fail(f"model.{key}", f"{m[key]!r} is not one of {', '.join(allowed)}")
    if m.text_attention != "cross":
        fail(
            "model.text_attention", "Wan's transformer reads its caption by cross-attention; leave it 'cross'"
        )
    for key in ("depth", "ffn_dim", "freq_dim"):
        section, value = ("model", m.depth) if key == "depth" else ("wan", w[key])
        if value < 1:
            fail(f"{section}.{key}", f"must be at least 1, got {value}")
    if w.text_pad_tokens < 0:
        fail("wan.text_pad_tokens", f"must be >= 0, got {w.text_pad_tokens}")
    if w.flow_shift <= 0:
        fail("wan.flow_shift", f"must be positive, got {w.flow_shift}")
    if lo.rank < 0:
        fail("lora.rank", f"must be >= 0, got {lo.rank}")
    if lo.rank > 0:
        if lo.alpha < 0:
            fail("lora.alpha", f"must be >= 0, got {lo.alpha}")
        if not lo.targets:
            fail("lora.targets", "name at least one layer (a substring of its parameter path)")
    if m.text_encoder != "learned":
        from sora_jax.text.encoder import text_encoder_dim

        try:
            width = text_encoder_dim(m.text_encoder)
        except (FileNotFoundError, ValueError) as error:
            fail("model.text_encoder", f"not a usable UMT5 directory: {error}")
        if width != m.text_dim:
            fail("model.text_dim", f"{m.text_dim}, but {m.text_encoder}'s states are {width} wide")
    if w.pretrained:
        from sora_jax.wan.transformer_weights import transformer_config

        expected = transformer_config(w.pretrained)  # Raises ConfigError for a directory it cannot read.
        plain = lambda v: tuple(v) if isinstance(v, list | tuple) else v  # noqa: E731
        for dotted, value in expected.items():
            section, key = dotted.split(".")
            if plain(config[section][key]) != plain(value):
                fail(
                    dotted, f"{config[section][key]!r}, but {w.pretrained} holds a transformer with {value!r}"
                )
