"""all-MiniLM-L6-v2 (a BERT-family encoder) against PyTorch transformers / sentence-transformers."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from sora_jax.text.encoder import load_text_encoder, mean_pool


def logical_names(params: nnx.State) -> dict[tuple, tuple]:
    return {path: tuple(spec.get_value()) for path, spec in nnx.to_flat_state(nnx.get_partition_spec(params))}


def test_minilm_shapes_dtypes_and_axis_names(minilm):
    hidden, mask = minilm.encode(["a red ball bounces on the floor", "waves"], max_tokens=16)
    assert hidden.shape == (2, 16, 384) and hidden.dtype == jnp.float32
    assert mask.shape == (2, 16) and mask.dtype == jnp.bool_
    # [CLS] a red ball bounces on the floor [SEP] ("bounces" is two word pieces); [CLS] waves [SEP].
    np.testing.assert_array_equal(np.asarray(mask).sum(1), [10, 3])
    assert np.all(np.isfinite(np.asarray(hidden)))
    names = logical_names(minilm.params)
    assert names[("word_embed", "embedding")] == ("vocab", "embed")
    assert names[("layers", 0, "attention", "query", "kernel")] == ("embed", "heads")
    assert names[("layers", 5, "attention", "out", "kernel")] == ("heads", "embed")
    assert names[("layers", 3, "mlp_in", "kernel")] == ("embed", "mlp")
    assert names[("layers", 3, "mlp_out", "kernel")] == ("mlp", "embed")


def test_minilm_matches_transformers_reference(minilm, minilm_reference):
    captions = [str(c) for c in minilm_reference["captions"]]
    ref_mask = minilm_reference["mask"]
    length = ref_mask.shape[1]
    token_ids, mask = minilm.tokenize(captions, max_tokens=length)
    np.testing.assert_array_equal(token_ids, minilm_reference["token_ids"])
    np.testing.assert_array_equal(mask, ref_mask)
    # Padded further than the reference was: the real tokens' states must not move.
    for max_tokens in (length, 32):
        hidden, mask = minilm.encode(captions, max_tokens=max_tokens)
        hidden = np.asarray(hidden)[:, :length]
        diff = np.abs(hidden - minilm_reference["hidden"])[ref_mask]
        assert diff.max() < 1e-4, f"max abs diff {diff.max():.2e} at max_tokens={max_tokens}"


def test_minilm_sentence_embedding_matches_sentence_transformers(minilm, minilm_reference):
    captions = [str(c) for c in minilm_reference["captions"]]
    hidden, mask = minilm.encode(captions, max_tokens=32)
    pooled = np.asarray(mean_pool(hidden, mask))
    pooled = pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)  # The model's Normalize module.
    np.testing.assert_allclose(pooled, minilm_reference["sentence_embedding"], rtol=0, atol=1e-5)


def test_padding_never_changes_real_token_states(minilm):
    caption = "a small green cube slides across a wooden table"
    alone, alone_mask = minilm.encode([caption], max_tokens=14)
    n = int(np.asarray(alone_mask).sum())
    batched, _ = minilm.encode([caption, "a much longer caption " * 5], max_tokens=40)
    np.testing.assert_allclose(np.asarray(batched)[0, :n], np.asarray(alone)[0, :n], rtol=0, atol=1e-5)
    # Whatever ids sit in the padding, masked keys are never attended to.
    token_ids, mask = minilm.tokenize([caption], max_tokens=24)
    scrambled = np.where(mask, token_ids, np.random.default_rng(0).integers(1000, 2000, token_ids.shape))
    reference = np.asarray(minilm.encode_tokens(token_ids, mask))[0, :n]
    np.testing.assert_allclose(
        np.asarray(minilm.encode_tokens(scrambled, mask))[0, :n], reference, rtol=0, atol=1e-5
    )
    # ... while unmasking them does change the states: the mask is what protects them.
    assert (
        np.abs(np.asarray(minilm.encode_tokens(scrambled, np.ones_like(mask)))[0, :n] - reference).max()
        > 1e-2
    )


def test_truncation_keeps_the_closing_special_token(minilm):
    token_ids, mask = minilm.tokenize(
        ["one two three four five six seven eight nine ten", "hi"], max_tokens=6
    )
    assert token_ids.shape == (2, 6) and token_ids.dtype == np.int32
    np.testing.assert_array_equal(token_ids[0], [101, 2028, 2048, 2093, 2176, 102])  # [CLS] one..four [SEP]
    np.testing.assert_array_equal(mask, [[1] * 6, [1, 1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(token_ids[1, 3:], [0, 0, 0])  # [PAD]


def test_bfloat16_load_stays_close_to_reference(minilm_dir, minilm_reference):
    encoder = load_text_encoder(minilm_dir, dtype=jnp.bfloat16)
    captions = [str(c) for c in minilm_reference["captions"]]
    ref_mask = minilm_reference["mask"]
    hidden, _ = encoder.encode(captions, max_tokens=ref_mask.shape[1])
    assert hidden.dtype == jnp.bfloat16
    assert jax_dtype_of(encoder.params) == {jnp.dtype(jnp.bfloat16)}
    diff = np.abs(np.asarray(hidden, np.float32) - minilm_reference["hidden"])[ref_mask]
    assert diff.mean() < 1e-2 and diff.max() < 0.1, (diff.mean(), diff.max())


def jax_dtype_of(params: nnx.State) -> set:
    return {jnp.dtype(v.get_value().dtype) for _, v in nnx.to_flat_state(params)}
