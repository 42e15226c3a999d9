"""The ``sora-jax`` command: train, sample, evaluate, aot, prepare, encode, data-stats (``CMD --help``)."""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from sora_jax.errors import ConfigError

CONFIG_PREFIX = "--config."


def _split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separate ``--config.a.b=V`` (or ``--config.a.b V``) overrides from the other arguments."""
    rest, overrides = [], []
    items = list(argv)
    while items:
        item = items.pop(0)
        if item.startswith(CONFIG_PREFIX):
            key = item[len(CONFIG_PREFIX) :]
            if "=" not in key:
                if not items:
                    raise SystemExit(f"error: {item} needs a value")
                key = f"{key}={items.pop(0)}"
            overrides.append(key)
        else:
            rest.append(item)
    return rest, overrides


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sora-jax", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train",
        help="train an experiment; resumes from DIR's latest checkpoint",
        epilog="Any config key can be overridden: --config.train.steps=100 --config.seed=1",
    )
    train.add_argument("--config", required=True, help="experiments/NAME.py[:ARG]")
    train.add_argument("--workdir", required=True, help="run directory (config, metrics, ...)")
    hosts = train.add_argument_group(
        "multi-host", "explicit process group (TPU pods and SLURM are detected without these)"
    )
    hosts.add_argument("--coordinator", help="HOST:PORT of process 0 (env SORA_JAX_COORDINATOR)")
    hosts.add_argument("--num-processes", type=int, help="env SORA_JAX_NUM_PROCESSES")
    hosts.add_argument("--process-id", type=int, help="env SORA_JAX_PROCESS_ID")

    sample = commands.add_parser("sample", help="generate a video from a trained workdir")
    sample.add_argument("--workdir", required=True)
    sample.add_argument("--prompt", required=True)
    size = "of the video (default: the run's train.sample_*; a latent run decodes to 1 + ft k frames)"
    sample.add_argument("--frames", type=int, default=None, help=f"frames {size}")
    sample.add_argument("--height", type=int, default=None, help=f"height {size}")
    sample.add_argument("--width", type=int, default=None, help=f"width {size}")
    sample.add_argument(
        "--fps", type=float, default=8.0, help="frames/s of the video (so how long its sound lasts), <= 100"
    )
    sample.add_argument(
        "--out", required=True, help="FILE.mp4; a .gif (and, with sound, a .wav) is written beside it"
    )
    sample.add_argument("--seed", type=int, default=0, help="0 .. 2**32 - 1")
    sample.add_argument("--steps", type=int, default=None, help=">= 1 (default: the run's config)")
    sample.add_argument("--guidance", type=float, default=None, help="default: the run's config")
    sample.add_argument(
        "--guidance-interval",
        type=float,
        nargs=2,
        default=None,
        metavar=("LO", "HI"),
        help="guide only at times t in [LO, HI] (t = 1 is noise; default: the run's config)",
    )
    sample.add_argument("--sampler", choices=("euler", "heun"), default=None)
    sample.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    modes = sample.add_argument_group(
        "conditioning",
        "generate around given images or videos (scaled to cover the video's size, centre-cropped); one of",
    )
    given = modes.add_mutually_exclusive_group()
    given.add_argument("--image", metavar="FILE", help="animate an image: held over the first temporal patch")
    given.add_argument("--video", metavar="FILE", help="extend a video, --extend forward or backward")
    given.add_argument("--interpolate", nargs=2, metavar=("A", "B"), help="images: first and last frame")
    given.add_argument("--connect", nargs=2, metavar=("A", "B"), help="videos: from the end of A into B")
    given.add_argument("--edit", metavar="FILE", help="video-to-video (SDEdit) of a video by the prompt")
    given.add_argument("--audio", metavar="FILE", help="a run with sound: make the picture of a sound file")
    modes.add_argument(
        "--extend",
        choices=("forward", "backward"),
        default=None,
        help="--video: which way (default: forward)",
    )
    modes.add_argument(
        "--given-frames",
        type=int,
        default=None,
        help="--video/--connect: frames taken from each given video (default: half of --frames, a third "
        "with --connect)",
    )
    modes.add_argument(
        "--add-sound",
        action="store_true",
        help="--video: keep the video's first --frames frames and make their sound (a run with sound)",
    )
    modes.add_argument(
        "--strength", type=float, default=None, help="--edit: how much is regenerated, (0, 1] (default: 0.6)"
    )
    modes.add_argument(
        "--cond-guidance",
        type=float,
        default=None,
        help="guidance of the given frames, with --image/--video/--interpolate/--connect (default: config)",
    )
    evaluate = commands.add_parser("evaluate", help="validation loss and samples of checkpoints")
    evaluate.add_argument("--workdir", required=True)
    which = evaluate.add_mutually_exclusive_group()
    which.add_argument("--step", type=int, help="this checkpoint (default: the latest)")
    which.add_argument("--all", action="store_true", help="every checkpoint not yet evaluated")
    which.add_argument(
        "--follow", action="store_true", help="evaluate checkpoints as they land until the run's final one"
    )
    evaluate.add_argument(
        "--world",
        action="store_true",
        help="also generate videos for held-out physics-world captions and score them against their scenes",
    )
    evaluate.add_argument("--poll", type=float, default=10.0, help="seconds between looks (--follow)")
    evaluate.add_argument("--timeout", type=float, default=None, help="give up after (--follow)")

    aot = commands.add_parser(
        "aot",
        help="compile the train step for a TPU slice here (no TPU needed): memory per chip, FLOPs, MFU",
        epilog="--config.KEY=VALUE overrides work here too. Exits 1 when the step does not fit.",
    )
    aot.add_argument("--config", required=True, help="experiments/NAME.py[:ARG]")
    aot.add_argument("--topology", required=True, help="Cloud TPU accelerator type, e.g. v5p-256, v6e-64")
    aot.add_argument("--num-slices", type=int, default=1, help="slices joined over DCN")
    aot.add_argument("--json", help="also write the report to this file")
    aot.add_argument(
        "--no-estimate", action="store_true", help="skip the two extra compiles behind the MFU estimate"
    )

    stats = commands.add_parser(
        "data-stats",
        help="packing efficiency, clip shapes and speed of an experiment's input pipeline",
        epilog="The last line printed is one JSON object. --config.KEY=VALUE overrides work here too.",
    )
    stats.add_argument("--config", required=True, help="experiments/NAME.py[:ARG]")
    stats.add_argument("--batches", type=int, default=20)

    prepare = commands.add_parser(
        "prepare",
        help="decode a folder or CSV of captioned videos (or render physics-world clips) into a clip store",
    )
    inputs = prepare.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--input", help="folder or video file (sidecar .txt captions), or a CSV")
    inputs.add_argument(
        "--world",
        type=int,
        metavar="N",
        help="render physics-world clips 0 .. N-1 instead (with --text-encoder: for a frozen encoder)",
    )
    prepare.add_argument(
        "--output", required=True, help="clip store path or URL (e.g. gs://...); sharded: the dataset's root"
    )
    prepare.add_argument("--workers", type=int, default=2, help="decoding processes (at least 1)")
    prepare.add_argument("--max-seconds", type=float, default=4.0, help="longest clip")
    prepare.add_argument("--fps", type=float, default=8.0, help="target frame rate (0: keep)")
    prepare.add_argument("--max-area", type=int, default=256 * 256, help="most pixels a frame")
    prepare.add_argument("--min-side", type=int, default=16, help="smallest usable source side")
    prepare.add_argument("--caption-default", default=None, help="caption for uncaptioned files")
    prepare.add_argument(
        "--text-encoder",
        default=None,
        help="Hugging Face-format BERT/T5 directory: store each clip's caption embedding",
    )
    prepare.add_argument("--caption-tokens", type=int, default=64, help="most tokens a caption embedding")
    prepare.add_argument("--audio-rate", type=int, default=16000, help="sample rate of the sound kept (Hz)")
    prepare.add_argument("--audio-channels", type=int, default=1, help="1 (mono) or 2 (stereo)")
    prepare.add_argument("--no-audio", action="store_true", help="drop the videos' sound")
    world = prepare.add_argument_group("physics world (--world)")
    world.add_argument("--frames", type=int, default=16, help="frames a clip")
    world.add_argument("--height", type=int, default=32)
    world.add_argument("--width", type=int, default=32)
    world.add_argument(
        "--world-fps", type=float, nargs=2, default=(4.0, 8.0), metavar=("MIN", "MAX"), help="frame rates"
    )
    world.add_argument("--seed", type=int, default=0, help="world seed (held-out evaluation uses eval.seed)")
    filters = prepare.add_argument_group(
        "filters", "every clip's motion, brightness, letterbox and hash are kept"
    )
    filters.add_argument(
        "--scene-cuts", action=argparse.BooleanOptionalAction, default=True, help="split videos at cuts"
    )
    filters.add_argument("--scene-threshold", type=float, default=27.0, help="cut detector threshold")
    filters.add_argument(
        "--letterbox-crop", action=argparse.BooleanOptionalAction, default=True, help="crop black bars"
    )
    sharding = prepare.add_argument_group(
        "sharding (one of N workers writing one dataset)",
        "Each worker takes the sources of its shard and writes them to OUTPUT/shard-I-of-N/; a SLURM "
        "array task, Kubernetes Indexed Job pod or TPU worker on GKE (TPU_WORKER_ID) finds its shard "
        "without --shard.",
    )
    sharding.add_argument("--shard", type=int, default=None, metavar="I", help="this worker's shard")
    sharding.add_argument("--num-shards", type=int, default=None, metavar="N", help="how many shards")

    encode = commands.add_parser(
        "encode",
        help="cache latents: encode a pixel store (or physics-world clips) with a trained autoencoder",
        epilog="Rerunning resumes: clips already in --output are skipped. Clips are spread over this "
        "host's accelerators. Sharded (--shard/--num-shards, or a SLURM array task, Kubernetes Indexed "
        "Job or TPU worker on GKE): worker I of N encodes the clips whose id falls in shard I into "
        "OUTPUT/shard-0000I-of-0000N; the shards together are one dataset.",
    )
    encode.add_argument(
        "--autoencoder", required=True, help="workdir of an autoencoder run, or a diffusers Wan directory"
    )
    encode.add_argument("--step", type=int, default=None, help="its checkpoint (default: latest)")
    encode.add_argument(
        "--output", required=True, help="latent clip store path or URL (sharded: the dataset's root)"
    )
    source = encode.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--input", help="pixel clip store or sharded dataset made by sora-jax prepare (path or URL)"
    )
    source.add_argument("--world", type=int, metavar="N", help="encode N physics-world clips instead")
    world = encode.add_argument_group("physics world (--world)")
    world.add_argument("--frames", type=int, default=17, help="frames a clip")
    world.add_argument("--height", type=int, default=32)
    world.add_argument("--width", type=int, default=32)
    world.add_argument("--fps", type=float, nargs=2, default=(4.0, 8.0), metavar=("MIN", "MAX"))
    world.add_argument("--seed", type=int, default=0, help="world seed")
    world.add_argument("--text-encoder", default=None, help="also store caption embeddings by this encoder")
    world.add_argument("--caption-tokens", type=int, default=64, help="most tokens a caption embedding")
    encode.add_argument(
        "--chunk-frames", type=int, default=None, help="frames an encoder call (bounds memory; default: all)"
    )
    encode.add_argument(
        "--tile", type=int, default=None, help="encode larger frames in tiles of this many pixels a side"
    )
    sharding = encode.add_argument_group("sharding (one of N workers writing one dataset)")
    sharding.add_argument(
        "--shard", type=int, default=None, metavar="I", help="this worker's shard, 0 .. N-1"
    )
    sharding.add_argument(
        "--num-shards",
        type=int,
        default=None,
        metavar="N",
        help="how many shards the dataset has (without these flags: the SLURM array task's, Indexed Job "
        "pod's or TPU worker's environment says; an Indexed Job gives only the shard)",
    )

    export = commands.add_parser(
        "export", help="write a fine-tuned Wan run as a diffusers directory (LoRA merged)"
    )
    export.add_argument("--workdir", required=True, help="the Wan run")
    export.add_argument("--out", required=True, help="the diffusers directory to write")
    export.add_argument("--step", type=int, default=None, help="checkpoint (default: the newest readable)")
    export.add_argument("--dtype", default="float32", help="float32 | bfloat16")

    recaption = commands.add_parser(
        "recaption",
        help="replace stored clips' captions with a captioning model's (CSV or JSONL)",
        epilog="CSV columns id,caption (a clip each) or Open-Sora's path,text (every clip of a source); "
        'JSONL lines {"id": ..., "caption": ...}. Rows naming no stored clip are counted, not fatal.',
    )
    recaption.add_argument("--store", required=True, help="clip store or sharded dataset (path or URL)")
    recaption.add_argument("--captions", required=True, help="FILE.csv or FILE.jsonl")
    recaption.add_argument(
        "--text-encoder", default=None, help="a store with caption embeddings: the encoder that made them"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    rest, overrides = _split_overrides(argv)
    args = _parser().parse_args(rest)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every file it writes.
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "no TPU found" notes.
    try:
        if args.command == "train":
            return _train(args, overrides)
        if args.command == "data-stats":
            return _data_stats(args, overrides)
        if args.command == "aot":
            return _aot(args, overrides)
        if overrides:
            raise ConfigError(f"{args.command} takes no --config overrides: {overrides}")
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "encode":
            return _encode(args)
        if args.command == "export":
            return _export(args)
        if args.command == "recaption":
            return _recaption(args)
        return _prepare(args) if args.command == "prepare" else _sample(args)
    except ConfigError as error:
        print(f"sora-jax {args.command}: {error}", file=sys.stderr)
        return 2
    except PermissionError as error:  # A read-only workdir, output or input: the path says which.
        print(f"sora-jax {args.command}: {error.filename}: permission denied", file=sys.stderr)
        return 2
    except OSError as error:
        if error.errno not in _USER_ERRNOS:
            raise
        print(f"sora-jax {args.command}: {error.filename}: {error.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # train saves on its own first Ctrl-C; elsewhere there is nothing to keep.
        print(f"sora-jax {args.command}: interrupted", file=sys.stderr)
        return 130


# Mistakes in the paths a user gave (a read-only disk, a full one, a file where a folder belongs):
# one line. Any other OSError is a bug or an outage and keeps its traceback.
_USER_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST}


def _train(args: argparse.Namespace, overrides: list[str]) -> int:
    from sora_jax.config import load_config
    from sora_jax.parallel import distributed
    from sora_jax.train.trainer import TrainingInterrupted, train

    config = load_config(args.config, overrides)  # Validated here, before anything compiles.
    distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    try:
        train(config, args.workdir)
    except TrainingInterrupted as interrupted:  # Ctrl-C, once the state was saved.
        print(f"sora-jax train: {interrupted}", file=sys.stderr)
        return 130
    except BaseException as error:  # noqa: BLE001 - any failure must stop the other processes too.
        distributed.exit_on_failure(error)
        raise
    return 0


def _aot(args: argparse.Namespace, overrides: list[str]) -> int:
    import json
    import os

    # libtpu describes the slice; this machine's own TPU, if any, must not be claimed for it.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from sora_jax.config import load_config
    from sora_jax.train.aot import aot_report, not_fitting_message

    config = load_config(args.config, overrides)
    try:
        report = aot_report(config, args.topology, args.num_slices, estimate=not args.no_estimate)
    except ValueError as error:  # A malformed accelerator type.
        raise ConfigError(str(error)) from None
    print(report.summary())
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_json(), indent=1))
    if not report.fits:
        print(f"sora-jax aot: {not_fitting_message(report, config)}", file=sys.stderr)
        return 1
    return 0


def _data_stats(args: argparse.Namespace, overrides: list[str]) -> int:
    import json

    from sora_jax.config import load_config
    from sora_jax.data.stats import pipeline_stats, score_table, store_score_stats

    config = load_config(args.config, overrides)
    try:
        scores = store_score_stats(config)  # First: it says why a selection may leave no clip.
        if scores is not None:
            print("\n".join(score_table(scores)))
        stats = pipeline_stats(config, args.batches)
    except ValueError as error:  # A data source that cannot feed the run (e.g. a mismatched store).
        raise ConfigError(str(error)) from None
    if scores is not None:
        stats["clip_scores"] = scores
    print(json.dumps(stats))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import json

    from sora_jax.eval.evaluate import Evaluator

    evaluator = Evaluator(args.workdir, world=args.world)
    evaluator.run.step(args.step)  # Raises ConfigError without a checkpoint (of that step).
    if args.follow:
        results = evaluator.follow(args.poll, args.timeout)
    elif args.all:
        results = [evaluator.evaluate(s) for s in evaluator.steps() if not evaluator.evaluated(s)]
        if not results:
            print(
                f"sora-jax evaluate: nothing new to evaluate: every checkpoint of {args.workdir} "
                f"(steps {', '.join(map(str, evaluator.steps()))}) has its results in {evaluator.out}",
                file=sys.stderr,
            )
    else:
        results = [evaluator.evaluate(args.step)]  # By default the newest checkpoint that reads.
    evaluator.close()
    for result in results:
        print(json.dumps(result))
    return 0


def _sample(args: argparse.Namespace) -> int:
    from sora_jax.data.video_io import write_sample
    from sora_jax.eval.requests import validate_sample
    from sora_jax.kinds.base import Sample, SampleRequest
    from sora_jax.train.trained_run import TrainedRun
    from sora_jax.wan.sample_command import is_pipeline_directory

    request = SampleRequest(
        prompt=args.prompt,
        seed=args.seed,
        step=args.step,
        frames=args.frames,
        height=args.height,
        width=args.width,
        steps=args.steps,
        guidance=args.guidance,
        sampler=args.sampler,
        cond_guidance=args.cond_guidance,
        guidance_interval=tuple(args.guidance_interval) if args.guidance_interval else None,
        image=args.image,
        video=args.video,
        extend=args.extend,
        interpolate=tuple(args.interpolate) if args.interpolate else None,
        connect=tuple(args.connect) if args.connect else None,
        edit=args.edit,
        given_frames=args.given_frames,
        strength=args.strength,
        add_sound=args.add_sound,
        audio=args.audio,
        fps=args.fps,
    )
    if is_pipeline_directory(args.workdir):  # A diffusers Wan directory, not a training run.
        from sora_jax.wan.sample_command import pipeline_request, sample_pipeline

        request = pipeline_request(request)  # Refuses the flags it cannot use; Wan's defaults.
        validate_sample(request, args.out, args.fps)
        frames = sample_pipeline(args.workdir, request)  # Checks the size before loading weights.
    else:
        validate_sample(request, args.out, args.fps)  # Before the run is opened; the run checks the rest.
        with TrainedRun(args.workdir) as run:  # On the devices here, whatever mesh the run used.
            frames = run.kind.generate(run, request)
    sample = frames if isinstance(frames, Sample) else None
    if sample is not None:
        written = write_sample(args.out, sample.frames, args.fps, sample.sound, sample.sample_rate)
        frames = sample.frames
    else:
        written = write_sample(args.out, frames, args.fps)
    print(f"wrote {', '.join(written)} ({'x'.join(map(str, frames.shape[:3]))})")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    import math

    from sora_jax.data.prepare import prepare
    from sora_jax.data.shards import shard_from_environment

    # Checked here, before anything is read or written, and named by flag.
    if not (args.max_seconds > 0 and math.isfinite(args.max_seconds)):
        raise ConfigError(f"--max-seconds must be a positive number of seconds, got {args.max_seconds:g}")
    if not (args.fps >= 0 and math.isfinite(args.fps)):
        raise ConfigError(f"--fps must be positive, or 0 to keep each video's own rate; got {args.fps:g}")
    for flag, value, least in (
        ("--max-area", args.max_area, 64),  # One 8x8 frame.
        ("--min-side", args.min_side, 1),
        ("--workers", args.workers, 1),
        ("--caption-tokens", args.caption_tokens, 1),
    ):
        if value < least:
            raise ConfigError(f"{flag} must be at least {least}, got {value}")
    if not 1000 <= args.audio_rate <= 192_000:
        raise ConfigError(f"--audio-rate must be from 1000 to 192000 Hz, got {args.audio_rate}")
    if args.audio_channels not in (1, 2):
        raise ConfigError(f"--audio-channels must be 1 (mono) or 2 (stereo), got {args.audio_channels}")
    if not (args.scene_threshold > 0 and math.isfinite(args.scene_threshold)):
        raise ConfigError(f"--scene-threshold must be positive (27 is usual), got {args.scene_threshold:g}")
    if args.num_shards is not None and args.num_shards < 1:
        raise ConfigError(f"--num-shards must be at least 1, got {args.num_shards}")
    too_high = args.num_shards is not None and args.shard is not None and args.shard >= args.num_shards
    if args.shard is not None and (args.shard < 0 or too_high):
        raise ConfigError(f"--shard must be from 0 to --num-shards - 1, got {args.shard}")
    shard = shard_from_environment(args.shard, args.num_shards)
    if args.world is not None:
        if shard is not None:
            raise ConfigError(
                "--world renders its clips on one host into one store: leave out --shard and --num-shards "
                "(and run it outside an array job)"
            )
        return _prepare_world(args)
    report = prepare(
        args.input,
        args.output,
        max_seconds=args.max_seconds,
        fps=args.fps or None,
        max_area=args.max_area,
        min_side=args.min_side,
        workers=args.workers,
        caption_default=args.caption_default,
        text_encoder=args.text_encoder,
        caption_tokens=args.caption_tokens,
        audio_rate=None if args.no_audio else args.audio_rate,
        audio_channels=args.audio_channels,
        shard=shard,
        scene_threshold=args.scene_threshold if args.scene_cuts else None,
        letterbox_crop=args.letterbox_crop,
    )
    if report.shard:
        print("shard {index} of {count}: took {sources} of {of} sources".format(**report.shard))
    changed = f"; captions changed: {report.caption_changes}" if report.caption_changes else ""
    heard = ""
    if report.audio:
        counts = {state: report.audio.get(state, 0) for state in ("sound", "silent", "none")}
        heard = "; videos with sound {sound}, silent {silent}, without a track {none}".format(**counts)
    print(
        f"{report.clips_written} clips ({report.frames_written} frames) from "
        f"{report.sources_done} sources; {report.skipped_done} already done; "
        f"skipped {sum(report.failures.values())}: {report.failures}{changed}{heard}"
    )
    print(
        f"{report.scene_cuts} scene cuts, {report.short_scenes} short scenes dropped, "
        f"{report.letterboxed} clips with bars cropped; stored, for data.* keys to select: {report.flagged}"
    )
    print(f"report: {report.output.rstrip('/')}/prepare_report.json")
    return 0


def _recaption(args: argparse.Namespace) -> int:
    from sora_jax.data.recaption import recaption, summary

    print(summary(recaption(args.store, args.captions, args.text_encoder)))
    return 0


def _export(args: argparse.Namespace) -> int:
    from sora_jax.wan.export import export_run

    out = export_run(args.workdir, args.out, args.step, args.dtype)
    print(f"wrote {out} (diffusers format, {args.dtype})")
    return 0


def _prepare_world(args: argparse.Namespace) -> int:
    from sora_jax.data.world_store import write_world_store

    embedder = None
    if args.text_encoder is not None:
        from sora_jax.text.embedder import CaptionEmbedder

        try:
            embedder = CaptionEmbedder(args.text_encoder, args.caption_tokens)
        except (OSError, ValueError) as error:
            raise ConfigError(f"--text-encoder {args.text_encoder!r}: {error}") from None
    try:
        report = write_world_store(
            args.world,
            args.output,
            seed=args.seed,
            shape=(args.frames, args.height, args.width),
            fps=tuple(args.world_fps),
            embedder=embedder,
        )
    except ValueError as error:
        raise ConfigError(str(error)) from None
    print(
        f"{report.clips_written} world clips written into {args.output}; {report.clips_present} already there"
    )
    return 0


def _encode(args: argparse.Namespace) -> int:
    import numpy as np

    from sora_jax.autoencoder.latent_space import load_autoencoder
    from sora_jax.data.encode import encode_into_store, store_clips, world_clips
    from sora_jax.data.shards import (
        claim_dataset,
        dataset_shards,
        open_clips,
        shard_from_environment,
        shard_path,
    )

    # The layout is checked first, by reading only: nothing is loaded or written for a wrong one.
    shard = shard_from_environment(args.shard, args.num_shards)
    output = args.output
    held = dataset_shards(output)
    if shard is None and held is not None:
        raise ConfigError(
            f"--output {output} is a dataset of {held} shards: give --shard I --num-shards {held} "
            "(or run as a SLURM array task, Indexed Job or GKE TPU worker), or encode into a new store"
        )
    if shard is not None:
        if held is not None and held != shard.count:
            raise ConfigError(
                f"--num-shards {shard.count}: --output {output} is a dataset of {held} shards "
                "(every worker must use the same count, or write a new dataset)"
            )
        if _holds_store(output):
            raise ConfigError(
                f"--output {output} is an unsharded latent store: leave out --shard and --num-shards "
                "to resume it, or give a new --output for a sharded dataset"
            )
        output = shard_path(output, shard)
    owns = shard.owns if shard is not None else None
    source = None
    if args.input:
        try:
            source = open_clips(args.input)  # A plain store or a sharded dataset's union.
        except FileNotFoundError as error:
            raise ConfigError(f"--input: {error}") from None
        if source.dtype != np.uint8 or source.channels != 3:
            raise ConfigError(
                f"--input {args.input} holds {source.dtype} clips of {source.channels} channels, not the "
                "RGB pixels of sora-jax prepare to encode"
            )

    autoencoder = load_autoencoder(args.autoencoder, args.step)
    autoencoder.chunk_frames, autoencoder.tile = args.chunk_frames, args.tile
    if args.tile is not None:
        try:
            autoencoder.tiling()
        except ValueError as error:
            raise ConfigError(f"--tile: {error}") from None
    caption_dim, caption_encoder, sound = 0, None, {}
    if source is not None:
        clips = store_clips(source, owns)
        caption_dim, caption_encoder = source.caption_dim, source.caption_encoder or None
        if source.audio_sample_rate:  # The latent store keeps the clips' sound as it is.
            sound = {"audio_sample_rate": source.audio_sample_rate, "audio_channels": source.audio_channels}
    else:
        embedder = None
        if args.text_encoder:
            from sora_jax.text.embedder import CaptionEmbedder

            embedder = CaptionEmbedder(args.text_encoder, args.caption_tokens)
            caption_dim, caption_encoder = embedder.dim, embedder.description
        shape = (args.frames, args.height, args.width)
        clips = world_clips(args.world, args.seed, shape, tuple(args.fps), embedder, owns)
    if shard is not None:
        claim_dataset(args.output, shard.count)
    try:
        report = encode_into_store(
            autoencoder,
            clips,
            output,
            caption_dim=caption_dim,
            caption_encoder=caption_encoder,
            empty_ok=shard is not None,
            **sound,
        )
    except ValueError as error:
        raise ConfigError(str(error)) from None
    print(
        f"{report.clips_written} clips encoded into {output}; {report.clips_present} already there; "
        f"skipped {sum(report.skipped.values())}: {report.skipped}"
    )
    return 0


def _holds_store(path: str) -> bool:
    """Whether ``path`` is a clip store (an unsharded one, since a dataset's root is not)."""
    from sora_jax.data.clip_store import ClipStore

    try:
        ClipStore.open(path)
    except FileNotFoundError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
