"""World-simulator scores of world_small, per task, beside the world's own videos and chance.

    python -m benchmarks.world_sim [--workdir runs/world_small] [--config experiments/world_small.py]

Trains the experiment with ``sora-jax train`` unless the workdir already holds its final checkpoint
(an interrupted run resumes), then scores its checkpoints with ``sora-jax evaluate --world`` (the
final one, or every one kept with ``--all``): videos generated for ``eval.world_clips`` held-out
captions per task, scored against the scenes the captions describe
(:mod:`sora_jax.eval.world_score`). Beside them, on the same held-out clips, the reference videos of
:func:`sora_jax.eval.world_score.reference_scores`: the world's own (what a perfect simulator
scores), another scene's (chance for a model that makes the world but not the scene asked for),
noise, frozen, shuffled and wrong-colour; and, for each task that gives frames, a generator that
only copies them (``WorldEvaluation.copy_baseline``). The last checkpoint is also scored at other
caption guidance settings (``--guidance``: scales, and intervals of times they act in). Writes
docs/BENCHMARKS.md unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from ml_collections import ConfigDict

from benchmarks.guidance import Setting, own_setting, parse_setting, setting_words, table_order, times_cell
from benchmarks.report import machine_description, replace_section
from sora_jax.config import load_config
from sora_jax.diffusion.conditioning import TASKS as CONDITIONING_TASKS
from sora_jax.eval.world_eval import WorldEvaluation
from sora_jax.eval.world_score import REFERENCES, SCORES
from sora_jax.train.state import model_graphdef
from sora_jax.train.trained_run import TrainedRun, local_config

TASKS = WorldEvaluation.TASKS
# Column headings of the reference videos of world_score.REFERENCES.
LABELS = {"real": "world's own", "other_scene": "other scene", "wrong_colour": "wrong colour"}


def _scored(workdir: Path) -> list[dict]:
    """Eval results of the run that hold world scores, by step."""
    found = (json.loads(p.read_text()) for p in (workdir / "eval").glob("step_*.json"))
    return sorted((r for r in found if "world/overall" in r), key=lambda r: r["step"])


def _train_seconds(workdir: Path, config: ConfigDict) -> tuple[float, float]:
    """The run's training time: the sum of its logged step times (one logged every
    ``train.log_every``), and its median step time times its steps, which a disturbance of the
    machine for part of the run (another job, a paused process) does not move."""
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    seconds = [line["step_seconds"] for line in lines if "step_seconds" in line]
    return sum(seconds) * config.train.log_every, statistics.median(seconds) * config.train.steps


def config_changes(base: ConfigDict, other: ConfigDict) -> str:
    """``key=value`` of every leaf where ``other`` differs from ``base`` (``–`` for none)."""

    def leaves(tree: dict, prefix: str = "") -> dict:
        flat = {}
        for key, value in tree.items():
            if isinstance(value, dict):
                flat |= leaves(value, f"{prefix}{key}.")
            else:
                flat[prefix + key] = value
        return flat

    mine, theirs = leaves(base.to_dict()), leaves(other.to_dict())
    changed = [f"`{k}={theirs[k]}`" for k in sorted(theirs) if mine.get(k) != theirs[k]]
    return ", ".join(changed) or "–"


def compared_runs(config: ConfigDict, workdirs: list[Path]) -> str:
    """A table of other runs' last scored checkpoints beside this one's config: what each changes,
    its training time and its overall score per task (runs are scored first where they are not)."""
    rows = []
    for workdir in workdirs:
        if not _scored(workdir):
            steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
            command = [sys.executable, "-m", "sora_jax.cli", "evaluate", "--workdir", str(workdir)]
            subprocess.run([*command, "--world", "--step", str(steps[-1])], check=True)
        other, last = local_config(workdir), _scored(workdir)[-1]
        cells = " | ".join(f"{last[f'world/{task}/overall']:.2f}" for task in TASKS)
        logged, typical = (seconds / 60 for seconds in _train_seconds(workdir, other))
        rows.append(
            f"| `{workdir.name}` | {config_changes(config, other)} | {last['step']} | {typical:.0f} "
            f"({logged:.0f}) | {cells} | {last['world/overall']:.2f} |"
        )
    head = " | ".join(TASKS)
    return "\n".join(
        [
            f"| run | its config, where it differs from this one's | step | training, min: at the median "
            f"step (logged) | {head} | mean |",
            "|---|---|---:|---:|" + "---:|" * (len(TASKS) + 1),
            *rows,
        ]
    )


def _cell(value: float) -> str:
    return "–" if value != value else f"{value:.2f}"  # NaN: nothing in these scenes to judge.


def guidance_sweep(
    workdir: Path, config: ConfigDict, step: int, settings: list[Setting]
) -> dict[Setting, dict]:
    """World scores (``WorldEvaluation.scores``) of checkpoint ``step`` sampled at each caption
    guidance setting in ``settings`` (scale and interval), the run's other sampling settings
    unchanged."""
    with TrainedRun(workdir) as run:
        params, graphdef, swept = run.params(step), run.graphdef, {}
    for setting in settings:
        scaled = config.copy_and_resolve_references()
        with scaled.unlocked():
            scaled.diffusion.guidance, scaled.diffusion.guidance_interval = setting
        swept[setting] = WorldEvaluation(graphdef, scaled).scores(params)
    return swept


def report(
    config: ConfigDict,
    config_name: str,
    results: list[dict],
    references: dict,
    given: dict[str, int],
    copies: dict[str, dict],
    swept: dict[Setting, dict],
    train_seconds: tuple[float, float],
    compared: str = "",
) -> str:
    """The BENCHMARKS.md section: the last result's overall score per task beside chance, a copy of
    what the task gives and the world's own clips; every score beside every reference; the overall
    score per task of every scored checkpoint and at each caption guidance scale swept."""
    last, name = results[-1], Path(config_name.split(":")[0]).stem
    m, d, t, c, f = config.model, config.data, config.train, config.conditioning, config.diffusion
    tasks_table = [
        f"| task | frames given | {name} | chance: another scene | copy: the given frames, the last held "
        "| the world's own clips |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    chance, real = references["other_scene"]["overall"], references["real"]["overall"]
    for task in TASKS:
        copy = _cell(copies[task]["overall"]) if task in copies else "–"
        generated = last[f"world/{task}/overall"]
        cells = f"**{generated:.2f}** | {chance:.2f} | {copy} | {real:.2f}"
        tasks_table.append(f"| {task} | {given[task]} | {cells} |")
    head = [f"{name}: {task}" for task in TASKS] + [LABELS.get(ref, ref) for ref in REFERENCES]
    scores_table = ["| score | " + " | ".join(head) + " |", "|---|" + "---:|" * len(head)]
    for score in (*SCORES, "overall"):
        cells = [_cell(last[f"world/{task}/{score}"]) for task in TASKS]
        cells += [_cell(references[ref][score]) for ref in REFERENCES]
        scores_table.append(f"| {score} | " + " | ".join(cells) + " |")

    def overall_row(label: str, result: dict) -> str:
        cells = [f"{result[f'world/{task}/overall']:.2f}" for task in TASKS]
        return f"| {label} | " + " | ".join(cells) + f" | {result['world/overall']:.2f} |"

    task_head = f"{' | '.join(TASKS)} | mean |"
    numbers = "---:|" * (len(TASKS) + 1)
    curve = "\n".join(overall_row(f"{r['step']} | {r['val_loss']:.4f}", r) for r in results)
    sweep = ""
    if swept:
        by_setting = swept | {own_setting(config): last}
        rows = "\n".join(
            overall_row(f"{setting[0]:g} | {times_cell(setting)}", by_setting[setting])
            for setting in sorted(by_setting, key=table_order)
        )
        sweep = f"""Overall score per task at step {last["step"]} by caption guidance scale
