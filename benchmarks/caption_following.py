"""Caption following: what each part of the recipe buys, as an ablation of one experiment.

    python -m benchmarks.caption_following [--config experiments/world_tiny.py] [--variants a,b]
        [--root runs/caption_following] [--section NAME] [--guidance G,...] [--no-write]

Trains the experiment as it is (``recipe``) and once per variant that changes a part of it (and
``before``, the recipe this project had before), each with ``sora-jax train`` in its own workdir
under ``--root`` (a finished run is reused, an interrupted one resumes), one after another on this
machine. Then, for every run, from its final EMA weights:

* the caption probes of :mod:`sora_jax.eval.caption_probe`: how many of the nine one-colour prompts
  make the asked colour the video's dominant object colour, how many two-colour prompts show both
  colours as objects, and how speckled the backdrop is (the world's own clips: below about 5);
* caption sensitivity: the mean square change of the clean prediction of held-out clips when only
  their colour words change, beside the change when the caption is dropped;
* the clean-prediction error of those clips from one noisy look near t = 0 and at t = 0.5, beside
  the noisy clip's own (:func:`sora_jax.eval.caption_probe.denoising_error`);
* the world scores (:mod:`sora_jax.eval.world_score`) per task the run trains, on
  ``eval.world_clips`` held-out captions;
* with ``--guidance``, the recipe's colour probes and text-to-video world scores again at each of
  those caption guidance scales (sampling only: the same weights);
* the mean time of the run's train step over the same real packed batches, every run's measured in
  this one process after the others (:func:`benchmarks.train_step.measure_step`), so the times
  compare side by side whatever else shared the machine while the runs trained.

Writes the table and a frame strip per run (``docs/images/<section>_<variant>.png``: the probe's
prompts, one video a row, eight of its frames) into docs/BENCHMARKS.md, as the section
``caption_following`` or, with ``--section NAME``, ``caption_following_NAME`` beside it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

from benchmarks.guidance import (
    Setting,
    own_setting,
    parse_setting,
    setting_label,
    setting_words,
    table_order,
    times_cell,
)
from benchmarks.report import REPORT, machine_description, replace_section
from benchmarks.train_step import measure_step
from sora_jax.config import load_config
from sora_jax.data import world
from sora_jax.eval import caption_probe
from sora_jax.eval.generate import sample_generator
from sora_jax.eval.world_eval import WorldEvaluation
from sora_jax.testing import MINILM_INSTALL, minilm_directory
from sora_jax.train.trained_run import TrainedRun

# The recipe this project trained world_tiny with before caption following was measured: a learned
# text encoder with embeddings of std 0.02, captions cut at 24 tokens, cross-attention alone, one
# loss weight per clip, per-frame noise, the plain velocity loss, a timestep shift of
# sqrt(tokens / 256), qk-norm, patches of 2 frames in 4 rows of 512 tokens, four heads of 32
# features, scanned blocks, 1000 steps (about the wall time of the recipe's 1500 on this machine),
# sampled at caption guidance 4.
BEFORE = (
    "model.text_pooled=false",
    "model.text_embed_std=0.02",
    "data.max_caption_tokens=24",
    "data.text_len=96",
    "diffusion.loss_weight=clip",
    "diffusion.noise_correlation=0.0",
    "diffusion.max_x0_weight=0.0",
    "diffusion.shift_base_tokens=256",
    "model.qk_norm=true",
    "model.patch_size=(2,4,4)",
    "data.seq_len=512",
    "data.batch_size=4",
    "model.heads=4",
    "model.scan_layers=true",
    "train.steps=1000",
    "diffusion.guidance=4.0",
)
# The physics-world store of the world_store* variants, written once under --root by
# `sora-jax prepare --world` with the captions' all-MiniLM-L6-v2 states: about a quarter of the
# clips (some 19 a step) that world_tiny's 1500 steps draw.
WORLD_STORE_CLIPS = 8000
# name -> (what the variant changes, its config overrides, where "{root}" is --root and "{minilm}"
# the installed all-MiniLM-L6-v2): one part of the recipe undone, or two (the shared_noise_* pair
# each compare with shared_noise, world_store_minilm with world_store).
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "recipe": ("the experiment as it is", ()),
    "shared_noise": ("noise half shared through time", ("diffusion.noise_correlation=0.5",)),
    "shared_noise_qk_norm": (
        "shared noise and qk-norm in self- and cross-attention",
        ("diffusion.noise_correlation=0.5", "model.qk_norm=true"),
    ),
    "shared_noise_shift_256": (
        "shared noise and the timestep shift from 256 tokens, not 32",
        ("diffusion.noise_correlation=0.5", "diffusion.shift_base_tokens=256"),
    ),
    "two_frame_patches": (
        "patches of 2 frames (rows of 512 tokens hold the same clips)",
        ("model.patch_size=(2,4,4)", "data.seq_len=512", "data.batch_size=4"),
    ),
    "joint_attention": (
        "MMDiT: the caption's tokens a second stream, in one attention with their clip's tokens "
        "(`model.text_attention=joint`), not cross-attention",
        ("model.text_attention=joint",),
    ),
    "rope_theta_100": (
        "RoPE base period 100, not 10,000: more of each head's rotations tell apart the few "
        "patches of a small clip",
        ("model.rope_theta=100.0",),
    ),
    "world_store": (
        f"the world from a store of {WORLD_STORE_CLIPS:,} clips of 16x40x40 (`sora-jax prepare --world`), "
        "cut in time and scaled down as a prepared store's, not rendered at each drawn shape",
        ("data.store={root}/stores/world",),
    ),
    "world_store_minilm": (
        "that store, with frozen all-MiniLM-L6-v2 caption states (`model.text_encoder`) for the "
        "learned encoder's word embeddings",
        ("data.store={root}/stores/world", "model.text_encoder={minilm}"),
    ),
    "clips_9_16": (
        "videos of 9 to 16 frames (3 or 4 patches in time), not 2 to 16: 53% of tokens in clips "
        "of the probes' 4 patches in time, not 29% (`sora-jax data-stats`: `full_length_tokens`)",
        ("data.frames=(9,16)",),
    ),
    "clips_13_16": (
        "videos of 13 to 16 frames (4 patches in time, as the probes'), not 2 to 16: 88% of tokens "
        "in such clips",
        ("data.frames=(13,16)",),
    ),
    "no_pooled_caption": ("cross-attention alone: no pooled caption in adaLN", ("model.text_pooled=false",)),
    "embed_std_0.02": ("word embeddings initialised at std 0.02", ("model.text_embed_std=0.02",)),
    "captions_24": ("captions cut at 24 tokens", ("data.max_caption_tokens=24", "data.text_len=96")),
    "plain_velocity_loss": ("no cap on the clean-data weight", ("diffusion.max_x0_weight=0.0",)),
    "clip_weighted": ("every clip weighs the same in the loss", ("diffusion.loss_weight=clip",)),
    "uniform_t_0.2": (
        "a fifth of clips trained at t uniform in [0, 1], unshifted",
        ("diffusion.uniform_t=0.2",),
    ),
    "preconditioned": (
        "a correction to the linear guess from the noisy clip (EDM's scalings), not the clean clip",
        ("diffusion.prediction=preconditioned",),
    ),
    "lr_2e-3": ("peak learning rate 2e-3, not 1e-3", ("optim.lr=0.002",)),
    "width_192": (
        "width 192 (3 heads of 64), 950 steps: the recipe's wall time",
        ("model.dim=192", "model.heads=3", "train.steps=950"),
    ),
    "steps_3000": ("twice the steps: 3000, about twenty minutes", ("train.steps=3000",)),
    "before": (
        "the recipe before (`BEFORE`: qk-norm, shift from 256, 2-frame patches, 4 heads, ..., 1000 steps, "
        "guidance 4)",
        BEFORE,
    ),
}
TIMED_STEPS = 10  # Train steps timed per run, after one warm-up step.
DENOISING_T = (0.05, 0.5)  # Timesteps of the one-look clean-prediction error.


def resolved(overrides: tuple[str, ...], root: Path) -> tuple[str, ...]:
    """A variant's overrides with ``{root}`` and ``{minilm}`` filled in; the world store they name is
    written first (or finished: a rerun resumes it)."""
    if not any("{root}/stores/world" in item for item in overrides):
        return overrides
    minilm = minilm_directory()
    if minilm is None:
        raise SystemExit(f"the world_store variants need all-MiniLM-L6-v2: {MINILM_INSTALL}")
    store = root / "stores" / "world"  # Beside the runs' workdirs, never one of them.
    command = [sys.executable, "-m", "sora_jax.cli", "prepare", "--world", str(WORLD_STORE_CLIPS)]
    command += ["--output", str(store), "--frames", "16", "--height", "40", "--width", "40"]
    subprocess.run(command + ["--text-encoder", str(minilm)], check=True)
    return tuple(item.format(root=root, minilm=minilm) for item in overrides)


def train(spec: str, overrides: tuple[str, ...], workdir: Path) -> None:
    """``sora-jax train`` unless ``workdir`` already holds the run's final checkpoint."""
    final = load_config(spec, list(overrides)).train.steps
    if (workdir / "checkpoints" / str(final)).is_dir():
        return
    command = [sys.executable, "-m", "sora_jax.cli", "train", "--config", spec, "--workdir", str(workdir)]
    subprocess.run(command + [f"--config.{item}" for item in overrides], check=True)


