"""MAE masking, patchify, loss and decoder positions against hand-written references on tiny tensors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sslsearch.errors import InvalidArgumentError
from sslsearch.ssl.heads.mae_decoder import MAEDecoder, default_decoder_heads, sincos_position_embedding
from sslsearch.ssl.losses.mae import (gather_tokens, mae_loss, normalized_patch_targets, patchify, random_patch_mask,
                                      unpatchify, visible_patch_count)


def reference_patch(images: torch.Tensor, b: int, n: int, p: int) -> list[float]:
    """Pixels of patch n (row-major) of image b, ordered (row, column, channel), by explicit loops."""
    columns = images.shape[3] // p
    top, left = (n // columns) * p, (n % columns) * p
    return [float(images[b, c, top + i, left + j]) for i in range(p) for j in range(p) for c in range(images.shape[1])]


def reference_loss(predictions: torch.Tensor, images: torch.Tensor, mask: torch.Tensor, p: int, norm: bool) -> float:
    """The paper's loss written out: mean over masked patches of the mean squared pixel error."""
    total, count = 0.0, 0.0
    for b in range(images.shape[0]):
        for n in range(mask.shape[1]):
            if mask[b, n] == 0:
                continue
            target = reference_patch(images, b, n, p)
            if norm:
                mean = sum(target) / len(target)
                variance = sum((t - mean) ** 2 for t in target) / (len(target) - 1)  # unbiased, as torch.var
                target = [(t - mean) / (variance + 1e-6) ** 0.5 for t in target]
            errors = [(float(predictions[b, n, k]) - target[k]) ** 2 for k in range(len(target))]
            total += sum(errors) / len(errors)
            count += 1
    return total / count


def test_patchify_matches_explicit_loops_and_inverts() -> None:
    images = torch.randn(2, 3, 4, 6)
    patches = patchify(images, 2)
    assert patches.shape == (2, 6, 12)
    for b in range(2):
        for n in range(6):
            assert patches[b, n].tolist() == pytest.approx(reference_patch(images, b, n, 2))
    assert torch.equal(unpatchify(patches, 2, (2, 3)), images)


@pytest.mark.parametrize("norm", [False, True])
def test_loss_matches_reference_on_masked_patches_only(norm: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 4, 4, generator=generator)
    predictions = torch.randn(2, 4, 12, generator=generator)
    mask = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    loss = mae_loss(predictions, images, mask, 2, norm_pixel_loss=norm)
    assert float(loss) == pytest.approx(reference_loss(predictions, images, mask, 2, norm), rel=1e-5)
    visible_changed = predictions.clone()
    visible_changed[mask == 0] += 100.0  # predictions of visible patches do not count
    assert float(mae_loss(visible_changed, images, mask, 2, norm_pixel_loss=norm)) == pytest.approx(float(loss))


def test_normalized_targets_have_zero_mean_unit_variance_per_patch() -> None:
    patches = torch.randn(3, 5, 48) * 7 + 3
    targets = normalized_patch_targets(patches)
    torch.testing.assert_close(targets.mean(-1), torch.zeros(3, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(targets.var(-1), torch.ones(3, 5), atol=1e-4, rtol=0)


def test_random_mask_matches_reference_argsort() -> None:
    mask = random_patch_mask(3, 16, 0.75, generator=torch.Generator().manual_seed(5))
    noise = torch.rand(3, 16, generator=torch.Generator().manual_seed(5))
    assert mask.visible_count == 4 and mask.keep.shape == (3, 4) and mask.restore.shape == (3, 16)
    for b in range(3):
        order = sorted(range(16), key=lambda n: float(noise[b, n]))  # the 4 lowest-noise patches are kept
        assert mask.keep[b].tolist() == order[:4]
        assert mask.mask[b].tolist() == [0.0 if n in order[:4] else 1.0 for n in range(16)]
    # visible tokens followed by mask tokens, gathered with `restore`, land back in patch order
    positions = torch.arange(16).repeat(3, 1)
    visible = torch.gather(positions, 1, mask.keep)
    masked = torch.full((3, 12), -1)
    restored = torch.gather(torch.cat([visible, masked], dim=1), 1, mask.restore)
    expected = torch.where(mask.mask.bool(), torch.full_like(positions, -1), positions)
    assert torch.equal(restored, expected)


def test_masks_differ_per_sample_and_follow_the_global_rng() -> None:
    torch.manual_seed(1)
    first = random_patch_mask(8, 64, 0.75)
    torch.manual_seed(1)
    again = random_patch_mask(8, 64, 0.75)
    assert torch.equal(first.keep, again.keep)
    assert len({tuple(sorted(row.tolist())) for row in first.keep}) == 8
    assert float(first.mask.sum()) == 8 * 48


def test_gather_tokens_selects_per_sample() -> None:
    tokens = torch.arange(2 * 5 * 3).reshape(2, 5, 3)
    picked = gather_tokens(tokens, torch.tensor([[4, 0], [1, 1]]))
    assert picked.tolist() == [[tokens[0, 4].tolist(), tokens[0, 0].tolist()], [tokens[1, 1].tolist()] * 2]


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5, 0.99])
def test_bad_mask_ratios_are_one_line_errors(ratio: float) -> None:
    with pytest.raises(InvalidArgumentError, match="mask_ratio") as info:
        visible_patch_count(16, ratio)
    assert "\n" not in str(info.value)


def test_visible_count_follows_the_paper() -> None:
    assert visible_patch_count(196, 0.75) == 49 and visible_patch_count(64, 0.75) == 16
    assert visible_patch_count(16, 0.5) == 8


def reference_sincos(dim: int, size: int) -> np.ndarray:
    """get_2d_sincos_pos_embed of the MAE reference code (facebookresearch/mae util/pos_embed.py), numpy."""
    def one_dim(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    grid_h, grid_w = np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape(2, 1, size, size)
    return np.concatenate([one_dim(dim // 2, grid[0]), one_dim(dim // 2, grid[1])], axis=1)


def test_sincos_positions_match_the_reference_code() -> None:
    ours = sincos_position_embedding(32, (5, 5)).numpy()
    np.testing.assert_allclose(ours, reference_sincos(32, 5), rtol=1e-5, atol=1e-6)


def test_decoder_shapes_positions_and_heads() -> None:
    decoder = MAEDecoder(64, (4, 4), 8, width=32, depth=1, heads=2, prefix_tokens=1)
    mask = random_patch_mask(2, 16, 0.75, generator=torch.Generator().manual_seed(0))
    predictions = decoder(torch.randn(2, 1 + 4, 64), mask.restore)
    assert predictions.shape == (2, 16, 8 * 8 * 3) and predictions.dtype == torch.float32
    assert "position_embedding" not in decoder.state_dict()  # fixed, rebuilt from the grid
    assert not decoder.position_embedding[0, 0].any()  # the class token gets no position
    assert default_decoder_heads(512) == 16 and default_decoder_heads(192) == 6 and default_decoder_heads(40) == 1
