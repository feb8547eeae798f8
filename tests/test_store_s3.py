"""Embedding stores on object storage (s3://) through pyarrow.fs, against a local S3 emulator (moto); no network."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import sslsearch
from sslsearch.cli.app import main
from sslsearch.embed import embed_images
from sslsearch.errors import StoreError
from sslsearch.index import build_index, load_index
from sslsearch.location import StoreLocation
from sslsearch.store import MANIFEST_NAME, EmbeddingStore, StoreWriter, manifest_hash

from ray_helpers import local_ray
from s3_helpers import moto_s3

SPEC = "timm:test_resnet"
BATCH = 4
SHARD_ROWS = 8  # a multiple of BATCH: the local and Ray engines then give the encoder the same batches


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 and the standard AWS environment pointing at it (what pyarrow reads)."""
    yield from moto_s3()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    from test_distributed_ray import make_folder  # 22 images in 2 classes + 3 bad files

    return make_folder(tmp_path_factory.mktemp("s3") / "images")


def _embed(images: Path, out: str | Path, **options) -> sslsearch.EmbedResult:
    return embed_images(images, SPEC, out, image_size=32, batch_size=BATCH, shard_rows=SHARD_ROWS, workers=0,
                        device="cpu", progress=False, threads=1, **options)


@pytest.fixture(scope="module")
def local_store(images, tmp_path_factory) -> EmbeddingStore:
    out = tmp_path_factory.mktemp("disk") / "emb"
    _embed(images, out)
    return EmbeddingStore.open(out)


@pytest.fixture(scope="module")
def s3_store(s3, images) -> str:
    uri = f"{s3}/local-engine/emb"
    result = _embed(images, uri)
    assert result.directory == uri
    return uri


def _same_rows(a: EmbeddingStore, b: EmbeddingStore) -> None:
    columns = ("id", "path", "embedding", "label", "sha256")
    left, right = a.read_all(columns), b.read_all(columns)
    np.testing.assert_array_equal(left.ids, right.ids)
    np.testing.assert_array_equal(left.embeddings, right.embeddings)
    for name in ("path", "label", "sha256"):
        assert list(left.columns[name]) == list(right.columns[name])


def test_local_engine_writes_to_s3_and_reads_back_the_same_vectors(s3_store, local_store):
    remote = sslsearch.open_store(s3_store)
    assert remote.directory == s3_store and remote.uri == s3_store
    assert remote.manifest.complete and len(remote) == len(local_store) == 22
    assert [s.name for s in remote.manifest.shards] == [s.name for s in local_store.manifest.shards]
    assert remote.manifest.skipped == local_store.manifest.skipped and len(remote.manifest.skipped) == 3
    _same_rows(remote, local_store)
    # only the shards and the manifest: no temporary object, no lock file left on the bucket
    names = StoreLocation.parse(s3_store).list()
    assert names == sorted([MANIFEST_NAME] + [s.name for s in remote.manifest.shards])


def test_index_build_from_s3_store(s3_store, local_store, tmp_path):
    card = build_index(s3_store, tmp_path / "idx", kind="flat", progress=False)
    assert card.store["path"] == s3_store and card.store["manifest_sha256"] == manifest_hash(s3_store)
    index = load_index(tmp_path / "idx")
    query = local_store.read_all().embeddings[:3]
    found = index.search(query, k=1)
    assert [r.ids[0] for r in found] == local_store.read_all().ids[:3].tolist()
    assert index.store is not None  # the card's s3:// store is opened again to show paths
    assert index.store.paths([0]) == local_store.paths([0])


def test_on_disk_index_build_reads_s3_shards_in_worker_processes(s3_store, tmp_path):
    """The part workers are separate processes: they open the store by its URI with the same environment."""
    card = build_index(s3_store, tmp_path / "idx", kind="ivf", on_disk=True, workers=2, progress=False,
                       eval_queries=10)
    assert card.ntotal == 22 and card.build_params["on_disk"]
    assert card.store["path"] == s3_store


def test_cli_embed_and_index_build_with_s3_uris(s3, images, tmp_path, capsys):
    uri = f"{s3}/cli/emb"
    with pytest.raises(SystemExit) as exit_info:
        main(["embed", str(images), "--encoder", SPEC, "--out", uri, "--image-size", "32", "--batch-size",
              str(BATCH), "--shard-rows", str(SHARD_ROWS), "--workers", "0", "--device", "cpu", "--json"])
    assert exit_info.value.code in (0, None)
    assert json.loads(capsys.readouterr().out)["directory"] == uri
    with pytest.raises(SystemExit) as exit_info:
        main(["index", "build", uri, "--out", str(tmp_path / "idx"), "--kind", "flat", "--json"])
    assert exit_info.value.code in (0, None)
    assert json.loads(capsys.readouterr().out)["store"]["path"] == uri


