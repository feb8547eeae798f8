"""deduplicate(): planted duplicates → clusters, keep/remove lists, summary; bad input; --against; CLI."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sslsearch.dedup import deduplicate
from sslsearch.dedup.convenience import deduplicate_images
from sslsearch.errors import (EncoderMismatchError, InvalidArgumentError, OutputExistsError, StoreError,
                              UnknownNameError)
from sslsearch.store import StoreWriter

ENCODER = {"id": "enc-test0000000000", "spec": "test:planted", "source": {}}
SPEC = "timm:test_resnet"  # timm's tiny test network: real embedding and calibration, fast
DIM = 16


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _near(vector: np.ndarray, similarity: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector with the given cosine similarity to ``vector``."""
    noise = rng.standard_normal(DIM)
    noise -= (noise @ vector) * vector
    noise /= np.linalg.norm(noise)
    return similarity * vector + np.sqrt(1 - similarity**2) * noise


def make_store(root: Path, images: dict[str, Image.Image | bytes], vectors: np.ndarray, *, encoder=ENCODER,
               name: str = "emb") -> Path:
    """Write the images under ``root/images`` and a store of ``vectors`` (row i = i-th sorted path)."""
    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    paths = sorted(images)
    widths, heights, hashes = [], [], []
    for path in paths:
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        item = images[path]
        if isinstance(item, bytes):
            target.write_bytes(item)
        else:
            item.save(target)
        with Image.open(target) as opened:
            widths.append(opened.width)
            heights.append(opened.height)
        hashes.append(hashlib.sha256(target.read_bytes()).hexdigest())
    store = root / name
    writer = StoreWriter(store, dim=DIM, dtype="float32", encoder=encoder, source_root=folder,
                         extra_columns=("width", "height", "sha256"))
    writer.write(np.arange(len(paths)), paths, np.asarray(vectors, np.float32), width=widths, height=heights,
                 sha256=hashes)
    writer.close()
    return store


def noise_image(seed: int, size: tuple[int, int] = (24, 24)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, dict[str, set[str]]]:
    """A store of 20 images with planted duplicate groups; returns (store, {keeper: members})."""
    rng = np.random.default_rng(0)
    images: dict[str, Image.Image | bytes] = {f"img_{i:02d}.png": noise_image(i) for i in range(20)}
    images["img_03.png"] = noise_image(3, (48, 40))  # the largest of its group: the keeper
    images["img_17.png"] = noise_image(1000, (24, 24))
    pixels = noise_image(77)
    images["img_10.png"] = pixels
    images["img_11.bmp"] = pixels  # same pixels in another container
    del images["img_11.png"]
    png = (tmp_path / "scratch.png")
    noise_image(55).save(png)
    images["img_14.png"] = png.read_bytes()
    images["img_15.png"] = png.read_bytes()  # the same file twice
    vectors = _unit(rng, 20)
    order = sorted(images)
    row = {name: i for i, name in enumerate(order)}
    base = vectors[row["img_03.png"]]
    vectors[row["img_05.png"]] = _near(base, 0.97, rng)
    vectors[row["img_09.png"]] = _near(base, 0.96, rng)
    vectors[row["img_17.png"]] = _near(vectors[row["img_02.png"]], 0.95, rng)
    vectors[row["img_11.bmp"]] = vectors[row["img_10.png"]]
    vectors[row["img_15.png"]] = _near(vectors[row["img_14.png"]], 0.5, rng)  # joined by the file hash alone
    store = make_store(tmp_path, images, vectors)
    groups = {"img_03.png": {"img_03.png", "img_05.png", "img_09.png"}, "img_02.png": {"img_02.png", "img_17.png"},
              "img_10.png": {"img_10.png", "img_11.bmp"}, "img_14.png": {"img_14.png", "img_15.png"}}
    return store, groups


def read_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line]


