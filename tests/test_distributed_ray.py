"""Tests for sslsearch.distributed: Ray Data extraction vs the local engine, bad files, resume, refusals, the CLI."""
from __future__ import annotations

import io
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslsearch.cli.app import main
from sslsearch.distributed.blocks import BlockReceipt, plan_blocks, receipt_name, slot_batches
from sslsearch.embed import embed_images
from sslsearch.errors import BadImageError, InvalidArgumentError, SSLSearchError, StoreError
from sslsearch.location import StoreLocation
from sslsearch.sources import list_images
from sslsearch.store import EmbeddingStore

from ray_helpers import local_ray

SPEC = "timm:test_resnet"
SHARD_ROWS = 8  # a multiple of BATCH: both engines then send the encoder the same batches
BATCH = 4


def make_folder(root: Path, n: int = 22) -> Path:
    """``n`` random 32x32 images in 2 class folders plus three bad files (empty, text, truncated)."""
    rng = np.random.default_rng(3)
    for i in range(n):
        folder = root / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
            folder / f"img_{i:03d}.{'jpg' if i % 5 == 0 else 'png'}")
    (root / "c0" / "bad_empty.png").write_bytes(b"")
    (root / "c1" / "bad_text.png").write_text("not an image")
    jpeg = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(jpeg, "JPEG")
    (root / "c1" / "img_cut.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    return root


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray for the module (~5 s to start); workers import this checkout's sslsearch."""
    yield from local_ray()


@pytest.fixture(scope="module")
def one_forward_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("ray") / "images")


@pytest.fixture(scope="module")
def local_store(images, tmp_path_factory, one_forward_thread) -> EmbeddingStore:
    out = tmp_path_factory.mktemp("local") / "emb"
    embed_images(images, SPEC, out, image_size=32, batch_size=BATCH, shard_rows=SHARD_ROWS, workers=0, device="cpu",
                 progress=False)
    return EmbeddingStore.open(out)


@pytest.fixture(scope="module")
def ray_store(images, tmp_path_factory, ray_cluster, one_forward_thread) -> Path:
    """A store written through the CLI with --engine ray (the test below checks its exit code)."""
    out = tmp_path_factory.mktemp("ray") / "emb"
    with pytest.raises(SystemExit) as exit_info:
        main(["embed", str(images), "--encoder", SPEC, "--out", str(out), "--image-size", "32", "--batch-size",
              str(BATCH), "--shard-rows", str(SHARD_ROWS), "--device", "cpu", "--engine", "ray", "--workers", "2"])
    assert exit_info.value.code in (0, None)
    return out


# --------------------------------------------------------------------------- pure parts (no Ray)


def test_slot_batches_follow_global_slots():
    assert slot_batches([6, 7, 8, 9, 10], 4) == [[0, 1], [2, 3, 4]]
    assert slot_batches([], 4) == []


def test_plan_blocks_cut_ids_into_shard_sized_ranges(images):
    source = list_images(images)
    blocks = plan_blocks(source, SHARD_ROWS)
    assert [b.block for b in blocks] == list(range(len(blocks)))
    assert [i for b in blocks for i in b.ids] == list(range(len(source)))
    assert all(b.ids[0] == b.block * SHARD_ROWS and len(b.ids) <= SHARD_ROWS for b in blocks)
    assert [p for b in blocks for p in b.paths] == source.paths


def test_location_writes_atomically_and_lists(tmp_path):
    location = StoreLocation.parse(f"file://{tmp_path}/out")
    location.make_dirs()
    assert location.write_bytes_atomic("a.json", b"{}") == 2
    with pytest.raises(RuntimeError):
        location.write_atomic("b.json", lambda stream: (stream.write(b"half"), (_ for _ in ()).throw(RuntimeError("x"))))
    assert location.list() == ["a.json"]  # no b.json, no temporary file left
    assert StoreLocation.parse(tmp_path / "out").list() == ["a.json"]


def test_missing_ray_is_one_line_error(monkeypatch):
    from sslsearch.distributed import ray_embed

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ray_embed.RayNotInstalledError, match=r"pip install 'sslsearch\[ray\]'"):
        ray_embed.import_ray()


# --------------------------------------------------------------------------- on a local Ray cluster


