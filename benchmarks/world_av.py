"""Sound and picture of world_av, per task, beside the world's own sound, silence, noise and the sound late.

    python -m benchmarks.world_av [--workdir runs/world_av] [--config experiments/world_av.py]
        [--compare-steps 400] [--no-write]

Trains the experiment with ``sora-jax train`` unless the workdir already holds its final checkpoint
(an interrupted run resumes), then scores its last checkpoint on ``eval.world_clips`` held-out
captions (``WorldEvaluation``): per task, the picture's world scores and the sound's
(:mod:`sora_jax.eval.sound_score`: onsets counted against the scene's impacts, and timed against
the impacts the video itself shows), with ``video_to_audio`` (the held-out clip's own video given,
its sound made) beside. References, on the same clips: the world's own sound, silence, white noise,
another scene's sound, the true sound 0.25 s late, a knock on every frame
(``sound_reference_scores``). A frame strip of two samples with their spectrograms and onsets goes
to docs/images/world_av_samples.png (with ``--no-write``, into the workdir).

With ``--compare-steps N`` it also trains the experiment for N steps once per audio representation
(log-mel and raw waveform tokens, ``audio.representation``), side by side in this run, and scores
each one's sound: what the choice of representation rests on, beside the codecs' round trip
(``benchmarks.audio_representation``). Writes docs/BENCHMARKS.md unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from ml_collections import ConfigDict
from PIL import Image, ImageDraw

from benchmarks.report import machine_description, replace_section
from sora_jax.config import load_config
from sora_jax.eval.sound_score import SOUND_SCORES, detect_onsets, seen_impacts
from sora_jax.eval.world_eval import WorldEvaluation
from sora_jax.eval.world_score import SCORES
from sora_jax.train.trained_run import TrainedRun, local_config

COMPARE_HEAD = (
    "| representation | text_to_video: sound | video_to_audio: sound | video_to_audio: count "
    "| video_to_audio: sync | audio loss (last 50 steps) | step (ms) |"
)
IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"
REFERENCE_LABELS = {
    "real": "the world's own sound",
    "room_tone": "own sound over room tone",
    "other_scene": "another scene's sound",
    "silence": "silence",
    "noise": "white noise",
    "shifted": "own sound 0.25 s late",
    "every_frame": "a knock on every frame",
}


def train(config_name: str, workdir: Path, overrides: tuple[str, ...] = ()) -> None:
    """``sora-jax train`` of the experiment into ``workdir`` (with ``key=value`` ``overrides``) unless
    its final checkpoint is there."""
    final = load_config(config_name, overrides).train.steps
    if not (workdir / "checkpoints" / str(final)).is_dir():
        command = [sys.executable, "-m", "sora_jax.cli", "train", "--config", config_name]
        flags = [f"--config.{override}" for override in overrides]
        subprocess.run([*command, "--workdir", str(workdir), *flags], check=True)


def score(
    workdir: Path, tasks: tuple[str, ...] = WorldEvaluation.TASKS
) -> tuple[dict, WorldEvaluation, dict]:
    """World and sound scores of the run's last checkpoint (its step under ``"step"``), the
    evaluation, and its parameters."""
    config = local_config(workdir)
    with TrainedRun(workdir) as run:
        step = run.step(None)
        params, graphdef = run.params(step), run.graphdef
    evaluation = WorldEvaluation(graphdef, config, tasks)
    return evaluation.scores(params) | {"step": step}, evaluation, params


def train_seconds(workdir: Path, config: ConfigDict) -> tuple[float, float]:
    """Logged seconds of training in all, and the median step time, from the run's metrics."""
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    logged = [line["step_seconds"] for line in lines if "step_seconds" in line]
    return sum(logged) * config.train.log_every, float(np.median(logged))


def last_metric(workdir: Path, name: str) -> float:
    """Mean of ``name`` over the run's last 50 logged steps."""
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    values = [line[name] for line in lines if name in line][-50:]
    return float(np.mean(values)) if values else float("nan")