def trained_tasks(config) -> tuple[str, ...]:
    """The world-evaluation tasks the run trains (text-to-video always)."""
    weights = config.conditioning
    return tuple(task for task in WorldEvaluation.TASKS if task == "text_to_video" or weights[task] > 0)


def probe_colours(graphdef, params, config, strip: Path) -> dict:
    """The colour probes of the run's samples (:func:`caption_probe.colour_probe`) at ``config``'s
    sampling settings; writes their frame strip to ``strip``."""
    generate = sample_generator(graphdef, config)
    probe = caption_probe.colour_probe(lambda prompt, seed: generate(params, prompt, seed))
    videos = probe.pop("videos")
    image = Image.fromarray(caption_probe.frame_strip(list(videos.values())))
    # Three screen pixels a video pixel, unsmoothed: patch edges and speckle stay visible.
    image.resize((image.width * 3, image.height * 3), Image.NEAREST).save(strip, optimize=True)
    return probe


def measure(workdir: Path, strip: Path) -> dict:
    """Probes, caption sensitivity, world scores and step time of the run in ``workdir``."""
    with TrainedRun(workdir) as run:
        config, graphdef, params = run.config, run.graphdef, run.params()
    probe = probe_colours(graphdef, params, config, strip)
    t = config.train
    clips = [
        world.make_clip(config.eval.seed, i, frames=t.sample_frames, height=t.sample_height,
                        width=t.sample_width, fps=t.sample_fps)
        for i in range(8)
    ]  # fmt: skip
    sensitivity = caption_probe.caption_sensitivity(graphdef, params, config, clips)
    denoising = caption_probe.denoising_error(graphdef, params, config, clips, DENOISING_T)
    tasks = trained_tasks(config)
    world_scores = WorldEvaluation(graphdef, config, tasks).scores(params)
    return {
        "step_ms": 1000 * measure_step(config, TIMED_STEPS)["step_seconds"],
        **{k: probe[k] for k in ("colour_hits", "pair_hits", "pairs", "speckle", "dominant")},
        **{f"sensitivity/{k}": v for k, v in sensitivity.items()},
        **{f"denoising/{t}/{k}": v for t, errors in denoising.items() for k, v in errors.items()},
        **world_scores,
        "tasks": list(tasks),
    }