(`diffusion.guidance`), some only at the times t (1 = noise) of an interval
(`diffusion.guidance_interval`); the tables above sample at the run's {setting_words(own_setting(config))}:

| guidance | at times t | {task_head}
|---:|---|{numbers}
{rows}

"""
    mix = ", ".join(f"{task} {c[task]:g}" for task in CONDITIONING_TASKS if c[task])
    if c.frame_level:
        mix += (
            " (image_to_video and last_frame give their one frame inside its temporal patch: "
            "`conditioning.frame_level`)"
        )
    return f"""{machine_description()}

`python -m benchmarks.world_sim` trains `{config_name}`: a pixel DiT (dim {m.dim}, depth {m.depth},
patch {tuple(m.patch_size)}), batches of {d.batch_size} rows of {d.seq_len} tokens, {t.steps} steps,
conditioning tasks weighted {mix}.
For each of {config.eval.world_clips} held-out physics-world captions (seed `eval.seed`, never
trained on) it generates a {t.sample_frames}x{t.sample_height}x{t.sample_width} video per task: from
the caption alone (`text_to_video`), with the clip's first frame (`image_to_video`), and with its
first half (`extend_forward`); {f.sample_steps} {f.sampler} steps, {setting_words(own_setting(config))}, EMA
weights. Each video is scored against the scene its caption describes (`sora-jax evaluate --world`,
`sora_jax/eval/world_score.py`).

