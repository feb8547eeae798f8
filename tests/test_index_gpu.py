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
