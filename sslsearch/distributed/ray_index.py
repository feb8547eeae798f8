"""On-disk index parts filled by Ray tasks, on whatever machines the Ray cluster has.

The driver (``index.ondisk``) trains the IVF index once and plans the parts; here the trained
index goes into the Ray object store once, and each part becomes one task: it deserialises the
trained index, reads its shards from the store itself (the store must be readable from every
node: a shared path or ``s3://``), adds them, and hands the part back. A task that can see the
driver's build folder (same machine or a shared filesystem) writes its part file there directly;
one that cannot returns the serialised part through the object store and the driver writes it.
The driver then merges the parts with ``merge_ondisk`` as for the local engine, so the index is
the same.
"""
from __future__ import annotations

import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import IndexFileError, InvalidArgumentError
from ..files import atomic_path
from ..index.spec import format_bytes
from ..progress import progress_bar
from .index_part import PartResult, add_shards, node_name, peak_rss_bytes

TOKEN_FILE = "ray-driver.token"  # in the build folder: a task that reads the driver's token shares its filesystem
# times Ray reruns a part whose worker died (a node lost or preempted, a process killed for memory); a task's own
# error (a store the node cannot read) is not retried: it comes back as text and would fail again
TASK_RETRIES = 2


def ray_part_workers(ray: Any, workers: int | None, threads: int) -> int:
    """Tasks in flight at once: ``workers``, else as many as the cluster's CPUs fit (``threads`` CPUs each).

    Raises:
        InvalidArgumentError: ``workers`` ≤ 0.
    """
    if workers is not None:
        if workers <= 0:
            raise InvalidArgumentError(f"--workers must be > 0 (Ray tasks filling parts at once), got {workers}")
        return workers
    cpus = float(ray.cluster_resources().get("CPU", 1))
    return max(1, int(cpus // threads))


def largest_node_memory(ray: Any) -> int | None:
    """The ``memory`` resource of the cluster's largest live node in bytes (what one task may ask for), or None."""
    sizes = [int(node.get("Resources", {}).get("memory", 0)) for node in ray.nodes() if node.get("Alive", True)]
    return max(sizes) if sizes and max(sizes) > 0 else None


def _fill_part_task(trained: np.ndarray, store_uri: str, shards: Sequence[str], number: int, part_path: str,
                    token: str, chunk_rows: int, threads: int, direct_write: bool | None) -> dict[str, Any]:
    """Body of one Ray task: fill part ``number``; never raises (errors come back as text, re-raised by the driver)."""
    try:
        import faiss

        started = time.perf_counter()
        faiss.omp_set_num_threads(threads)
        index = faiss.deserialize_index(trained)
        rows = add_shards(index, store_uri, shards, chunk_rows)
        token_path = Path(part_path).parent / TOKEN_FILE
        if direct_write is None:
            direct_write = token_path.is_file() and token_path.read_text() == token
        data = None
        if direct_write:
            with atomic_path(part_path) as temporary:
                faiss.write_index(index, str(temporary))
        else:
            data = faiss.serialize_index(index)
        del index
        result = PartResult(number, rows, time.perf_counter() - started, peak_rss_bytes(), node_name())
        return {"result": result.to_dict(), "data": data, "error": None}
    except Exception as error:  # noqa: BLE001 - reported to the driver, which raises one SSLSearchError
        return {"result": None, "data": None, "node": node_name(), "error": f"{type(error).__name__}: {error}"}


def fill_parts_ray(ray: Any, parts: Sequence[Any], part_paths: Sequence[str], trained_path: str, store_uri: str, *,
                   chunk_rows: int, workers: int, threads: int, total: int, progress: bool | None,
                   direct_write: bool | None = None, retries: int = TASK_RETRIES) -> list[PartResult]:
    """Fill every part (``index.ondisk.PartPlan``) in a Ray task, ``workers`` at a time, inside a Ray session.

    Args:
        ray: the imported ray module, initialised (``ray_embed.ray_session``).
        parts, part_paths: the plan and where each part file goes (in the driver's build folder).
        trained_path: the empty trained index on the driver; shipped to the tasks through the object store.
        store_uri: the store as every node opens it (absolute shared path or URI).
        chunk_rows: rows read at a time; threads: faiss threads (= CPUs asked) per task.
        workers: tasks in flight at once; total: rows of the store (the progress bar's end).
        direct_write: None detects whether a task shares the build folder; False always ships parts back
            through the object store, True always writes them directly.
        retries: times Ray reruns a part whose worker died before the build fails (``TASK_RETRIES``).

    Returns:
        One PartResult per part, in plan order.

    Raises:
        IndexFileError: a task failed (its error, part, shards and node), or its worker died ``retries`` + 1 times.
        InvalidArgumentError: a part needs more memory than any node offers (Ray would wait for one forever).
    """
    import faiss

    if not parts:
        return []
    folder = Path(part_paths[0]).parent
    token = uuid.uuid4().hex
    (folder / TOKEN_FILE).write_text(token)
    trained = ray.put(np.fromfile(trained_path, dtype=np.uint8))
    index_bytes = os.path.getsize(trained_path)
    # ids + codes, doubled (inverted lists grow by doubling), plus the trained index and one read chunk
    code_bytes = 2 * (faiss.extract_index_ivf(faiss.read_index(trained_path)).code_size + 8)
    task = ray.remote(_fill_part_task)
    node_memory = largest_node_memory(ray)
    pending = list(zip(parts, part_paths))
    running: dict[Any, tuple[Any, str]] = {}
    results: dict[int, PartResult] = {}
    try:
        with progress_bar(total, "index parts (ray)", unit="vec", enabled=progress) as bar:
            while pending or running:
                while pending and len(running) < workers:
                    part, path = pending.pop(0)
                    memory = part.rows * code_bytes + 2 * index_bytes + chunk_rows * 4 * 1024
                    if node_memory is not None and memory > node_memory:
                        raise InvalidArgumentError(
                            f"index part {part.number} ({part.rows:,} rows, shards {part.shards[0]}…"
                            f"{part.shards[-1]}) needs {format_bytes(memory)} of memory but the largest Ray node offers "
                            f"{format_bytes(node_memory)}; write the store with smaller shards (embed --shard-rows) "
                            "or add a node with more memory")
                    reference = task.options(num_cpus=threads, memory=memory, max_retries=retries).remote(
                        trained, store_uri, list(part.shards), part.number, path, token, chunk_rows, threads,
                        direct_write)
                    running[reference] = (part, path)
                (ready,), _ = ray.wait(list(running), num_returns=1)
                part, path = running.pop(ready)
                reply = _get(ray, ready, part)
                if reply["error"]:
                    raise IndexFileError(
                        f"the Ray task filling index part {part.number} (shards {part.shards[0]}…{part.shards[-1]}) "
                        f"on node {reply['node']} failed: {reply['error']}; every node must read the store at "
                        f"{store_uri} (a shared path or s3://) and have faiss + sslsearch installed")
                if reply["data"] is not None:
                    with atomic_path(path) as temporary:
                        np.asarray(reply["data"]).tofile(temporary)
                result = PartResult(**{("number" if k == "part" else k): v for k, v in reply["result"].items()})
                results[part.number] = result
                bar.update(result.rows)
    finally:
        for reference in running:
            ray.cancel(reference, force=True)
        (folder / TOKEN_FILE).unlink(missing_ok=True)
    return [results[part.number] for part in parts]


def _get(ray: Any, reference: Any, part: Any) -> dict[str, Any]:
    """The task's reply; a dead worker (out of memory, node lost) becomes an IndexFileError."""
    try:
        return ray.get(reference)
    except ray.exceptions.RayError as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise IndexFileError(f"the Ray task filling index part {part.number} (shards {part.shards[0]}…"
                             f"{part.shards[-1]}, {part.rows:,} rows) died, retries included: "
                             f"{type(error).__name__}: {first}; "
                             "lower --memory-budget for smaller parts or give the nodes more memory") from None


__all__ = ["fill_parts_ray", "ray_part_workers"]
