"""Writes the Wan transformer reference: a tiny random diffusers model and its outputs on three clips.

Run once, from the repository root, with an environment that has PyTorch and diffusers (never
imported by the tests, which read only what it writes)::

    python tests/wan/make_transformer_reference.py

Made with torch 2.14.1 and diffusers 0.42.1 (the npz records the versions it was made with).

Writes ``tests/wan/data/tiny_wan/transformer/`` (``save_pretrained``: config.json and float32
safetensors) and ``tests/wan/transformer_reference.npz``: for each clip ``k`` of three latent shapes
(a video, a single image, a short video), ``latents_k [C, T, H, W]``, its timestep ``t_k`` in [0, 1]
(the transformer is given ``1000 t``), its caption states ``caption_k [n_k, text_dim]`` and the
model's output ``velocity_k [C, T, H, W]``, computed for the clip alone (batch 1) with its caption
zero-padded to ``pad_tokens`` tokens, as WanPipeline pads UMT5 states.
"""

from __future__ import annotations

from pathlib import Path

import diffusers
import numpy as np
import torch
from diffusers import WanTransformer3DModel

HERE = Path(__file__).parent
PAD_TOKENS = 16
# (T', H', W') token grids of the three clips; patch (1, 2, 2), so latents are (T', 2 H', 2 W').
GRIDS = ((3, 4, 6), (1, 6, 4), (2, 2, 2))
CAPTION_TOKENS = (5, 9, 3)
TIMESTEPS = (0.83, 0.27, 0.55)


def main() -> None:
    torch.manual_seed(0)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=16,  # RoPE split: 8 features for t, 4 for h, 4 for w.
        in_channels=4,
        out_channels=4,
        text_dim=20,
        freq_dim=256,
        ffn_dim=40,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        rope_max_seq_len=64,
    ).float()
    # Norm scales start at one and biases at zero: make every weight random, so that a mix-up of
    # any two tensors changes the output.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            elif "norm" in name and name.endswith("bias"):
                param.copy_(0.2 * torch.randn_like(param))
    model.eval()
    model.save_pretrained(HERE / "data" / "tiny_wan" / "transformer", safe_serialization=True)

    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {
        "pad_tokens": np.asarray(PAD_TOKENS),
        "versions": np.asarray(f"torch {torch.__version__}, diffusers {diffusers.__version__}"),
    }
    for k, ((gt, gh, gw), tokens, t) in enumerate(zip(GRIDS, CAPTION_TOKENS, TIMESTEPS, strict=True)):
        latents = rng.normal(size=(4, gt, 2 * gh, 2 * gw)).astype(np.float32)
        caption = rng.normal(size=(tokens, 20)).astype(np.float32)
        padded = np.zeros((PAD_TOKENS, 20), np.float32)
        padded[:tokens] = caption
        t = np.float32(t)
        with torch.no_grad():
            velocity = model(
                hidden_states=torch.from_numpy(latents)[None],
                timestep=torch.from_numpy(np.asarray([np.float32(1000.0) * t], np.float32)),
                encoder_hidden_states=torch.from_numpy(padded)[None],
                return_dict=False,
            )[0][0].numpy()
        arrays |= {f"latents_{k}": latents, f"t_{k}": t, f"caption_{k}": caption, f"velocity_{k}": velocity}
    np.savez_compressed(HERE / "transformer_reference.npz", **arrays)


if __name__ == "__main__":
    main()
