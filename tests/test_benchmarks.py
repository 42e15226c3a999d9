"""The benchmark scripts' measuring functions still run against the code they measure."""

import math

from benchmarks.train_step import measure_step
from sora_jax.config import load_config


def test_measure_step_times_the_compiled_train_step():
    config = load_config("experiments/world_tiny.py:test")
    result = measure_step(config, steps=2)
    assert result["params"] > 0 and result["compile_seconds"] > 0
    assert 0 < result["min_seconds"] <= result["step_seconds"] <= result["max_seconds"]
    assert result["tokens_per_s"] > 0 and result["flops"] > 0 and math.isfinite(result["flops_per_s"])


def test_caption_following_report_has_a_row_per_variant_and_the_noisy_clip_reference():
    from benchmarks import caption_following

    def result(hits):
        return {
            "tasks": ["text_to_video"],
            "step_ms": 370.0,
            "colour_hits": hits,
            "pair_hits": 5,
            "pairs": 6,
            "speckle": 5.8,
            "sensitivity/colour_swap": 1e-4,
            "sensitivity/caption_drop": 2e-3,
            **{f"denoising/{t}/model": 0.01 for t in caption_following.DENOISING_T},
            **{f"denoising/{t}/noisy": t * t * 0.9 for t in caption_following.DENOISING_T},
            **{f"world/text_to_video/{k}": 0.5 for k in ("colours", "count", "overall")},
        }

    config = load_config("experiments/world_tiny.py")
    body = caption_following.report(
        "experiments/world_tiny.py",
        {"recipe": result(8), "steps_3000": result(9)},
        config,
        "caption_following_detail",
    )
    rows = [line for line in body.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == ["recipe", "steps_3000"]
    assert "| 9 of 9 | 5 of 6 |" in rows[1] and "0.0100 | 0.0100 |" in rows[1]
    assert "misses by 0.0023 at t = 0.05 and 0.2250 at t = 0.5" in " ".join(body.split())
    assert "--variants recipe,steps_3000 --section detail" in body
    assert "images/caption_following_detail_steps_3000.png" in body


def test_caption_following_report_tables_the_recipe_by_guidance_scale():
    from benchmarks import caption_following

    recipe = {
        "tasks": ["text_to_video"],
        "step_ms": 370.0,
        "colour_hits": 8,
        "pair_hits": 5,
        "pairs": 6,
        "speckle": 3.5,
        "sensitivity/colour_swap": 1e-4,
        "sensitivity/caption_drop": 2e-3,
        **{f"denoising/{t}/model": 0.01 for t in caption_following.DENOISING_T},
        **{f"denoising/{t}/noisy": 0.1 for t in caption_following.DENOISING_T},
        **{f"world/text_to_video/{k}": 0.5 for k in ("colours", "count", "overall")},
    }

    def swept_row(speckle: float, score: float, strip: str) -> dict:
        return {
            "colour_hits": 7,
            "pair_hits": 4,
            "pairs": 6,
            "speckle": speckle,
            **{f"world/text_to_video/{k}": score for k in ("colours", "count", "overall")},
            "strip": f"docs/images/caption_following_recipe_guidance_{strip}.png",
        }

    swept = {
        (4.0, (0.3, 1.0)): swept_row(3.0, 0.3, "4_t0.3-1"),
        (4.0, (0.0, 1.0)): swept_row(5.8, 0.25, "4"),
    }
    config = load_config(
        "experiments/world_tiny.py", ["diffusion.guidance=2.0", "diffusion.guidance_interval=(0.0,1.0)"]
    )
    body = caption_following.report("experiments/world_tiny.py", {"recipe": recipe}, config, swept=swept)
    assert "--variants recipe --guidance 4@0.3-1,4" in body
    assert "steps at guidance 2, EMA weights" in body
    rows = [line for line in body.splitlines() if line.startswith("| 2 |") or line.startswith("| 4 |")]
    assert rows == [
        "| 2 | every step | 8 of 9 | 5 of 6 | 3.5 | 0.50 / 0.50 / **0.50** | "
        "[caption_following_recipe.png](images/caption_following_recipe.png) |",
        "| 4 | every step | 7 of 9 | 4 of 6 | 5.8 | 0.25 / 0.25 / **0.25** | "
        "[caption_following_recipe_guidance_4.png](images/caption_following_recipe_guidance_4.png) |",
        "| 4 | 0.3 to 1 | 7 of 9 | 4 of 6 | 3.0 | 0.30 / 0.30 / **0.30** | "
        "[caption_following_recipe_guidance_4_t0.3-1.png]"
        "(images/caption_following_recipe_guidance_4_t0.3-1.png) |",
    ]
    plain = caption_following.report("experiments/world_tiny.py", {"recipe": recipe}, config)
    assert "other caption guidance scales" not in plain and "--guidance" not in plain
    interval = load_config(
        "experiments/world_tiny.py", ["diffusion.guidance=4.0", "diffusion.guidance_interval=(0.3,1.0)"]
    )
    assert "steps at guidance 4 at times t from 0.3 to 1, EMA weights" in caption_following.report(
        "experiments/world_tiny.py", {"recipe": recipe}, interval
    )


def test_guidance_settings_read_as_the_reports_write_them():
    from benchmarks.guidance import parse_setting, setting_label

    assert parse_setting("4") == (4.0, (0.0, 1.0))
    assert parse_setting(" 4@0.3-1 ") == (4.0, (0.3, 1.0))
    for text in ("2", "4@0.3-1", "6.5@0-0.6"):
        assert setting_label(parse_setting(text)) == text
    assert setting_label((4.0, (0.3, 1.0)), "_t") == "4_t0.3-1"


def test_world_sim_compares_other_runs_by_what_their_config_changes(tmp_path):
    import json

    from benchmarks import world_sim
    from sora_jax.config import config_to_json

    config = load_config("experiments/world_small.py")
    other = load_config("experiments/world_small.py", ["train.steps=6000", "conditioning.random_rate=0.5"])
    assert world_sim.config_changes(config, config) == "–"
    assert world_sim.config_changes(config, other) == "`conditioning.random_rate=0.5`, `train.steps=6000`"
    run = tmp_path / "longer"
    (run / "eval").mkdir(parents=True)
    (run / "config.json").write_text(config_to_json(other))
    scores = {f"world/{task}/overall": 0.5 for task in world_sim.TASKS}
    (run / "eval" / "step_6000.json").write_text(json.dumps({"step": 6000, "world/overall": 0.5, **scores}))
    lines = [{"step": i, "step_seconds": 60.0 if i == 7 else 0.6} for i in range(1, 6001)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    table = world_sim.compared_runs(config, [run])
    # 6000 logged steps (train.log_every = 1) of 0.6 s, one of them disturbed: 60 minutes at the
    # median step, 61 logged.
    row = "| `longer` | `conditioning.random_rate=0.5`, `train.steps=6000` | 6000 | 60 (61) | 0.50 |"
    assert row in table


def test_world_sim_tables_the_last_checkpoint_by_guidance_setting():
    from benchmarks import world_sim
    from sora_jax.eval.world_score import REFERENCES, SCORES

    config = load_config("experiments/world_small.py", ["diffusion.guidance=2.0"])

    def scores(value: float) -> dict:
        per_task = {f"world/{task}/{s}": value for task in world_sim.TASKS for s in (*SCORES, "overall")}
        return {**per_task, "world/overall": value}

    last = {"step": 4500, "val_loss": 0.1, **scores(0.5)}
    references = {ref: {s: 0.9 for s in (*SCORES, "overall")} for ref in REFERENCES}
    given = {task: 0 if task == "text_to_video" else 1 for task in world_sim.TASKS}
    swept = {(4.0, (0.3, 1.0)): scores(0.6), (4.0, (0.0, 1.0)): scores(0.4)}
    body = world_sim.report(
        config, "experiments/world_small.py", [last], references, given, {}, swept, (60.0, 60.0)
    )
    assert "32 euler steps, guidance 2, EMA" in body
    rows = [line for line in body.splitlines() if line.startswith(("| 2 |", "| 4 |"))]

    def row(setting: str, score: str) -> str:  # Each task's overall score, then their mean.
        return f"| {setting} | " + " | ".join([score] * (len(world_sim.TASKS) + 1)) + " |"

    assert rows == [row("2 | every step", "0.50"), row("4 | every step", "0.40"), row("4 | 0.3 to 1", "0.60")]
