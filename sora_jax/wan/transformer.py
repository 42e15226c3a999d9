"""Wan 2.1's diffusion transformer (text-to-video) on the packed-batch contract.

The network is diffusers' ``WanTransformer3DModel`` (no image embedder), computed over packed rows
(``sora_jax/data/packing.py``) instead of one video per batch element, and called as
:class:`~sora_jax.model.dit.VideoDiT` is: ``model(noisy [B, L, P], timesteps [B, S], batch)`` returns
the velocity ``[B, L, P]`` (float32) of the flow ``x_t = (1 - t) x0 + t e``, which Wan's flow
matching predicts too (its timestep is ``1000 t``). A clip gets, token for token, the output the
diffusers model gives it alone:

- patches ``(pt, ph, pw, C)``, C last, enter through a dense layer (Wan's stride-equal Conv3d);
- the timestep embedding and its six modulations per block are computed once per clip ``[B, S]``
  and gathered to the clip's tokens;
- self-attention stays within the clip (segment mask, any kernel of
  :class:`~sora_jax.model.attention.AttentionKernel`, sequence parallelism included), with queries
  and keys RMS-normalised across all heads and rotated by Wan's 3D RoPE of each token's (t, h, w)
  coordinate inside its clip (so a clip anywhere in a row gets the rotations it gets alone);
- cross-attention goes from a clip's tokens to its own caption's projected UMT5 states, plus the
  zero-vector padding Wan's pipeline appends to every caption (see :class:`CrossAttention`).

``jax.named_scope`` s name the parts in traces and HLO metadata: ``patch_embed``, ``conditioning``,
``text_embedder``, ``block`` (``block_{i}`` without ``scan_layers``) holding ``modulation``,
``self_attention``, ``cross_attention`` and ``mlp``, and ``final_layer``.

Parameter paths (``sora_jax/wan/transformer_weights.py`` maps them to diffusers' names):
``patch_embed``, ``time_in``/``time_out`` (timestep MLP), ``time_proj`` (per-block modulation),
``text_in``/``text_out`` (caption projection), ``blocks.{self_attention,cross_attention}.
{query,key,value,out,query_norm,key_norm}``, ``blocks.cross_norm``, ``blocks.mlp_in``,
``blocks.mlp_out``, ``blocks.modulation_table``, ``final_table`` and ``final``; blocks are stacked on
a leading ``layers`` axis.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from sora_jax.model.attention import AttentionKernel, attend, dense
from sora_jax.model.dit import ACTIVATION, gather_clips, run_block_stack, timestep_embedding
from sora_jax.model.rope import axis_dims, rope_angles
from sora_jax.parallel.sharding import Rules, axis_rules, constrain

# Logit of a masked query-key pair in cross-attention: finite, so a query that sees no key at all
# (video padding beside a row without text padding) computes no NaN.
_MASKED = -1e30


def layer_norm(x: jax.Array, eps: float) -> jax.Array:
    """Layer norm over the last axis in float32 (Wan's FP32LayerNorm); returns float32."""
    x = x.astype(jnp.float32)
    centred = x - x.mean(axis=-1, keepdims=True)
    return centred * jax.lax.rsqrt(jnp.mean(jnp.square(centred), axis=-1, keepdims=True) + eps)


class AffineLayerNorm(nnx.Module):
    """Float32 layer norm with a learned scale and bias (Wan's ``norm2``); returns float32."""

    def __init__(self, dim: int, eps: float, param_dtype: jnp.dtype) -> None:
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype), out_sharding=("embed",))
        self.bias = nnx.Param(jnp.zeros((dim,), param_dtype), out_sharding=("embed",))

    def __call__(self, x: jax.Array) -> jax.Array:
        return layer_norm(x, self.eps) * self.scale[...].astype(jnp.float32) + self.bias[...].astype(
            jnp.float32
        )


class AcrossHeadsRMSNorm(nnx.Module):
    """RMS norm of a whole query or key vector ``[..., N * H]`` (all heads at once, as Wan's
    ``rms_norm_across_heads``), with a learned scale; computed in float32, returned in ``x``'s dtype.

    Per-head normalisation (``sora_jax.model.attention.Attention``'s ``qk_norm``) is a different
    function, hence this module.
    """

    def __init__(self, dim: int, eps: float, param_dtype: jnp.dtype) -> None:
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype), out_sharding=("heads",))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return (normed * self.scale[...].astype(jnp.float32)).astype(x.dtype)