def test_an_interrupted_s3_store_is_refused_and_resumed(s3, images, local_store):
    """A store whose manifest is not complete is not a store yet; --resume finishes it (on the bucket)."""
    uri = f"{s3}/resume/emb"
    _embed(images, uri)
    location = StoreLocation.parse(uri)
    manifest = json.loads(location.read_bytes(MANIFEST_NAME))
    shards = manifest["shards"]
    location.delete(shards[-1]["name"])  # the last shard lost, as if the job died before writing it
    manifest.update(shards=shards[:-1], rows=sum(s["rows"] for s in shards[:-1]), complete=False)
    location.write_bytes_atomic(MANIFEST_NAME, json.dumps(manifest).encode())
    with pytest.raises(StoreError, match="incomplete"):
        EmbeddingStore.open(uri)
    result = _embed(images, uri, resume=True)
    assert result.resumed and result.embedded_now == shards[-1]["rows"]
    _same_rows(EmbeddingStore.open(uri), local_store)


def test_a_prefix_without_manifest_is_not_a_store(s3):
    location = StoreLocation.parse(f"{s3}/no-manifest/emb")
    location.write_bytes_atomic("part-00000.parquet", b"not parquet")
    with pytest.raises(StoreError, match="no manifest.json"):
        EmbeddingStore.open(location.uri)
    with pytest.raises(sslsearch.SSLSearchError, match="does not exist"):
        EmbeddingStore.open(f"{s3}/nothing/here")


def test_store_writer_refuses_foreign_objects_on_s3(s3):
    location = StoreLocation.parse(f"{s3}/foreign/emb")
    location.write_bytes_atomic("notes.txt", b"someone else's")
    with pytest.raises(sslsearch.SSLSearchError, match="other object"):
        StoreWriter(location.uri, dim=4, dtype="float32", encoder={"id": "x"}, source_root="/")


# --------------------------------------------------------------------------- the Ray engine


@pytest.fixture(scope="module")
def ray_cluster(s3):
    """A local Ray started after the S3 environment is set, so its worker processes inherit it."""
    yield from local_ray()


def test_ray_engine_writes_to_s3_same_vectors_as_local_disk(ray_cluster, s3, images, local_store):
    from sslsearch.distributed.ray_embed import RayOptions, embed_images_ray

    uri = f"{s3}/ray/emb"
    result = embed_images_ray(images, SPEC, uri, image_size=32, batch_size=BATCH, shard_rows=SHARD_ROWS,
                              device="cpu", progress=False, options=RayOptions(workers=2, cpus_per_worker=1))
    assert result.directory == uri and result.rows == 22
    remote = EmbeddingStore.open(uri)
    assert remote.manifest.skipped == local_store.manifest.skipped
    _same_rows(remote, local_store)


def test_ray_tasks_fill_on_disk_index_parts_from_s3_shards(ray_cluster, s3_store, local_store, tmp_path):
    """Each Ray task opens the s3:// store itself; the index equals the local-process build."""
    built = {engine: build_index(s3_store, tmp_path / engine, kind="ivf", on_disk=True, workers=2, progress=False,
                                 eval_queries=10, engine=engine) for engine in ("local", "ray")}
    assert built["ray"].ntotal == 22 and built["ray"].build_params["engine"] == "ray"
    assert sum(t["rows"] for t in built["ray"].build_params["part_timings"]) == 22
    queries = local_store.read_all().embeddings[:5]
    np.testing.assert_array_equal(load_index(tmp_path / "ray").search_arrays(queries, 5)[1],
                                  load_index(tmp_path / "local").search_arrays(queries, 5)[1])


def test_endpoint_in_the_uri_query_instead_of_the_environment(s3, monkeypatch):
    """``?endpoint_override=host:port&scheme=http`` works without AWS_ENDPOINT_URL (the other documented way)."""
    endpoint = os.environ["AWS_ENDPOINT_URL"].removeprefix("http://")
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    uri = f"{s3}/query/emb?endpoint_override={endpoint}&scheme=http"
    vectors = np.eye(4, dtype=np.float32)
    with StoreWriter(uri, dim=4, dtype="float32", encoder={"id": "e"}, source_root="/") as writer:
        writer.write(np.arange(4), [f"{i}.png" for i in range(4)], vectors)
    store = EmbeddingStore.open(uri)
    assert store.directory == uri and len(store) == 4
    np.testing.assert_array_equal(store.read_all().embeddings, vectors)
