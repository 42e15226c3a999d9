"""The Wan transformer gives each clip of a packed row what diffusers' WanTransformer3DModel gives it alone.

The reference (``transformer_reference.npz``) and the tiny checkpoint (``data/tiny_wan/transformer``)
were written by diffusers (``make_transformer_reference.py``); these tests read them without torch.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from sora_jax.config import base_config
from sora_jax.data.packing import PackedClip, pack_rows
from sora_jax.data.patches import grid_size, patchify, unpatchify
from sora_jax.errors import ConfigError
from sora_jax.parallel.mesh import make_mesh
from sora_jax.parallel.sharding import axis_rules
from sora_jax.text.hf_loading import CheckpointError
from sora_jax.train.state import state_shardings
from sora_jax.wan.transformer import build_wan_transformer
from sora_jax.wan.transformer_weights import (
    export_transformer,
    load_transformer,
    transformer_config,
)

HERE = Path(__file__).parent
TINY = HERE / "data" / "tiny_wan"
REFERENCE = np.load(HERE / "transformer_reference.npz")
CLIPS = 3
LAYOUT = dict(seq_len=112, patch_dim=16, max_clips=3, text_len=20, text_dim=20)


def tiny_config(**model: object) -> ml_collections.ConfigDict:
    """The base config with the tiny checkpoint's transformer settings."""
    config = base_config()
    with config.unlocked():
        if "wan" not in config:  # Only until the base config carries the section.
            config.wan = ml_collections.ConfigDict()
        for dotted, value in transformer_config(TINY).items():
            section, key = dotted.split(".")
            config[section][key] = value
        config.wan.text_pad_tokens = int(REFERENCE["pad_tokens"])
        for key, value in model.items():
            config.model[key] = value
    return config


def abstract(config: ml_collections.ConfigDict) -> tuple[nnx.GraphDef, nnx.State]:
    return jax.eval_shape(lambda: nnx.split(build_wan_transformer(config, 0), nnx.Param))


def velocity(graphdef: nnx.GraphDef, state: nnx.State, batch: dict, timesteps: np.ndarray) -> np.ndarray:
    apply = jax.jit(lambda s, n, t, b: nnx.merge(graphdef, s)(n, t, b))
    batch = jax.tree.map(jnp.asarray, batch)
    return np.asarray(apply(state, batch["patches"], jnp.asarray(timesteps), batch))


def clip(k: int) -> PackedClip:
    latents = REFERENCE[f"latents_{k}"].transpose(1, 2, 3, 0)  # [C, T, H, W] -> [T, H, W, C]
    patches, positions = patchify(latents, (1, 2, 2))
    caption = REFERENCE[f"caption_{k}"]
    return PackedClip(
        patches,
        positions,
        grid_size(*latents.shape[:3], (1, 2, 2)),
        latents.shape[0],
        16.0,
        np.zeros(len(caption), np.int32),
        text_embedding=caption,
    )


def reference_batch() -> tuple[dict, np.ndarray]:
    """Rows 0-2: clip k alone (then padding); row 3: all three clips packed, out of order, then padding."""
    order = (1, 0, 2)
    batch = pack_rows([[clip(k)] for k in range(CLIPS)] + [[clip(k) for k in order]], **LAYOUT)
    t = [float(REFERENCE[f"t_{k}"]) for k in range(CLIPS)]
    timesteps = np.full((CLIPS + 1, 3), 0.5, np.float32)
    timesteps[:CLIPS, 0] = t
    timesteps[CLIPS] = [t[k] for k in order]
    return batch, timesteps


def clip_output(out: np.ndarray, batch: dict, row: int, segment: int, k: int) -> np.ndarray:
    """Clip ``k``'s velocity, from ``segment`` of ``row``, as the reference's ``[C, T, H, W]``."""
    tokens = out[row][batch["segment_ids"][row] == segment]
    return unpatchify(tokens, batch["clip_grid"][row, segment - 1], (1, 2, 2)).transpose(3, 0, 1, 2)


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


@pytest.fixture(scope="module")
def loaded():
    config = tiny_config()
    graphdef, shapes = abstract(config)
    return config, graphdef, load_transformer(TINY, shapes)


@pytest.fixture(scope="module")
def outputs(loaded):
    config, graphdef, state = loaded
    batch, timesteps = reference_batch()
    return batch, timesteps, velocity(graphdef, state, batch, timesteps)


def test_a_clip_alone_in_a_packed_row_matches_diffusers(outputs):
    batch, _, out = outputs
    for k in range(CLIPS):
        reference = REFERENCE[f"velocity_{k}"]
        assert relative_error(clip_output(out, batch, k, 1, k), reference) < 1e-4, k


def test_three_clips_packed_in_one_row_each_match_diffusers(outputs):
    batch, _, out = outputs
    for segment, k in enumerate((1, 0, 2), start=1):
        reference = REFERENCE[f"velocity_{k}"]
        assert relative_error(clip_output(out, batch, CLIPS, segment, k), reference) < 1e-4, k
    assert np.isfinite(out).all()  # Padding tokens included.


def test_caption_padding_matters():
    """Without the stand-in for the pipeline's zero padding, the output differs from diffusers':
    the reference checks the padding keys, not only the caption's own tokens."""
    config = tiny_config()
    with config.unlocked():
        config.wan.text_pad_tokens = 0
    graphdef, shapes = abstract(config)
    batch = pack_rows([[clip(2)]], **LAYOUT)
    timesteps = np.asarray([[float(REFERENCE["t_2"]), 0.5, 0.5]], np.float32)
    out = velocity(graphdef, load_transformer(TINY, shapes), batch, timesteps)
    assert relative_error(clip_output(out, batch, 0, 1, 2), REFERENCE["velocity_2"]) > 1e-2


