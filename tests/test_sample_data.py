"""Tests for sslsearch.sample_data and the `sslsearch sample-data` command."""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sslsearch.cli.app import app
from sslsearch.errors import InvalidArgumentError, OutputExistsError
from sslsearch.sample_data import (CLASSES, DUPLICATE_EDITS, NEAR_DUPLICATES_FILE, make_sample_dataset,
                                   read_near_duplicate_edits, read_near_duplicates)
from sslsearch.sources import list_images, load_image


def _hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_sample_dir_fixture(sample_dataset, sample_dir: Path) -> None:
    assert sample_dir == sample_dataset.root
    source = list_images(sample_dir)
    assert len(source) == sample_dataset.n_images == 120
    assert source.classes == CLASSES == sample_dataset.classes
    counts = {c: sum(r.label == c for r in source.records) for c in CLASSES}
    assert min(counts.values()) >= 9
    assert len(sample_dataset.near_duplicates) == 6
    suffixes = {Path(p).suffix for p in source.paths}
    assert suffixes == {".png", ".jpg"}
    # the root holds only the class folders and the ground-truth CSV
    assert sorted(p.name for p in sample_dir.iterdir()) == sorted([*CLASSES, NEAR_DUPLICATES_FILE])
    for record in source.records:
        decoded = load_image(source.abs_path(record))
        assert decoded.image.mode == "RGB"


def test_ground_truth_csv_matches_files(sample_dataset, sample_dir: Path) -> None:
    with open(sample_dir / NEAR_DUPLICATES_FILE, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["original", "copy", "edits"]
    assert tuple((a, b) for a, b, _ in rows[1:]) == sample_dataset.near_duplicates == read_near_duplicates(sample_dir)
    edits = read_near_duplicate_edits(sample_dir)
    assert set(edits) == set(sample_dataset.near_duplicates)
    assert all(1 <= len(names) <= 2 and set(names) <= set(DUPLICATE_EDITS) for names in edits.values())
    paths = set(list_images(sample_dir).paths)
    copies = [copy for _, copy in sample_dataset.near_duplicates]
    originals = [original for original, _ in sample_dataset.near_duplicates]
    assert len(set(copies)) == len(copies) and len(set(originals)) == len(originals)
    assert not set(copies) & set(originals)
    for original, copy in sample_dataset.near_duplicates:
        assert original in paths and copy in paths
        assert original.split("/")[0] == copy.split("/")[0]  # same class folder
        a = np.asarray(load_image(sample_dir / original).image.resize((32, 32))).astype(np.float32)
        b = np.asarray(load_image(sample_dir / copy).image.resize((32, 32))).astype(np.float32)
        cosine = float((a.ravel() @ b.ravel()) / np.linalg.norm(a) / np.linalg.norm(b))
        assert cosine > 0.9, (original, copy, cosine)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    first = make_sample_dataset(tmp_path / "a", n_images=40, image_size=24, seed=3, duplicate_fraction=0.1)
    second = make_sample_dataset(tmp_path / "b", n_images=40, image_size=24, seed=3, duplicate_fraction=0.1)
    other = make_sample_dataset(tmp_path / "c", n_images=40, image_size=24, seed=4, duplicate_fraction=0.1)
    assert _hashes(first.root) == _hashes(second.root)
    assert first.near_duplicates == second.near_duplicates
    assert len(first.near_duplicates) == 4
    assert set(_hashes(first.root).values()) & set(_hashes(other.root).values()) == set()
    assert len(list_images(first.root)) == 40


def test_no_duplicates_and_argument_checks(tmp_path: Path) -> None:
    data = make_sample_dataset(tmp_path / "d", n_images=20, image_size=16, duplicate_fraction=0.0)
    assert data.near_duplicates == ()
    assert read_near_duplicates(data.root / NEAR_DUPLICATES_FILE) == ()
    with pytest.raises(InvalidArgumentError, match="n_images"):
        make_sample_dataset(tmp_path / "e", n_images=5)
    with pytest.raises(InvalidArgumentError, match="image_size"):
        make_sample_dataset(tmp_path / "e", image_size=8)
    with pytest.raises(InvalidArgumentError, match="duplicate_fraction"):
        make_sample_dataset(tmp_path / "e", duplicate_fraction=0.9)
    assert not (tmp_path / "e").exists()


def test_refuses_non_empty_output_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        make_sample_dataset(out, n_images=10, image_size=16)
    assert (out / "keep.txt").read_text() == "mine"
    data = make_sample_dataset(out, n_images=10, image_size=16, overwrite=True)
    assert not (out / "keep.txt").exists()
    assert len(list_images(data.root)) == 10
    empty = tmp_path / "empty"
    empty.mkdir()
    assert len(list_images(make_sample_dataset(empty, n_images=10, image_size=16).root)) == 10
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left behind
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputExistsError, match="is a file"):
        make_sample_dataset(tmp_path / "afile", n_images=10, image_size=16)


def test_raw_pixels_are_a_weak_knn_baseline(tmp_path: Path) -> None:
    """Colour/background are nuisances: leave-one-out cosine 1-NN on raw pixels stays far below 70 %."""
    data = make_sample_dataset(tmp_path / "knn", n_images=300, image_size=32, duplicate_fraction=0.0)
    source = list_images(data.root)
    features = np.stack([np.asarray(load_image(source.abs_path(r)).image, np.float32).ravel()
                         for r in source.records])
    labels = np.array([r.label for r in source.records])
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    similarity = features @ features.T
    np.fill_diagonal(similarity, -np.inf)
    accuracy = float((labels[similarity.argmax(1)] == labels).mean())
    assert accuracy < 0.5


def test_cli_sample_data(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["sample-data", "--help"])
    assert result.exit_code == 0
    assert "--n-images" in result.output and "near-duplicate" in result.output

    out = tmp_path / "cli"
    result = runner.invoke(app, ["sample-data", str(out), "--n-images", "30", "--image-size", "16", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "wrote 30 images" in result.output and "2 near-duplicate pairs" in result.output
    assert len(list_images(out)) == 30

    result = runner.invoke(app, ["sample-data", str(out), "--n-images", "30", "--image-size", "16"])
    assert result.exit_code != 0
    assert isinstance(result.exception, OutputExistsError)

    result = runner.invoke(app, ["sample-data", str(out), "--n-images", "20", "--image-size", "16",
                                 "--overwrite", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["n_images"] == 20 and summary["n_classes"] == 10 and summary["n_near_duplicate_pairs"] == 1
    assert Path(summary["root"]) == out.resolve() or Path(summary["root"]) == out.absolute()


def test_cli_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sslsearch.cli.app import main

    with pytest.raises(SystemExit) as info:
        main(["sample-data", str(tmp_path), "--n-images", "3"])
    assert info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: n_images=3 is too small") and "\n" not in err
