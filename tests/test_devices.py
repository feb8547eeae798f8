"""devices.py: the one home of device choice, core counts, default workers and thread settings."""
from __future__ import annotations

import pytest
import torch

from sslsearch.devices import (compute_threads, default_training_workers, default_workers, faiss_threads,
                               resolve_device, torch_threads)
from sslsearch.errors import InvalidArgumentError, did_you_mean


def test_torch_threads_sets_and_restores_even_on_error() -> None:
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError):
        with torch_threads(1):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with torch_threads():  # None: as they are, restored after a change inside the block
        torch.set_num_threads(1)
    assert torch.get_num_threads() == before


def test_faiss_threads_sets_and_restores() -> None:
    faiss = pytest.importorskip("faiss")
    before = faiss.omp_get_max_threads()
    with faiss_threads(1):
        assert faiss.omp_get_max_threads() == 1
    assert faiss.omp_get_max_threads() == before


@pytest.mark.parametrize("cores, device_type, preloaded, expected", [
    (2, "cpu", True, 0), (2, "cpu", False, 1), (16, "cpu", False, 4), (16, "cpu", True, 4),
    (2, "cuda", True, 1), (16, "cuda", False, 8),
])
def test_default_training_workers(monkeypatch: pytest.MonkeyPatch, cores: int, device_type: str, preloaded: bool,
                                  expected: int) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    assert default_training_workers(device_type=device_type, preloaded=preloaded) == expected


def test_compute_threads_leave_cores_to_the_loaders(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    with torch_threads(4):
        assert [compute_threads(w) for w in (0, 1, 3, 8)] == [4, 3, 1, 1]


def test_embed_still_exposes_its_worker_default() -> None:
    from sslsearch import embed

    assert embed.default_workers is default_workers


def test_resolve_device_and_did_you_mean() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(InvalidArgumentError, match="unknown device"):
        resolve_device("tpu")
    assert did_you_mean("hsnw", ["hnsw", "flat"]) == " (did you mean 'hnsw'?)"
    assert did_you_mean("prototype", ["prototypes"], prefix="dino.", limit=2, cutoff=0.5) == \
        " (did you mean 'dino.prototypes'?)"
    assert did_you_mean("zzz", ["hnsw"]) == ""