def test_clusters_on_planted_duplicates(planted, tmp_path: Path) -> None:
    store, groups = planted
    result = deduplicate(store, tmp_path / "dups", threshold=0.9)
    found = {c.keeper.path: {m.path for m in c.members} for c in result.clusters}
    assert found == groups
    by_path = {m.path: m for c in result.clusters for m in c.members}
    assert by_path["img_15.png"].match == "file" and by_path["img_11.bmp"].match == "pixels"
    assert by_path["img_05.png"].match == "near" and by_path["img_05.png"].similarity == pytest.approx(0.97, abs=1e-4)
    assert by_path["img_03.png"].keep and by_path["img_03.png"].match == "keeper"
    assert result.clusters[0].keeper.path == "img_03.png"  # largest cluster first

    table = pq.read_table(tmp_path / "dups" / "clusters.parquet").to_pylist()
    assert len(table) == 9 and {r["path"] for r in table} == set().union(*groups.values())
    assert {r["cluster_id"] for r in table} == {0, 1, 2, 3}
    assert sum(r["keep"] for r in table) == 4
    keep, remove = read_lines(tmp_path / "dups" / "keep.txt"), read_lines(tmp_path / "dups" / "remove.txt")
    assert len(keep) == 15 and len(remove) == 5 and not set(keep) & set(remove)
    assert all(Path(p).is_absolute() and Path(p).exists() for p in keep + remove)
    assert {Path(p).name for p in remove} == {"img_05.png", "img_09.png", "img_17.png", "img_11.bmp", "img_15.png"}
    summary = json.loads((tmp_path / "dups" / "summary.json").read_text())
    assert summary["images"] == 20 and summary["clusters"] == 4 and summary["removed"] == 5
    assert summary["removed_by_match"] == {"file": 1, "pixels": 1, "near": 3}
    assert summary["threshold"] == {"value": 0.9, "method": "given", "score": "cosine", "density": None,
                                    "calibration": None}
    assert summary["graph"]["method"] == "exact" and summary["seconds"]["total"] >= 0
    assert not (tmp_path / "dups" / "report.html").exists()


def test_threshold_one_keeps_only_exact_duplicates(planted, tmp_path: Path) -> None:
    store, groups = planted
    result = deduplicate(store, tmp_path / "dups", threshold=1.0, method="partitioned")
    assert {c.keeper.path: {m.path for m in c.members} for c in result.clusters} == {
        "img_10.png": groups["img_10.png"], "img_14.png": groups["img_14.png"]}


def test_keep_policy_option(planted, tmp_path: Path) -> None:
    store, _ = planted
    result = deduplicate(store, tmp_path / "dups", threshold=0.9, keep="first")
    assert {c.keeper.path for c in result.clusters} == {"img_03.png", "img_02.png", "img_10.png", "img_14.png"}
    assert result.clusters[0].members[0].id == min(m.id for m in result.clusters[0].members)
    with pytest.raises(UnknownNameError, match="keep policy"):
        deduplicate(store, tmp_path / "other", threshold=0.9, keep="biggest")


@pytest.mark.parametrize("threshold", [0.0, -0.2, 1.01, float("nan")])
def test_threshold_out_of_range(planted, tmp_path: Path, threshold: float) -> None:
    with pytest.raises(InvalidArgumentError, match=r"\(0, 1\]"):
        deduplicate(planted[0], tmp_path / "dups", threshold=threshold)
    assert not (tmp_path / "dups").exists()


def test_existing_output_is_refused_unless_overwrite(planted, tmp_path: Path) -> None:
    store, _ = planted
    out = tmp_path / "dups"
    deduplicate(store, out, threshold=0.9, report=True)
    before = (out / "summary.json").read_text()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        deduplicate(store, out, threshold=0.95)
    assert (out / "summary.json").read_text() == before
    result = deduplicate(store, out, threshold=0.999, overwrite=True)
    assert len(result.clusters) == 2
    assert not (out / "report.html").exists()  # the stale report of the first run is gone
    assert not list(out.glob(".*tmp")) and not (out / ".sslsearch.lock").exists()


