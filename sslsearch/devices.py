"""The machine's compute: the torch device from --device auto|cpu|cuda[:N], cores, workers and threads."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from .errors import InvalidArgumentError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Map ``auto`` to CUDA when torch sees a GPU, else CPU; validate explicit choices.

    Raises:
        InvalidArgumentError: an unknown device name, or ``cuda`` on a machine without one.
    """
    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InvalidArgumentError(f"--device {device} asked for a GPU, but torch sees none; use --device cpu or auto")
        return torch.device(name)
    raise InvalidArgumentError(f"unknown device {device!r}; choose auto, cpu or cuda (cuda:N for one GPU)")


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers(device: str | torch.device = "cpu") -> int:
    """Decode worker processes of ``embed`` by default.

    With a GPU the CPU only decodes: one worker per core, at most 8. On the CPU the forward pass
    already keeps every core busy and decoding costs a fraction of its CPU work (resnet18, 128 px
    sources: ~1.1 ms vs ~4 ms per image at 64 px, ~1.3 vs ~11 at 112 px), so a quarter of the
    cores, at least 1 (0 on a single core). On the busy 2-core box, 0, 1 and 2 workers were within
    run-to-run noise of each other (benchmarks/bench_embed.py); one worker keeps the decoding of
    large photos off the forward thread.
    """
    cores = usable_cores()
    if torch.device(device).type == "cuda":
        return max(1, min(cores, 8))
    return 0 if cores < 2 else max(1, min(cores // 4, 8))


def default_training_workers(*, device_type: str, preloaded: bool) -> int:
    """Data-loading processes of a training run by default.

    On a GPU the cores feed the device: all but one, at most 8. On the CPU the cores also run the
    model: with images decoded in memory and few cores, augmenting in the training process (0
    workers) costs less than taking a core from the model; otherwise a quarter of the cores.
    """
    cores = os.cpu_count() or 2
    if device_type == "cuda":
        return max(1, min(8, cores - 1))
    if preloaded and cores <= 4:
        return 0
    return max(1, min(4, cores // 4))


def compute_threads(workers: int) -> int:
    """torch threads for CPU work beside ``workers`` loader processes, so the two do not oversubscribe
    the cores (OpenMP threads that wait on a descheduled peer stall every layer)."""
    cores = os.cpu_count() or 2
    return max(1, min(torch.get_num_threads(), cores - workers))


@contextlib.contextmanager
def torch_threads(threads: int | None = None) -> Iterator[None]:
    """Run the block with ``threads`` torch CPU threads (None: as they are), restoring the count afterwards."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def faiss_threads(threads: int) -> Iterator[None]:
    """Run faiss with ``threads`` OpenMP threads, restoring the setting afterwards.

    A single query cannot use more than one thread, and on a busy machine the idle threads'
    wake-ups make its latency jump by 10x from call to call.
    """
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)
