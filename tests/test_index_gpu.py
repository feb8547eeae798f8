"""GPU faiss (marked gpu: skipped without CUDA): build on the GPU, save a CPU index, search on the GPU."""
from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from index_helpers import brute_force, held_out_queries, make_store, recall
from sslsearch.index.build import build_index
from sslsearch.index.gpu import faiss_gpu_count
from sslsearch.index.search import load_index

N, DIM = 20_000, 32
pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[Path, np.ndarray]:
    directory = tmp_path_factory.mktemp("gpu") / "emb"
    return directory, make_store(directory, N, DIM, shard_rows=5_000)


@pytest.fixture(scope="module")
def needs_faiss_gpu() -> None:
    if faiss_gpu_count() == 0:
        pytest.skip("the installed faiss has no GPU support (scripts/setup_gpu.sh installs faiss-gpu)")


def test_ivf_built_on_gpu_is_saved_as_cpu_index_and_searched_on_gpu(store, tmp_path, needs_faiss_gpu):
    directory, vectors = store
    card = build_index(directory, tmp_path / "gpu", kind="ivf", device="cuda", progress=False)
    assert card.build_params["device"] == "faiss-gpu"
    plain = faiss.read_index(str(tmp_path / "gpu" / "index.faiss"))  # a CPU index: readable without a GPU
    assert plain.ntotal == N and "Gpu" not in type(plain).__name__
    queries = held_out_queries(N, 200, DIM)
    truth = brute_force(queries, vectors, 10)
    on_cpu = load_index(tmp_path / "gpu").search_arrays(queries, 10)[1]
    on_gpu = load_index(tmp_path / "gpu", device="cuda").search_arrays(queries, 10)[1]
    assert recall(on_cpu, truth) >= 0.9 and recall(on_gpu, truth) >= 0.9
    assert (on_cpu == on_gpu).mean() > 0.95


def test_on_disk_build_trains_on_gpu_and_searches_the_mapped_lists_on_cpu(store, tmp_path, needs_faiss_gpu):
    directory, vectors = store
    card = build_index(directory, tmp_path / "ondisk", on_disk=True, device="cuda", progress=False)
    assert card.build_params["device"].startswith("faiss-gpu")
    index = load_index(tmp_path / "ondisk", device="cuda")
    assert isinstance(faiss.downcast_InvertedLists(faiss.extract_index_ivf(index.faiss_index).invlists),
                      faiss.OnDiskInvertedLists)
    queries = held_out_queries(N, 100, DIM)
    assert recall(index.search_arrays(queries, 10)[1], brute_force(queries, vectors, 10)) >= 0.9


def test_flat_search_falls_back_to_torch_on_cuda_without_faiss_gpu(store, tmp_path):
    if faiss_gpu_count() > 0:
        pytest.skip("faiss has GPU support here: the torch fallback is not used")
    directory, vectors = store
    build_index(directory, tmp_path / "flat", kind="flat", memory_budget=None, progress=False)
    index = load_index(tmp_path / "flat", device="cuda")
    queries = held_out_queries(N, 50, DIM)
    assert recall(index.search_arrays(queries, 10)[1], brute_force(queries, vectors, 10)) > 0.99


def test_bench_index_exact_section_runs_on_the_gpu(monkeypatch) -> None:
    """The device check `benchmarks/bench_index.py --no-ann --device cuda` (GEMM ceiling and exact search on the GPU)."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_index

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((5_000, DIM)).astype(np.float32)
    queries = rng.standard_normal((100, DIM)).astype(np.float32)
    rates = bench_index.bench_exact(vectors, queries, repeats=1, block_size=2_048, device="cuda")
    assert {"gemm_ceiling", "exact_search_torch_cuda", "exact_search_torch_cuda_from_host",
            "exact_search_faiss"} <= set(rates)
    assert all(r["distances_per_s"] > 0 and r["fraction_of_gemm"] > 0 for r in rates.values())
