"""One part of an on-disk index build, in its own process: add some store shards to a copy of the trained IVF index.

Run as ``python -m sslsearch.distributed.index_part JOB_JSON`` by ``index.ondisk``; imports only
faiss, numpy and the store reader (not torch), so each worker costs little more than its part.
"""
from __future__ import annotations

import dataclasses
import json
import resource
import sys
import time
from collections.abc import Sequence

from ..store import EmbeddingStore


def fill_part(trained_path: str, store_dir: str, shards: Sequence[str], part_path: str, chunk_rows: int,
              threads: int) -> tuple[int, int, float]:
    """Add the vectors of ``shards`` (store shard file names) to the trained index; write it to ``part_path``.

    Returns:
        (rows added, peak resident memory of this process in bytes, seconds from reading to writing).
    """
    import faiss

    started = time.perf_counter()
    faiss.omp_set_num_threads(threads)
    index = faiss.read_index(trained_path)
    store = EmbeddingStore.open(store_dir)
    wanted = set(shards)
    subset = dataclasses.replace(store.manifest, shards=tuple(s for s in store.manifest.shards if s.name in wanted))
    rows = 0
    for batch in EmbeddingStore(store.directory, subset).iter_batches(chunk_rows):
        index.add_with_ids(batch.embeddings, batch.ids)
        rows += len(batch.ids)
    faiss.write_index(index, part_path)
    return rows, peak_rss_bytes(), time.perf_counter() - started


def peak_rss_bytes() -> int:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss it does not carry the parent's peak over exec)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def main(argument: str) -> None:
    job = json.loads(argument)
    print(json.dumps(fill_part(job["trained"], job["store"], job["shards"], job["out"], job["chunk_rows"],
                               job["threads"])))


if __name__ == "__main__":
    main(sys.argv[1])
