"""The base configuration: every key a run can set, with its meaning, and the checks run before compiling.

Experiment files (``experiments/*.py``) start from :func:`base_config` and change only what differs.
The config is locked after the experiment builds it, so a misspelt key is an error, not a silent no-op.
Command-line overrides (``--config.train.steps=100``) go through :func:`apply_overrides`, which coerces
the value to the key's type and names the key when something is wrong.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import os
import traceback
import types
from collections.abc import Sequence
from pathlib import Path

import ml_collections

from sora_jax.errors import ConfigError

ConfigDict = ml_collections.ConfigDict


def base_config() -> ConfigDict:
    """Every key of a run, with its default. Experiments override a subset."""
    from sora_jax.audio.config import audio_section
    from sora_jax.autoencoder.config import autoencoder_section  # It imports ConfigError from here.
    from sora_jax.diffusion.conditioning import conditioning_section

    c = ConfigDict()
    c.seed = 0  # Data order, noise, timesteps and initialisation all derive from it.
    # What is trained, a kind of run by name (sora_jax.kinds): "dit" (the video diffusion
    # transformer on packed rows), "autoencoder" (the video compression network, config.autoencoder,
    # on dense data.dense_clip clips), or "package.module:Class" for a kind defined elsewhere.
    c.task = "dit"
    c.autoencoder = autoencoder_section()

    # --- model: the video diffusion transformer -------------------------------------------------
    c.model = m = ConfigDict()
    m.patch_size = (
        2,
        4,
        4,
    )  # (pt, ph, pw): a token covers pt frames and ph x pw pixels (or latents).
    m.channels = 3  # Channels of what is patchified: 3 for pixels, the latent channels for latents.
    # A latent DiT: the run directory of the trained autoencoder (task "autoencoder") whose latents
    # data.store holds (made by `sora-jax encode`); samples are decoded by its EMA weights. In a
    # latent run data.frames, data.side and train.sample_{frames,height,width} count latent frames
    # and latent pixels. Empty: the DiT works on pixels.
    m.autoencoder = ""
    m.dim = 128  # Transformer width.
    m.depth = 4  # Number of DiT blocks.
    m.heads = 4  # Attention heads; dim must divide by heads.
    m.mlp_ratio = 4.0
    m.qk_norm = True  # RMS-normalise queries and keys per head (stabilises attention logits).
    m.rope_theta = 10_000.0  # Base period of the 3D rotary embedding.
    # Attention kernel: xla (jax.nn.dot_product_attention; CPU, GPU, TPU) | cudnn (fused, GPU) |
    # splash (Pallas splash attention, TPU) | ring (blockwise over the mesh's sequence axis).
    m.attention = "xla"
    # How self-attention crosses the mesh's `sequence` axis when it is larger than 1:
    # all_to_all (Ulysses: trade token shards for head shards around the kernel; heads must divide
    # by tensor x sequence) | gather (let XLA all-gather keys and values). `ring` attention is its own.
    m.sequence_parallel = "all_to_all"
    m.splash_interpret = False  # Run splash's Pallas kernel in the interpreter (any backend; slow): checks.
    m.scan_layers = True  # Run blocks under lax.scan: one compiled block, compile time flat in depth.
    m.remat = "none"  # Rematerialisation per block: none | full | dots (save matmul outputs only).
    m.dtype = "float32"  # Compute dtype: float32 | bfloat16. Parameters stay in param_dtype.
    m.param_dtype = "float32"
    # Text: hidden states of each caption's tokens feed cross-attention. text_encoder chooses them:
    # "learned": a small encoder (text_dim/depth/heads) trained with the DiT on hashed word tokens;
    # or a Hugging Face-format BERT/T5 directory: that frozen encoder's states, stored per clip by
    # `sora-jax prepare/encode --text-encoder DIR` (data.store must hold them), projected to
    # text_dim and refined by text_depth trained blocks; the directory encodes prompts when sampling.
    m.text_encoder = "learned"
    m.text_vocab_size = 4096  # Hash buckets of the word tokenizer.
    m.text_dim = 128
    m.text_depth = 2
    m.text_heads = 4
    # Initial standard deviation of the learned encoder's word embeddings. The blocks are pre-norm,
    # so the embeddings stay in the residual stream beside what every block adds: at 1.0 a word's
    # identity is as large as the blocks' first outputs.
    m.text_embed_std = 1.0
    # Add each clip's mean caption state, through a small MLP, to the timestep conditioning that
    # drives adaLN (beside cross-attention to the caption's tokens), as SD3 and Flux do.
    m.text_pooled = True
    # How the clip's tokens read the caption's: "cross" (cross-attention to the caption states in
    # every block) or "joint" (MMDiT, as SD3: the caption tokens are a second stream with their own
    # weights, in the same attention as their clip's tokens, so both streams read each other in
    # every block; rows stay packed, a clip's tokens and its caption's share its segment). world_tiny
    # trained joint followed 4 of 9 colours to cross's 8 (docs/BENCHMARKS.md, ablation: text attention).
    m.text_attention = "cross"

    # --- wan: what only the Wan 2.1 transformer has (task "wan", sora_jax/kinds/wan.py) ---------
    # Its shared keys are model.* (dim, heads, depth, patch_size, channels, text_dim = the UMT5
    # state width, attention, ...). A Wan run's model.autoencoder and model.text_encoder name
    # the directories of its Wan VAE and UMT5 encoder (the pretrained directory's vae/ and
    # text_encoder/ by default).
    c.wan = w = ConfigDict()
    # A diffusers-format Wan directory (model_index.json, transformer/, vae/, text_encoder/,
    # tokenizer/) whose weights a run starts from; empty: random initialisation from the seed.
    w.pretrained = ""
    w.ffn_dim = 8960  # Feed-forward width.
    w.freq_dim = 256  # Sinusoidal features of the timestep.
    w.eps = 1e-6  # Epsilon of every layer and RMS norm.
    w.cross_attn_norm = True  # A learned layer norm before cross-attention.
    w.rope_max_seq_len = 1024  # Positions the rotary tables cover per axis.
    # Wan's pipeline pads every caption's states with zero vectors to this many tokens and lets the
    # transformer attend to all of them; packed rows keep only the caption's own tokens and stand
    # for the padding exactly (see sora_jax/wan/transformer.py). 0: no padding.
    w.text_pad_tokens = 512
    w.flow_shift = 3.0  # Sampling schedule's shift: Wan uses 3.0 at 480p, 5.0 at 720p.

    # --- lora: low-rank adapters on a frozen pretrained model (rank 0: train every parameter) ----
    c.lora = lo = ConfigDict()
    lo.rank = 0
    lo.alpha = 0.0  # Adapters are scaled by alpha / rank; 0 means alpha = rank (scale 1).
    # Kernels that get adapters: a parameter whose path (dotted, e.g.
    # "blocks.self_attention.query.kernel") contains one of these strings.
    lo.targets = ("attention.query", "attention.key", "attention.value", "attention.out")

    # --- data: what a packed batch holds ---------------------------------------------------------
    c.data = d = ConfigDict()
    d.store = ""  # A clip store made by `sora-jax prepare` (path or URL); empty: physics world only.
    d.store_weight = 1.0  # Fraction of clips drawn from the store; the physics world gives the rest.
    d.batch_size = 8  # Rows per global batch.
    d.seq_len = 512  # L: video tokens per row; every batch has this one static shape.
    d.max_clips_per_row = 8  # S: clips packed into one row at most.
    d.text_len = 192  # Lt: text tokens per row (all captions of the row's clips, packed).
    # Autoencoder: (frames, height, width) of every training clip, whole latent frames and pixels.
    d.dense_clip = (9, 32, 32)
    # Captions are cut to this many tokens, the start token included; a caption that does not fit
    # what is left of a row's text_len opens the next row. The physics world's captions run 17 to
    # 64 tokens (median 34): at 64 every object a caption names reaches the model.
    d.max_caption_tokens = 64
    d.frames = (1, 16)  # Inclusive range of clip durations in frames; 1 frame is an image.
    d.image_fraction = 0.1  # Probability that a clip is a single frame.
    d.side = (32, 48)  # Inclusive range of clip height and width in pixels.
    d.fps = (4.0, 8.0)  # Range of frame rates a clip is rendered at.
    d.caption_dropout = 0.1  # Fraction of clips trained with the empty caption (for guidance).
    # Which clips of data.store train, by the scores `sora-jax prepare` measured of each (see
    # sora_jax/data/clip_selection.py; `sora-jax data-stats` shows their distributions). The
    # defaults select every clip; a clip without the score (a store made before it) is kept.
    d.min_motion = 0.0  # Mean optical-flow speed, frame lengths a second; static clips are < ~0.005.
    d.max_motion = -1.0  # -1: no upper limit.
    d.min_brightness = 0.0  # Mean luma, 0 (black) .. 1 (white).
    d.max_brightness = 1.0
    d.max_letterbox = 1.0  # Largest share of the frame that (cropped) letterbox bars covered.
    # Keep only the first clip of each group whose perceptual hashes (of the middle frame) differ
    # in at most this many of 64 bits, 0 .. 10 (a few bits: the same picture); -1: off.
    d.dedup_distance = -1
    d.workers = 0  # Background worker processes producing batches; 0 = in the main process.
    d.prefetch = 2  # Batches prepared ahead per worker.

    # --- diffusion: rectified flow ---------------------------------------------------------------
    c.diffusion = f = ConfigDict()
    # What the network outputs: data (clean patches) | preconditioned (a correction to the best
    # linear guess of the clean patches from the noisy ones, scaled as EDM does) | velocity.
    # world_tiny trained preconditioned keeps more detail near t = 0, but predicts worse from
    # t = 0.2 up and its samples are noise (docs/BENCHMARKS.md, caption following, ablation of detail).
    f.prediction = "data"
    f.sigma_data = 0.5  # RMS of the data in model units, for the preconditioned target's scalings.
    f.min_t = 0.05  # Predicting clean patches, velocity = (x_t - x0) / max(t, min_t).
    f.logit_mean = 0.0  # Timesteps t = sigmoid(n), n ~ Normal(logit_mean, logit_std).
    f.logit_std = 1.0
    f.shift_base_tokens = 256  # Clips of this many tokens get no timestep shift ...
    f.shift_max = 4.0  # ... larger ones are shifted towards noise by sqrt(tokens / base), capped.
    # Share of clips whose training t is drawn uniformly in [0, 1], unshifted, instead: the shift
    # leaves large clips few draws near t = 0, where sampling ends. (0.2 did not make world_tiny
    # keep more detail; see the ablation of detail in docs/BENCHMARKS.md.)
    f.uniform_t = 0.0
    # How clips share the loss: "token" (every token counts once: a long video counts by its size)
    # or "clip" (every clip counts once: an image as much as a 16-frame video).
    f.loss_weight = "token"
    # Training only: the velocity loss weighs a clip's clean-data error by 1 / t^2 (up to
    # 1 / min_t^2), so nearly clean clips dominate it; cap that weight at this (0: no cap).
    f.max_x0_weight = 0.0
    # Share of each token's noise common to all temporal patches of its clip at the same (h, w),
    # in training and sampling (0: independent noise per frame); see diffusion.flow.video_noise.
    f.noise_correlation = 0.0
    f.sampler = "euler"  # euler | heun
    f.sample_steps = 32
    f.guidance = 4.0  # Classifier-free guidance scale; 1 disables guidance.
    # Guidance scale of given frames (image-to-video, extension, ...); 1 disables it (two rows, not three).
    f.cond_guidance = 1.0
    # Times t (1 = noise) at which guidance acts, (lo, hi); elsewhere the sampler takes the
    # conditioned prediction as it is. (0, 1): every step.
    f.guidance_interval = (0.0, 1.0)

    # Conditioning tasks (image-to-video, extension, interpolation, ...): the weight of each, see
    # sora_jax/diffusion/conditioning.py. Default: text-to-video only.
    c.conditioning = conditioning_section()

    # --- audio: sound beside the video (sora_jax/audio/config.py): a video clip's audio as tokens
    # of its own segment, generated with its frames. Off by default.
    c.audio = audio_section()

    # --- optimiser -----------------------------------------------------------------------------
    c.optim = o = ConfigDict()
    o.lr = 1e-3  # Peak learning rate after warmup.
    o.warmup_steps = 100
    o.min_lr_ratio = 0.1  # Cosine decay ends at lr * min_lr_ratio.
    o.b1 = 0.9
    o.b2 = 0.99
    o.weight_decay = 0.01
    o.grad_clip = 1.0  # Global-norm clipping; 0 disables.
    o.ema_decay = 0.999  # EMA of parameters, used for sampling; 0 disables (EMA = parameters).

    # --- train loop ----------------------------------------------------------------------------
    c.train = t = ConfigDict()
    t.steps = 1000
    t.max_nonfinite = 10  # Stop after this many steps in a row with a non-finite loss or gradient.
    t.log_every = 1  # Steps between metrics lines (metrics.jsonl, TensorBoard, progress bar).
    t.sample_every = 0  # Steps between sample videos; 0 = only at the end.
    # Steps to trace with the JAX profiler into DIR/profile (TensorBoard / Perfetto), starting after
    # the session's first two steps (compile and warm-up); 0: no trace.
    t.profile_steps = 0
    t.sample_prompts = ("a small red ball falls and bounces",)
    t.sample_frames = 16
    t.sample_height = 32
    t.sample_width = 32
    t.sample_fps = 8.0
    t.sample_clips = 2  # Autoencoder: held-out clips written beside their reconstructions.

    # --- checkpoints (orbax, in DIR/checkpoints) -------------------------------------------------
    c.checkpoint = ck = ConfigDict()
    ck.every = 100  # Steps between checkpoints; 0 = only at the end (and on preemption).
    ck.keep = 3  # The newest checkpoints kept ...
    ck.keep_period = 0  # ... plus, forever, every checkpoint whose step divides by this (0: none).
    ck.async_save = True  # Write in the background while training continues.

    # --- evaluation (sora-jax evaluate) ------------------------------------------------------------
    c.eval = ev = ConfigDict()
    ev.batches = 4  # Held-out batches: physics-world clips from eval.seed, never seen in training.
    ev.seed = 1_000_003
    ev.timestep_buckets = 4  # Loss reported at the centre of each of these equal bands of t.
    # sora-jax evaluate --world: videos generated for this many held-out physics-world captions
    # (eval.seed), per task, scored against the scenes the captions describe.
    ev.world_clips = 16

    # --- device mesh ---------------------------------------------------------------------------
    # Axes: data (replicas), fsdp (replicas that also shard parameters and optimizer state),
    # sequence (tokens of a row), tensor (heads and MLP features). ici_* size the axes within a slice
    # (fast links), dcn_* across slices (data-centre network); each mesh axis is ici x dcn devices.
    c.mesh = ms = ConfigDict()
    ms.ici_data = -1  # -1: all devices not used by the other axes.
    ms.ici_fsdp = 1
    ms.ici_sequence = 1
    ms.ici_tensor = 1
    ms.dcn_data = 1  # Slices; their product must equal the number of slices.
    ms.dcn_fsdp = 1
    ms.dcn_sequence = 1
    ms.dcn_tensor = 1
    # Logical axis name -> the mesh axes that shard it (empty: replicated). Model code names axes;
    # only this table knows the mesh, so changing the parallelism never touches the model.
    # Parameters and the input batch use the plain names; activations inside the model use the
    # activation_* names, so resharding the inputs (say `batch`) leaves the activations alone and
    # vice versa. A config.json without the activation_* keys gets these defaults, which are the
    # layout runs had before the names were split.
    ms.rules = ConfigDict(
        {
            # Parameters and input arrays.
            "batch": ("data", "fsdp"),  # rows of a packed batch
            "length": ("sequence",),  # tokens of a row
            "embed": ("fsdp",),  # model width of parameters (FSDP)
            "heads": ("tensor",),
            "mlp": ("tensor",),
            "vocab": ("tensor",),
            "layers": (),  # the stacked-blocks axis
            "patch": (),
            "text_length": (),
            "clips": (),
            # Activations: the residual stream [B, L, D] between blocks, the RoPE angles, and
            # attention's queries/keys/values [B, L, N, H] where it runs per device.
            "activation_batch": ("data", "fsdp"),
            "activation_length": ("sequence",),  # also how self-attention splits its keys
            "activation_embed": (),  # activations keep the model width whole
            "activation_heads": ("tensor",),
        }
    )
    return c


def load_config(spec: str, overrides: Sequence[str] = ()) -> ConfigDict:
    """Build the config named by ``spec`` (``path/to/experiment.py[:arg]``), apply overrides, validate.

    ``overrides`` are ``key.path=value`` strings (the ``--config.`` prefix already removed).

    Raises:
        ConfigError: in one line, naming the file: a missing file, an experiment that does not
            import (``file:line`` and the error), a variant ``arg`` the file does not define (with
            those it does), a ``get_config`` that raises or returns anything but a config built by
            :func:`base_config`, a bad override or value. The experiment's own exception is the
            error's ``__cause__``; with ``SORA_JAX_TRACEBACK=1`` in the environment it propagates
            as it is instead, with its traceback.
    """
    path, _, arg = spec.partition(":")
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file not found: {path}{_close_experiments(file)}")
    variant = arg or None
    try:
        module = _import_experiment(file)
    except ConfigError as error:  # Meant for the user already.
        raise ConfigError(f"{path}: {error}") from error
    except Exception as error:
        if os.environ.get(TRACEBACK_ENV):
            raise
        raise _experiment_error(path, file, "importing it", variant, error) from error
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigError(f"{path} defines no get_config(arg)")
    try:
        config = get_config(variant)
    except ConfigError as error:
        raise ConfigError(f"{spec}: {error}") from error
    except Exception as error:
        if os.environ.get(TRACEBACK_ENV):
            raise
        raise _experiment_error(path, file, f"get_config({variant!r})", variant, error) from error
    _check_built_from_base(path, variant, config)
    config.lock()
    apply_overrides(config, overrides)
    validate(config)
    return config


# Set (to anything) to let an experiment file's own exception propagate, traceback and all.
TRACEBACK_ENV = "SORA_JAX_TRACEBACK"


def _close_experiments(file: Path) -> str:
    """'; did you mean ...?' with the files beside ``file`` whose names are closest to its name."""
    if not file.parent.is_dir():
        return ""
    names = sorted(p.name for p in file.parent.glob("*.py"))
    close = difflib.get_close_matches(file.name, names, n=3, cutoff=0.5)
    return f"; did you mean {', '.join(str(file.parent / name) for name in close)}?" if close else ""


def _import_experiment(file: Path) -> types.ModuleType:
    module_spec = importlib.util.spec_from_file_location(f"_sora_jax_experiment_{file.stem}", file)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def experiment_variants(source: str) -> list[str]:
    """The variants an experiment file defines, read from its source without running it.

    ``get_config(arg)`` picks a variant by comparing ``arg``, or a name assigned from it (``variant
    = arg or "v5p-64"``), with string constants (``==``, ``in (...)``, ``match``/``case``): those
    strings, in source order. Empty when the file names none or does not parse.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    functions = [
        node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "get_config"
    ]
    if not functions or not functions[-1].args.args:
        return []
    function = functions[-1]
    from_arg = {function.args.args[0].arg}

    def reads_arg(node: ast.AST) -> bool:
        return any(isinstance(name, ast.Name) and name.id in from_arg for name in ast.walk(node))

    for node in ast.walk(function):
        if isinstance(node, ast.Assign) and reads_arg(node.value):
            from_arg |= {target.id for target in node.targets if isinstance(target, ast.Name)}
    candidates: list[ast.expr] = []
    for node in ast.walk(function):
        if isinstance(node, ast.Compare) and all(isinstance(op, ast.Eq | ast.In) for op in node.ops):
            operands = [node.left, *node.comparators]
            if any(isinstance(operand, ast.Name) and operand.id in from_arg for operand in operands):
                for operand in operands:
                    is_collection = isinstance(operand, ast.Tuple | ast.List | ast.Set)
                    candidates += operand.elts if is_collection else [operand]
        elif isinstance(node, ast.Match) and reads_arg(node.subject):
            patterns = [p for case in node.cases for p in ast.walk(case.pattern)]
            candidates += [p.value for p in patterns if isinstance(p, ast.MatchValue)]
    strings = [c for c in candidates if isinstance(c, ast.Constant) and isinstance(c.value, str)]
    strings.sort(key=lambda c: (c.lineno, c.col_offset))
    return list(dict.fromkeys(c.value for c in strings))


