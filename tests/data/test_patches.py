import dataclasses

import numpy as np
import pytest

from sora_jax.data.packing import PackedClip, pack_rows, unpack_clip
from sora_jax.data.patches import grid_size, patchify, unpatchify
from sora_jax.data.tokenizer import START_ID, WordTokenizer


@pytest.mark.parametrize(
    "shape, patch",
    [((8, 16, 24, 3), (2, 4, 4)), ((1, 8, 8, 3), (2, 4, 4)), ((5, 12, 8, 4), (2, 2, 4))],
)
def test_patchify_round_trip(shape, patch):
    clip = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    patches, positions = patchify(clip, patch)
    grid = grid_size(*shape[:3], patch)
    assert patches.shape == (np.prod(grid), np.prod(patch) * shape[3])
    assert positions.max(axis=0).tolist() == [g - 1 for g in grid]
    np.testing.assert_array_equal(unpatchify(patches, grid, patch, shape[0]), clip)


def test_patch_holds_a_contiguous_spacetime_block():
    clip = np.arange(4 * 8 * 8).reshape(4, 8, 8, 1).astype(np.float32)
    patches, positions = patchify(clip, (2, 4, 4))
    t, h, w = positions[5]
    block = clip[2 * t : 2 * t + 2, 4 * h : 4 * h + 4, 4 * w : 4 * w + 4].reshape(-1)
    np.testing.assert_array_equal(patches[5], block)


def test_patchify_rejects_sizes_off_the_patch_grid():
    with pytest.raises(ValueError, match="multiple of the patch"):
        patchify(np.zeros((2, 10, 8, 3)), (1, 4, 4))


def _clip(tokens: int, caption: int, value: float) -> PackedClip:
    return PackedClip(
        patches=np.full((tokens, 6), value, np.float32),
        positions=np.zeros((tokens, 3), np.int32),
        grid=(1, 1, tokens),
        frames=1,
        fps=4.0,
        text_tokens=np.arange(1, caption + 1, dtype=np.int32),
    )


def test_pack_rows_lays_out_segments_and_metadata():
    batch = pack_rows(
        [[_clip(3, 2, 1.0), _clip(4, 3, 2.0)], [_clip(9, 1, 3.0)]],
        seq_len=10,
        patch_dim=6,
        max_clips=3,
        text_len=6,
    )
    assert batch["segment_ids"][0].tolist() == [1, 1, 1, 2, 2, 2, 2, 0, 0, 0]
    assert batch["text_segment_ids"][0].tolist() == [1, 1, 2, 2, 2, 0]
    assert batch["text_positions"][0].tolist() == [0, 1, 0, 1, 2, 0]
    assert batch["clip_grid"][0].tolist() == [[1, 1, 3], [1, 1, 4], [0, 0, 0]]
    np.testing.assert_array_equal(unpack_clip(batch, 0, 2), np.full((4, 6), 2.0))
    np.testing.assert_array_equal(unpack_clip(batch, 1, 1), np.full((9, 6), 3.0))


def test_pack_rows_refuses_overfull_rows():
    with pytest.raises(ValueError, match="overflows"):
        pack_rows([[_clip(6, 1, 0.0), _clip(6, 1, 0.0)]], seq_len=10, patch_dim=6, max_clips=3, text_len=6)


def test_tokenizer_is_deterministic_and_bounded():
    tokenizer = WordTokenizer(64)
    ids = tokenizer.encode("A small red ball falls, and bounces twice.", max_tokens=5)
    assert ids[0] == START_ID and len(ids) == 5
    assert ids.tolist() == tokenizer.encode("a small RED ball falls", 5).tolist()
    assert (ids[1:] >= 2).all() and (ids < 64).all()
    assert tokenizer.encode("", 8).tolist() == [START_ID]


def test_pack_rows_lays_out_caption_states_beside_their_tokens():
    clips = [dataclasses.replace(_clip(3, 2, 1.0), text_embedding=np.full((2, 4), 7.0, np.float32))]
    clips.append(dataclasses.replace(_clip(2, 3, 2.0), text_embedding=np.full((3, 4), 8.0, np.float32)))
    batch = pack_rows([clips], seq_len=10, patch_dim=6, max_clips=3, text_len=6, text_dim=4)
    assert batch["text_embeddings"].shape == (1, 6, 4)
    assert batch["text_embeddings"][0, :, 0].tolist() == [7, 7, 8, 8, 8, 0]
    with pytest.raises(ValueError, match="caption embedding"):
        pack_rows([[_clip(3, 2, 1.0)]], seq_len=10, patch_dim=6, max_clips=3, text_len=6, text_dim=4)
