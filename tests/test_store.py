"""Tests of the embedding store (Contract 2): schema, manifest, atomic shards, resume, bad stores."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sslsearch.errors import EncoderMismatchError, InputNotFoundError, LockedError, OutputExistsError, StoreError
from sslsearch.store import EmbeddingStore, StoreWriter, manifest_hash

FP = {"id": "enc-aaaa", "spec": "timm:test"}


def _write(directory, n=10, dim=8, dtype="float32", shard_rows=4, **kw):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    with StoreWriter(directory, dim=dim, dtype=dtype, encoder=FP, source_root="/imgs", shard_rows=shard_rows,
                     extra_columns=("label", "width", "height", "sha256"), **kw) as writer:
        for start in range(0, n, 3):
            stop = min(n, start + 3)
            writer.write(np.arange(start, stop), [f"c{i % 2}/{i}.png" for i in range(start, stop)], vectors[start:stop],
                         label=[f"c{i % 2}" for i in range(start, stop)], width=[32] * (stop - start),
                         height=[24] * (stop - start), sha256=["0" * 64] * (stop - start))
        writer.add_skipped("bad.png", "truncated", "image file is truncated")
    return vectors


def test_round_trip_schema_and_manifest(tmp_path):
    vectors = _write(tmp_path / "emb")
    store = EmbeddingStore.open(tmp_path / "emb")
    assert len(store) == 10 and store.dim == 8 and store.has_labels
    batch = store.read_all(("id", "embedding", "path", "label", "width"))
    order = np.argsort(batch.ids)
    np.testing.assert_array_equal(batch.ids[order], np.arange(10))
    np.testing.assert_allclose(batch.embeddings[order], vectors)
    assert batch.columns["label"][order[1]] == "c1" and int(batch.columns["width"][0]) == 32
    shards = sorted(p.name for p in (tmp_path / "emb").glob("part-*.parquet"))
    assert shards == [s.name for s in store.manifest.shards] and len(shards) == 2
    schema = pq.read_schema(tmp_path / "emb" / shards[0])
    assert schema.field("id").type == pa.int64()
    assert schema.field("embedding").type == pa.list_(pa.float32(), 8)
    manifest = json.loads((tmp_path / "emb" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["rows"] == 10 and manifest["encoder"]["id"] == "enc-aaaa"
    assert manifest["skipped"] == [{"path": "bad.png", "reason": "truncated", "detail": "image file is truncated"}]
    assert len(manifest_hash(tmp_path / "emb")) == 64
    assert not list((tmp_path / "emb").glob(".*tmp")) and not (tmp_path / "emb" / ".sslsearch.lock").exists()


def test_float16_storage_and_streaming(tmp_path):
    vectors = _write(tmp_path / "emb", n=9, dtype="float16")
    store = EmbeddingStore.open(tmp_path / "emb")
    assert pq.read_schema(tmp_path / "emb" / store.manifest.shards[0].name).field("embedding").type == pa.list_(pa.float16(), 8)
    batches = list(store.iter_batches(batch_size=2))
    assert all(b.embeddings.dtype == np.float32 and len(b.ids) <= 2 for b in batches)
    got = np.concatenate([b.embeddings for b in batches])[np.argsort(np.concatenate([b.ids for b in batches]))]
    np.testing.assert_allclose(got, vectors.astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(store.vectors_for([8, 0]), got[[8, 0]])
    assert store.paths([1, 99]) == ["c1/1.png", None]


def test_interrupted_store_is_refused_then_resumed(tmp_path):
    directory = tmp_path / "emb"
    writer = StoreWriter(directory, dim=4, dtype="float32", encoder=FP, source_root="/x", shard_rows=2)
    writer.write([0, 1, 2], ["a", "b", "c"], np.ones((3, 4)))  # one shard flushed (3 rows)
    writer.write([3], ["d"], np.ones((1, 4)))  # buffered only: lost by a crash, rewritten on resume
    del writer  # simulate a crash: no close, lock left behind by a (now) dead owner
    lock = directory / ".sslsearch.lock"
    lock.write_text(json.dumps({"pid": 2**22 + 12345, "host": os.uname().nodename}))
    with pytest.raises(StoreError, match="incomplete.*--resume"):
        EmbeddingStore.open(directory)
    with pytest.raises(StoreError, match="already holds an embedding store"):
        StoreWriter(directory, dim=4, dtype="float32", encoder=FP, source_root="/x")
    resumed = StoreWriter(directory, dim=4, dtype="float32", encoder=FP, source_root="/x", resume=True)
    assert resumed.done_ids == {0, 1, 2}
    resumed.write([3], ["d"], np.ones((1, 4)))
    resumed.close()
    store = EmbeddingStore.open(directory)
    assert sorted(store.read_all().ids.tolist()) == [0, 1, 2, 3]


def test_resume_adopts_shard_missing_from_manifest(tmp_path):
    directory = tmp_path / "emb"
    writer = StoreWriter(directory, dim=4, dtype="float32", encoder=FP, source_root="/x", shard_rows=1)
    writer.write([0], ["a"], np.ones((1, 4)))
    manifest_before = (directory / "manifest.json").read_text()
    writer.write([1], ["b"], np.ones((1, 4)))
    (directory / "manifest.json").write_text(manifest_before)  # killed between shard rename and manifest write
    writer._lock.release()
    resumed = StoreWriter(directory, dim=4, dtype="float32", encoder=FP, source_root="/x", resume=True)
    assert resumed.done_ids == {0, 1}
    resumed.close()
    assert len(EmbeddingStore.open(directory)) == 2


def test_resume_with_another_encoder_is_refused(tmp_path):
    _write(tmp_path / "emb")
    with pytest.raises(EncoderMismatchError, match="timm:test"):
        StoreWriter(tmp_path / "emb", dim=8, dtype="float32", encoder={"id": "enc-b", "spec": "timm:other"},
                    source_root="/x", resume=True)


def test_second_writer_is_locked_out(tmp_path):
    writer = StoreWriter(tmp_path / "emb", dim=4, dtype="float32", encoder=FP, source_root="/x")
    with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
        StoreWriter(tmp_path / "emb", dim=4, dtype="float32", encoder=FP, source_root="/x", resume=True)
    writer.close()


def test_output_dir_with_other_data_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.tex").write_text("precious")
    with pytest.raises(OutputExistsError, match="thesis.tex"):
        StoreWriter(tmp_path / "out", dim=4, dtype="float32", encoder=FP, source_root="/x")
    assert (tmp_path / "out" / "thesis.tex").read_text() == "precious"


@pytest.mark.parametrize("damage", ["truncate", "foreign", "delete", "rows"])
def test_damaged_shards_give_clear_errors(tmp_path, damage):
    _write(tmp_path / "emb")
    shard = tmp_path / "emb" / "part-00001.parquet"
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:100])
        match = "truncated or not Parquet"
    elif damage == "foreign":
        pq.write_table(pa.table({"id": pa.array([1, 2], pa.int64()), "vec": pa.array([1.0, 2.0])}), shard)
        match = "foreign"
    elif damage == "delete":
        shard.unlink()
        match = "missing"
    else:
        table = pq.read_table(shard)
        pq.write_table(table.slice(0, 1), shard)
        match = "rows but the manifest"
    with pytest.raises(StoreError, match=match):
        EmbeddingStore.open(tmp_path / "emb")


def test_not_a_store(tmp_path):
    with pytest.raises(InputNotFoundError, match="does not exist"):
        EmbeddingStore.open(tmp_path / "nope")
    (tmp_path / "pq").mkdir()
    pq.write_table(pa.table({"x": [1]}), tmp_path / "pq" / "a.parquet")
    with pytest.raises(StoreError, match="no manifest.json.*1 Parquet"):
        EmbeddingStore.open(tmp_path / "pq")


def test_writer_rejects_wrong_shapes(tmp_path):
    writer = StoreWriter(tmp_path / "emb", dim=4, dtype="float32", encoder=FP, source_root="/x")
    with pytest.raises(ValueError, match="does not match 2 rows of dim 4"):
        writer.write([0, 1], ["a", "b"], np.ones((2, 5)))
    writer.close()


def test_file_uri_is_the_local_directory(tmp_path):
    """``file:///abs/emb`` writes and reads the same store as ``/abs/emb``; ``.directory`` stays a local Path."""
    vectors = _write(f"file://{tmp_path / 'emb'}")
    store = EmbeddingStore.open(f"file://{tmp_path / 'emb'}")
    assert store.directory == tmp_path / "emb" and store.uri == str((tmp_path / "emb").resolve())
    np.testing.assert_array_equal(store.read_all().embeddings, vectors)
    assert manifest_hash(f"file://{tmp_path / 'emb'}") == manifest_hash(tmp_path / "emb")
    assert EmbeddingStore.open(tmp_path / "emb").manifest == store.manifest
