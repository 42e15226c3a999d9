"""Wan sampling without PyTorch gives what diffusers' WanPipeline gives, from the same directory and noise.

The tiny pipeline directory (``data/tiny_pipeline``) and the reference (``pipeline_reference.npz``:
two prompts, a negative prompt, 4 Euler steps at guidance 5, the final latents and a decoded video)
were written by diffusers (``make_pipeline_reference.py``); these tests read them without torch.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sora_jax import cli
from sora_jax.data.video_io import read_video
from sora_jax.errors import ConfigError
from sora_jax.kinds.wan import WanKind
from sora_jax.wan.pipeline import (
    COMPONENTS,
    WanPipeline,
    clean_prompt,
    flow_match_sigmas,
    pipeline_config,
    scheduler_shift,
)

HERE = Path(__file__).parent
TINY = HERE / "data" / "tiny_pipeline"
REFERENCE = np.load(HERE / "pipeline_reference.npz")
FRAMES, HEIGHT, WIDTH = (int(v) for v in REFERENCE["frames_height_width"])
STEPS, GUIDANCE, SHIFT = REFERENCE["steps_guidance_shift"]
PROMPTS = [str(p) for p in REFERENCE["prompts"]]
NEGATIVE = str(REFERENCE["negative_prompt"])


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


def channels_last(latents_cthw: np.ndarray) -> np.ndarray:
    return latents_cthw.transpose(1, 2, 3, 0)


@pytest.fixture(scope="module")
def pipeline() -> WanPipeline:
    return WanPipeline.from_pretrained(TINY)


def test_schedule_is_the_schedulers_bit_for_bit():
    sigmas, timesteps = flow_match_sigmas(int(STEPS), float(SHIFT))
    np.testing.assert_array_equal(sigmas, REFERENCE["sigmas"])
    np.testing.assert_array_equal(timesteps, REFERENCE["timesteps"])
    for steps, shift in ((50, 3.0), (7, 5.0), (1, 1.0)):
        sigmas, timesteps = flow_match_sigmas(steps, shift)
        np.testing.assert_array_equal(sigmas, REFERENCE[f"schedule_{steps}_{shift:g}/sigmas"])
        np.testing.assert_array_equal(timesteps, REFERENCE[f"schedule_{steps}_{shift:g}/timesteps"])


def test_prompt_states_are_the_pipelines_without_its_zero_padding(pipeline):
    assert pipeline.max_prompt_tokens == int(REFERENCE["max_sequence_length"])
    ours = pipeline.encode_prompts([*PROMPTS, NEGATIVE])
    references = [*REFERENCE["prompt_embeds"], REFERENCE["negative_prompt_embeds"][0]]
    for states, reference in zip(ours, references, strict=True):
        real = np.abs(reference).sum(axis=-1) > 0
        assert len(states) == real.sum() and real[: len(states)].all()  # Cleaned and cut the same way.
        assert relative_error(states, reference[: len(states)]) < 1e-4
    assert clean_prompt("  a\tred\n\nball &amp;amp; cube ") == "a red ball & cube"


def test_latents_and_video_match_diffusers(pipeline):
    options = dict(frames=FRAMES, height=HEIGHT, width=WIDTH, steps=int(STEPS), guidance=float(GUIDANCE))
    for k, prompt in enumerate(PROMPTS):
        noise = channels_last(REFERENCE["noise"][k])
        latents = pipeline.sample_latents(prompt, NEGATIVE, noise=noise, **options)
        reference = channels_last(REFERENCE["step_latents"][-1, k])
        assert relative_error(latents, reference) < 1e-4, k
        if k == 0:
            video = pipeline.decode(latents)
            assert video.shape == REFERENCE["video"].shape
            assert relative_error(video, REFERENCE["video"]) < 1e-4
            frames = pipeline.generate(prompt, NEGATIVE, noise=noise, **options)
            expected = np.round(REFERENCE["video"] * 255)
            assert frames.dtype == np.uint8 and np.abs(frames - expected).max() <= 1  # Rounding at .5 only.


def test_a_lora_run_samples_through_its_kind(pipeline):
    """A LoRA run of the directory, with adapters that change nothing yet, samples what the directory
    samples: the kind's plain graph and merged parameters reach the pipeline, with the VAE and
    encoder of its config."""
    config = pipeline_config(TINY)
    config.lora.rank = 2
    kind = WanKind(config)
    params = jax.tree.map(jnp.zeros_like, jax.eval_shape(lambda: kind.init(0))[1])
    options = dict(frames=FRAMES, height=HEIGHT, width=WIDTH, steps=2, guidance=float(GUIDANCE), seed=1)
    ours = WanPipeline.from_run(kind, params).sample_latents(PROMPTS[1], NEGATIVE, **options)
    np.testing.assert_array_equal(ours, pipeline.sample_latents(PROMPTS[1], NEGATIVE, **options))


def test_frame_counts_and_sizes_wan_cannot_make_are_refused_with_the_nearest(pipeline):
    with pytest.raises(ConfigError, match=r"--frames 10: .*1 \+ 4 k.*9 or 13"):
        pipeline.generate("a red ball", frames=10, height=HEIGHT, width=WIDTH)
    with pytest.raises(ConfigError, match=r"--frames 0: .*are 1"):
        pipeline.latent_shape(0, HEIGHT, WIDTH)
    with pytest.raises(ConfigError, match=r"--width 40: must be a multiple of 16.*32 or 48"):
        pipeline.latent_shape(FRAMES, HEIGHT, 40)
    assert pipeline.latent_shape(1, 16, 16) == (1, 2, 2)


def _copy_without(tmp_path: Path, missing: str) -> Path:
    folder = tmp_path / f"without_{missing}"
    folder.mkdir()
    for item in TINY.iterdir():
        if item.name != missing:
            (folder / item.name).symlink_to(item.resolve())
    return folder


@pytest.mark.parametrize("missing", COMPONENTS)
def test_a_missing_component_is_named_in_one_line(tmp_path, missing):
    folder = _copy_without(tmp_path, missing)
    with pytest.raises(ConfigError, match=f"no {missing}/ folder") as error:
        WanPipeline.from_pretrained(folder)
    assert "\n" not in str(error.value)


def test_the_scheduler_config_gives_the_shift(tmp_path):
    folder = tmp_path / "wan"
    (folder / "scheduler").mkdir(parents=True)
    assert scheduler_shift(folder, 3.0) == 3.0  # No scheduler config: the default.
    assert scheduler_shift(TINY, 1.0) == SHIFT
    file = folder / "scheduler" / "scheduler_config.json"
    # Wan's own directories ship UniPC with a flow shift.
    file.write_text(
        json.dumps({"_class_name": "UniPCMultistepScheduler", "use_flow_sigmas": True, "flow_shift": 5.0})
    )
    assert scheduler_shift(folder, 3.0) == 5.0
    for settings, message in (
        (
            {"_class_name": "FlowMatchEulerDiscreteScheduler", "use_dynamic_shifting": True},
            "use_dynamic_shifting",
        ),
        ({"_class_name": "DDIMScheduler"}, "not a flow-matching schedule"),
    ):
        file.write_text(json.dumps(settings))
        with pytest.raises(ConfigError, match=message):
            scheduler_shift(folder, 3.0)


def test_sample_command_writes_a_video_of_a_wan_directory(tmp_path, capsys):
    out = tmp_path / "wan.mp4"
    size = ["--height", str(HEIGHT), "--width", str(WIDTH)]
    common = ["sample", "--workdir", str(TINY), "--prompt", "a red ball", "--out", str(out), *size]
    assert cli.main([*common, "--frames", str(FRAMES), "--steps", "2", "--seed", "3"]) == 0
    frames, _ = read_video(out)
    assert frames.shape == (FRAMES, HEIGHT, WIDTH, 3)
    assert out.with_suffix(".gif").is_file()

    capsys.readouterr()
    image = tmp_path / "still.png"
    image.write_bytes(b"")
    for extra, message in (
        (["--frames", "6"], "--frames 6: .*5 or 9"),
        (["--frames", "5", "--image", str(image)], "--image: a Wan directory samples text-to-video only"),
        (["--frames", "5", "--sampler", "heun"], "--sampler heun"),
        (["--frames", "5", "--guidance-interval", "0.3", "1"], "--guidance-interval: .* every step"),
    ):
        assert cli.main([*common, *extra]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and error.startswith("sora-jax sample: ")
        assert re.search(message, error), error
