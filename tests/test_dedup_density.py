"""Density-adjusted dedup scores: neighbour backgrounds, the adjustment, and what it changes in a run."""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sslsearch.dedup import deduplicate, similar_pairs
from sslsearch.dedup.density import DensityAdjustment, background_of, resolve_score
from sslsearch.errors import InvalidArgumentError, UnknownNameError

from test_dedup import DIM, SPEC, _near, _unit, make_store, noise_image


def _unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("method", ["exact", "partitioned"])
def test_graph_records_each_rows_nearest_similarities(method: str) -> None:
    vectors = _unit_rows(600, 8, 0)
    pairs = similar_pairs(vectors, 0.5, neighbors=6, method=method, record_neighbors=6)
    full = vectors @ vectors.T
    np.fill_diagonal(full, -np.inf)
    expected = -np.sort(-full, axis=1)[:, :6]
    recorded = pairs.neighbor_similarity
    assert recorded.shape == (600, 6) and np.all(np.diff(recorded, axis=1) <= 1e-6)
    if method == "exact":
        np.testing.assert_allclose(recorded, expected, atol=1e-5)
    else:  # approximate: the nearest mostly exact, the others close, none above the truth
        assert np.mean(np.abs(recorded[:, 0] - expected[:, 0]) < 1e-5) > 0.9
        assert np.mean(np.abs(recorded - expected)) < 0.01 and np.all(recorded <= expected + 1e-5)
    assert similar_pairs(vectors, 0.5, neighbors=6, method=method).neighbor_similarity is None


def test_background_skips_sure_duplicates_and_padding() -> None:
    rows = np.array([[0.999, 0.998, 0.9, 0.8, 0.7], [0.9, 0.8, np.nan, np.nan, np.nan], [0.99, 0.5, 0.4, 0.3, 0.2]])
    np.testing.assert_allclose(background_of(rows, 2, 0.995), [0.8, 0.8, 0.5])
    np.testing.assert_allclose(background_of(rows, 3, 2.0), [0.9, np.nan, 0.4])
    with pytest.raises(InvalidArgumentError, match="2-D"):
        background_of(np.zeros(3), 1, 1.0)


def test_adjustment_is_neutral_at_typical_density_and_bounded_by_its_cosine_floor() -> None:
    rng = np.random.default_rng(1)
    near = -np.sort(-rng.uniform(0.3, 0.95, (200, 8)), axis=1).astype(np.float32)
    adjust = DensityAdjustment.from_neighbors(near, rank=5)
    typical = np.float32(adjust.reference)
    assert adjust.score(np.array([0.9]), np.array([typical]), np.array([typical]))[0] == pytest.approx(0.9, abs=1e-6)
    assert adjust.score(np.array([0.9]), np.array([0.95]), np.array([0.95]))[0] < 0.9  # dense: needs a closer match
    assert adjust.score(np.array([0.9]), np.array([0.3]), np.array([0.3]))[0] > 0.9  # sparse
    first, second = rng.integers(0, 200, (2, 5000))
    similarity = rng.uniform(0, 1, 5000).astype(np.float32)
    scores = adjust.pair_scores(first, second, similarity)
    for floor in (0.6, 0.8, 0.9):
        assert similarity[scores >= floor].min() >= adjust.cosine_floor(floor) - 1e-6
    # fewer neighbours than the rank: no adjustment at all
    none = DensityAdjustment.from_neighbors(np.full((3, 2), np.nan, np.float32), rank=5)
    np.testing.assert_allclose(none.pair_scores(np.array([0]), np.array([1]), np.array([0.7])), [0.7])


def test_resolve_score() -> None:
    assert resolve_score("auto", threshold_given=False, against=False) == "verified"
    assert resolve_score("auto", threshold_given=False, against=False, images=10_000_000) == "adjusted"
    assert resolve_score("auto", threshold_given=True, against=False) == "cosine"
    assert resolve_score("auto", threshold_given=False, against=True) == "cosine"
    assert resolve_score("adjusted", threshold_given=True, against=False) == "adjusted"
    with pytest.raises(UnknownNameError, match="cosine"):
        resolve_score("cosin", threshold_given=False, against=False)
    with pytest.raises(InvalidArgumentError, match="--against"):
        resolve_score("adjusted", threshold_given=False, against=True)
    with pytest.raises(InvalidArgumentError, match="--against"):
        resolve_score("verified", threshold_given=False, against=True)


def test_adjusted_score_separates_a_copy_from_a_dense_group_of_look_alikes(tmp_path: Path) -> None:
    """Ten unrelated look-alikes at cosine ~0.95 to each other, and one real copy at 0.93 in a sparse
    region: no cosine threshold gets the copy without the look-alikes; the adjusted score does."""
    rng = np.random.default_rng(3)
    center = _unit(rng, 1)[0]
    dense = [_near(center, 0.975, rng) for _ in range(10)]  # pairwise cosine ~0.95
    sparse = list(_unit(rng, 30))
    copy = _near(sparse[0], 0.93, rng)
    vectors = np.stack(dense + sparse + [copy])
    images = {f"img_{i:02d}.png": noise_image(i) for i in range(len(vectors))}
    store = make_store(tmp_path, images, vectors)
    copy_pair = {f"img_{10:02d}.png", f"img_{len(vectors) - 1:02d}.png"}

    cosine = deduplicate(store, tmp_path / "cosine", threshold=0.9, score="cosine")
    assert any(len(c) > 2 for c in cosine.clusters)  # the look-alikes join
    adjusted = deduplicate(store, tmp_path / "adjusted", threshold=0.9, score="adjusted")
    assert [{m.path for m in c.members} for c in adjusted.clusters] == [copy_pair]
    assert adjusted.summary["threshold"]["score"] == "adjusted"
    assert adjusted.summary["threshold"]["density"]["rank"] == 5
    assert DIM == vectors.shape[1]


@pytest.fixture(scope="module")
def images_with_a_burst(sample_dir, tmp_path_factory) -> Path:
    """The sample folder plus 24 lightly re-encoded, resized copies of one image (a burst)."""
    root = tmp_path_factory.mktemp("burst") / "images"
    shutil.copytree(sample_dir, root)
    first = sorted(root.glob("circle/*.png"))[0]
    image = Image.open(first).convert("RGB")
    rng = np.random.default_rng(0)
    for i in range(24):
        side = int(round(image.width * rng.uniform(0.9, 1.1)))
        buffer = io.BytesIO()
        image.resize((side, side), Image.BICUBIC).save(buffer, format="JPEG", quality=int(rng.integers(75, 96)))
        (root / "circle" / f"zz_burst_{i:02d}.jpg").write_bytes(buffer.getvalue())
    return root


@pytest.mark.parametrize("score", ["cosine", "adjusted"])
def test_a_big_cluster_of_copies_stays_together_with_a_calibrated_threshold(images_with_a_burst, tmp_path: Path,
                                                                            score: str) -> None:
    """More copies of one picture than the calibration's nearest-rank rule looks at, and than the density
    rank: they are sure duplicates, not false pairs (calibration) nor each other's background (density)."""
    from sslsearch.dedup.convenience import deduplicate_images

    result = deduplicate_images(images_with_a_burst, SPEC, tmp_path / "dups", image_size=32, workers=0,
                                device="cpu", sample_size=60, score=score)
    burst = [c for c in result.clusters if any("zz_burst" in m.path for m in c.members)]
    assert len(burst) == 1 and sum("zz_burst" in m.path for m in burst[0].members) == 24
    assert result.threshold.score == score