def spectrogram(sound: np.ndarray, sample_rate: int, height: int) -> np.ndarray:
    """uint8 ``[height, frames]`` log-magnitude spectrogram (0 .. 4 kHz, low at the bottom) of a mono
    mix, 10 ms hops, 40 dB of range."""
    mono = np.asarray(sound, np.float64).mean(axis=1)
    hop, window = sample_rate // 100, sample_rate // 25
    padded = np.pad(mono, (window // 2, window))
    starts = np.arange(0, len(mono), hop)
    frames = np.stack([padded[s : s + window] * np.hanning(window) for s in starts])
    magnitude = np.abs(np.fft.rfft(frames, axis=1))[:, : window * 4000 // sample_rate]
    level = 20 * np.log10(magnitude + 1e-6)
    level = np.clip((level - (level.max() - 40)) / 40, 0, 1)
    image = (255 * level.T[::-1]).astype(np.uint8)
    return np.asarray(Image.fromarray(image).resize((image.shape[1], height)))


def sample_strip(evaluation: WorldEvaluation, params, count: int, path: Path) -> list[str]:
    """A PNG of ``count`` text-to-audio-video samples of held-out captions: each one's frames in a
    row, its spectrogram under them, red ticks at the onsets heard, green at the impacts the frames
    show. Returns the captions, one per sample."""
    config = evaluation.config
    fps, rate = config.train.sample_fps, config.audio.sample_rate
    scale, rows, captions = 4, [], []
    for index, clip in enumerate(evaluation.clips[:count]):
        video, sound = evaluation.generate(params, clip.caption, index)
        frames = np.concatenate(list(video), axis=1)
        strip = np.asarray(Image.fromarray(frames).resize((frames.shape[1] * scale, frames.shape[0] * scale)))
        width = strip.shape[1]
        spec = np.asarray(Image.fromarray(spectrogram(sound, rate, 96)).resize((width, 96)))
        canvas = Image.fromarray(np.concatenate([strip, np.repeat(spec[..., None], 3, axis=2)]))
        draw, seconds = ImageDraw.Draw(canvas), len(video) / fps
        for onset in detect_onsets(sound, rate):
            x = int(onset / seconds * width)
            draw.line([(x, strip.shape[0]), (x, strip.shape[0] + 20)], fill=(255, 40, 40), width=2)
        for first, _ in seen_impacts(video, clip, fps):
            x = int(first / seconds * width)
            draw.line([(x, canvas.height - 20), (x, canvas.height)], fill=(40, 220, 40), width=2)
        rows.append(np.asarray(canvas))
        captions.append(clip.caption)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows)).save(path)
    return captions


def _cell(value: float) -> str:
    return "–" if value != value else f"{value:.2f}"


def compare_representations(config_name: str, workdir: Path, steps: int) -> list[dict]:
    """Each audio representation trained ``steps`` steps from the experiment (side by side in this
    run), with its sound scores, audio loss and step time."""
    rows = []
    for representation in ("mel", "waveform"):
        run = workdir.parent / f"{workdir.name}_{representation}"
        overrides = (f"train.steps={steps}", f"audio.representation={representation}")
        train(config_name, run, overrides)
        scores, _, _ = score(run, ("text_to_video",))
        config = local_config(run)
        _, step = train_seconds(run, config)
        loss = last_metric(run, "audio_loss")
        rows.append({"representation": representation, "scores": scores, "step": step, "audio_loss": loss})
    return rows


def report(
    config: ConfigDict,
    config_name: str,
    scores: dict,
    evaluation: WorldEvaluation,
    references: dict,
    sound_references: dict,
    seconds: tuple[float, float],
    captions: list[str],
    compared: list[dict],
) -> str:
    """The BENCHMARKS.md section."""
    m, d, t, a, c = config.model, config.data, config.train, config.audio, config.conditioning
    tasks = evaluation.tasks
    pictures = [task for task in tasks if task != evaluation.SOUND_TASK]
    sound_head = [f"world_av: {task}" for task in tasks] + [REFERENCE_LABELS[r] for r in sound_references]
    sound_table = ["| score | " + " | ".join(sound_head) + " |", "|---|" + "---:|" * len(sound_head)]
    for name in SOUND_SCORES:
        cells = [_cell(scores.get(f"world/{task}/{name}", float("nan"))) for task in tasks]
        cells += [_cell(sound_references[ref][name]) for ref in sound_references]
        sound_table.append(f"| {name} | " + " | ".join(cells) + " |")
    picture_head = [f"world_av: {task}" for task in pictures] + ["world's own", "other scene"]
    picture_table = ["| score | " + " | ".join(picture_head) + " |", "|---|" + "---:|" * len(picture_head)]
    for name in (*SCORES, "overall"):
        cells = [_cell(scores[f"world/{task}/{name}"]) for task in pictures]
        cells += [_cell(references["real"][name]), _cell(references["other_scene"][name])]
        picture_table.append(f"| {name} | " + " | ".join(cells) + " |")
    mix = ", ".join(f"{task} {c[task]:g}" for task in c if isinstance(c[task], float) and c[task] > 0
                    and task != "random_rate")  # fmt: skip
    compare = ""
    if compared:
        rows = "\n".join(
            f"| {row['representation']} | {row['scores']['world/text_to_video/sound']:.2f} | "
            f"{row['scores']['world/video_to_audio/sound']:.2f} | "
            f"{row['scores']['world/video_to_audio/sound_count']:.2f} | "
            f"{_cell(row['scores']['world/video_to_audio/sound_sync'])} | {row['audio_loss']:.4f} | "
            f"{row['step'] * 1000:.0f} |"
            for row in compared
        )
        compare = f"""
Audio representation, each trained {compared[0]["steps"]} steps from the same config in this run
(`--compare-steps`), sound scores on the same held-out clips:

{COMPARE_HEAD}
|---|---:|---:|---:|---:|---:|---:|
{rows}
"""
    total, step = seconds
    token_samples = a.hop * a.frames_per_token if a.representation == "mel" else a.samples_per_token
    listed = "\n".join(f"{i + 1}. {caption}" for i, caption in enumerate(captions))
    return f"""{machine_description()}

`python -m benchmarks.world_av` trains `{config_name}`: a pixel DiT (dim {m.dim}, depth {m.depth},
patch {tuple(m.patch_size)}) whose clips carry their sound as {a.representation} tokens
({a.sample_rate} Hz, {a.channels} channel(s), {token_samples} samples a token) in the
same segment as their frames; batches of {d.batch_size} rows of {d.seq_len} tokens,
conditioning tasks weighted {mix}; scored at step {scores["step"]}. Training took {total / 60:.0f}
min of logged step time (median step {step * 1000:.0f} ms). For {len(evaluation.clips)} held-out
captions (seed `eval.seed`) it makes a {t.sample_frames}x{t.sample_height}x{t.sample_width} video at
{t.sample_fps:g} fps with its sound per task,
{config.diffusion.sample_steps} euler steps, guidance {config.diffusion.guidance:g}, EMA weights.

Sound scores (`sora_jax/eval/sound_score.py`): `sound_count` compares the onsets heard with the
impacts the scene has; `sound_sync` is the share of impacts the video itself shows with an onset
within one frame, above chance; `sound` is their product. `video_to_audio` is given the held-out
clip's own video and makes its sound. Beside them, the references on the same clips:

{chr(10).join(sound_table)}

The picture, scored as in the world simulator section:

{chr(10).join(picture_table)}
{compare}
Samples (text to audio and video), frames above their spectrogram (0-4 kHz), red ticks where
onsets are heard, green where the frames show an impact:
[docs/images/world_av_samples.png](images/world_av_samples.png)

{listed}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/world_av.py")
    parser.add_argument("--workdir", default="runs/world_av")
    parser.add_argument(
        "--compare-steps", type=int, default=0, help="train each audio representation this long"
    )
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    workdir = Path(args.workdir)
    compared = compare_representations(args.config, workdir, args.compare_steps) if args.compare_steps else []
    for row in compared:
        row["steps"] = args.compare_steps
    train(args.config, workdir)
    scores, evaluation, params = score(workdir)
    config = evaluation.config
    strip = workdir / "world_av_samples.png" if args.no_write else IMAGES / "world_av_samples.png"
    captions = sample_strip(evaluation, params, 2, strip)
    print(f"frame strip: {strip}")
    body = report(
        config,
        args.config,
        scores,
        evaluation,
        evaluation.references(),
        evaluation.sound_references(),
        train_seconds(workdir, config),
        captions,
        compared,
    )
    print(body)
    if not args.no_write:
        replace_section("world_av", "Sound and picture (world_av)", body)


if __name__ == "__main__":
    main()
