"""Writes a tiny, complete diffusers Wan 2.1 pipeline directory and what ``WanPipeline`` samples from it.

Run once, from the repository root, with an environment that has PyTorch, diffusers and transformers
(never imported by the tests, which read only what it writes)::

    /tmp/refvenv/bin/python tests/wan/make_pipeline_reference.py

Made with torch 2.14.1, diffusers 0.42.1, transformers 5.25.0 (the npz records the versions).

Writes ``tests/wan/data/tiny_pipeline/``, laid out as a Wan model on the Hub:

- ``model_index.json`` (``WanPipeline``);
- ``scheduler/``: ``FlowMatchEulerDiscreteScheduler`` with Wan's flow shift 3.0;
- ``text_encoder/`` and ``tokenizer/``: the tiny random UMT5 encoder and word-level tokenizer of
  ``sora_jax/text/tiny.py``, with the ``tokenizer_config.json`` transformers' ``AutoTokenizer``
  needs to know the pad, end and unknown tokens;
- ``transformer/``: a random ``WanTransformer3DModel`` reading the encoder's 32-wide states;
- ``vae/``: a random ``AutoencoderKLWan`` (z_dim 4 = the transformer's channels) with its own
  latent mean and standard deviation.

All float32; norm scales and biases are moved away from their initial values so that every tensor
matters. Then runs ``WanPipeline.from_pretrained(dir)`` on two prompts of different lengths with a
negative prompt, 9 frames (3 latent frames) of 32 x 48 pixels, 4 Euler steps, guidance 5, from given
noise, and saves to ``tests/wan/pipeline_reference.npz``: ``prompts``, ``negative_prompt``,
``noise [2, C, T', H', W']``, the latents after each step ``step_latents [steps, 2, C, T', H', W']``
(the last are the final latents, before decoding), the first prompt's decoded video
``video [T, H, W, 3]`` (``output_type="np"``: floats in [0, 1]; the second's is decoded the same
way and left out to keep the file small), the scheduler's ``sigmas`` and ``timesteps`` of that run,
the pipeline's prompt states ``prompt_embeds`` / ``negative_prompt_embeds [2, 512, 32]``
(zero-padded, as it feeds the transformer), and scheduler schedules for other step counts and
shifts (``schedule_{steps}_{shift}/{sigmas,timesteps}``).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import diffusers
import numpy as np
import torch
import transformers
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

HERE = Path(__file__).resolve().parent
PIPELINE = HERE / "data" / "tiny_pipeline"
REFERENCE = HERE / "pipeline_reference.npz"
TINY_PY = HERE.parents[1] / "sora_jax" / "text" / "tiny.py"

# Words of the tiny tokenizer's vocabulary; "&amp;" becomes "&" (an unknown token) only through the
# pipeline's HTML unescaping, and the extra whitespace goes through its whitespace cleaning.
PROMPTS = ["  a red ball rolls slowly across\nthe field &amp; falls  in the water ", "two small birds"]
NEGATIVE_PROMPT = "the big blue cube"
FRAMES, HEIGHT, WIDTH = 9, 32, 48
STEPS, GUIDANCE, SHIFT = 4, 5.0, 3.0
MAX_SEQUENCE_LENGTH = 512  # WanPipeline.__call__'s default.
Z_DIM = 4
OTHER_SCHEDULES = ((50, 3.0), (7, 5.0), (1, 1.0))


def load_tiny():
    spec = importlib.util.spec_from_file_location("tiny", TINY_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_text_parts(tiny) -> int:
    """``text_encoder/`` and ``tokenizer/`` from the tiny UMT5 writer; returns the state width."""
    encoder_dir = tiny.write_tiny_t5(PIPELINE / "text_encoder", "umt5")
    tokenizer_dir = PIPELINE / "tokenizer"
    tokenizer_dir.mkdir()
    shutil.move(encoder_dir / "tokenizer.json", tokenizer_dir / "tokenizer.json")
    special = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    (tokenizer_dir / "tokenizer_config.json").write_text(
        json.dumps({**special, "model_max_length": MAX_SEQUENCE_LENGTH}, indent=2)
    )
    (tokenizer_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    return json.loads((encoder_dir / "config.json").read_text())["d_model"]


def randomise_norms(model: torch.nn.Module) -> None:
    """Norm scales start at one and biases at zero: make them random, so a mix-up of tensors shows."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ("norm" in name and name.endswith("weight")) or name.endswith("gamma"):
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            elif "norm" in name and name.endswith("bias"):
                param.copy_(0.2 * torch.randn_like(param))


