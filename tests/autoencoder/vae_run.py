"""One tiny autoencoder run trained through ``sora-jax train``, shared by every test that reads one
(the session fixture ``vae_run`` of tests/conftest.py).

The autoencoder, encoding and latent-model tests each need a trained ``vae_world:test`` run (4 steps,
checkpoints at 2 and 4) and only read it, so a test process trains it once. It trains at a constant
learning rate: its whole run is also the reference a resumed run must match bit for bit (the
schedule then does not depend on ``train.steps``).
"""

from pathlib import Path

from tests.cli import sora_jax

TEST = "experiments/vae_world.py:test"
CONSTANT_LR = ["--config.optim.warmup_steps=0", "--config.optim.min_lr_ratio=1.0"]


def train_vae_world(run: Path) -> Path:
    """Trains ``vae_world:test`` at a constant learning rate into ``run``; returns ``run``."""
    result = sora_jax("train", "--config", TEST, "--workdir", str(run), *CONSTANT_LR)
    assert result.returncode == 0, result.stderr[-3000:]
    return run
