"""VideoDiT: a diffusion transformer over packed spacetime patches.

One forward pass takes a packed batch (see ``sora_jax/data/packing.py``): ``B`` rows of ``L``
tokens holding up to ``S`` clips each. Per-clip quantities (the timestep embedding and the
adaLN-Zero modulation it drives) are computed once per clip, ``[B, S, ...]``, and gathered to the
clip's tokens, never once per token. Tokens attend within their clip (self-attention with a 3D
RoPE) and to their clip's caption: by cross-attention, or with ``model.text_attention = "joint"``
in one attention with the caption's tokens, which are a second stream of their own (MMDiT).

With sound (``audio.enabled``) a clip's audio tokens are tokens of the same segment: they have their
own patch embedding (``audio_embed``, plus a learned ``audio_marker``) and output head
(``audio_final``), chosen by the batch's ``modality``, and share everything between: the blocks,
the clip's timestep and caption. RoPE's time axis reads the batch's ``times``, which puts each audio
token on its clip's video clock, so sound and picture of one moment are at one time coordinate.
Without sound the model, its parameters and its outputs are what they were before sound existed.

The forward pass is split into ``jax.named_scope`` s, so that profiler traces and HLO metadata
(``op_name``) say which part of the model an op belongs to: ``patch_embed``, ``conditioning``,
``text_encoder``, one ``block_{i}`` per block (``block`` for all of them under ``scan_layers``)
holding ``modulation``, ``self_attention``, ``cross_attention`` and ``mlp`` (joint blocks:
``modulation``, ``joint_attention`` and ``mlp``), and ``final_layer``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from sora_jax.data.packing import AUDIO, token_widths
from sora_jax.errors import ConfigError
from sora_jax.model.attention import Attention, AttentionKernel, JointAttention, dense
from sora_jax.model.rope import axis_dims, rope_angles, rope_coordinates
from sora_jax.model.text import TextEncoder, frozen_text_dim
from sora_jax.parallel.sharding import Rules, axis_rules, constrain

# The residual stream [B, L, D] between blocks. Activation names, not the input batch's
# ("batch", "length"): a change of the inputs' layout rules must not reshard the model's insides.
ACTIVATION = ("activation_batch", "activation_length", "activation_embed")
# The caption stream of joint attention [B, K, D]: its tokens are not split over the sequence axis.
TEXT_ACTIVATION = ("activation_batch", None, "activation_embed")
# model.* keys that name one of a few choices, with those choices (every transformer of the framework).
MODEL_CHOICES = (
    ("attention", ("xla", "cudnn", "splash", "ring")),
    ("sequence_parallel", ("all_to_all", "gather")),
    ("remat", ("none", "full", "dots")),
    ("dtype", ("float32", "bfloat16")),
    ("param_dtype", ("float32", "bfloat16")),
)
TEXT_ATTENTION = ("cross", "joint")  # model.text_attention: how the DiT's clip tokens read the caption.
REMAT_POLICIES = {
    "full": None,  # Save nothing: recompute the whole block in the backward pass.
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
    """Sinusoidal features ``[..., dim]`` of timesteps ``t`` in [0, 1] (scaled to [0, 1000])."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = 1000.0 * t.astype(jnp.float32)[..., None] * freqs
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def gather_clips(per_clip_bsx: jax.Array, segment_ids_bl: jax.Array) -> jax.Array:
    """Per-clip values ``[B, S, X]`` to per-token ``[B, L, X]`` (padding tokens get clip 0's)."""
    index = jnp.maximum(segment_ids_bl - 1, 0)[..., None]
    return jnp.take_along_axis(per_clip_bsx, index, axis=1)