def apply_interleaved_rope(x_blnh: jax.Array, angles_blh: jax.Array) -> jax.Array:
    """Rotate ``x [B, L, N, H]`` by ``angles [B, L, H/2]``: feature pair ``(2i, 2i+1)`` by angle ``i``.

    Wan's layout (complex numbers stored as interleaved pairs), not the split halves of
    ``sora_jax.model.rope.apply_rope``: the checkpoint's query and key weights assume it.
    """
    pairs = x_blnh.astype(jnp.float32).reshape(*x_blnh.shape[:-1], -1, 2)
    real, imag = pairs[..., 0], pairs[..., 1]
    cos = jnp.cos(angles_blh)[:, :, None, :]
    sin = jnp.sin(angles_blh)[:, :, None, :]
    rotated = jnp.stack([real * cos - imag * sin, real * sin + imag * cos], axis=-1)
    return rotated.reshape(x_blnh.shape).astype(x_blnh.dtype)


def wan_rope_angles(positions_bl3: jax.Array, head_dim: int, theta: float) -> jax.Array:
    """Angles ``[B, L, head_dim / 2]`` (float32) of Wan's 3D RoPE for (t, h, w) token coordinates.

    Wan gives h and w ``2 * (head_dim // 6)`` features each and t the rest, each axis with its own
    frequencies ``theta ** (-2i / axis_dim)``: exactly :func:`~sora_jax.model.rope.axis_dims` and
    :func:`~sora_jax.model.rope.rope_angles` (``(head_dim // 3) // 2 == head_dim // 6``).
    """
    return rope_angles(positions_bl3, axis_dims(head_dim), theta)