def guidance_sweep(workdir: Path, settings: list[Setting], strip_stem: Path) -> dict[Setting, dict]:
    """The colour probes and text-to-video world scores of the run in ``workdir`` sampled at each
    caption guidance setting of ``settings`` (scale and interval), its other sampling settings
    unchanged (the training is the same, so no run is trained again); the strips go to
    ``<strip_stem>_guidance_<setting>.png``."""
    with TrainedRun(workdir) as run:
        config, graphdef, params = run.config, run.graphdef, run.params()
    swept = {}
    for setting in settings:
        scaled = config.copy_and_resolve_references()
        scaled.diffusion.guidance, scaled.diffusion.guidance_interval = setting
        strip = strip_stem.with_name(f"{strip_stem.name}_guidance_{setting_label(setting, '_t')}.png")
        probe = probe_colours(graphdef, params, scaled, strip)
        swept[setting] = {
            **{k: probe[k] for k in ("colour_hits", "pair_hits", "pairs", "speckle")},
            **WorldEvaluation(graphdef, scaled, ("text_to_video",)).scores(params),
            "strip": strip,
        }
    return swept


def guidance_table(recipe: dict, swept: dict[Setting, dict], own: Setting, recipe_strip: str) -> str:
    """The recipe's probes by caption guidance setting: its own setting's row (strip
    ``recipe_strip``, a file name under docs/images) and the swept ones."""
    rows = {own: recipe | {"strip": recipe_strip}} | swept
    lines = [
        "| guidance | at times t | colours asked = dominant | both colours shown | backdrop speckle | "
        "text_to_video: colours / count / overall | frame strip |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    for setting in sorted(rows, key=table_order):
        r = rows[setting]
        name = Path(r["strip"]).name
        world = "world/text_to_video"
        lines.append(
            f"| {setting[0]:g} | {times_cell(setting)} | {r['colour_hits']} of 9 | "
            f"{r['pair_hits']} of {r['pairs']} | "
            f"{r['speckle']:.1f} | {r[f'{world}/colours']:.2f} / {r[f'{world}/count']:.2f} / "
            f"**{r[f'{world}/overall']:.2f}** | [{name}](images/{name}) |"
        )
    return "\n".join(lines)


def report(
    spec: str,
    results: dict[str, dict],
    config,
    section: str = "caption_following",
    swept: dict[Setting, dict] | None = None,
) -> str:
    tasks = results["recipe"]["tasks"]
    noisy = {t: results["recipe"][f"denoising/{t}/noisy"] for t in DENOISING_T}  # The same clips and noise.
    head = (
        "| variant | what it changes | step (ms) | colours asked = dominant | both colours shown | "
        "backdrop speckle | colour-swap change | caption-drop change | "
        + " | ".join(f"clean-prediction error at t = {t:g}" for t in DENOISING_T)
        + " | "
        + " | ".join(f"{task}: colours / count / overall" for task in tasks)
        + " |"
    )
    rows = [head, "|---|---|---:|---:|---:|---:|---:|---:|" + "---:|" * (len(DENOISING_T) + len(tasks))]
    for name, r in results.items():
        world_cells = [
            f"{r[f'world/{task}/colours']:.2f} / {r[f'world/{task}/count']:.2f} / "
            f"**{r[f'world/{task}/overall']:.2f}**"
            for task in tasks
        ]
        rows.append(
            f"| `{name}` | {VARIANTS[name][0]} | {r['step_ms']:.0f} | {r['colour_hits']} of 9 | "
            f"{r['pair_hits']} of {r['pairs']} | {r['speckle']:.1f} | "
            f"{r['sensitivity/colour_swap']:.1e} | {r['sensitivity/caption_drop']:.1e} | "
            + "".join(f"{r[f'denoising/{t}/model']:.4f} | " for t in DENOISING_T)
            + " | ".join(world_cells)
            + " |"
        )
    t, f = config.train, config.diffusion
    own = own_setting(config)
    strips = "\n".join(
        f"- `{name}`: [docs/images/{section}_{name}.png](images/{section}_{name}.png)" for name in results
    )
    command = f"python -m benchmarks.caption_following --config {spec} --variants {','.join(results)}"
    if section != "caption_following":
        command += f" --section {section.removeprefix('caption_following_')}"
    by_guidance = ""
    if swept:
        command += f" --guidance {','.join(setting_label(s) for s in swept)}"
        by_guidance = f"""

The recipe's run sampled at other caption guidance scales (`diffusion.guidance`), some only at
the times t (1 = noise) of an interval (`diffusion.guidance_interval`; at other times the sampler
takes the captioned prediction as it is); the same weights, probes and world scores; the table
above samples at its {setting_words(own)}):

{guidance_table(results["recipe"], swept, own, f"{section}_recipe.png")}"""
    return f"""{machine_description()}

`{command}` trains the experiment ({t.steps} steps)
and variants that each change one or two parts of its recipe
(the runs may share the machine while they train).
The step time is the mean of {TIMED_STEPS} train steps of each run's config on the same kind of real
packed batches, all measured in one process after training.
Samples are {t.sample_frames}x{t.sample_height}x{t.sample_width}, {f.sample_steps} {f.sampler}
steps at {setting_words(own)}, EMA weights, seed 11 for every prompt
(`sora_jax/eval/caption_probe.py`): nine prompts "{caption_probe.COLOUR_PROMPT.format("<colour>")}"
(one per world colour: is the asked colour the video's dominant object colour?) and
{len(caption_probe.COLOUR_PAIRS)} prompts "{caption_probe.PAIR_PROMPT.format("<colour 1>", "<colour 2>")}"
(do both colours show as objects?). Backdrop speckle is the mean difference, in pixel levels,
between a frame and its 3x3 median over the pixels of no object colour (the world's own clips:
median 0.7, at most 5.5 over 40 clips). Caption sensitivity is the mean square change of the
network's clean prediction of 8 held-out clips (t = 0.2, 0.5, 0.8, fixed noise) when only their
colour words change, and when their captions are dropped. The clean-prediction error is the mean
square error (model units, [-1, 1]) of the network's clean prediction of those clips, captioned,
from one noisy look at t (fixed noise); the noisy clip itself, taken as the guess, misses by
{" and ".join(f"{noisy[t]:.4f} at t = {t:g}" for t in DENOISING_T)}: a model above that near
t = 0 drops detail it is shown (`caption_probe.denoising_error`). World scores: `sora_jax/eval/world_score.py`
on {config.eval.world_clips} held-out captions per task, as in the world simulator section.

{chr(10).join(rows)}{by_guidance}

Frame strips (one prompt a row: the nine colours, then the pairs; eight frames each):

{strips}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/world_tiny.py")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, 'recipe' first")
    parser.add_argument("--root", default="runs/caption_following")
    parser.add_argument(
        "--section",
        default="",
        help="write a section of its own, caption_following_<SECTION> (the ablation of one question), "
        "beside the main table",
    )
    parser.add_argument(
        "--guidance",
        default="",
        help="other caption guidance settings to sample the recipe's run at, comma-separated (no "
        "training): a scale (4), or a scale and the interval of times t it acts in (4@0.3-1)",
    )
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    names = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown or names[:1] != ["recipe"]:
        parser.error(f"variants start with recipe and are of {', '.join(VARIANTS)}; got {unknown or names}")
    root = Path(args.root)
    for name in names:
        train(args.config, resolved(VARIANTS[name][1], root), root / name)
    section = "caption_following" + (f"_{args.section}" if args.section else "")
    title = "Caption following (ablation" + (f": {args.section.replace('_', ' ')})" if args.section else ")")
    images = REPORT.parent / "images"
    images.mkdir(exist_ok=True)
    results = {}
    for name in names:
        results[name] = measure(root / name, images / f"{section}_{name}.png")
        print(name, json.dumps(results[name]))
    config = load_config(args.config)
    own = own_setting(config)
    settings = [parse_setting(g) for g in args.guidance.split(",") if g.strip()]
    settings = [s for s in settings if s != own]
    swept = guidance_sweep(root / "recipe", settings, images / f"{section}_recipe") if settings else {}
    body = report(args.config, results, config, section, swept)
    print(body)
    if not args.no_write:
        replace_section(section, title, body)


if __name__ == "__main__":
    main()