def test_empty_single_and_identical_stores(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    StoreWriter(empty, dim=DIM, dtype="float32", encoder=ENCODER, source_root=tmp_path).close()
    with pytest.raises(StoreError, match="no images"):
        deduplicate(empty, tmp_path / "d0")

    single = make_store(tmp_path / "one", {"a.png": noise_image(1)}, _unit(np.random.default_rng(1), 1))
    result = deduplicate(single, tmp_path / "d1")  # no threshold needed, no encoder rebuilt
    assert result.clusters == () and result.threshold.method == "not needed"
    assert len(read_lines(tmp_path / "d1" / "keep.txt")) == 1 and read_lines(tmp_path / "d1" / "remove.txt") == []

    same = noise_image(9)
    vector = _unit(np.random.default_rng(2), 1)
    identical = make_store(tmp_path / "same", {f"copy_{i}.png": same for i in range(6)}, np.repeat(vector, 6, axis=0))
    result = deduplicate(identical, tmp_path / "d2", threshold=0.99, neighbors=2)
    assert len(result.clusters) == 1 and len(result.clusters[0]) == 6
    assert result.clusters[0].keeper.path == "copy_0.png" and result.removed == 5


def test_report_shows_placeholder_for_missing_image(planted, tmp_path: Path) -> None:
    store, _ = planted
    (store.parent / "images" / "img_09.png").unlink()
    result = deduplicate(store, tmp_path / "dups", threshold=0.9, report=True)
    page = result.report.read_text()
    assert page.count('class="cluster"') == 4 and page.count('data-missing="1"') == 1
    assert page.count("data:image/jpeg;base64,") == 8
    assert "http://" not in page and "https://" not in page  # self-contained
    by_path = {m.path: m for c in result.clusters for m in c.members}
    assert by_path["img_09.png"].size_bytes == -1 and not by_path["img_09.png"].keep


def test_calibration_of_embedding_scores_needs_a_rebuildable_encoder(planted, tmp_path: Path) -> None:
    with pytest.raises(EncoderMismatchError, match="--threshold"):
        deduplicate(planted[0], tmp_path / "dups", precision=0.99, score="adjusted")
    # the verified score (the default) calibrates on pixels alone: no encoder needed
    result = deduplicate(planted[0], tmp_path / "dups-verified", precision=0.99)
    assert result.threshold.score == "verified" and result.threshold.method == "calibrated"
    with pytest.raises(InvalidArgumentError, match="--precision"):
        deduplicate(planted[0], tmp_path / "dups", precision=1.0)


# ----------------------------------------------------------------------------- --against


def write_index(directory: Path, store: Path) -> Path:
    """An exact (flat) index over ``store`` built with ``sslsearch.index.build_index``."""
    from sslsearch.index import build_index

    build_index(store, directory, kind="flat", device="cpu", progress=False)
    return directory


def test_against_an_existing_index(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    old_vectors = _unit(rng, 12)
    old = make_store(tmp_path / "old", {f"old_{i:02d}.png": noise_image(100 + i) for i in range(12)}, old_vectors)
    index = write_index(tmp_path / "idx", old)
    new_vectors = _unit(rng, 6)
    new_vectors[0] = _near(old_vectors[4], 0.97, rng)  # new_00 duplicates old_04
    new_vectors[1] = _near(old_vectors[4], 0.95, rng)  # so does new_01
    new_vectors[2] = _near(old_vectors[7], 0.98, rng)  # new_02 duplicates old_07
    new_vectors[5] = _near(new_vectors[3], 0.96, rng)  # new_03 and new_05: duplicates among the new images
    new = make_store(tmp_path / "new", {f"new_{i:02d}.png": noise_image(200 + i) for i in range(6)}, new_vectors)
    result = deduplicate(new, tmp_path / "dups", threshold=0.9, against=index, report=True)
    found = {(c.keeper.source, c.keeper.path): {(m.source, m.path) for m in c.members} for c in result.clusters}
    assert found == {
        ("index", "old_04.png"): {("index", "old_04.png"), ("store", "new_00.png"), ("store", "new_01.png")},
        ("index", "old_07.png"): {("index", "old_07.png"), ("store", "new_02.png")},
        ("store", "new_03.png"): {("store", "new_03.png"), ("store", "new_05.png")},
    }
    members = {m.path: m for c in result.clusters for m in c.members}
    assert members["new_00.png"].similarity == pytest.approx(0.97, abs=1e-4) and not members["new_00.png"].keep
    assert members["old_04.png"].keep and members["old_04.png"].size_bytes > 0
    remove = {Path(p).name for p in read_lines(tmp_path / "dups" / "remove.txt")}
    assert remove == {"new_00.png", "new_01.png", "new_02.png", "new_05.png"}
    assert len(read_lines(tmp_path / "dups" / "keep.txt")) == 2  # new_03, new_04: index items are not listed
    summary = json.loads((tmp_path / "dups" / "summary.json").read_text())
    assert summary["against"]["new_images_duplicating_index"] == 3 and summary["against"]["ntotal"] == 12
    assert result.report.read_text().count("INDEX") >= 2

    shutil.move(old, tmp_path / "moved")  # the index's store is gone: ids and edge similarities only
    result = deduplicate(new, tmp_path / "dups_moved", threshold=0.9, against=index, report=True)
    members = {(m.source, m.id): m for c in result.clusters for m in c.members}
    assert members[("index", 4)].path == "" and members[("index", 4)].keep
    assert members[("store", 0)].similarity == pytest.approx(0.97, abs=1e-4)
    assert "in the index" in result.report.read_text()
    shutil.move(tmp_path / "moved", old)

    other = dict(ENCODER, id="enc-other000000000", spec="timm:other")
    foreign_store = make_store(tmp_path / "foreign", {f"f_{i}.png": noise_image(300 + i) for i in range(12)}, old_vectors,
                               encoder=other)
    foreign = write_index(tmp_path / "idx2", foreign_store)
    with pytest.raises(EncoderMismatchError, match="timm:other"):
        deduplicate(new, tmp_path / "dups2", threshold=0.9, against=foreign)


# ----------------------------------------------------------------------------- real images, encoder, CLI


@pytest.fixture(scope="module")
def images_with_copies(sample_dir, tmp_path_factory) -> Path:
    """The sample folder plus a byte-identical copy and a re-saved (BMP) copy of one image."""
    root = tmp_path_factory.mktemp("dedup_images") / "images"
    shutil.copytree(sample_dir, root)
    first = sorted(root.glob("circle/*.png"))[0]
    shutil.copy(first, root / "circle" / "zz_same_bytes.png")
    Image.open(first).save(root / "circle" / "zz_resaved.bmp")
    return root


def test_embed_then_dedup_with_calibration(images_with_copies, tmp_path: Path) -> None:
    out = tmp_path / "dups"
    result = deduplicate_images(images_with_copies, SPEC, out, image_size=32, workers=0, device="cpu",
                                sample_size=40, report=True)
    assert (out / "embeddings" / "manifest.json").is_file()
    # the verified score (the default with a calibrated threshold) reads like a cosine
    assert result.threshold.method == "calibrated" and result.threshold.score == "verified"
    assert 0 < result.threshold.value <= 1
    exact = [c for c in result.clusters if any(m.path.startswith("circle/zz_") for m in c.members)]
    assert len(exact) == 1
    matches = {m.path: m.match for m in exact[0].members}
    original = sorted(p.relative_to(images_with_copies).as_posix() for p in images_with_copies.glob("circle/*.png"))[0]
    trio = [matches[original], matches["circle/zz_same_bytes.png"], matches["circle/zz_resaved.bmp"]]
    assert trio.count("keeper") == 1 and all(kind in ("keeper", "file", "pixels") for kind in trio)
    assert exact[0].keeper.path == "circle/zz_resaved.bmp"  # same resolution, larger file
    summary = json.loads((out / "summary.json").read_text())
    calibration = summary["threshold"]["calibration"]
    assert calibration["copies"] == 40 and 0 <= calibration["estimated_recall"] <= 1
    with pytest.raises(OutputExistsError):
        deduplicate_images(images_with_copies, SPEC, out, image_size=32)


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run the CLI in this process; (exit code, stdout, stderr)."""
    from sslsearch.cli.app import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def test_cli_dedup(images_with_copies, tmp_path: Path, capsys) -> None:
    from sslsearch.embed import embed_images

    store = tmp_path / "emb"
    embed_images(images_with_copies, SPEC, store, image_size=32, workers=0, device="cpu")
    code, out, _ = run_cli(["dedup", str(store), "--out", str(tmp_path / "dups"), "--threshold", "0.999", "--report",
                            "--json"], capsys)
    summary = json.loads(out)
    assert code == 0 and summary["threshold"]["method"] == "given" and summary["clusters"] >= 1
    assert (tmp_path / "dups" / "report.html").is_file()
    code, _, err = run_cli(["dedup", str(store), "--out", str(tmp_path / "dups"), "--threshold", "0.999"], capsys)
    assert code == 1 and "--overwrite" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["dedup", str(images_with_copies), "--out", str(tmp_path / "d2")], capsys)
    assert code == 1 and "--encoder" in err
    code, _, err = run_cli(["dedup", str(store), "--out", str(tmp_path / "d3"), "--threshold", "2"], capsys)
    assert code == 1 and "(0, 1]" in err
    code, out, _ = run_cli(["dedup", str(images_with_copies), "--encoder", SPEC, "--image-size", "32", "--out",
                            str(tmp_path / "d4"), "--sample", "30", "--keep", "first"], capsys)
    assert code == 0 and "calibrated for precision 0.99" in out and "remove" in out
    assert (tmp_path / "d4" / "embeddings" / "manifest.json").is_file()