class WanAttention(nnx.Module):
    """Wan's attention projections: ``query``, ``key``, ``value``, ``out`` (``nnx.Linear``, so LoRA
    adapts them like any other) and the across-heads RMS norms of queries and keys."""

    def __init__(
        self,
        dim: int,
        heads: int,
        eps: float,
        kernel: AttentionKernel,
        rngs: nnx.Rngs,
        *,
        dtype: jnp.dtype,
        param_dtype: jnp.dtype,
    ) -> None:
        self.heads, self.head_dim, self.kernel = heads, dim // heads, kernel
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.query = dense(dim, dim, ("embed", "heads"), rngs, **kw)
        self.key = dense(dim, dim, ("embed", "heads"), rngs, **kw)
        self.value = dense(dim, dim, ("embed", "heads"), rngs, **kw)
        self.out = dense(dim, dim, ("heads", "embed"), rngs, **kw)
        self.query_norm = AcrossHeadsRMSNorm(dim, eps, param_dtype)
        self.key_norm = AcrossHeadsRMSNorm(dim, eps, param_dtype)

    def split_heads(self, x_bld: jax.Array) -> jax.Array:
        return x_bld.reshape(*x_bld.shape[:-1], self.heads, self.head_dim)

    def queries(self, x_bld: jax.Array) -> jax.Array:
        return self.split_heads(self.query_norm(self.query(x_bld)))

    def keys_values(self, context_bkd: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.split_heads(self.key_norm(self.key(context_bkd))), self.split_heads(
            self.value(context_bkd)
        )

    def merge_heads(self, out_blnh: jax.Array) -> jax.Array:
        return self.out(out_blnh.reshape(*out_blnh.shape[:2], -1))


class SelfAttention(WanAttention):
    """Attention of every token to the tokens of its own clip, through the configured kernel."""

    def __call__(self, x_bld: jax.Array, segment_ids_bl: jax.Array, angles_blh: jax.Array) -> jax.Array:
        q_blnh = apply_interleaved_rope(self.queries(x_bld), angles_blh)
        k_blnh, v_blnh = self.keys_values(x_bld)
        k_blnh = apply_interleaved_rope(k_blnh, angles_blh)
        out_blnh = attend(
            q_blnh, k_blnh, v_blnh, segment_ids_bl, segment_ids_bl, self.kernel, self_attention=True
        )
        return self.merge_heads(out_blnh)


class CrossAttention(WanAttention):
    """Attention of every token to its own clip's caption, and to the caption's padding.

    WanPipeline pads each caption's UMT5 states with zero vectors up to ``wan.text_pad_tokens``
    (512) tokens, and the transformer attends to all of them. Packed rows keep only the caption's
    ``n`` own tokens; the ``pad - n`` padding tokens are identical (the projection of the zero
    vector), so they are one extra key and value per clip whose logit gets ``+ log(pad - n)``:
    ``(pad - n) exp(s) = exp(s + log(pad - n))``, the same softmax exactly, at the cost of one key.
    The caller appends these keys after the row's caption tokens (``null_keys`` of them, one per
    clip slot, with their segment ids and logit biases).

    A plain masked softmax in XLA, not the self-attention kernels: captions are short (a row's
    caption tokens plus one key per clip), so the ``[L, K]`` logits are small next to
    self-attention's, and XLA partitions them over the mesh (queries split like the residual
    stream, the caption replicated) with no kernel of its own.
    """

    def __call__(
        self,
        x_bld: jax.Array,
        text_bkd: jax.Array,
        null_text_d: jax.Array | None,
        segment_ids_bl: jax.Array,
        key_segments_bk: jax.Array,
        key_bias_bk: jax.Array,
    ) -> jax.Array:
        """``key_segments`` and ``key_bias`` cover the caption tokens of ``text [B, Lt, D]`` and,
        when ``null_text`` (the projected zero vector ``[D]``) is given, the padding keys after them."""
        q_blnh = self.queries(x_bld)
        k_bknh, v_bknh = self.keys_values(text_bkd)
        null_keys = key_segments_bk.shape[1] - text_bkd.shape[1]
        if null_keys:
            null_k, null_v = self.keys_values(null_text_d[None, None, :])
            expand = lambda x: jnp.broadcast_to(x, (x_bld.shape[0], null_keys, *x.shape[2:]))  # noqa: E731
            k_bknh = jnp.concatenate([k_bknh, expand(null_k)], axis=1)
            v_bknh = jnp.concatenate([v_bknh, expand(null_v)], axis=1)
        scale = self.head_dim**-0.5
        logits = jnp.einsum("blnh,bknh->bnlk", q_blnh, k_bknh, preferred_element_type=jnp.float32) * scale
        logits = logits + key_bias_bk[:, None, None, :]
        visible = segment_ids_bl[:, None, :, None] == key_segments_bk[:, None, None, :]
        weights = jax.nn.softmax(jnp.where(visible, logits, _MASKED), axis=-1)
        # A query with no visible key (only where no caption and no padding exists) attends to
        # nothing, instead of to every key of the row.
        weights = jnp.where(visible, weights, 0.0).astype(v_bknh.dtype)
        return self.merge_heads(jnp.einsum("bnlk,bknh->blnh", weights, v_bknh))


class WanBlock(nnx.Module):
    """Wan's transformer block: modulated self-attention, cross-attention, modulated GELU MLP."""

    def __init__(
        self,
        model: ml_collections.FrozenConfigDict,
        wan: ml_collections.FrozenConfigDict,
        kernel: AttentionKernel,
        rngs: nnx.Rngs,
        *,
        dtype: jnp.dtype,
        param_dtype: jnp.dtype,
    ) -> None:
        dim, kw = model.dim, dict(dtype=dtype, param_dtype=param_dtype)
        self.eps, self.rules = wan.eps, kernel.rules
        self.self_attention = SelfAttention(dim, model.heads, wan.eps, kernel, rngs, **kw)
        self.cross_norm = AffineLayerNorm(dim, wan.eps, param_dtype) if wan.cross_attn_norm else None
        self.cross_attention = CrossAttention(dim, model.heads, wan.eps, kernel, rngs, **kw)
        self.mlp_in = dense(dim, wan.ffn_dim, ("embed", "mlp"), rngs, **kw)
        self.mlp_out = dense(wan.ffn_dim, dim, ("mlp", "embed"), rngs, **kw)
        # Wan's scale_shift_table: added to the clip's projected timestep, it gives the shift, scale
        # and gate of self-attention and of the MLP.
        table = jax.random.normal(rngs.params(), (6, dim), jnp.float32) * dim**-0.5
        self.modulation_table = nnx.Param(table.astype(param_dtype), out_sharding=(None, "embed"))

    def __call__(
        self,
        x_bld: jax.Array,
        time_bs6d: jax.Array,
        segment_ids_bl: jax.Array,
        angles_blh: jax.Array,
        text_bkd: jax.Array,
        null_text_d: jax.Array | None,
        key_segments_bk: jax.Array,
        key_bias_bk: jax.Array,
    ) -> jax.Array:
        """``x [B, L, D]`` (compute dtype) through the block; norms and modulation in float32."""
        dtype = x_bld.dtype
        with jax.named_scope("modulation"):
            per_clip = self.modulation_table[...].astype(jnp.float32) + time_bs6d  # [B, S, 6, D]: per clip.
            # Gathered one at a time where used, so no [B, L, 6D] array is ever held.
            mod = lambda i: gather_clips(per_clip[:, :, i], segment_ids_bl)  # noqa: E731
        with jax.named_scope("self_attention"):
            h = (layer_norm(x_bld, self.eps) * (1.0 + mod(1)) + mod(0)).astype(dtype)
            attended = self.self_attention(h, segment_ids_bl, angles_blh)
            x_bld = (x_bld.astype(jnp.float32) + attended.astype(jnp.float32) * mod(2)).astype(dtype)
        with jax.named_scope("cross_attention"):
            h = self.cross_norm(x_bld).astype(dtype) if self.cross_norm is not None else x_bld
            x_bld = x_bld + self.cross_attention(
                h, text_bkd, null_text_d, segment_ids_bl, key_segments_bk, key_bias_bk
            ).astype(dtype)
        with jax.named_scope("mlp"):
            h = (layer_norm(x_bld, self.eps) * (1.0 + mod(4)) + mod(3)).astype(dtype)
            hidden = jax.nn.gelu(self.mlp_in(h), approximate=True)
            x_bld = (x_bld.astype(jnp.float32) + self.mlp_out(hidden).astype(jnp.float32) * mod(5)).astype(
                dtype
            )
        return constrain(x_bld, ACTIVATION, self.rules)


def caption_padding(
    text_segment_ids_bk: jax.Array, max_clips: int, pad_tokens: int
) -> tuple[jax.Array, jax.Array]:
    """Segment ids and logit biases ``[B, Lt + S]`` of a row's caption tokens followed by one
    padding key per clip slot (see :class:`CrossAttention`).

    Slot ``s`` stands for ``pad_tokens - n_s`` zero tokens of clip ``s + 1`` (``n_s`` its caption
    tokens): bias ``log(pad_tokens - n_s)``; a slot with ``n_s >= pad_tokens`` gets id -1, which no
    query has. Caption tokens get bias 0.
    """
    slots = jnp.arange(1, max_clips + 1, dtype=text_segment_ids_bk.dtype)
    counts = (text_segment_ids_bk[..., None] == slots).sum(axis=1)  # [B, S]
    padded = counts < pad_tokens
    segments = jnp.concatenate([text_segment_ids_bk, jnp.where(padded, slots, -1)], axis=1)
    null_bias = jnp.log(jnp.maximum(pad_tokens - counts, 1).astype(jnp.float32))
    bias = jnp.concatenate([jnp.zeros(text_segment_ids_bk.shape, jnp.float32), null_bias], axis=1)
    return segments, bias


class WanTransformer(nnx.Module):
    """Wan 2.1's transformer on packed rows; see the module docstring.

    Built from the whole config: ``model.{patch_size, channels, dim, heads, depth, text_dim,
    attention, sequence_parallel, splash_interpret, remat, scan_layers, dtype, param_dtype,
    rope_theta}`` and ``wan.{ffn_dim, freq_dim, eps, cross_attn_norm, text_pad_tokens}``.
    ``wan.rope_max_seq_len`` only describes the checkpoint: the RoPE angles are computed from the
    coordinates rather than looked up in Wan's tables, so they equal Wan's wherever its tables reach
    and go on past them.
    """

    def __init__(self, config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> None:
        m, w = config.model, config.wan
        # Hashable: part of the graph definition.
        self.model_config = ml_collections.FrozenConfigDict(m)
        self.wan_config = ml_collections.FrozenConfigDict(w)
        self.rules: Rules = axis_rules(config)
        kernel = AttentionKernel(m.attention, m.sequence_parallel, self.rules, m.splash_interpret)
        kw = dict(dtype=jnp.dtype(m.dtype), param_dtype=jnp.dtype(m.param_dtype))
        f32 = dict(dtype=jnp.float32, param_dtype=jnp.dtype(m.param_dtype))
        patch_dim = math.prod(m.patch_size) * m.channels
        embed_init = nnx.initializers.normal(0.02)  # Wan's initialisation of its embeddings.
        self.patch_embed = dense(patch_dim, m.dim, ("patch", "embed"), rngs, **kw)
        # Wan keeps the timestep MLP in float32 whatever the compute dtype.
        self.time_in = dense(w.freq_dim, m.dim, (None, "mlp"), rngs, kernel_init=embed_init, **f32)
        self.time_out = dense(m.dim, m.dim, ("mlp", "embed"), rngs, kernel_init=embed_init, **f32)
        self.time_proj = dense(m.dim, 6 * m.dim, ("embed", "mlp"), rngs, **kw)
        self.text_in = dense(m.text_dim, m.dim, ("embed", "mlp"), rngs, kernel_init=embed_init, **kw)
        self.text_out = dense(m.dim, m.dim, ("mlp", "embed"), rngs, kernel_init=embed_init, **kw)
        frozen_m, frozen_w = self.model_config, self.wan_config

        @nnx.split_rngs(splits=m.depth)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_blocks(rngs: nnx.Rngs) -> WanBlock:
            return WanBlock(frozen_m, frozen_w, kernel, rngs, **kw)

        self.blocks = make_blocks(rngs)  # Parameters stacked on a leading "layers" axis.
        table = jax.random.normal(rngs.params(), (2, m.dim), jnp.float32) * m.dim**-0.5
        self.final_table = nnx.Param(table.astype(kw["param_dtype"]), out_sharding=(None, "embed"))
        # Zero-initialised, as Wan's head: a fresh model predicts zero velocity.
        self.final = dense(m.dim, patch_dim, ("embed", "patch"), rngs, zero_init=True, **kw)

    def embed_text(self, text_bkd: jax.Array) -> jax.Array:
        """Wan's caption projection: linear, GELU (tanh), linear; ``[..., text_dim]`` to ``[..., D]``."""
        dtype = jnp.dtype(self.model_config.dtype)
        return self.text_out(jax.nn.gelu(self.text_in(text_bkd.astype(dtype)), approximate=True))

    def __call__(
        self, noisy_blp: jax.Array, timesteps_bs: jax.Array, batch: dict[str, jax.Array]
    ) -> jax.Array:
        """Velocity ``[B, L, P]`` (float32) of the noisy patches at per-clip timesteps in [0, 1].

        Reads ``batch["segment_ids"]``, ``["positions"]``, ``["text_embeddings"]`` (raw UMT5 states
        ``[B, Lt, text_dim]``) and ``["text_segment_ids"]``. Wan takes no conditioning frames:
        ``cond_mask`` is not read.
        """
        m, w = self.model_config, self.wan_config
        dtype = jnp.dtype(m.dtype)
        segment_ids = batch["segment_ids"]
        rows, max_clips = timesteps_bs.shape
        with jax.named_scope("patch_embed"):
            x = constrain(self.patch_embed(noisy_blp.astype(dtype)), ACTIVATION, self.rules)
        with jax.named_scope("conditioning"):
            # Wan's Timesteps(flip_sin_to_cos=True, downscale_freq_shift=0) of 1000 t: cos, then sin.
            features = timestep_embedding(timesteps_bs, w.freq_dim)
            time_emb = self.time_out(jax.nn.silu(self.time_in(features))).astype(dtype)  # [B, S, D]
            time_proj = self.time_proj(jax.nn.silu(time_emb)).astype(jnp.float32)
            time_bs6d = time_proj.reshape(rows, max_clips, 6, m.dim)
        with jax.named_scope("text_embedder"):
            text = self.embed_text(batch["text_embeddings"])
            text_segments = batch["text_segment_ids"]
            if w.text_pad_tokens > 0:
                null_text = self.embed_text(jnp.zeros((m.text_dim,), jnp.float32))
                key_segments, key_bias = caption_padding(text_segments, max_clips, w.text_pad_tokens)
            else:
                null_text, key_segments = None, text_segments
                key_bias = jnp.zeros(text_segments.shape, jnp.float32)
        angles = wan_rope_angles(batch["positions"], m.dim // m.heads, m.rope_theta)
        angles = constrain(angles, ("activation_batch", "activation_length", None), self.rules)
        extras = (time_bs6d, segment_ids, angles, text, null_text, key_segments, key_bias)

        x = run_block_stack(self.blocks, x, extras, m)

        with jax.named_scope("final_layer"):
            per_clip = self.final_table[...].astype(jnp.float32) + time_emb[:, :, None, :].astype(jnp.float32)
            shift = gather_clips(per_clip[:, :, 0], segment_ids)
            scale = gather_clips(per_clip[:, :, 1], segment_ids)
            h = (layer_norm(x, w.eps) * (1.0 + scale) + shift).astype(dtype)
            return self.final(h).astype(jnp.float32)


def build_wan_transformer(config: ml_collections.ConfigDict, seed: int) -> WanTransformer:
    """A freshly initialised Wan transformer; parameter sharding is left to ``jit``'s
    ``out_shardings`` (variables carry logical axis names as metadata only)."""
    with nnx.use_eager_sharding(False):
        return WanTransformer(config, nnx.Rngs(params=seed))
