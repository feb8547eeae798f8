"""Tests for sslsearch.distributed.ray_index: on-disk index parts filled by Ray tasks (a local Ray cluster)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import faiss
import numpy as np
import pytest

from index_helpers import held_out_queries, make_store
from sslsearch.cli.app import main
from sslsearch.errors import IndexFileError, InvalidArgumentError, UnknownNameError
from sslsearch.index.build import build_index
from sslsearch.index.ondisk import PartPlan
from sslsearch.index.search import load_index
from sslsearch.store import EmbeddingStore

from ray_helpers import local_ray

N, DIM, SHARD_ROWS = 6_000, 16, 500


@pytest.fixture(scope="module")
def ray_cluster():
    yield from local_ray()


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("ray-ondisk") / "emb"
    make_store(directory, N, DIM, shard_rows=SHARD_ROWS)
    return directory


@pytest.fixture(scope="module")
def local_index(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ray-ondisk") / "local"
    build_index(store, out, kind="ivf", on_disk=True, workers=2, progress=False)  # as the CLI: 500 eval queries
    return out


@pytest.fixture(scope="module")
def ray_index(store, ray_cluster, tmp_path_factory) -> tuple[Path, dict]:
    """Built through the CLI: ``index build --on-disk --engine ray --json``."""
    out = tmp_path_factory.mktemp("ray-ondisk") / "ray"
    with pytest.raises(SystemExit) as exit_info:
        main(["index", "build", str(store), "--out", str(out), "--kind", "ivf", "--on-disk", "--engine", "ray",
              "--workers", "2", "--json"])
    assert exit_info.value.code in (0, None)
    return out, json.loads((out / "index.json").read_text())


def test_ray_parts_give_the_same_index_and_card_as_local_processes(ray_index, local_index):
    ray_dir, card = ray_index
    local_card = json.loads((local_index / "index.json").read_text())
    for field in ("factory", "kind", "metric", "dim", "ntotal", "search_params", "recall_at_10", "encoder"):
        assert card[field] == local_card[field], field
    assert card["store"] == local_card["store"]
    queries = held_out_queries(N, 50, DIM)
    ray_scores, ray_ids = load_index(ray_dir).search_arrays(queries, 10)
    local_scores, local_ids = load_index(local_index).search_arrays(queries, 10)
    np.testing.assert_array_equal(ray_ids, local_ids)
    np.testing.assert_array_equal(ray_scores, local_scores)
    assert sorted(p.name for p in ray_dir.iterdir()) == ["index.faiss", "index.ivfdata", "index.json"]


def test_card_records_the_engine_and_each_part(ray_index, local_index):
    params = ray_index[1]["build_params"]
    assert params["engine"] == "ray" and params["ray_address"] is None and params["workers"] == 2
    timings = params["part_timings"]
    assert [t["part"] for t in timings] == list(range(params["parts"])) and params["parts"] >= 2
    assert sum(t["rows"] for t in timings) == N
    assert all(t["seconds"] > 0 and t["peak_memory_bytes"] > 0 and t["node"] for t in timings)
    local = json.loads((local_index / "index.json").read_text())["build_params"]
    assert local["engine"] == "local" and sum(t["rows"] for t in local["part_timings"]) == N
    assert set(local["part_timings"][0]) == set(timings[0])  # the same fields whichever engine


def _trained(store: Path, folder: Path) -> tuple[str, list[PartPlan]]:
    vectors = EmbeddingStore.open(store).read_all().embeddings
    index = faiss.index_factory(DIM, "IVF16,SQ8", faiss.METRIC_INNER_PRODUCT)
    index.train(vectors[:2_000])
    path = folder / "trained.index"
    faiss.write_index(index, str(path))
    shards = EmbeddingStore.open(store).manifest.shards
    halves = shards[:len(shards) // 2], shards[len(shards) // 2:]
    return str(path), [PartPlan(i, tuple(s.name for s in half), sum(s.rows for s in half))
                       for i, half in enumerate(halves)]


def test_parts_shipped_back_through_the_object_store_equal_parts_written_directly(store, ray_cluster, tmp_path):
    """A task on a node that cannot see the build folder returns its part; the driver writes the same bytes."""
    from sslsearch.distributed.ray_index import fill_parts_ray

    trained, parts = _trained(store, tmp_path)
    written = {}
    for direct in (True, False):
        folder = tmp_path / f"direct-{direct}"
        folder.mkdir()
        paths = [str(folder / f"part-{p.number:05d}.index") for p in parts]
        results = fill_parts_ray(ray_cluster, parts, paths, trained, str(store), chunk_rows=1024, workers=2,
                                 threads=1, total=N, progress=False, direct_write=direct)
        assert [r.rows for r in results] == [p.rows for p in parts]
        written[direct] = [Path(p).read_bytes() for p in paths]
        assert sorted(q.name for q in folder.iterdir()) == ["part-00000.index", "part-00001.index"]  # no token left
    assert written[True] == written[False]
    assert faiss.read_index(str(tmp_path / "direct-False" / "part-00001.index")).ntotal == parts[1].rows


def test_a_failing_task_is_one_actionable_error(store, ray_cluster, tmp_path):
    from sslsearch.distributed.ray_index import fill_parts_ray

    trained, parts = _trained(store, tmp_path)
    paths = [str(tmp_path / f"part-{p.number:05d}.index") for p in parts]
    with pytest.raises(IndexFileError, match=r"part 0 \(shards part-00000.parquet…part-0000\d.parquet\) on node .* "
                                             r"failed: InputNotFoundError: .*a shared path or s3://"):
        fill_parts_ray(ray_cluster, parts, paths, trained, str(tmp_path / "not-a-store"), chunk_rows=1024, workers=1,
                       threads=1, total=N, progress=False)


def test_engine_and_address_are_checked(store, tmp_path):
    with pytest.raises(InvalidArgumentError, match="add --on-disk"):
        build_index(store, tmp_path / "a", engine="ray")
    with pytest.raises(UnknownNameError, match="choose one of: local, ray"):
        build_index(store, tmp_path / "b", on_disk=True, engine="spark")
    for on_disk in (True, False):
        with pytest.raises(InvalidArgumentError, match="add --engine ray"):
            build_index(store, tmp_path / "c", on_disk=on_disk, address="auto")


def test_a_part_larger_than_any_node_is_refused_instead_of_waiting_forever(store, ray_cluster, tmp_path, monkeypatch):
    """Ray queues a task whose memory request no node can meet without end: refuse it with the way out."""
    from sslsearch.distributed.ray_index import fill_parts_ray, largest_node_memory

    assert largest_node_memory(ray_cluster) > 10**8  # the local test cluster's own figure
    monkeypatch.setattr(ray_cluster, "nodes", lambda: [{"Alive": True, "Resources": {"memory": 10**5}}])
    trained, parts = _trained(store, tmp_path)
    paths = [str(tmp_path / f"part-{p.number:05d}.index") for p in parts]
    with pytest.raises(InvalidArgumentError, match=r"index part 0 .* needs .* the largest Ray node offers 97.7 KiB"):
        fill_parts_ray(ray_cluster, parts, paths, trained, str(store), chunk_rows=1024, workers=1, threads=1,
                       total=N, progress=False)
    assert not any(Path(p).exists() for p in paths)


def test_a_part_whose_worker_dies_is_rerun(store, ray_cluster, tmp_path, monkeypatch):
    """A worker killed mid-part (a node lost, a process killed for memory) is rerun by Ray, ``retries`` times."""
    from sslsearch.distributed import ray_index

    real_task = ray_index._fill_part_task
    marker = tmp_path / "died-once"

    def dies_the_first_time(*args):  # a closure: Ray ships it by value to the worker
        if not marker.exists():
            marker.touch()
            os._exit(1)  # the worker process dies, as an OOM kill or a lost node would end it
        return real_task(*args)

    monkeypatch.setattr(ray_index, "_fill_part_task", dies_the_first_time)
    trained, parts = _trained(store, tmp_path)
    paths = [str(tmp_path / f"part-{p.number:05d}.index") for p in parts[:1]]
    results = ray_index.fill_parts_ray(ray_cluster, parts[:1], paths, trained, str(store), chunk_rows=1024, workers=1,
                                       threads=1, total=parts[0].rows, progress=False)
    assert marker.exists() and results[0].rows == parts[0].rows
    assert faiss.read_index(paths[0]).ntotal == parts[0].rows
    marker.unlink()
    with pytest.raises(IndexFileError, match=r"part 0 .* died, retries included: .*lower --memory-budget"):
        ray_index.fill_parts_ray(ray_cluster, parts[:1], paths, trained, str(store), chunk_rows=1024, workers=1,
                                 threads=1, total=parts[0].rows, progress=False, retries=0)
