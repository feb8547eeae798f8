"""Threshold choice (table tests), the edits, and calibration on generated copies of real images."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sslsearch.dedup.calibrate import (StoreFalsePairRate, calibrate_threshold, check_precision, choose_store_threshold,
                                      choose_threshold, precision_recall, store_precision)
from sslsearch.dedup.graph import similar_pairs
from sslsearch.dedup.edits import EDITS, edited_copy
from sslsearch.encoders import create_encoder
from sslsearch.errors import InputNotFoundError, InvalidArgumentError
from sslsearch.sources import list_images, load_image


@pytest.mark.parametrize("positives,negatives,target,expected,reached", [
    ([0.95, 0.9, 0.8], [0.85, 0.5], 0.99, 0.875, True),  # stop before the first false pair
    ([0.95, 0.9, 0.8], [0.5], 0.99, 0.65, True),  # every true pair, halfway to the next score
    ([0.95, 0.9, 0.8], [], 0.99, 0.8, True),  # nothing below: the lowest true pair
    ([0.95, 0.9, 0.8, 0.7], [0.85], 0.6, 0.7, True),  # precision 2/3 at 0.85 is enough: all true pairs
    ([0.95, 0.9, 0.8, 0.7], [0.85], 0.7, 0.875, True),  # 2/3 < 0.7 at 0.85: stop above, though 0.8 at 0.7
    ([0.9, 0.8], [0.99], 0.9, 0.8, False),  # a false pair above everything: most precise, then best recall
    ([0.9, 0.9, 0.6], [0.9, 0.3], 0.65, 0.45, True),  # tied scores are decided together (2/3 at 0.9)
    ([0.9, 0.9, 0.6], [0.9, 0.3], 0.7, 0.45, False),  # 2/3 < 0.7 at the top: the most precise, 3/4
    ([0.9, 0.85, 0.84], [0.86, 0.1], 0.5, 0.47, True),  # precision 0.5 at the dip is enough: all three
])
def test_choose_threshold(positives: list[float], negatives: list[float], target: float, expected: float,
                          reached: bool) -> None:
    threshold, ok = choose_threshold(np.array(positives), np.array(negatives), target)
    assert threshold == pytest.approx(expected, abs=1e-6)
    assert ok is reached


def test_chosen_threshold_meets_the_target_when_reached() -> None:
    rng = np.random.default_rng(0)
    positives = rng.normal(0.93, 0.03, 300)
    negatives = rng.normal(0.6, 0.1, 5000)
    for target in (0.9, 0.99, 0.999):
        threshold, reached = choose_threshold(positives, negatives, target)
        precision, recall = precision_recall(positives, negatives, threshold)
        assert reached and precision >= target
        lower_precision, lower_recall = precision_recall(positives, negatives, threshold - 0.02)
        assert lower_recall >= recall


def test_precision_recall_edges() -> None:
    assert precision_recall(np.array([0.5]), np.array([0.2]), 0.9) == (1.0, 0.0)
    assert precision_recall(np.array([]), np.array([]), 0.9) == (1.0, 0.0)


@pytest.mark.parametrize("value", [0.0, 1.0, -0.5, 1.5, float("nan")])
def test_precision_out_of_range(value: float) -> None:
    with pytest.raises(InvalidArgumentError, match="--precision"):
        check_precision(value)


def test_edits_are_deterministic_and_visible() -> None:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8), "RGB")
    seen = set()
    for seed in range(40):
        a, names_a = edited_copy(image, np.random.default_rng(seed))
        b, names_b = edited_copy(image, np.random.default_rng(seed))
        assert names_a == names_b and a.tobytes() == b.tobytes() and a.mode == "RGB"
        assert 1 <= len(names_a) <= 3
        assert a.size != image.size or a.tobytes() != image.tobytes()
        seen.update(names_a)
    assert seen == set(EDITS)


@pytest.fixture(scope="module")
def embedded_sample(sample_dir):
    """(vectors, absolute paths, encoder) of the shared sample folder at 32 px."""
    encoder = create_encoder("timm:test_resnet", image_size=32, device="cpu")
    source = list_images(sample_dir)
    paths = [source.abs_path(r) for r in source.records]
    vectors = encoder.embed_pil([load_image(p).image for p in paths])
    return vectors, paths, encoder


def test_calibration_on_generated_copies(embedded_sample) -> None:
    vectors, paths, encoder = embedded_sample
    result = calibrate_threshold(vectors, paths, encoder, precision=0.95, sample_size=60, seed=3)
    assert 0.0 < result.threshold <= 1.0
    assert result.copies == 60 and result.images == 60 and result.unreadable == 0
    assert result.negatives > 0
    assert 0.0 <= result.estimated_recall <= 1.0
    if result.reached:
        assert result.estimated_precision >= 0.95
    again = calibrate_threshold(vectors, paths, encoder, precision=0.95, sample_size=60, seed=3)
    assert again.threshold == result.threshold and again.estimated_recall == result.estimated_recall
    stricter = calibrate_threshold(vectors, paths, encoder, precision=0.999, sample_size=60, seed=3)
    assert stricter.threshold >= result.threshold
    data = result.to_dict()
    assert data["curve"] and {"threshold", "precision", "recall"} <= set(data["curve"][0])


def test_store_false_pairs_scale_with_the_store() -> None:
    # 2 of 4 query images have a false neighbour at >= 0.9: half an image each, so 1000 images form 250 pairs
    rate = StoreFalsePairRate(np.array([0.95, 0.92, 0.5]), queries=4, store_images=1000)
    assert rate.false_pairs(0.9) == 250 and rate.false_pairs(0.99) == 0 and rate.false_pairs(0.4) == 375


@pytest.mark.parametrize("pairs,threshold,expected", [
    ([0.99, 0.98, 0.97, 0.96], 0.95, 1.0),  # no false neighbour at or above 0.95
    ([0.99, 0.98, 0.97, 0.96], 0.9, 0.5),  # 2 predicted false pairs among the 4 found
    ([0.99], 0.9, 0.0),  # more predicted false pairs than found: clipped at 0
    ([0.8], 0.9, 1.0),  # nothing found at the threshold
])
def test_store_precision(pairs: list[float], threshold: float, expected: float) -> None:
    rate = StoreFalsePairRate(np.array([0.92]), queries=50, store_images=200)  # 200 / 50 / 2 = 2 pairs >= 0.92
    assert store_precision(np.array(pairs), rate, threshold) == pytest.approx(expected)


@pytest.mark.parametrize("positives,negatives,target,expected,reached", [
    ([0.99, 0.97, 0.93, 0.9], [0.92], 0.9, 0.93, True),  # 0.9 takes in 2 predicted false pairs: stop at 0.93
    ([0.99, 0.97, 0.93, 0.9], [0.5], 0.9, 0.9, True),  # no false neighbour that high: every copy
    ([0.99, 0.97], [0.995], 0.9, 0.97, False),  # 2 false pairs above every copy: the most precise (1/3 at 0.97)
])
def test_choose_store_threshold(positives: list[float], negatives: list[float], target: float, expected: float,
                                reached: bool) -> None:
    pairs = np.array([0.99, 0.98, 0.97, 0.96, 0.95, 0.94, 0.93, 0.91, 0.9, 0.9])  # the store's pairs, descending
    rate = StoreFalsePairRate(np.array(negatives), queries=50, store_images=200)
    threshold, ok = choose_store_threshold(np.array(positives), pairs, rate, target)
    assert threshold == pytest.approx(expected) and ok is reached


def test_store_calibration_uses_the_store_pairs(embedded_sample) -> None:
    vectors, paths, encoder = embedded_sample
    floors = []

    def store_pairs(floor: float) -> np.ndarray:
        floors.append(floor)
        return similar_pairs(vectors, floor, neighbors=8, method="exact", device="cpu", progress=False).similarity

    copies = calibrate_threshold(vectors, paths, encoder, precision=0.95, sample_size=60, seed=3)
    store = calibrate_threshold(vectors, paths, encoder, precision=0.95, sample_size=60, seed=3,
                                store_pairs=store_pairs)
    assert copies.method == "copies" and store.method == "store" and store.store_pairs > 0
    assert len(floors) == 1 and floors[0] <= store.threshold
    # the store estimate is the one reported, and it meets the target it was chosen for
    assert store.reached and store.estimated_precision >= 0.95
    assert 0.0 <= store.copy_precision <= 1.0 and 0.0 < store.estimated_recall <= 1.0


def test_calibration_small_store_makes_several_copies_per_image(embedded_sample) -> None:
    vectors, paths, encoder = embedded_sample
    result = calibrate_threshold(vectors[:10], paths[:10], encoder, sample_size=30, seed=0)
    assert result.images == 10 and result.copies == 30


def test_calibration_skips_missing_images_and_fails_when_none_can_be_read(embedded_sample, tmp_path) -> None:
    vectors, paths, encoder = embedded_sample
    gone = [tmp_path / f"gone_{i}.png" for i in range(len(paths))]
    mixed = [gone[i] if i % 2 else p for i, p in enumerate(paths)]
    result = calibrate_threshold(vectors, mixed, encoder, sample_size=20, seed=1)
    assert result.unreadable > 0 and result.images == 20
    with pytest.raises(InputNotFoundError, match="--threshold"):
        calibrate_threshold(vectors, gone, encoder, sample_size=20)
    with pytest.raises(InvalidArgumentError, match="paths"):
        calibrate_threshold(vectors, paths[:-1], encoder)


def test_a_close_unrelated_image_counts_as_a_false_pair() -> None:
    """An original's neighbour less similar than its own copies is a false pair, even when some other
    image's copy is harsher (a low quantile of all copies once hid such pairs as "duplicates": a weak
    encoder's estimate said precision 1.0 where 0.70 was measured). A neighbour closer than its own
    copy is a probable duplicate already in the data."""
    from sslsearch.dedup.calibrate import _compare

    dim = 32
    basis = np.eye(dim, dtype=np.float32)

    def mix(a: int, b: int, similarity: float) -> np.ndarray:
        return similarity * basis[a] + np.sqrt(1 - similarity ** 2) * basis[b]

    # stored: originals 0..5 on axes 0..5; image 6 is 0.92 from original 0 (unrelated but close);
    # image 7 is 0.99 from original 1 (a real duplicate, closer than original 1's copy)
    stored = np.stack([basis[i] for i in range(6)] + [mix(0, 20, 0.92), mix(1, 21, 0.99)])
    rows = np.arange(6)
    copy_similarity = np.array([0.97, 0.97, 0.97, 0.97, 0.97, 0.80])  # image 5's copy is a harsh edit
    copies = np.stack([mix(i, 10 + i, s) for i, s in enumerate(copy_similarity)]).astype(np.float32)
    compared = _compare(stored, rows, copies, copy_similarity, None)
    store_pairs, ambiguous = compared.store_negatives, compared.ambiguous
    kept = np.concatenate([store_pairs, compared.copy_negatives])
    assert np.isclose(store_pairs, 0.92, atol=1e-3).sum() == 1  # original 0 ↔ image 6: a false store pair
    assert not np.isclose(kept, 0.99, atol=1e-3).any() and ambiguous >= 1  # original 1 ↔ image 7 left out