def _experiment_error(
    path: str, file: Path, doing: str, variant: str | None, error: Exception
) -> ConfigError:
    """One line for ``error``, raised while ``doing`` (importing ``file``, or its get_config)."""
    if isinstance(error, SyntaxError) and error.filename and Path(error.filename).resolve() == file.resolve():
        return ConfigError(f"{path}:{error.lineno}: syntax error: {error.msg}")
    raised = f"{type(error).__name__}: {error}"
    variants = experiment_variants(file.read_text())
    if variant is not None and variants and variant not in variants:
        return ConfigError(
            f"{path} has no variant {variant!r}; its variants: {', '.join(variants)} "
            f"({doing} raised {raised})"
        )
    frames = traceback.extract_tb(error.__traceback__)
    lines = [frame.lineno for frame in frames if Path(frame.filename).resolve() == file.resolve()]
    where = f"{path}:{lines[-1]}" if lines else path
    return ConfigError(f"{where}: {doing} raised {raised} ({TRACEBACK_ENV}=1 shows the traceback)")


def _check_built_from_base(path: str, variant: str | None, config: object) -> None:
    """Refuse what get_config returned unless it is :func:`base_config` with values changed: every
    key of base_config must be there, and no other (a misspelt key would be silently unused)."""
    call = f"{path}: get_config({variant!r})"
    if not isinstance(config, ConfigDict):
        what = "None (no `return`?)" if config is None else f"a {type(config).__name__}"
        raise ConfigError(
            f"{call} returned {what}; it must return an ml_collections.ConfigDict, the one "
            "sora_jax.config.base_config() makes with the experiment's values set"
        )
    base = base_config()
    known, given = _all_keys(base), _all_keys(config)
    # Name whole sections when sections are missing: their keys would be a long list.
    missing = [key for key in base if key not in config] or [key for key in known if key not in given]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ConfigError(
            f"{call} returned a config without {', '.join(missing[:3])}{more}; start it from "
            "sora_jax.config.base_config()"
        )
    added = [key for key in given if key not in known]
    if added:
        close = difflib.get_close_matches(added[0], known, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ConfigError(f"{call} sets {added[0]!r}, which is not a config key{hint}")


# Keys added after runs were already written, with the value that reproduces those runs: a
# config.json without the key was written when the behaviour was this one, whatever the default is now.
LEGACY_VALUES = {
    "model.text_pooled": False,
    "model.text_embed_std": 0.02,
    "diffusion.loss_weight": "clip",
}


def config_from_json(text: str) -> ConfigDict:
    """Rebuild a resolved config written by :func:`config_to_json` (e.g. a workdir's config.json).

    Keys the JSON lacks take their default, or for keys of :data:`LEGACY_VALUES` the value runs had
    before the key existed, so an older workdir still samples and evaluates as it trained.
    """
    config = base_config()
    config.lock()
    values = json.loads(text)
    _merge(config, values, prefix="")
    for dotted, legacy in LEGACY_VALUES.items():
        section, key = dotted.split(".")
        if key not in values.get(section, {}):
            config[section][key] = legacy
    validate(config)
    return config


def config_to_json(config: ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True)


def _merge(config: ConfigDict, values: dict, prefix: str) -> None:
    for key, value in values.items():
        if isinstance(value, dict):
            _merge(config, value, prefix + key + ".")
        else:
            _set(config, prefix + key, value)


def apply_overrides(config: ConfigDict, overrides: Sequence[str]) -> None:
    """Apply ``a.b=value`` strings; the value is parsed as a Python literal when it is one."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw  # A bare word: a string value.
        _set(config, key, value)


def _all_keys(config: ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in config.items():
        if isinstance(value, ConfigDict):
            keys += _all_keys(value, prefix + key + ".")
        else:
            keys.append(prefix + key)
    return keys


def _set(config: ConfigDict, dotted: str, value: object) -> None:
    *parents, leaf = dotted.split(".")
    node = config
    for part in parents:
        if not isinstance(node, ConfigDict) or part not in node:
            raise _unknown_key(config, dotted)
        node = node[part]
    if not isinstance(node, ConfigDict) or leaf not in node or isinstance(node[leaf], ConfigDict):
        raise _unknown_key(config, dotted)
    current = node[leaf]
    node[leaf] = _coerce(dotted, current, value)


def _unknown_key(config: ConfigDict, dotted: str) -> ConfigError:
    close = difflib.get_close_matches(dotted, _all_keys(config), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"unknown config key {dotted!r}{hint}")


def _coerce(key: str, current: object, value: object) -> object:
    """Give ``value`` the type of the key's current value, or explain why it cannot have it."""
    kind = type(current)
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"config key {key!r} takes true/false, got {value!r}")
    if isinstance(current, int) and isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(current, float) and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(current, str):
        return str(value)
    if isinstance(current, tuple | list):
        items = value if isinstance(value, tuple | list) else (value,)
        fixed = not isinstance(current[0], str) and key not in VARIABLE_LENGTH if current else False
        if fixed and len(items) != len(current):
            raise ConfigError(f"config key {key!r} takes {len(current)} values, got {value!r}")
        if current:
            items = tuple(_coerce(key, current[0], item) for item in items)
        return tuple(items)
    raise ConfigError(f"config key {key!r} takes a {kind.__name__}, got {value!r}")


