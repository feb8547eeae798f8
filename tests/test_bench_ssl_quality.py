"""benchmarks/bench_ssl_quality.py on real sets: cross-source recall@10 and reading a set of real_sets.py."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_ssl_quality.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_ssl_quality", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_cross_source_recall_counts_only_same_label_images_of_other_sources(bench) -> None:
    labels = np.array(["A", "A", "B", "B", "C"])
    sources = np.array(["s1", "s2", "s1", "s2", "s1"])
    vectors = np.array([[1.0, 0.0, 0.0], [0.99, 0.1, 0.0],   # A/s1 and A/s2: each other's neighbour → hits
                        [0.0, 1.0, 0.0], [0.0, 0.0, 1.0],    # B/s1 and B/s2: nearest is C (k=1: misses)
                        [0.0, 0.9, 0.1]], dtype=np.float32)  # C has no other source: left out
    assert bench.cross_source_recall(vectors, labels, sources, k=1) == pytest.approx(2 / 4)
    # a same-label neighbour from the SAME source is not a hit (class recall would count it)
    labels_2 = np.array(["A", "A", "A", "B"])
    sources_2 = np.array(["s1", "s1", "s2", "s1"])
    vectors_2 = np.array([[1.0, 0.0], [0.99, 0.1],  # A/s1 twice: each other's nearest → misses
                          [0.0, 1.0], [0.7, 0.7]], dtype=np.float32)  # A/s2's nearest is B → miss; B: left out
    assert bench.cross_source_recall(vectors_2, labels_2, sources_2, k=1) == pytest.approx(0.0)
    assert bench.cross_source_recall(vectors_2, labels_2, sources_2, k=3) == pytest.approx(1.0)


def test_a_real_set_is_read_from_labels_csv_and_a_missing_one_says_how_to_build_it(bench, tmp_path: Path) -> None:
    root = tmp_path / "real"
    folder = root / "glyphs"
    rows = []
    for label in ("upper-A", "digit-1"):
        for source in ("FontOne", "FontTwo"):
            path = folder / "images" / label / f"{source}__{label}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), "white").save(path)
            rows.append(f"images/{label}/{source}__{label}.png,{label},{source}")
    (folder / "labels.csv").write_text("path,label,source\n" + "\n".join(rows) + "\n")
    images_dir, images, labels, sources = bench.load_real_set(root, "glyphs")
    assert images_dir == folder / "images" and len(images) == 4 and images[0].size == (8, 8)
    assert list(labels) == ["upper-A", "upper-A", "digit-1", "digit-1"]
    assert list(sources) == ["FontOne", "FontTwo", "FontOne", "FontTwo"]
    with pytest.raises(SystemExit, match=r"python benchmarks/real_sets.py build --out .* --sets icons"):
        bench.load_real_set(root, "icons")
