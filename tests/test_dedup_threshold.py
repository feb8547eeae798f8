"""dedup/threshold.py (pure threshold maths) and dedup/copies.py (calibration I/O), split out of calibrate.py."""
from __future__ import annotations

import doctest

import numpy as np
import pytest
from PIL import Image

import sslsearch.dedup.calibrate as calibrate
import sslsearch.dedup.copies as copies
import sslsearch.dedup.threshold as threshold
from sslsearch.errors import InputNotFoundError, InvalidArgumentError


def test_calibrate_re_exports_the_moved_names() -> None:
    for name in ("SURE_COPY_QUANTILE", "StoreFalsePairRate", "choose_store_threshold", "choose_threshold",
                 "precision_recall", "store_precision", "sure_duplicate_similarity"):
        assert getattr(calibrate, name) is getattr(threshold, name), name
    for name in ("DEFAULT_SAMPLE_SIZE", "EMBED_BATCH", "MAX_COPIES_PER_IMAGE", "EditedCopies", "make_edited_copies"):
        assert getattr(calibrate, name) is getattr(copies, name), name
    assert set(calibrate.__all__) <= set(dir(calibrate))


def test_threshold_examples() -> None:
    failed, attempted = doctest.testmod(threshold, raise_on_error=False, verbose=False)
    assert attempted >= 3 and failed == 0


@pytest.mark.parametrize("negatives, queries, store_images, at, expected", [
    ([0.91], 10, 100, 0.9, 5.0),  # 1 false neighbour per 10 images above 0.9: 100 images form 5 pairs
    ([0.91], 10, 100, 0.95, 0.0),
    ([0.99, 0.96, 0.91], 2, 10, 0.95, 5.0),
    ([], 0, 10, 0.5, 0.0),  # no queries: no false pairs, not a division by zero
])
def test_store_false_pair_rate(negatives, queries, store_images, at, expected) -> None:
    rate = threshold.StoreFalsePairRate(np.array(negatives, np.float32), queries, store_images)
    assert float(rate.false_pairs(at)) == pytest.approx(expected)


def test_sure_duplicate_similarity_is_the_quantile() -> None:
    cosines = np.linspace(0.8, 1.0, 101)
    assert threshold.sure_duplicate_similarity(cosines) == pytest.approx(0.8 + 0.2 * threshold.SURE_COPY_QUANTILE)


class _PixelEncoder:
    """A stand-in encoder: the mean colour of each image, as a unit vector."""

    dim = 3

    def embed_pil(self, images: list[Image.Image]) -> np.ndarray:
        means = np.array([np.asarray(image, np.float32).reshape(-1, 3).mean(0) + 1 for image in images], np.float32)
        return means / np.linalg.norm(means, axis=1, keepdims=True)


def test_make_edited_copies_reads_edits_and_embeds(tmp_path) -> None:
    paths = []
    for i in range(6):
        path = tmp_path / f"img_{i}.png"
        Image.new("RGB", (24, 24), (40 * i, 200 - 30 * i, 90)).save(path)
        paths.append(path)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    made = copies.make_edited_copies([*paths, tmp_path / "broken.png"], _PixelEncoder(), sample_size=10, seed=1)
    again = copies.make_edited_copies([*paths, tmp_path / "broken.png"], _PixelEncoder(), sample_size=10, seed=1)
    assert np.array_equal(made.rows, again.rows) and np.allclose(made.vectors, again.vectors)  # seeded
    assert len(made.rows) >= 10 and made.vectors.shape == (len(made.rows), 3) and made.unreadable <= 1
    assert set(made.rows.tolist()) <= set(range(6))
    store = _PixelEncoder().embed_pil([Image.open(p).convert("RGB") for p in paths])
    store = np.vstack([store, np.zeros((1, 3), np.float32)])
    assert np.all(made.cosines(store) > 0.9)  # edited copies stay close to their originals
    with pytest.raises(InvalidArgumentError, match="sample size"):
        copies.make_edited_copies(paths, _PixelEncoder(), sample_size=0)
    with pytest.raises(InputNotFoundError, match="none of the"):
        copies.make_edited_copies([tmp_path / "broken.png"], _PixelEncoder(), sample_size=3)
