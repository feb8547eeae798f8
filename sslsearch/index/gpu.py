"""faiss on the GPU, when the installed faiss has GPU support (``faiss.get_num_gpus() > 0``).

Flat and IVF indexes (IVF-Flat, IVF-SQ8, IVF-PQ) move to the GPU for training, adding and
searching; HNSW has no faiss GPU implementation and stays on the CPU. Without GPU faiss (the
``faiss-cpu`` wheel) but with CUDA in torch, exact search runs as a blocked matmul in torch
instead (``exact.exact_search`` / ``search.Index`` with a flat index).
"""
from __future__ import annotations

from typing import Any

GPU_KINDS = ("flat", "ivf", "ivfpq")


def faiss_gpu_count() -> int:
    """GPUs that the installed faiss can use (0 for faiss-cpu)."""
    import faiss

    try:
        return int(faiss.get_num_gpus())
    except AttributeError:  # very old faiss builds
        return 0


def wants_faiss_gpu(device: str, kind: str) -> bool:
    """True when ``device`` (auto, cpu, cuda[:N]) asks for, or allows, a faiss GPU index of ``kind``."""
    name = str(device).lower()
    return name != "cpu" and kind in GPU_KINDS and faiss_gpu_count() > 0


def gpu_number(device: str) -> int:
    """The GPU number of ``cuda:N`` (0 for ``cuda`` and ``auto``)."""
    name = str(device).lower()
    return int(name.split(":", 1)[1]) if name.startswith("cuda:") else 0


def index_to_gpu(index: Any, device: str = "auto") -> Any:
    """A GPU copy of a CPU faiss index; the GPU resources stay referenced by the returned index."""
    import faiss

    resources = faiss.StandardGpuResources()
    gpu_index = faiss.index_cpu_to_gpu(resources, gpu_number(device), index)
    gpu_index.referenced_objects = [resources]  # keep the resources alive as long as the index
    return gpu_index


def index_to_cpu(index: Any) -> Any:
    """A CPU copy of an index that is, or wraps, a GPU index (what ``faiss.write_index`` needs).

    ``index_gpu_to_cpu`` walks wrappers such as ``IndexIDMap``, whose own type is not a GPU one.
    """
    import faiss

    return faiss.index_gpu_to_cpu(index) if faiss_gpu_count() > 0 else index