def caption_means(text_bkd: jax.Array, text_segment_ids_bk: jax.Array, max_clips: int) -> jax.Array:
    """``[B, S, Dt]``: the mean of each clip's caption token states (zeros for unused slots)."""
    one_hot = (text_segment_ids_bk[..., None] == jnp.arange(1, max_clips + 1)).astype(text_bkd.dtype)
    sums = jnp.einsum("bks,bkd->bsd", one_hot, text_bkd)
    return sums / jnp.maximum(one_hot.sum(axis=1), 1.0)[..., None]


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    return x * (1.0 + scale) + shift


class DiTBlock(nnx.Module):
    """adaLN-Zero block: self-attention, cross-attention to text, MLP; starts as the identity."""

    def __init__(
        self, config: ml_collections.ConfigDict, kernel: AttentionKernel, rngs: nnx.Rngs, **kw
    ) -> None:
        dim, heads = config.dim, config.heads
        self.rules = kernel.rules
        self.norm1 = nnx.LayerNorm(dim, use_scale=False, use_bias=False, rngs=rngs, **kw)
        self.self_attention = Attention(dim, heads, rngs, qk_norm=config.qk_norm, kernel=kernel, **kw)
        self.norm_cross = nnx.LayerNorm(dim, rngs=rngs, **kw)
        self.cross_attention = Attention(
            dim, heads, rngs, context_dim=config.text_dim, qk_norm=config.qk_norm, kernel=kernel, **kw
        )
        self.norm2 = nnx.LayerNorm(dim, use_scale=False, use_bias=False, rngs=rngs, **kw)
        hidden = int(dim * config.mlp_ratio)
        self.mlp_in = dense(dim, hidden, ("embed", "mlp"), rngs, **kw)
        self.mlp_out = dense(hidden, dim, ("mlp", "embed"), rngs, **kw)
        # Zero-initialised: every gate starts at 0, so the block starts as the identity.
        self.modulation = dense(dim, 6 * dim, ("embed", "mlp"), rngs, zero_init=True, **kw)

    def __call__(
        self,
        x_bld: jax.Array,
        conditioning_bsd: jax.Array,
        segment_ids: jax.Array,
        angles: jax.Array,
        text_bkd: jax.Array,
        text_segment_ids: jax.Array,
    ) -> jax.Array:
        """``x [B, L, D]`` through the block, laid out as :data:`ACTIVATION`; the scopes name its
        sub-steps in traces and HLO metadata (they do not change the computation)."""
        with jax.named_scope("modulation"):
            per_clip = self.modulation(jax.nn.silu(conditioning_bsd))  # [B, S, 6D]: once per clip.
            mods = jnp.split(gather_clips(per_clip, segment_ids), 6, axis=-1)
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mods
        with jax.named_scope("self_attention"):
            h = modulate(self.norm1(x_bld), shift_a, scale_a)
            attended = self.self_attention(
                h, h, segment_ids, segment_ids, query_angles=angles, key_angles=angles, self_attention=True
            )
            x_bld = x_bld + gate_a * attended
        with jax.named_scope("cross_attention"):
            context = self.norm_cross(x_bld)
            x_bld = x_bld + self.cross_attention(context, text_bkd, segment_ids, text_segment_ids)
        with jax.named_scope("mlp"):
            h = modulate(self.norm2(x_bld), shift_m, scale_m)
            x_bld = x_bld + gate_m * self.mlp_out(jax.nn.gelu(self.mlp_in(h)))
        return constrain(x_bld, ACTIVATION, self.rules)


