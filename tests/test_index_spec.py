"""Table tests of the pure index choice (nothing is built) and of memory-size parsing."""
from __future__ import annotations

import pytest

from sslsearch.errors import InvalidArgumentError, UnknownNameError
from sslsearch.index.spec import (FLAT_MAX_VECTORS, HNSW_MAX_VECTORS, choose_index_spec, choose_nlist, parse_memory,
                                  pq_choices)

GB = 10**9
MB = 10**6


@pytest.mark.parametrize("n, dim, kind, budget, factory", [
    # auto, no budget: flat → HNSW → IVF-SQ8 by size
    (1, 384, "auto", None, "Flat"),
    (5_000, 384, "auto", None, "Flat"),
    (FLAT_MAX_VECTORS, 384, "auto", None, "Flat"),
    (FLAT_MAX_VECTORS + 1, 384, "auto", None, "HNSW32,Flat"),
    (100_000, 384, "auto", 4 * GB, "HNSW32,Flat"),
    (1_000_000, 384, "auto", 4 * GB, "HNSW32,Flat"),
    (HNSW_MAX_VECTORS, 384, "auto", None, "HNSW32,Flat"),
    (HNSW_MAX_VECTORS + 1, 384, "auto", None, "IVF4096,SQ8"),
    (3_000_000, 384, "auto", None, "IVF8192,SQ8"),
    (100_000_000, 384, "auto", None, "IVF32768,SQ8"),
    # auto under a budget: the next smaller index that fits
    (1_000_000, 384, "auto", 1 * GB, "IVF4096,SQ8"),
    (1_000_000, 384, "auto", 200 * MB, "IVF4096,PQ96"),
    (1_000_000, 384, "auto", 50 * MB, "IVF4096,PQ32"),
    (1_000_000, 384, "auto", 25 * MB, "IVF4096,PQ8"),
    (10_000, 128, "auto", 3 * MB, "IVF128,SQ8"),
    # explicit kinds
    (1_000, 64, "flat", None, "Flat"),
    (1_000, 64, "hnsw", None, "HNSW32,Flat"),
    (100_000, 384, "ivf", None, "IVF1024,Flat"),
    (100_000, 384, "ivf", 60 * MB, "IVF1024,SQ8"),
    (100_000, 384, "ivfpq", None, "IVF1024,PQ96"),
    (100_000, 384, "ivfpq", 5 * MB, "IVF1024,PQ16"),
    (200, 16, "ivf", None, "IVF4,Flat"),
])
def test_choice_table(n, dim, kind, budget, factory):
    spec = choose_index_spec(n, dim, kind=kind, memory_budget_bytes=budget)
    assert spec.factory == factory
    assert spec.metric == "ip" and spec.reason
    if budget is not None:
        assert spec.estimated_bytes <= budget


@pytest.mark.parametrize("n, factory, params, trains", [
    (1_000, "Flat", {}, False),
    (100_000, "HNSW32,Flat", {"efSearch": 64}, False),
    (3_000_000, "IVF8192,SQ8", {"nprobe": 16}, True),
])
def test_search_params_and_training(n, factory, params, trains):
    spec = choose_index_spec(n, 384)
    assert spec.factory == factory and spec.search_params == params
    assert (spec.train_size > 0) == trains
    if trains:
        nlist = int(factory.split(",")[0][3:])
        assert 39 * nlist <= spec.train_size <= n


def test_choice_is_pure_and_budget_monotone():
    budgets = [None, 10 * GB, 2 * GB, 1 * GB, 300 * MB, 100 * MB, 30 * MB, 25 * MB]
    sizes = [choose_index_spec(1_000_000, 384, memory_budget_bytes=b).estimated_bytes for b in budgets]
    assert sizes == sorted(sizes, reverse=True)
    assert choose_index_spec(1_000_000, 384) == choose_index_spec(1_000_000, 384)


def test_hnsw_has_build_params_and_reason_mentions_budget():
    spec = choose_index_spec(1_000_000, 384, memory_budget_bytes=1 * GB)
    assert "memory budget" in spec.reason and "HNSW32,Flat" in spec.reason
    assert choose_index_spec(100_000, 384).build_params["efConstruction"] >= 40


@pytest.mark.parametrize("n, dim, kind, budget, message", [
    (1_000_000, 384, "auto", 10 * MB, "at least"),  # too small for any index: names the minimum
    (1_000, 384, "auto", 1_000, "at least"),
    (1_000_000, 384, "flat", 1 * GB, "memory budget"),
    (1_000_000, 384, "hnsw", 1 * GB, "memory budget"),
    (1_000_000, 384, "ivf", 100 * MB, "ivfpq"),
    (1_000, 384, "ivfpq", None, "at least"),
    (0, 384, "auto", None, "empty"),
    (10, 0, "auto", None, "dim"),
])
def test_choice_errors(n, dim, kind, budget, message):
    with pytest.raises(InvalidArgumentError, match=message):
        choose_index_spec(n, dim, kind=kind, memory_budget_bytes=budget)


def test_unknown_kind_lists_choices():
    with pytest.raises(UnknownNameError, match="hnsw.*ivfpq|did you mean 'hnsw'") as error:
        choose_index_spec(100, 8, kind="hsnw")
    assert "auto" in str(error.value) and "flat" in str(error.value)


def test_minimum_named_in_error_is_enough():
    with pytest.raises(InvalidArgumentError) as error:
        choose_index_spec(1_000_000, 384, memory_budget_bytes=10 * MB)
    minimum = str(error.value).rsplit("at least ", 1)[1]
    assert choose_index_spec(1_000_000, 384, memory_budget_bytes=parse_memory(minimum.replace(" ", "")))


@pytest.mark.parametrize("n, nlist", [(100, 2), (1_000, 16), (100_000, 1024), (1_000_000, 4096), (10_000_000, 16384)])
def test_nlist(n, nlist):
    assert choose_nlist(n) == nlist


def test_pq_choices_divide_dim():
    for dim in (16, 100, 384, 512, 768):
        choices = pq_choices(dim)
        assert choices == sorted(choices, reverse=True)
        assert all(dim % m == 0 and 4 <= dim // m <= 64 for m in choices)


@pytest.mark.parametrize("text, value", [
    ("4GB", 4 * 10**9), ("4gb", 4 * 10**9), ("512MiB", 512 * 2**20), ("1.5G", 1_500_000_000), ("800M", 800 * 10**6),
    ("1000000", 1_000_000), ("2 GiB", 2 * 2**30), ("64k", 64_000), (12345, 12345),
])
def test_parse_memory(text, value):
    assert parse_memory(text) == value


@pytest.mark.parametrize("text", ["", "lots", "4XB", "-1GB", "0", "GB", "1.2.3G", 0, -5])
def test_parse_memory_errors(text):
    with pytest.raises(InvalidArgumentError):
        parse_memory(text)