def test_ray_store_equals_local_store(ray_store, local_store):
    ray = EmbeddingStore.open(ray_store)
    mine, theirs = ray.read_all(("id", "embedding", "path", "label", "sha256")), \
        local_store.read_all(("id", "embedding", "path", "label", "sha256"))
    np.testing.assert_array_equal(mine.ids, theirs.ids)
    np.testing.assert_array_equal(mine.embeddings, theirs.embeddings)  # same batches: bit-identical
    assert mine.columns == {k: v for k, v in theirs.columns.items()}
    assert ray.manifest.skipped == local_store.manifest.skipped  # same paths, reasons, details, order
    assert {s["reason"] for s in ray.manifest.skipped} == {"empty", "not_an_image", "truncated"}
    assert ray.manifest.encoder == local_store.manifest.encoder and ray.manifest.complete
    # 25 files in blocks of 8: block 3 is c1/img_cut.jpg alone, a bad file, so it writes no shard
    assert [s.name for s in ray.manifest.shards] == [f"part-{b:05d}.parquet" for b in range(3)]


def test_resume_recomputes_only_the_missing_blocks(ray_store, local_store, tmp_path, ray_cluster):
    from sslsearch.distributed.ray_embed import RayOptions, embed_images_ray

    store = tmp_path / "emb"
    shutil.copytree(ray_store, store)
    (store / "part-00001.parquet").unlink()  # a lost shard
    (store / receipt_name(2)).unlink()  # a shard written just before a kill, its receipt not yet
    (store / receipt_name(3)).unlink()  # the block of bad files only: redone, still no shard
    kept = {name: (store / name).stat().st_mtime_ns for name in ("part-00000.parquet",)}
    lost_rows = {s.name: s.rows for s in EmbeddingStore.open(ray_store).manifest.shards}
    result = embed_images_ray(local_store.source_root, SPEC, store, image_size=32, batch_size=BATCH,
                              shard_rows=SHARD_ROWS, device="cpu", resume=True, progress=False,
                              options=RayOptions(workers=1))
    assert result.embedded_now == lost_rows["part-00001.parquet"] + lost_rows["part-00002.parquet"]
    assert result.resumed
    assert {name: (store / name).stat().st_mtime_ns for name in kept} == kept
    again = EmbeddingStore.open(store)
    np.testing.assert_array_equal(again.read_all().embeddings, local_store.read_all().embeddings)
    assert again.manifest.skipped == local_store.manifest.skipped


def test_existing_store_is_refused_without_resume(ray_store, images, ray_cluster):
    from sslsearch.distributed.ray_embed import embed_images_ray

    with pytest.raises(StoreError, match="--resume"):
        embed_images_ray(images, SPEC, ray_store, image_size=32, device="cpu")
    with pytest.raises(InvalidArgumentError, match="--workers"):
        embed_images_ray(images, SPEC, ray_store, image_size=32, options=__import__(
            "sslsearch.distributed.ray_embed", fromlist=["RayOptions"]).RayOptions(workers=0))


def test_strict_raises_the_bad_file_and_leaves_no_store(images, tmp_path, ray_cluster):
    from sslsearch.distributed.ray_embed import RayOptions, embed_images_ray

    with pytest.raises(BadImageError) as error:
        embed_images_ray(images, SPEC, tmp_path / "emb", image_size=32, batch_size=BATCH, shard_rows=64,
                         device="cpu", strict=True, progress=False, options=RayOptions(workers=1))
    assert isinstance(error.value, SSLSearchError) and "--strict" in str(error.value)
    assert not (tmp_path / "emb").exists()


def test_receipt_round_trip():
    receipt = BlockReceipt(3, 5, 1234, ({"path": "a.png", "reason": "empty", "detail": "a.png: file is empty"},))
    assert BlockReceipt.from_json(receipt.to_json()) == receipt
    assert receipt.shard == "part-00003.parquet" and BlockReceipt(4, 0, 0).shard is None


def test_cli_refuses_an_unknown_engine_and_threads_with_ray(images, tmp_path, capsys):
    base = ["embed", str(images), "--encoder", SPEC, "--out", str(tmp_path / "emb"), "--device", "cpu"]
    for extra, message in ((["--engine", "spark"], "unknown engine 'spark'"),
                           (["--engine", "ray", "--threads", "2"], "--threads applies to --engine local")):
        with pytest.raises(SystemExit) as exit_info:
            main(base + extra)
        assert exit_info.value.code == 1 and message in capsys.readouterr().err
    assert not (tmp_path / "emb").exists()
