"""A fine-tuned Wan run back to a diffusers-format directory that diffusers and ComfyUI load.

    sora-jax export --workdir runs/wan_lora --out Wan2.1-T2V-1.3B-finetuned [--step N] [--dtype bfloat16]

The run's parameters of checkpoint ``step`` (with LoRA: the pretrained transformer with the
adapters folded in, :func:`sora_jax.train.lora.merged`) become ``OUT/transformer/``; the pretrained
directory's other components (``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``,
``model_index.json``) are copied beside it, so ``OUT`` is a whole pipeline. A run trained from
scratch (no ``wan.pretrained``) exports its transformer alone.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from sora_jax.errors import ConfigError

COMPONENTS = ("vae", "text_encoder", "tokenizer", "scheduler")
PIPELINE_INDEX = "model_index.json"


def export_run(
    workdir: str | os.PathLike, out: str | os.PathLike, step: int | None = None, dtype: str = "float32"
) -> Path:
    """Write checkpoint ``step`` (default: the newest readable) of the Wan run in ``workdir`` as a
    diffusers directory ``out``; returns it.

    Raises:
        ConfigError: ``workdir`` is not a Wan run, has no such checkpoint, ``out`` is the run's own
            pretrained directory (its weights would be overwritten) or a file, or ``dtype`` is not
            float32 or bfloat16; all checked before anything is written.
    """
    from sora_jax.train.trained_run import TrainedRun
    from sora_jax.wan.transformer_weights import export_transformer

    if dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"--dtype {dtype!r}: must be float32 or bfloat16")
    target = Path(out).expanduser()
    if target.exists() and not target.is_dir():
        raise ConfigError(f"--out {out}: is a file, not a directory")
    with TrainedRun(workdir, task="wan") as run:
        pretrained = run.config.wan.pretrained
        if pretrained and target.resolve() == Path(pretrained).expanduser().resolve():
            raise ConfigError(f"--out {out} is the run's pretrained directory: export to a new one")
        params = run.kind.model_params(run.params(step))
        target.mkdir(parents=True, exist_ok=True)
        export_transformer(params, run.config, target, dtype)
    if pretrained:
        source = Path(pretrained).expanduser()
        for name in COMPONENTS:
            if (source / name).is_dir():
                shutil.copytree(source / name, target / name, dirs_exist_ok=True)
        if (source / PIPELINE_INDEX).is_file():
            shutil.copy2(source / PIPELINE_INDEX, target / PIPELINE_INDEX)
    return target