# Tuples whose length is the user's choice (checked by their own validation), unlike a shape's.
VARIABLE_LENGTH = {"autoencoder.channel_multipliers", "autoencoder.temporal_downsample"}


def _fail(key: str, problem: str) -> None:
    raise ConfigError(f"config key {key!r}: {problem}")


def validate(config: ConfigDict) -> None:
    """Check that the config can run, before anything is built or compiled.

    The run-level keys (batch, workers, optimizer, steps, checkpoints, evaluation) are checked here;
    each section's own keys beside its owner: the kind of run (``config.task``, which checks its
    model, data and diffusion sections, :meth:`sora_jax.kinds.base.RunKind.validate`) and the
    mesh (:func:`sora_jax.parallel.mesh.validate_mesh_section`).

    Raises:
        ConfigError: naming the first key whose value cannot work, and why.
    """
    from sora_jax.audio.config import validate_audio_section
    from sora_jax.data.clip_selection import validate_selection
    from sora_jax.kinds.registry import kind_class
    from sora_jax.parallel.mesh import validate_mesh_section
    from sora_jax.train.optimizer import validate_optim_section

    d, t = config.data, config.train
    for key in ("data.batch_size", "train.steps", "train.log_every", "train.max_nonfinite"):
        section, name = key.split(".")
        if config[section][name] < 1:
            _fail(key, f"must be at least 1, got {config[section][name]}")
    if not 0.0 < d.store_weight <= 1.0:
        _fail("data.store_weight", f"must be in (0, 1], got {d.store_weight}")
    if d.workers < 0:
        _fail("data.workers", "must be >= 0")
    problem = validate_selection(d)
    if problem is not None:
        key, _, why = problem.partition(": ")
        _fail(f"data.{key}", why)
    validate_audio_section(config.audio)
    if config.audio.enabled and config.task != "dit":
        _fail("audio.enabled", f"task {config.task!r} trains no sound yet; only task 'dit' does")
    kind_class(config.task).validate(config)  # An unknown task raises; each kind checks its own keys.
    validate_optim_section(config.optim)
    if config.checkpoint.every < 0 or config.checkpoint.keep < 1 or config.checkpoint.keep_period < 0:
        _fail("checkpoint.every", "every >= 0, keep >= 1 and keep_period >= 0")
    if config.eval.world_clips < 1:
        _fail("eval.world_clips", f"must be at least 1, got {config.eval.world_clips}")
    if config.eval.batches < 1 or config.eval.timestep_buckets < 1:
        _fail("eval.batches", "eval.batches and eval.timestep_buckets must be at least 1")
    if t.sample_every < 0:
        _fail("train.sample_every", "must be >= 0")
    if t.profile_steps < 0:
        _fail("train.profile_steps", "must be >= 0")
    validate_mesh_section(config.mesh)