Beside it, on the same clips: *chance*, a real clip of another scene (the world, but not the scene
asked for); *copy*, a generator that only copies what the task gives (the given frames, then the
last of them held to the end); and the world's own clips (a perfect simulator). A model beats
chance when it scores above another scene, and adds to what it is given when it scores above the
copy.

Overall scores at step {last["step"]}:

{chr(10).join(tasks_table)}

Every score at step {last["step"]}, beside each reference video (noise, the first frame frozen, the
frames shuffled, the colours rotated); a dash: no scene had anything to judge:

{chr(10).join(scores_table)}

Overall score per task at each checkpoint scored (val loss: held-out flow loss):

| step | val loss | {task_head}
|---:|---:|{numbers}
{curve}

{sweep}Training took {train_seconds[0] / 60:.0f} min of logged step time; at its median step,
{train_seconds[1] / 60:.0f} min.{compared}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/world_small.py")
    parser.add_argument("--workdir", default="runs/world_small")
    parser.add_argument("--all", action="store_true", help="score every kept checkpoint, not only the last")
    parser.add_argument(
        "--guidance",
        default="1,2",
        help="other caption guidance settings to score the last checkpoint at, comma-separated ('' for "
        "none): a scale (4), or a scale and the interval of times t it acts in (4@0.3-1)",
    )
    parser.add_argument(
        "--compare",
        nargs="*",
        default=[],
        metavar="WORKDIR",
        help="other runs of the experiment, scored the same way, in a table beside this one",
    )
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    final = load_config(args.config).train.steps
    workdir = Path(args.workdir)
    command = [sys.executable, "-m", "sora_jax.cli"]
    if not (workdir / "checkpoints" / str(final)).is_dir():
        subprocess.run([*command, "train", "--config", args.config, "--workdir", str(workdir)], check=True)
    scored = {r["step"] for r in _scored(workdir)}
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    for step in steps if args.all else steps[-1:]:
        if step not in scored:
            evaluate = [*command, "evaluate", "--workdir", str(workdir), "--world", "--step", str(step)]
            subprocess.run(evaluate, check=True)

    config = local_config(workdir)
    world_eval = WorldEvaluation(model_graphdef(config), config)
    references = world_eval.references()
    given = {task: world_eval.given_frames(task) for task in TASKS}
    copies = {task: world_eval.copy_baseline(task) for task in TASKS if given[task]}
    results = _scored(workdir)
    settings = [parse_setting(g) for g in args.guidance.split(",") if g.strip()]
    settings = [s for s in settings if s != own_setting(config)]
    swept = guidance_sweep(workdir, config, results[-1]["step"], settings) if settings else {}
    compared = ""
    if args.compare:
        table = compared_runs(config, [Path(w) for w in args.compare])
        compared = f"""

Other runs of the experiment, scored the same way at their last checkpoint (what each changes
from this run's config; `sora-jax evaluate --world`):

{table}"""
    train_seconds = _train_seconds(workdir, config)
    body = report(config, args.config, results, references, given, copies, swept, train_seconds, compared)
    print(body)
    if not args.no_write:
        name = Path(args.config.split(":")[0]).stem
        replace_section("world_sim", f"World simulator ({name})", body)


if __name__ == "__main__":
    main()
