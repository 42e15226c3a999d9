"""Loading Hugging Face-format directories: weight-name variants and the errors users see."""

import json

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from sora_jax.text.encoder import load_text_encoder
from sora_jax.text.hf_loading import CheckpointError
from sora_jax.text.tiny import write_tiny_bert, write_tiny_t5

CAPTIONS = ["a red ball rolls across the field", "two birds"]


def test_tiny_bert_matches_transformers_reference(tmp_path, tiny_reference):
    encoder = load_text_encoder(write_tiny_bert(tmp_path / "bert"))
    ref_mask = tiny_reference["tiny_bert/mask"]
    token_ids, mask = encoder.tokenize([str(c) for c in tiny_reference["captions"]], ref_mask.shape[1])
    np.testing.assert_array_equal(token_ids, tiny_reference["tiny_bert/token_ids"])
    hidden = np.asarray(encoder.encode_tokens(token_ids, mask))
    diff = np.abs(hidden - tiny_reference["tiny_bert/hidden"])[ref_mask]
    assert diff.max() < 1e-4, f"max abs diff {diff.max():.2e}"


def test_bert_names_with_task_prefix_and_legacy_layer_norm_load_the_same(tmp_path):
    plain = load_text_encoder(write_tiny_bert(tmp_path / "plain"))
    legacy = load_text_encoder(write_tiny_bert(tmp_path / "legacy", prefix="bert.", legacy_norm_names=True))
    np.testing.assert_array_equal(
        np.asarray(plain.encode(CAPTIONS, 12)[0]), np.asarray(legacy.encode(CAPTIONS, 12)[0])
    )


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        load_text_encoder(tmp_path / "no_such_model")


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "model.safetensors"])
def test_missing_file_is_named(tmp_path, name):
    directory = write_tiny_t5(tmp_path / "t5")
    (directory / name).unlink()
    with pytest.raises(FileNotFoundError, match=name.split(".")[0]):
        load_text_encoder(directory)


def test_missing_shard_is_named(tmp_path):
    directory = write_tiny_t5(tmp_path / "t5", shards=2)
    (directory / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors"):
        load_text_encoder(directory)


def test_unsupported_model_type(tmp_path):
    directory = write_tiny_t5(tmp_path / "t5")
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps(config | {"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="unsupported model_type 'gpt2'.*supported: .*'bert'"):
        load_text_encoder(directory)


def test_missing_weight_is_named(tmp_path):
    directory = write_tiny_t5(tmp_path / "t5", "t5_v1_1")
    weights = load_file(directory / "model.safetensors")
    del weights["encoder.block.1.layer.1.DenseReluDense.wi_1.weight"]
    save_file(weights, directory / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"'encoder\.block\.1\.layer\.1\.DenseReluDense\.wi_1\.weight'"):
        load_text_encoder(directory)


def test_bfloat16_checkpoint_is_read(tmp_path, tiny_reference):
    # Large checkpoints are often stored in bfloat16, which numpy cannot name.
    directory = write_tiny_t5(tmp_path / "t5", "t5_v1_1")
    weights = load_file(directory / "model.safetensors")
    save_file({k: v.astype(ml_dtypes.bfloat16) for k, v in weights.items()}, directory / "model.safetensors")
    encoder = load_text_encoder(directory)  # Parameters become float32.
    hidden, _ = encoder.encode([str(c) for c in tiny_reference["captions"]], max_tokens=24)
    ref_mask = tiny_reference["t5_v1_1/mask"]
    diff = np.abs(np.asarray(hidden) - tiny_reference["t5_v1_1/hidden"])[ref_mask]
    assert hidden.dtype == np.float32 and 1e-5 < diff.mean() < 2e-2, (
        diff.mean()
    )  # Rounded weights, same model.


def test_misshapen_weight_is_named(tmp_path):
    directory = write_tiny_t5(tmp_path / "t5")
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps(config | {"d_ff": 64}))
    with pytest.raises(
        CheckpointError,
        match=r"DenseReluDense\.wi_\d\.weight. has shape \(40, 32\) in the checkpoint.*implies \(64, 32\)",
    ):
        load_text_encoder(directory)


def test_unsupported_setting_is_named(tmp_path):
    directory = write_tiny_bert(tmp_path / "bert")
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps(config | {"position_embedding_type": "relative_key"}))
    with pytest.raises(ValueError, match="relative_key"):
        load_text_encoder(directory)