def write_models(text_dim: int) -> None:
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=Z_DIM,
        out_channels=Z_DIM,
        text_dim=text_dim,
        freq_dim=256,
        ffn_dim=40,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        rope_max_seq_len=64,
    ).float()
    randomise_norms(transformer)
    transformer.save_pretrained(PIPELINE / "transformer", safe_serialization=True)

    vae = AutoencoderKLWan(
        base_dim=4,
        z_dim=Z_DIM,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        attn_scales=[],
        temperal_downsample=[False, True, True],
        latents_mean=[-0.4, 0.25, 0.9, -1.1],
        latents_std=[0.8, 1.6, 0.5, 2.2],
    ).float()
    randomise_norms(vae)
    vae.save_pretrained(PIPELINE / "vae", safe_serialization=True)

    FlowMatchEulerDiscreteScheduler(shift=SHIFT).save_pretrained(PIPELINE / "scheduler")
    index = {
        "_class_name": "WanPipeline",
        "_diffusers_version": diffusers.__version__,
        "boundary_ratio": None,
        "expand_timesteps": False,
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "transformer_2": [None, None],
        "vae": ["diffusers", "AutoencoderKLWan"],
    }
    (PIPELINE / "model_index.json").write_text(json.dumps(index, indent=2))


def main() -> None:
    if PIPELINE.exists():
        shutil.rmtree(PIPELINE)
    PIPELINE.mkdir(parents=True)
    write_models(write_text_parts(load_tiny()))

    pipe = WanPipeline.from_pretrained(PIPELINE, torch_dtype=torch.float32)
    latent_frames = (FRAMES - 1) // 4 + 1
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(len(PROMPTS), Z_DIM, latent_frames, HEIGHT // 8, WIDTH // 8)).astype(np.float32)
    captured: dict[str, list[np.ndarray]] = {"latents": [], "prompt_embeds": [], "negative_prompt_embeds": []}

    def record(pipeline, step, timestep, tensors):
        for name, tensor in tensors.items():
            captured[name].append(tensor.detach().float().numpy().copy())
        return {}

    video = pipe(
        prompt=PROMPTS,
        negative_prompt=NEGATIVE_PROMPT,
        height=HEIGHT,
        width=WIDTH,
        num_frames=FRAMES,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        latents=torch.from_numpy(noise),
        output_type="np",
        callback_on_step_end=record,
        callback_on_step_end_tensor_inputs=list(captured),
        max_sequence_length=MAX_SEQUENCE_LENGTH,
    ).frames
    arrays: dict[str, np.ndarray] = {
        "versions": np.asarray(
            f"torch {torch.__version__}, diffusers {diffusers.__version__}, "
            f"transformers {transformers.__version__}"
        ),
        "prompts": np.asarray(PROMPTS),
        "negative_prompt": np.asarray(NEGATIVE_PROMPT),
        "frames_height_width": np.asarray([FRAMES, HEIGHT, WIDTH]),
        "steps_guidance_shift": np.asarray([STEPS, GUIDANCE, SHIFT]),
        "max_sequence_length": np.asarray(MAX_SEQUENCE_LENGTH),
        "noise": noise,
        "step_latents": np.stack(captured["latents"]),
        "prompt_embeds": captured["prompt_embeds"][0],
        "negative_prompt_embeds": captured["negative_prompt_embeds"][0],
        "video": np.asarray(video[0], np.float32),
        "sigmas": pipe.scheduler.sigmas.numpy(),
        "timesteps": pipe.scheduler.timesteps.numpy(),
    }
    for steps, shift in OTHER_SCHEDULES:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
        scheduler.set_timesteps(steps)
        arrays[f"schedule_{steps}_{shift:g}/sigmas"] = scheduler.sigmas.numpy()
        arrays[f"schedule_{steps}_{shift:g}/timesteps"] = scheduler.timesteps.numpy()
    np.savez_compressed(REFERENCE, **arrays)

    lengths = [int((np.abs(e).sum(-1) > 0).sum()) for e in arrays["prompt_embeds"]]
    at_clamp = float(((arrays["video"] <= 0.0) | (arrays["video"] >= 1.0)).mean())
    sizes = {str(p.relative_to(PIPELINE)): p.stat().st_size for p in PIPELINE.rglob("*") if p.is_file()}
    print(f"caption tokens {lengths}; final latents |max| {np.abs(arrays['step_latents'][-1]).max():.3f}")
    print(f"video {arrays['video'].shape}, {at_clamp:.1%} of values at 0 or 1; sigmas {arrays['sigmas']}")
    print(f"pipeline {sum(sizes.values())} bytes: {sizes}; reference {REFERENCE.stat().st_size} bytes")


if __name__ == "__main__":
    main()