class JointDiTBlock(nnx.Module):
    """MMDiT block (SD3, ``model.text_attention = "joint"``): the clip tokens and their caption's
    tokens are two streams, each with its own adaLN-Zero modulation, norms, projections and MLP,
    that meet in one attention (:class:`JointAttention`); starts as the identity on both.

    Both streams are modulated by their clip's conditioning (timestep, pooled caption), gathered
    to the clip's tokens by ``segment_ids`` and to its caption's by ``text_segment_ids``. The carry
    is ``(x [B, L, D], c [B, K, D])``: the caption stream flows from block to block.
    """

    def __init__(
        self, config: ml_collections.ConfigDict, kernel: AttentionKernel, rngs: nnx.Rngs, **kw
    ) -> None:
        dim, hidden = config.dim, int(config.dim * config.mlp_ratio)
        self.rules = kernel.rules
        norm = lambda: nnx.LayerNorm(dim, use_scale=False, use_bias=False, rngs=rngs, **kw)  # noqa: E731
        self.norm1, self.text_norm1, self.norm2, self.text_norm2 = norm(), norm(), norm(), norm()
        self.attention = JointAttention(dim, config.heads, rngs, qk_norm=config.qk_norm, kernel=kernel, **kw)
        self.mlp_in = dense(dim, hidden, ("embed", "mlp"), rngs, **kw)
        self.mlp_out = dense(hidden, dim, ("mlp", "embed"), rngs, **kw)
        self.text_mlp_in = dense(dim, hidden, ("embed", "mlp"), rngs, **kw)
        self.text_mlp_out = dense(hidden, dim, ("mlp", "embed"), rngs, **kw)
        # Zero-initialised: every gate starts at 0, so the block starts as the identity.
        self.modulation = dense(dim, 6 * dim, ("embed", "mlp"), rngs, zero_init=True, **kw)
        self.text_modulation = dense(dim, 6 * dim, ("embed", "mlp"), rngs, zero_init=True, **kw)

    def __call__(
        self,
        carry: tuple[jax.Array, jax.Array],
        conditioning_bsd: jax.Array,
        segment_ids: jax.Array,
        angles: jax.Array,
        text_segment_ids: jax.Array,
    ) -> tuple[jax.Array, jax.Array]:
        """``(x [B, L, D], c [B, K, D])`` through the block."""
        x_bld, c_bkd = carry
        with jax.named_scope("modulation"):
            cond = jax.nn.silu(conditioning_bsd)
            mods = jnp.split(gather_clips(self.modulation(cond), segment_ids), 6, axis=-1)
            text_mods = jnp.split(gather_clips(self.text_modulation(cond), text_segment_ids), 6, axis=-1)
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mods
        t_shift_a, t_scale_a, t_gate_a, t_shift_m, t_scale_m, t_gate_m = text_mods
        with jax.named_scope("joint_attention"):
            x_update, c_update = self.attention(
                modulate(self.norm1(x_bld), shift_a, scale_a),
                modulate(self.text_norm1(c_bkd), t_shift_a, t_scale_a),
                segment_ids,
                text_segment_ids,
                angles,
            )
            x_bld, c_bkd = x_bld + gate_a * x_update, c_bkd + t_gate_a * c_update
        with jax.named_scope("mlp"):
            h = modulate(self.norm2(x_bld), shift_m, scale_m)
            x_bld = x_bld + gate_m * self.mlp_out(jax.nn.gelu(self.mlp_in(h)))
            h = modulate(self.text_norm2(c_bkd), t_shift_m, t_scale_m)
            c_bkd = c_bkd + t_gate_m * self.text_mlp_out(jax.nn.gelu(self.text_mlp_in(h)))
        return constrain(x_bld, ACTIVATION, self.rules), constrain(c_bkd, TEXT_ACTIVATION, self.rules)


