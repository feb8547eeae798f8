"""One part of an on-disk index build: add some store shards to a copy of the trained IVF index.

Run as ``python -m sslsearch.distributed.index_part JOB_JSON`` by ``index.ondisk`` (local engine),
or inside a Ray task by ``distributed.ray_index`` (Ray engine). Imports only faiss, numpy and the
store reader (not torch), so each worker costs little more than its part.
"""
from __future__ import annotations

import dataclasses
import json
import resource
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

from ..store import EmbeddingStore


@dataclasses.dataclass(frozen=True)
class PartResult:
    """What filling one part cost, as the index card's ``build_params["part_timings"]`` records it.

    Attributes:
        number: the part (``PartPlan.number``).
        rows: vectors added.
        seconds: from reading the trained index to the part's codes being complete.
        peak_memory_bytes: peak resident memory of the process that filled it (a reused Ray worker
            reports its lifetime peak).
        node: host name of the machine that filled it.
    """

    number: int
    rows: int
    seconds: float
    peak_memory_bytes: int
    node: str

    def to_dict(self) -> dict[str, Any]:
        return {"part": self.number, "rows": self.rows, "seconds": round(self.seconds, 3),
                "peak_memory_bytes": self.peak_memory_bytes, "node": self.node}


def add_shards(index: Any, store_uri: str, shards: Sequence[str], chunk_rows: int) -> int:
    """Add the vectors of ``shards`` (shard file names) of the store at ``store_uri`` to ``index``; returns the rows."""
    store = EmbeddingStore.open(store_uri)
    wanted = set(shards)
    subset = dataclasses.replace(store.manifest, shards=tuple(s for s in store.manifest.shards if s.name in wanted))
    rows = 0
    for batch in EmbeddingStore(store.directory, subset).iter_batches(chunk_rows):
        index.add_with_ids(batch.embeddings, batch.ids)
        rows += len(batch.ids)
    return rows


def fill_part(trained_path: str, store_dir: str, shards: Sequence[str], part_path: str, chunk_rows: int,
              threads: int) -> tuple[int, int, float]:
    """Add the vectors of ``shards`` to the trained index read from ``trained_path``; write it to ``part_path``.

    Returns:
        (rows added, peak resident memory of this process in bytes, seconds from reading to writing).
    """
    import faiss

    started = time.perf_counter()
    faiss.omp_set_num_threads(threads)
    index = faiss.read_index(trained_path)
    rows = add_shards(index, store_dir, shards, chunk_rows)
    faiss.write_index(index, part_path)
    return rows, peak_rss_bytes(), time.perf_counter() - started


def node_name() -> str:
    return socket.gethostname()


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
