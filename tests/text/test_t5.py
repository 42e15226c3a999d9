"""T5-family encoders: tiny random T5 / T5 v1.1 / UMT5 checkpoints against PyTorch transformers."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sora_jax.text.encoder import load_text_encoder
from sora_jax.text.t5 import relative_position_bucket
from sora_jax.text.tiny import tiny_t5_config, tiny_t5_weights, write_tiny_t5


def test_relative_position_buckets_match_transformers(tiny_reference):
    offsets = tiny_reference["buckets_32_128/offsets"]
    np.testing.assert_array_equal(
        relative_position_bucket(offsets, num_buckets=32, max_distance=128),
        tiny_reference["buckets_32_128/buckets"],
    )


@pytest.mark.parametrize("variant", ["t5", "t5_v1_1", "umt5"])
def test_tiny_t5_matches_transformers_reference(tmp_path, tiny_reference, variant):
    config = tiny_t5_config(variant)
    # The reference was computed from these very weights: the generator must not have changed.
    assert tiny_t5_weights(config)["shared.weight"].sum() == tiny_reference[f"{variant}/shared_weight_sum"]
    # UMT5 is written as two shards with an index, as save_pretrained writes large models.
    directory = write_tiny_t5(tmp_path / variant, variant, shards=2 if variant == "umt5" else 1)
    encoder = load_text_encoder(directory)
    captions = [str(c) for c in tiny_reference["captions"]]
    ref_mask = tiny_reference[f"{variant}/mask"]
    token_ids, mask = encoder.tokenize(captions, max_tokens=ref_mask.shape[1])
    np.testing.assert_array_equal(token_ids, tiny_reference[f"{variant}/token_ids"])
    np.testing.assert_array_equal(mask, ref_mask)
    hidden, mask = encoder.encode(captions, max_tokens=ref_mask.shape[1])
    assert hidden.shape == (3, 24, config["d_model"]) and hidden.dtype == jnp.float32
    diff = np.abs(np.asarray(hidden) - tiny_reference[f"{variant}/hidden"])[ref_mask]
    assert diff.max() < 1e-4, f"max abs diff {diff.max():.2e}"


def test_t5_structure_follows_the_variant(tmp_path):
    names = {}
    for variant in ("t5", "t5_v1_1", "umt5"):
        encoder = load_text_encoder(write_tiny_t5(tmp_path / variant, variant))
        specs = nnx.get_partition_spec(encoder.params)
        names[variant] = {path: tuple(s.get_value()) for path, s in nnx.to_flat_state(specs)}
    bias_table = ("blocks", 1, "attention", "bias_table", "embedding")
    gate = ("blocks", 0, "mlp_gate", "kernel")
    assert bias_table not in names["t5"] and bias_table not in names["t5_v1_1"]  # Shared from block 0.
    assert names["umt5"][bias_table] == (None, "heads")  # One table per block.
    assert gate not in names["t5"] and names["t5_v1_1"][gate] == ("embed", "mlp")
    assert names["t5"][("embed", "embedding")] == ("vocab", "embed")
    assert names["t5"][("blocks", 0, "attention", "out", "kernel")] == ("heads", "embed")


def test_tiny_t5_bfloat16(tmp_path, tiny_reference):
    encoder = load_text_encoder(write_tiny_t5(tmp_path / "t5", "t5_v1_1"), dtype=jnp.bfloat16)
    captions = [str(c) for c in tiny_reference["captions"]]
    hidden, _ = encoder.encode(captions, max_tokens=24)
    assert hidden.dtype == jnp.bfloat16
    ref_mask = tiny_reference["t5_v1_1/mask"]
    diff = np.abs(np.asarray(hidden, np.float32) - tiny_reference["t5_v1_1/hidden"])[ref_mask]
    assert diff.mean() < 1.5e-2 and diff.max() < 0.1, (diff.mean(), diff.max())