def test_loop_and_remat_agree_with_scan(loaded, outputs):
    _, _, state = loaded
    batch, timesteps, reference = outputs
    for variant in (dict(scan_layers=False), dict(remat="full")):
        graphdef, _ = abstract(tiny_config(**variant))
        out = velocity(graphdef, state, batch, timesteps)
        np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-5 * np.abs(reference).max())


@pytest.mark.parametrize("attention", ["xla", "ring"])
def test_sequence_parallel_attention_on_a_mesh_matches_one_device(loaded, outputs, attention):
    _, _, state = loaded
    batch, timesteps, reference = outputs
    config = tiny_config(attention=attention, sequence_parallel="all_to_all")
    config.mesh.ici_sequence = 2  # Two heads: one per device after the all-to-all.
    graphdef, _ = abstract(config)
    with jax.set_mesh(make_mesh(config)):
        out = velocity(graphdef, state, batch, timesteps)
    np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-5 * np.abs(reference).max())


def _stored(folder: Path) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, framework="np") as handle:
            shapes |= {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    return shapes


def _assert_same_params(a: nnx.State, b: nnx.State) -> None:
    pairs = zip(jax.tree.leaves_with_path(a), jax.tree.leaves(b), strict=True)
    for (path, x), y in pairs:
        assert x.dtype == y.dtype, jax.tree_util.keystr(path)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


def test_export_writes_what_diffusers_wrote_and_loads_back(loaded, tmp_path):
    config, graphdef, state = loaded
    folder = export_transformer(state, config, tmp_path / "single")
    assert _stored(folder) == _stored(TINY / "transformer")
    written = json.loads((folder / "config.json").read_text())
    original = json.loads((TINY / "transformer" / "config.json").read_text())
    assert {k: v for k, v in written.items() if k != "_diffusers_version"} == {
        k: v for k, v in original.items() if k != "_diffusers_version"
    }
    _assert_same_params(load_transformer(tmp_path / "single", abstract(config)[1]), state)

    # Split into shards with an index, as diffusers does past its size limit.
    folder = export_transformer(state, config, tmp_path / "sharded", max_shard_bytes=40_000)
    index = json.loads((folder / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    assert _stored(folder) == _stored(TINY / "transformer")
    _assert_same_params(load_transformer(folder, abstract(config)[1]), state)

    # bfloat16 files load into float32 parameters, rounded to bfloat16.
    export_transformer(state, config, tmp_path / "bf16", dtype="bfloat16")
    with safe_open(tmp_path / "bf16" / "transformer" / "diffusion_pytorch_model.safetensors", "np") as f:
        assert {f.get_slice(name).get_dtype() for name in f.keys()} == {"BF16"}
    rounded = jax.tree.map(lambda x: x.astype(jnp.bfloat16).astype(jnp.float32), state)
    _assert_same_params(load_transformer(tmp_path / "bf16", abstract(config)[1]), rounded)


def test_load_places_each_parameter_with_its_sharding(loaded):
    _, _, state = loaded
    config = tiny_config()
    config.mesh.ici_fsdp = 2
    config.mesh.ici_tensor = 2
    mesh = make_mesh(config)
    shapes = abstract(config)[1]
    shardings = state_shardings(shapes, mesh, axis_rules(config))
    placed = load_transformer(TINY, shapes, shardings)
    kernel = placed["blocks"]["mlp_in"]["kernel"][...]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    _assert_same_params(placed, state)


def _copy(tmp_path: Path) -> Path:
    folder = tmp_path / "wan" / "transformer"
    shutil.copytree(TINY / "transformer", folder)
    return folder


def _rewrite(folder: Path, change) -> None:
    file = folder / "diffusion_pytorch_model.safetensors"
    with safe_open(file, framework="np") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    change(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


def test_clear_errors_for_a_broken_checkpoint(tmp_path):
    shapes = abstract(tiny_config())[1]
    with pytest.raises(ConfigError, match="does not exist"):
        load_transformer(tmp_path / "nowhere", shapes)

    folder = _copy(tmp_path)
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="diffusion_pytorch_model.safetensors") as missing_file:
        load_transformer(tmp_path / "wan", shapes)
    assert isinstance(missing_file.value, ConfigError)  # Commands report it in one line.

    shutil.rmtree(tmp_path / "wan")
    folder = _copy(tmp_path)
    _rewrite(folder, lambda t: t.pop("blocks.1.attn2.norm_k.weight"))
    with pytest.raises(CheckpointError, match=r"'blocks.1.attn2.norm_k.weight' is missing"):
        load_transformer(folder, shapes)

    _rewrite(folder, lambda t: t.update({"blocks.1.attn2.norm_k.weight": np.ones(32, np.float32)}))
    _rewrite(folder, lambda t: t.update({"blocks.1.ffn.net.0.proj.weight": np.ones((41, 32), np.float32)}))
    with pytest.raises(CheckpointError, match=r"'blocks.1.ffn.net.0.proj.weight'.*\(41, 32\).*\(40, 32\)"):
        load_transformer(folder, shapes)


def test_clear_errors_for_an_unknown_or_unsupported_config(tmp_path):
    folder = _copy(tmp_path)
    settings = json.loads((folder / "config.json").read_text())
    for change, message in (
        ({"window_size": [-1, -1]}, "key 'window_size' is not a Wan 2.1 transformer setting"),
        ({"image_dim": 1280}, "key 'image_dim' is 1280: an image embedder"),
        ({"added_kv_proj_dim": 5120}, "key 'added_kv_proj_dim'"),
    ):
        (folder / "config.json").write_text(json.dumps(settings | change))
        with pytest.raises(ConfigError, match=message) as error:
            transformer_config(tmp_path / "wan")
        assert str(folder / "config.json") in str(error.value)
