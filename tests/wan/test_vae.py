"""The Wan 2.1 VAE against diffusers' AutoencoderKLWan, its time chunking, and its diffusers folder.

References come from ``make_vae_reference.py`` (run once with PyTorch); here only our loader reads
the folder diffusers wrote.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from sora_jax.errors import ConfigError
from sora_jax.text.hf_loading import abstract_params
from sora_jax.wan.vae_weights import WEIGHTS_FILE, export_vae, load_vae, vae_config

HERE = Path(__file__).resolve().parent
TINY_WAN = HERE / "data" / "tiny_wan"
TINY_VAE = TINY_WAN / "vae"
CLIPS = ["clip9", "clip1"]


def pixels_to_video(pixels_bthwc: np.ndarray) -> np.ndarray:
    """As the reference script converts its uint8 clips."""
    return pixels_bthwc.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def assert_close(ours, reference: np.ndarray, rtol: float = 1e-4) -> None:
    """``max |ours - reference| <= rtol * max |reference|``, shapes equal."""
    ours = np.asarray(ours)
    assert ours.shape == reference.shape
    error = np.max(np.abs(ours - reference)) / np.max(np.abs(reference))
    assert error <= rtol, f"max relative error {error:.2e} > {rtol:.0e}"


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    return dict(np.load(HERE / "vae_reference.npz"))


@pytest.fixture(scope="module")
def vae():
    return load_vae(TINY_WAN)


@pytest.mark.parametrize("clip", CLIPS)
def test_encode_matches_diffusers(vae, reference, clip):
    mean, logvar = vae.encode(pixels_to_video(reference[f"{clip}/pixels"]))
    assert_close(mean, reference[f"{clip}/mean"])
    assert_close(logvar, reference[f"{clip}/logvar"])


@pytest.mark.parametrize("clip", CLIPS)
def test_decode_matches_diffusers(vae, reference, clip):
    assert_close(vae.decode(reference[f"{clip}/mean"]), reference[f"{clip}/decoded"])


def test_latent_normalization_is_the_pipelines(vae, reference):
    means = reference["clip9/mean"]
    assert_close(vae.denormalize_latents(means), reference["clip9/denormalized"])
    np.testing.assert_allclose(vae.denormalize_latents(vae.normalize_latents(means)), means, atol=1e-6)
    assert (vae.temporal_factor, vae.spatial_factor) == (4, 8)


def test_other_chunkings_give_the_same_latents_and_are_causal(vae, reference):
    """A 17-frame clip encoded as frames 0, 1-8, 9-16 (not diffusers' 0, 1-4, ...) and decoded as latent
    frames 0, 1-2, 3-4: the carried frames make any chunking exact, and neither the 8 frames after
    the first 9 change their 3 latent frames nor the 2 latent frames after those their 9 frames."""
    first = reference["clip9/pixels"]
    later = np.random.default_rng(1).integers(0, 256, (1, 8, *first.shape[2:]), dtype=np.uint8)
    mean, logvar = vae.encode(pixels_to_video(np.concatenate([first, later], axis=1)), chunk_frames=8)
    assert mean.shape[1] == 5
    assert_close(mean[:, :3], reference["clip9/mean"])
    assert_close(logvar[:, :3], reference["clip9/logvar"])
    video = vae.decode(mean, chunk_latents=2)
    assert video.shape[1] == 17
    assert_close(video[:, :9], reference["clip9/decoded"])


def test_export_writes_diffusers_names_layouts_and_config(vae, tmp_path):
    exported = export_vae(vae, tmp_path / "vae")
    theirs, ours = load_file(TINY_VAE / WEIGHTS_FILE), load_file(exported / WEIGHTS_FILE)
    assert sorted(ours) == sorted(theirs)
    for name, tensor in theirs.items():
        assert ours[name].dtype == tensor.dtype and ours[name].shape == tensor.shape, name
        np.testing.assert_array_equal(ours[name], tensor, err_msg=name)
    with safe_open(exported / WEIGHTS_FILE, framework="np") as handle:
        assert handle.metadata() == {"format": "pt"}
    written = json.loads((exported / "config.json").read_text())
    original = json.loads((TINY_VAE / "config.json").read_text())
    assert written == {k: v for k, v in original.items() if k != "_diffusers_version"}
    reloaded = load_vae(exported)
    for (path, param), (other_path, other) in zip(
        abstract_params(vae).items(), abstract_params(reloaded).items(), strict=True
    ):
        assert path == other_path
        np.testing.assert_array_equal(np.asarray(param.get_value()), np.asarray(other.get_value()))


def test_bfloat16_export_loads_as_its_rounding(vae, tmp_path):
    reloaded = load_vae(export_vae(vae, tmp_path / "vae", jnp.bfloat16))
    for param, other in zip(abstract_params(vae).values(), abstract_params(reloaded).values(), strict=True):
        rounded = np.asarray(param.get_value()).astype(jnp.bfloat16).astype(np.float32)
        np.testing.assert_array_equal(np.asarray(other.get_value()), rounded)
    assert load_vae(tmp_path / "vae", jnp.bfloat16).encoder.conv_in.conv.kernel.dtype == jnp.bfloat16


def copy_vae(tmp_path: Path, config: dict | None = None, tensors: dict | None = None) -> Path:
    """The tiny VAE folder copied, with ``config`` keys and ``tensors`` replaced (None: removed)."""
    folder = tmp_path / "vae"
    shutil.copytree(TINY_VAE, folder)
    if config:
        original = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**original, **config}))
    if tensors:
        weights = {**load_file(folder / WEIGHTS_FILE), **tensors}
        save_file({k: v for k, v in weights.items() if v is not None}, folder / WEIGHTS_FILE)
    return folder


def test_missing_directory_and_weights_are_named(tmp_path):
    with pytest.raises(ConfigError, match="no_such_model"):
        load_vae(tmp_path / "no_such_model")
    folder = copy_vae(tmp_path)
    (folder / WEIGHTS_FILE).unlink()
    with pytest.raises(ConfigError, match=re.escape(WEIGHTS_FILE)):
        load_vae(tmp_path)  # The model folder: its vae/ is found.


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_groups": 32}, "unknown key 'num_groups'"),
        ({"is_residual": True}, "is_residual = True: Wan 2.2"),
        ({"patch_size": 2}, "patch_size = 2"),
        ({"latents_std": [1.0, 2.0]}, "latents_std .*z_dim = 4"),
    ],
)
def test_unsupported_config_names_file_and_key(tmp_path, change, message):
    folder = copy_vae(tmp_path, config=change)
    with pytest.raises(ConfigError, match=re.escape(str(folder / "config.json")) + ".*" + message):
        vae_config(folder)
    with pytest.raises(ConfigError, match=message):
        load_vae(folder)


def test_missing_and_misshapen_tensors_are_named(tmp_path):
    name = "decoder.up_blocks.1.resnets.0.conv_shortcut.weight"
    folder = copy_vae(tmp_path / "missing", tensors={name: None})
    with pytest.raises(ConfigError, match=f"weight '{re.escape(name)}' is missing"):
        load_vae(folder)
    folder = copy_vae(tmp_path / "misshapen", tensors={name: np.zeros((8, 4, 3, 3, 3), np.float32)})
    with pytest.raises(ConfigError, match=re.escape(f"'{name}'") + r".*\(8, 4, 3, 3, 3\).*\(8, 4, 1, 1, 1\)"):
        load_vae(folder)


@pytest.mark.parametrize(("frames", "nearest"), [(7, "5 or 9"), (2, "1 or 5"), (0, "1")])
def test_frame_count_must_be_one_plus_four_k(vae, frames, nearest):
    with pytest.raises(ConfigError, match=f"{frames} frames.*1 \\+ 4 k.*nearest valid counts are {nearest}"):
        vae.encode(np.zeros((1, frames, 32, 48, 3), np.float32))