class VideoDiT(nnx.Module):
    """Predicts the flow velocity of every token of a packed batch.

    Call with the noisy patches ``[B, L, P]``, per-clip timesteps ``[B, S]`` in [0, 1], and the
    batch's ``segment_ids``, ``positions``, ``cond_mask``, ``text_tokens`` (or ``text_embeddings``
    with a frozen ``model.text_encoder``), ``text_segment_ids`` and ``text_positions``, with sound
    also ``modality`` and ``times``, with ``conditioning.frame_level`` also ``given_frames``;
    returns the prediction ``[B, L, P]`` in float32 (with sound ``P = max(P_v, P_a)``, and every
    token's features beyond its own modality's width are 0).
    """

    def __init__(self, config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> None:
        m = config.model
        self.config = ml_collections.FrozenConfigDict(m)  # Hashable: part of the graph definition.
        self.rules: Rules = axis_rules(config)
        kernel = AttentionKernel(m.attention, m.sequence_parallel, self.rules, m.splash_interpret)
        kw = dict(dtype=jnp.dtype(m.dtype), param_dtype=jnp.dtype(m.param_dtype))
        patch_dim = math.prod(m.patch_size) * m.channels
        self.patch_embed = dense(patch_dim, m.dim, ("patch", "embed"), rngs, **kw)
        # Added to the tokens given clean as conditioning (cond_mask), so the model knows them.
        self.cond_embed = nnx.Param(jnp.zeros((m.dim,), jnp.dtype(m.param_dtype)), out_sharding=("embed",))
        if config.conditioning.frame_level:
            # One vector per frame of a temporal patch, added to a generated token for each of its
            # frames given clean (the batch's given_frames), so the model knows which they are.
            frame_embed = jnp.zeros((m.patch_size[0], m.dim), jnp.dtype(m.param_dtype))
            self.frame_embed = nnx.Param(frame_embed, out_sharding=(None, "embed"))
        self.time_in = dense(256, m.dim, (None, "embed"), rngs, **kw)
        self.time_out = dense(m.dim, m.dim, ("embed", "mlp"), rngs, **kw)
        self.text_encoder = TextEncoder(
            m.text_vocab_size,
            m.text_dim,
            m.text_depth,
            m.text_heads,
            rngs,
            frozen_text_dim(m),
            embed_std=m.text_embed_std,
            **kw,
        )
        # The caption as one vector per clip, added to the timestep conditioning that drives every
        # block's adaLN: a direct, global path for what the whole clip shows (colours, objects).
        if m.text_pooled:
            self.caption_in = dense(m.text_dim, m.dim, (None, "embed"), rngs, **kw)
            self.caption_out = dense(m.dim, m.dim, ("embed", "mlp"), rngs, **kw)

        block_type = JointDiTBlock if m.text_attention == "joint" else DiTBlock
        if m.text_attention == "joint":  # The caption stream enters at the blocks' width.
            self.text_in = dense(m.text_dim, m.dim, (None, "embed"), rngs, **kw)

        @nnx.split_rngs(splits=m.depth)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_blocks(rngs: nnx.Rngs) -> DiTBlock | JointDiTBlock:
            return block_type(m, kernel, rngs, **kw)

        self.blocks = make_blocks(rngs)  # Parameters stacked on a leading "layers" axis.
        self.final_norm = nnx.LayerNorm(m.dim, use_scale=False, use_bias=False, rngs=rngs, **kw)
        self.final_modulation = dense(m.dim, 2 * m.dim, ("embed", "mlp"), rngs, zero_init=True, **kw)
        self.final = dense(m.dim, patch_dim, ("embed", "patch"), rngs, zero_init=True, **kw)
        # Sound's layers come last: the other parameters draw the same initial values with or without them.
        self.video_dim, self.audio_dim = token_widths(config)
        if self.audio_dim:
            self.audio_embed = dense(self.audio_dim, m.dim, ("patch", "embed"), rngs, **kw)
            marker = nnx.initializers.normal(0.02)(rngs.params(), (m.dim,), jnp.dtype(m.param_dtype))
            self.audio_marker = nnx.Param(marker, out_sharding=("embed",))
            self.audio_final = dense(m.dim, self.audio_dim, ("embed", "patch"), rngs, zero_init=True, **kw)

    def embed_tokens(self, noisy_blp: jax.Array, batch: dict[str, jax.Array]) -> jax.Array:
        """``[B, L, D]``: each token through its own modality's patch embedding (only its own width)."""
        if not self.audio_dim:
            return self.patch_embed(noisy_blp)
        video = self.patch_embed(noisy_blp[..., : self.video_dim])
        audio = self.audio_embed(noisy_blp[..., : self.audio_dim])
        audio = audio + self.audio_marker[...].astype(audio.dtype)
        return jnp.where((batch["modality"] == AUDIO)[..., None], audio, video)

    def output_tokens(self, h_bld: jax.Array, batch: dict[str, jax.Array]) -> jax.Array:
        """``[B, L, P]``: each token's output through its own modality's head, zero beyond its width."""
        if not self.audio_dim:
            return self.final(h_bld)
        width = max(self.video_dim, self.audio_dim)

        def padded(out: jax.Array) -> jax.Array:
            return jnp.pad(out, ((0, 0), (0, 0), (0, width - out.shape[-1])))

        is_audio = (batch["modality"] == AUDIO)[..., None]
        return jnp.where(is_audio, padded(self.audio_final(h_bld)), padded(self.final(h_bld)))

    def __call__(
        self, noisy_blp: jax.Array, timesteps_bs: jax.Array, batch: dict[str, jax.Array]
    ) -> jax.Array:
        m = self.config
        segment_ids = batch["segment_ids"]
        with jax.named_scope("patch_embed"):
            x = self.embed_tokens(noisy_blp.astype(jnp.dtype(m.dtype)), batch)
            x = x + batch["cond_mask"][..., None].astype(x.dtype) * self.cond_embed[...].astype(x.dtype)
            if "given_frames" in batch:
                frames = self.frame_embed.shape[0]
                bits = (batch["given_frames"][..., None] >> jnp.arange(frames)) & 1  # [B, L, pt]
                x = x + bits.astype(x.dtype) @ self.frame_embed[...].astype(x.dtype)
            x = constrain(x, ACTIVATION, self.rules)
        with jax.named_scope("conditioning"):
            conditioning = self.time_out(
                jax.nn.silu(self.time_in(timestep_embedding(timesteps_bs, 256)))
            )  # [B, S, D]
        with jax.named_scope("text_encoder"):
            text_inputs = batch["text_embeddings"] if m.text_encoder != "learned" else batch["text_tokens"]
            text = self.text_encoder(text_inputs, batch["text_segment_ids"], batch["text_positions"]).astype(
                jnp.dtype(m.dtype)
            )
        if m.text_pooled:
            with jax.named_scope("conditioning"):
                pooled = caption_means(text, batch["text_segment_ids"], timesteps_bs.shape[1])  # [B, S, Dt]
                conditioning = conditioning + self.caption_out(jax.nn.silu(self.caption_in(pooled)))
        coordinates = rope_coordinates(batch["positions"], batch.get("times"))
        angles = rope_angles(coordinates, axis_dims(m.dim // m.heads), m.rope_theta)
        angles = constrain(angles, ("activation_batch", "activation_length", None), self.rules)
        if m.text_attention == "joint":
            caption = constrain(self.text_in(text), TEXT_ACTIVATION, self.rules)
            extras = (conditioning, segment_ids, angles, batch["text_segment_ids"])
            x, _ = run_block_stack(self.blocks, (x, caption), extras, m)
        else:
            extras = (conditioning, segment_ids, angles, text, batch["text_segment_ids"])
            x = run_block_stack(self.blocks, x, extras, m)

        with jax.named_scope("final_layer"):
            shift, scale = jnp.split(
                gather_clips(self.final_modulation(jax.nn.silu(conditioning)), segment_ids), 2, -1
            )
            return self.output_tokens(modulate(self.final_norm(x), shift, scale), batch).astype(jnp.float32)


def run_block_stack(
    blocks: nnx.Module, x: Any, extras: tuple, model_config: ml_collections.ConfigDict
) -> Any:
    """``x`` (an array ``[B, L, D]``, or a tuple of them: the carry of every block) through
    ``blocks`` (built with ``nnx.vmap``: parameters stacked on a leading "layers" axis), each
    called as ``block(x, *extras)``: under ``lax.scan`` with ``model.scan_layers`` (one
    compiled block, compile time flat in depth) or unrolled, each block rematerialised in the
    backward pass as ``model.remat`` says, and named ``block`` (scanned) or ``block_{i}`` in traces."""
    m = model_config
    graphdef, stacked = nnx.split(blocks)

    def block_fn(scope: str) -> Callable[[Any, nnx.State], tuple[Any, None]]:
        # The scope goes inside the (rematerialised) function, so the recomputation in the
        # backward pass carries the block's name too.
        def run_block(x: Any, block_state: nnx.State) -> tuple[Any, None]:
            with jax.named_scope(scope):
                return nnx.merge(graphdef, block_state)(x, *extras), None

        if m.remat != "none":
            return jax.checkpoint(run_block, policy=REMAT_POLICIES[m.remat])
        return run_block

    if m.scan_layers:
        x, _ = jax.lax.scan(block_fn("block"), x, stacked)
    else:
        for layer in range(m.depth):
            x, _ = block_fn(f"block_{layer}")(x, jax.tree.map(lambda p, i=layer: p[i], stacked))
    return x


def build_model(config: ml_collections.ConfigDict, seed: int) -> VideoDiT:
    """A freshly initialised model; parameter sharding is left to ``jit``'s ``out_shardings``.

    Variables carry logical axis names as metadata only (no eager sharding): the trainer maps
    names to the mesh and places parameters where they belong as it initialises them.
    """
    with nnx.use_eager_sharding(False):
        return VideoDiT(config, nnx.Rngs(params=seed))


def validate_model_section(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first ``model.*`` key the DiT cannot be built with."""
    m, d = config.model, config.data

    def fail(key: str, problem: str) -> None:
        raise ConfigError(f"config key 'model.{key}': {problem}")

    if m.text_encoder != "learned":
        from sora_jax.text.encoder import text_encoder_dim

        try:
            text_encoder_dim(m.text_encoder)
        except (FileNotFoundError, ValueError, KeyError) as error:
            fail("text_encoder", f"not 'learned' nor a usable BERT/T5 directory: {error}")
        if not d.store:
            fail(
                "text_encoder",
                "a frozen text encoder needs data.store with caption embeddings (for the physics "
                "world: sora-jax prepare --world N --text-encoder DIR --output STORE)",
            )
    if m.autoencoder and not d.store:
        fail("autoencoder", "a latent DiT trains on data.store, a latent store from sora-jax encode")
    if m.autoencoder and config.audio.enabled:
        raise ConfigError(
            "config key 'audio.enabled': a latent DiT (model.autoencoder) has no sound yet; "
            "set audio.enabled=False or train on pixels"
        )
    if min(m.patch_size) < 1:
        fail("patch_size", f"sizes must be positive, got {m.patch_size}")
    if m.dim % m.heads:
        fail("dim", f"{m.dim} does not divide into model.heads={m.heads} heads")
    if (m.dim // m.heads) % 2 or m.dim // m.heads < 6:
        fail("heads", "head dim (dim / heads) must be even and at least 6 for the 3D RoPE")
    if m.text_dim % m.text_heads or (m.text_dim // m.text_heads) % 2:
        fail("text_dim", f"{m.text_dim} must split into text_heads={m.text_heads} even heads")
    for key, allowed in MODEL_CHOICES:
        if m[key] not in allowed:
            fail(key, f"{m[key]!r} is not one of {', '.join(allowed)}")
    if m.text_attention not in TEXT_ATTENTION:
        fail("text_attention", f"{m.text_attention!r} is not one of {', '.join(TEXT_ATTENTION)}")
    if m.text_attention == "joint" and m.attention in ("splash", "ring"):
        fail(
            "text_attention",
            f"joint attention runs on the dense kernels (xla, cudnn), not model.attention={m.attention!r}; "
            "use text_attention='cross' with it",
        )
    if m.depth < 1:
        fail("depth", f"must be at least 1, got {m.depth}")
