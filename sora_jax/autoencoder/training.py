"""Training the video autoencoder with the trainer (``task = "autoencoder"``).

The trainer's loop, sharding, checkpoints, preemption and metrics are the DiT's; what differs is
here:

- **batches**: dense fixed-shape clips ``videos [B, T, H, W, 3]`` float32 in [-1, 1]
  (``data.dense_clip = (T, H, W)``) of the physics world or of a clip store of real videos
  (``data.store``), from a grain dataset indexed by step, so the input position is checkpointed
  and a resumed run reads exactly the batches that come next. Process ``p`` renders only its own
  rows ``[first_row, first_row + rows)`` of each global batch.
- **state**: ``params = {"autoencoder": ..., "discriminator": ...}`` (the discriminator only
  with ``autoencoder.disc_weight > 0``), each with its own optimizer settings, one EMA over both.
- **step**: the VAE loss (reconstruction + KL + the generator's hinge loss once
  ``autoencoder.disc_start`` is reached) and, in the same step, the discriminator's hinge loss on
  the reconstructions, which counts from ``disc_start`` too.
- **samples**: held-out clips beside their reconstructions by the EMA parameters.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from PIL import Image

from sora_jax.autoencoder.config import AutoencoderConfig
from sora_jax.autoencoder.discriminator import PatchDiscriminator
from sora_jax.autoencoder.losses import make_autoencoder_loss, make_discriminator_loss
from sora_jax.autoencoder.metrics import psnr, ssim
from sora_jax.autoencoder.model import VideoAutoencoder
from sora_jax.data import world
from sora_jax.data.clip_store import ClipStore
from sora_jax.data.pipeline import model_to_pixels, pixels_to_model
from sora_jax.data.shards import ShardedClips, open_clips
from sora_jax.errors import ConfigError
from sora_jax.train.optimizer import make_optimizer
from sora_jax.train.state import TrainState
from sora_jax.train.step import make_update, step_key

Batch = dict[str, jax.Array]


def autoencoder_config(config: ml_collections.ConfigDict) -> AutoencoderConfig:
    return AutoencoderConfig.from_section(config.autoencoder)


def uses_discriminator(config: ml_collections.ConfigDict) -> bool:
    return config.autoencoder.disc_weight > 0


def world_clips(seed: int, first: int, count: int, shape: tuple[int, int, int]) -> np.ndarray:
    """Physics-world clips ``first .. first + count - 1`` of ``seed``: ``[count, T, H, W, 3]``
    float32 in [-1, 1]. Frame rates vary by clip (4 to 12 fps), so motion per frame varies too."""
    clips = world.make_clips(seed, range(first, first + count), shape, lambda index: 4.0 + index % 9)
    return pixels_to_model(np.stack([clip.frames for clip in clips]))


def fit_clip(video: np.ndarray, shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """A ``shape = (T, H, W)`` piece of uint8 ``video [t, h, w, 3]``: ``T`` frames from a random
    start (a shorter video holds its last frame, a still moment), scaled (aspect kept) so that it
    covers ``H x W``, then cropped there at a random place."""
    frames, height, width = shape
    start = int(rng.integers(0, max(len(video) - frames, 0) + 1))
    piece = video[start : start + frames]
    if len(piece) < frames:
        piece = np.concatenate([piece, np.repeat(piece[-1:], frames - len(piece), axis=0)])
    h, w = piece.shape[1:3]
    scale = max(height / h, width / w)
    size = (max(width, round(w * scale)), max(height, round(h * scale)))
    if size != (w, h):
        piece = np.stack([np.asarray(Image.fromarray(f).resize(size, Image.BOX)) for f in piece])
    top = int(rng.integers(0, piece.shape[1] - height + 1))
    left = int(rng.integers(0, piece.shape[2] - width + 1))
    return piece[:, top : top + height, left : left + width]


@dataclasses.dataclass(frozen=True)
class _RenderRows:
    """Step -> this process's rows of that step's global batch (a grain map function).

    Without a store, row ``r`` of step ``s`` is physics-world clip ``s * batch_size + r``. With one,
    each row is a store clip (a physics-world clip with probability ``1 - store_weight``) chosen
    and fitted by a generator seeded with ``(seed, s * batch_size + r)``.
    """

    seed: int
    batch_size: int
    first_row: int
    rows: int
    shape: tuple[int, int, int]
    store: str = ""
    store_weight: float = 1.0

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        first = int(step) * self.batch_size + self.first_row
        if not self.store:
            return {"videos": world_clips(self.seed, first, self.rows, self.shape)}
        store = _open_store(self.store)
        clips = []
        for index in range(first, first + self.rows):
            rng = np.random.default_rng((self.seed, index))
            if rng.random() < self.store_weight:
                clips.append(
                    pixels_to_model(fit_clip(store.read(int(rng.integers(len(store)))), self.shape, rng))
                )
            else:
                clips.append(world_clips(self.seed, index, 1, self.shape)[0])
        return {"videos": np.stack(clips)}


@functools.cache
def _open_store(path: str) -> ClipStore | ShardedClips:
    """The clips at ``path`` (a store or a sharded dataset), opened once per process (map
    functions run on grain's threads)."""
    store = open_clips(path)
    if store.dtype != np.uint8 or store.channels != 3 or not len(store):
        raise ConfigError(
            f"config key 'data.store': {path} holds no RGB pixel clips to train an autoencoder on"
        )
    return store


def clip_batches(
    config: ml_collections.ConfigDict, first_row: int = 0, rows: int | None = None, seed: int | None = None
) -> grain.DatasetIterator:
    """This process's share of every training batch, step after step (checkpointable): dense
    ``videos [rows, T, H, W, 3]`` float32 in [-1, 1] of ``data.dense_clip``, from the physics world
    or, with ``data.store``, from a clip store of real videos (mixed with the world at
    ``data.store_weight``). ``seed`` (default: the run's) picks the clips."""
    d = config.data
    rows = d.batch_size if rows is None else rows
    seed = config.seed if seed is None else seed
    render = _RenderRows(seed, d.batch_size, first_row, rows, tuple(d.dense_clip), d.store, d.store_weight)
    dataset = grain.MapDataset.range(2**31 - 1).map(render)
    # Rendering runs ahead of the step on threads (numpy releases the GIL for most of it).
    options = grain.ReadOptions(num_threads=max(1, d.workers), prefetch_buffer_size=2)
    return iter(dataset.to_iter_dataset(options))


def held_out_clips(config: ml_collections.ConfigDict, count: int) -> np.ndarray:
    """``count`` clips drawn with ``eval.seed``: ``[count, T, H, W, 3]``. Physics-world clips are
    never seen in training; a store's are drawn from the same store (not held out)."""
    rows = config.data.batch_size
    batches = clip_batches(config, seed=config.eval.seed)
    clips = [next(batches)["videos"] for _ in range(-(-count // rows))]
    return np.concatenate(clips)[:count]


def split_autoencoder(config: ml_collections.ConfigDict, seed: int) -> tuple[dict, dict[str, nnx.State]]:
    """(graphdefs, params) of the autoencoder and, if used, its discriminator."""
    ae = autoencoder_config(config)
    graphdefs, params = {}, {}
    # Built directly (the trainer traces this inside its own jitted init); logical axis names
    # stay metadata, mapped to the mesh by the trainer's rules.
    with nnx.use_eager_sharding(False):
        vae = VideoAutoencoder(ae, nnx.Rngs(params=seed))
        graphdefs["autoencoder"], params["autoencoder"] = nnx.split(vae, nnx.Param)
        if uses_discriminator(config):
            disc = PatchDiscriminator(ae, nnx.Rngs(params=seed + 1))
            graphdefs["discriminator"], params["discriminator"] = nnx.split(disc, nnx.Param)
    return graphdefs, params


def autoencoder_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The optimizer of ``{"autoencoder": ..., "discriminator": ...}``: the ``optim`` section for
    the autoencoder; for the discriminator its own clipping, weight decay and learning rate
    (``autoencoder.disc_grad_clip``, ``disc_weight_decay``, ``disc_lr``), so neither network's
    gradient norm clips the other's. Without a discriminator, the ``optim`` optimizer alone."""
    own = make_optimizer(config)
    if not uses_discriminator(config):
        return own
    ae, o = autoencoder_config(config), config.optim
    disc = make_optimizer(
        config, grad_clip=ae.disc_grad_clip, weight_decay=ae.disc_weight_decay, lr=ae.disc_lr or o.lr
    )

    def labels(params: dict) -> dict:
        return {name: jax.tree.map(lambda _, n=name: n, tree) for name, tree in params.items()}

    return optax.multi_transform({"autoencoder": own, "discriminator": disc}, labels)


def make_autoencoder_step(
    graphdefs: dict[str, nnx.GraphDef],
    config: ml_collections.ConfigDict,
    optimizer: optax.GradientTransformation,
) -> Any:
    """``step(state, {"videos"}) -> (state, metrics)``, un-jitted (the trainer jits and donates)."""
    ae = autoencoder_config(config)
    gan = "discriminator" in graphdefs
    loss_fn = make_autoencoder_loss(graphdefs["autoencoder"], ae, graphdefs.get("discriminator"))
    d_loss_fn = make_discriminator_loss(graphdefs["discriminator"]) if gan else None
    update = make_update(config, optimizer)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        videos = batch["videos"]
        params = state.params
        (loss, aux), vae_grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params["autoencoder"], videos, step_key(config.seed, state.step),
            disc_params=params.get("discriminator"), step=state.step,
        )  # fmt: skip
        grads = {"autoencoder": vae_grads}
        metrics = {k: aux[k] for k in ("reconstruction", "kl", "psnr", "generator", "adversarial_weight")}
        if gan:
            (d_loss, d_aux), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(
                params["discriminator"], videos, aux["reconstructions"]
            )
            # The discriminator learns from disc_start on, when its verdict starts to count.
            learning = (state.step >= ae.disc_start).astype(jnp.float32)
            grads["discriminator"] = jax.tree.map(lambda g: g * learning, d_grads)
            loss = loss + learning * d_loss
            metrics |= {"disc_loss": d_loss, "disc_accuracy": d_aux["accuracy"]}
        new_state, update_metrics = update(state, loss, grads)
        return new_state, update_metrics | metrics | {"clips": jnp.asarray(videos.shape[0], jnp.int32)}

    return train_step


def reconstructor(graphdef: nnx.GraphDef) -> Any:
    """``reconstruct(params, videos) -> videos``: decode of the posterior mean (no sampling noise)."""

    @jax.jit
    def reconstruct(params: nnx.State, videos: jax.Array) -> jax.Array:
        vae = nnx.merge(graphdef, params)
        return vae.decode(vae.encode(videos).mean)

    return reconstruct


def reconstruct_clips(reconstruct: Any, params: nnx.State, clips: np.ndarray, batch: int = 8) -> np.ndarray:
    """``clips`` (float, [-1, 1]) through the autoencoder, ``batch`` clips a call; float32 on host."""
    return np.concatenate(
        [np.asarray(reconstruct(params, clips[i : i + batch])) for i in range(0, len(clips), batch)]
    )


def reconstruction_scores(reconstruct: Any, params: nnx.State, clips: np.ndarray) -> dict[str, float]:
    """Mean per-frame PSNR (dB) and SSIM of ``clips`` against their reconstructions."""
    recon = reconstruct_clips(reconstruct, params, clips)
    return {
        "psnr": float(np.mean(np.asarray(psnr(clips, recon)))),
        "ssim": float(np.mean(np.asarray(ssim(clips, recon)))),
    }


def reconstruction_sampler(graphdefs: dict, config: ml_collections.ConfigDict) -> Any:
    """``sample(params) -> videos``: ``train.sample_clips`` held-out clips, each beside its
    reconstruction (uint8 ``[T, H, 2W, 3]``, original on the left)."""
    if not config.train.sample_clips:
        return lambda params: []
    clips = held_out_clips(config, config.train.sample_clips)
    reconstruct = reconstructor(graphdefs["autoencoder"])

    def sample(params: dict) -> list[np.ndarray]:
        recon = model_to_pixels(reconstruct_clips(reconstruct, params["autoencoder"], clips))
        return [np.concatenate([model_to_pixels(c), r], axis=2) for c, r in zip(clips, recon, strict=True)]

    return sample
