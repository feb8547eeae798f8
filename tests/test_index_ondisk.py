"""Tests for sslsearch.index.ondisk: IVF built in parts, merged on disk, memory-mapped; recall vs exact search."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

from index_helpers import brute_force, held_out_queries, make_store, recall
from sslsearch.cli.app import main
from sslsearch.errors import InvalidArgumentError, OutputExistsError
from sslsearch.index.build import build_index
from sslsearch.index.io import ONDISK_DATA
from sslsearch.index.ondisk import BUILD_FOLDER, PartPlan, ondisk_spec, plan_parts, training_size
from sslsearch.index.search import load_index

N, DIM = 20_000, 32


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[Path, np.ndarray]:
    directory = tmp_path_factory.mktemp("ondisk") / "emb"
    return directory, make_store(directory, N, DIM, shard_rows=2_000)


@pytest.fixture(scope="module")
def ondisk_index(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ondisk") / "idx"
    build_index(store[0], out, on_disk=True, memory_budget="64MB", workers=2, progress=False)
    return out


def _lists(index) -> object:
    return faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)


# --------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize("shards, budget, expected", [
    ([("a", 10), ("b", 10), ("c", 10)], 20 * 8, [("a", "b"), ("c",)]),
    ([("a", 10), ("b", 10), ("c", 10)], 5 * 8, [("a",), ("b",), ("c",)]),  # a shard larger than the budget: alone
    ([("a", 10), ("b", 10)], 10**9, [("a", "b")]),
    ([], 100, []),
])
def test_plan_parts_groups_consecutive_shards_within_budget(shards, budget, expected):
    parts = plan_parts(shards, 8, budget)
    assert [p.shards for p in parts] == expected
    assert [p.number for p in parts] == list(range(len(expected)))
    assert sum(p.rows for p in parts) == sum(rows for _, rows in shards)
    assert all(isinstance(p, PartPlan) for p in parts)


def test_ondisk_spec_is_ivf_only():
    assert ondisk_spec(N, DIM, "auto").factory.endswith(",SQ8")
    assert ondisk_spec(N, DIM, "ivfpq").kind == "ivfpq"
    for kind in ("flat", "hnsw"):
        with pytest.raises(InvalidArgumentError, match="--on-disk needs an IVF index"):
            ondisk_spec(N, DIM, kind)


def test_ondisk_spec_takes_an_nlist_and_its_training_sample_follows():
    spec = ondisk_spec(10_000_000, 384, "auto", nlist=4096)
    assert spec.factory == "IVF4096,SQ8" and spec.train_size == 40 * 4096 and "nlist 4096" in spec.reason
    assert ondisk_spec(10_000_000, 384, "auto").factory == "IVF16384,SQ8"  # the automatic choice is unchanged
    assert ondisk_spec(N, DIM, "ivfpq", nlist=64).factory.startswith("IVF64,PQ")
    for bad in (0, N // 39 + 1):
        with pytest.raises(InvalidArgumentError, match="nlist must be between 1 and"):
            ondisk_spec(N, DIM, "auto", nlist=bad)
    with pytest.raises(InvalidArgumentError, match=r"add --on-disk \(on_disk=True\)"):
        build_index("unused", "unused", nlist=64)


def test_cli_nlist_sets_the_on_disk_lists(store, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["index", "build", str(store[0]), "--out", str(tmp_path / "idx"), "--on-disk", "--nlist", "16", "--json"])
    assert exit_info.value.code in (0, None)
    assert json.loads(capsys.readouterr().out)["factory"].startswith("IVF16,")
    with pytest.raises(SystemExit) as exit_info:
        main(["index", "build", str(store[0]), "--out", str(tmp_path / "flat"), "--nlist", "16"])
    assert exit_info.value.code == 1 and not (tmp_path / "flat").exists()


# --------------------------------------------------------------------------- the build


def test_card_records_recall_vs_exact_and_the_parts(ondisk_index, store):
    card = json.loads((ondisk_index / "index.json").read_text())
    assert card["factory"].endswith(",SQ8") and card["ntotal"] == N
    params = card["build_params"]
    assert params["on_disk"] and params["parts"] >= 2 and params["workers"] == 2
    assert params["ivfdata_bytes"] == (ondisk_index / ONDISK_DATA).stat().st_size
    assert params["worker_peak_memory_bytes"] > 0
    assert 0 <= params["peak_anonymous_memory_bytes"] <= card["peak_memory_bytes"]
    assert card["recall_at_10"] >= 0.9 and card["n_eval_queries"] == 500
    tuned = [p for p in card["tuning"] if p["search_params"] == card["search_params"]]
    assert len(tuned) == 1 and tuned[0]["qps_batch"] > 0  # the card's QPS at the tuned nprobe
    assert sorted(p.name for p in ondisk_index.iterdir()) == ["index.faiss", "index.ivfdata", "index.json"]
    assert not (ondisk_index / BUILD_FOLDER).exists()


def test_search_is_memory_mapped_and_agrees_with_exact_search(ondisk_index, store):
    _, vectors = store
    index = load_index(ondisk_index)
    assert isinstance(_lists(index.faiss_index), faiss.OnDiskInvertedLists)
    queries = held_out_queries(N, 200, DIM)
    scores, ids = index.search_arrays(queries, 10)
    measured = recall(ids, brute_force(queries, vectors, 10))
    assert measured >= 0.9
    assert abs(measured - index.card.recall_at_10) < 0.05  # the card's figure holds for new queries
    np.testing.assert_allclose(scores[:, 0], np.sum(queries * vectors[ids[:, 0]], axis=1), atol=0.02)  # SQ8 codes


def test_plain_faiss_reads_it_and_a_moved_directory_still_works(ondisk_index, tmp_path):
    plain = faiss.read_index(str(ondisk_index / "index.faiss"))  # Contract 3: plain faiss.read_index
    assert plain.ntotal == N
    moved = tmp_path / "moved"
    shutil.copytree(ondisk_index, moved)
    queries = held_out_queries(N, 5, DIM)
    np.testing.assert_array_equal(load_index(moved).search_arrays(queries, 5)[1],
                                  load_index(ondisk_index).search_arrays(queries, 5)[1])


def test_a_budget_too_small_to_train_is_refused(store, tmp_path):
    with pytest.raises(InvalidArgumentError, match="raise --memory-budget to at least"):
        build_index(store[0], tmp_path / "idx", on_disk=True, memory_budget="1MB")
    assert not (tmp_path / "idx" / "index.json").exists()


@pytest.mark.parametrize("n, budget, expected", [
    (2_000_000, None, 163_840),          # no budget: the spec's sample (40 per list of 4,096)
    (2_000_000, 2 * 10**9, 163_840),     # a quarter of 2 GB holds 325,520 vectors: the spec's sample
    (5_000_000, 2 * 10**9, 325_520),     # 8,192 lists want 327,680; the budget cuts to 325,520 ≥ 39 per list
    (10_000_000, 4 * 10**9, 500_000),    # 16,384 lists: MAX_TRAIN_SIZE (500k < 39 per list) is what is needed
    (10_000_000, 2 * 10**9, "2.9 GiB"),  # 325,520 < 500,000: refused, naming the budget that suffices
    (5_000_000, 10**9, "1.9 GiB"),       # 162,760 < 8,192 × 39
])
def test_training_size_within_the_budget(n, budget, expected):
    spec = ondisk_spec(n, 384, "auto")
    nlist = int(spec.factory.split(",")[0].removeprefix("IVF"))
    if isinstance(expected, int):
        assert training_size(spec, nlist, n, 384, budget) == expected
    else:
        with pytest.raises(InvalidArgumentError, match=f"at least {expected}"):
            training_size(spec, nlist, n, 384, budget)


def test_cli_on_disk_json_stays_clean(store, tmp_path, capfd):
    out = tmp_path / "idx"
    with pytest.raises(SystemExit) as exit_info:
        main(["index", "build", str(store[0]), "--out", str(out), "--on-disk", "--workers", "1", "--json"])
    assert exit_info.value.code in (0, None)
    stdout = capfd.readouterr().out
    card = json.loads(stdout)  # faiss's "resizing ..." did not reach stdout
    assert card["build_params"]["on_disk"] and card["build_params"]["workers"] == 1
    with pytest.raises(SystemExit):
        main(["index", "build", str(store[0]), "--out", str(out), "--on-disk"])
    assert "already holds an index" in capfd.readouterr().err


# --------------------------------------------------------------------------- the memory budget at search


def test_search_budget_memory_maps_a_large_ivf_and_refuses_a_large_flat(store, tmp_path):
    ivf_dir, flat_dir = tmp_path / "ivf", tmp_path / "flat"
    build_index(store[0], ivf_dir, kind="ivf", memory_budget="1GB", progress=False)
    read = load_index(ivf_dir)
    mapped = load_index(ivf_dir, memory_budget=read.card.size_bytes // 2)
    assert not isinstance(_lists(read.faiss_index), faiss.OnDiskInvertedLists)
    assert isinstance(_lists(mapped.faiss_index), faiss.OnDiskInvertedLists)
    queries = held_out_queries(N, 20, DIM)
    np.testing.assert_array_equal(mapped.search_arrays(queries, 10)[1], read.search_arrays(queries, 10)[1])
    build_index(store[0], flat_dir, kind="flat", memory_budget="1GB", progress=False)
    with pytest.raises(InvalidArgumentError, match="more than the memory budget"):
        load_index(flat_dir, memory_budget="1MB")
    assert len(load_index(flat_dir, memory_budget="1GB")) == N
    with pytest.raises(OutputExistsError):
        build_index(store[0], flat_dir, on_disk=True)


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="Linux tells mapped-file pages apart")
def test_peak_memory_tells_mapped_file_pages_from_own_memory(tmp_path):
    import mmap

    from sslsearch.index.build import _PeakMemory, _resident_bytes

    # readings taken right before and after each step: the rest of the process (other tests' garbage,
    # threads) may free memory at any time, so growth since a sampler's start is not a stable measure here
    size = 64 * 2**20
    path = tmp_path / "lists.bin"
    path.write_bytes(b"\1" * size)
    pages = np.memmap(path, np.uint8, mode="r")
    resident, own = _resident_bytes()
    touched = int(pages[::4096].sum())  # every page read in: resident, but file-backed
    resident_after, own_after = _resident_bytes()
    assert touched == size // 4096
    assert resident_after - resident >= size * 0.9 and own_after - own < size * 0.25
    del pages
    with _PeakMemory(interval=60) as memory:  # samples at start, on _sample() and at exit
        own = _resident_bytes()[1]
        # fresh private pages (np.ones may get heap pages that are already resident)
        block = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        np.frombuffer(block, np.uint8)[:] = 1  # written: the process's own pages
        own_after = _resident_bytes()[1]
        memory._sample()
    assert own_after - own >= size * 0.9 and block[size - 1] == 1
    assert memory.anonymous_peak >= own_after - 2**20 and memory.peak >= memory.anonymous_peak
