"""Shard blocks: the unit of distributed extraction — a fixed id range embedded into one shard plus a receipt."""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..encoders import Encoder
from ..errors import BadImageError
from ..loader import iter_decoded
from ..location import StoreLocation
from ..sources import ImageSource
from ..store import shard_table

RECEIPTS = ".blocks"  # hidden folder of the store: one JSON receipt per finished block


def shard_name(block: int) -> str:
    """Block ``b`` always writes ``part-{b:05d}.parquet``, so a rerun rewrites the same file."""
    return f"part-{block:05d}.parquet"


def receipt_name(block: int) -> str:
    return f"{RECEIPTS}/block-{block:05d}.json"


@dataclass(frozen=True)
class BlockTask:
    """The images of one block: ids ``block * shard_rows`` up to the next block's first id.

    Attributes:
        block: block number (also the shard number).
        ids: store ids, ascending.
        paths: their paths relative to the source root.
        labels: their labels (ImageFolder class) or None.
    """

    block: int
    ids: tuple[int, ...]
    paths: tuple[str, ...]
    labels: tuple[str | None, ...]

    def to_row(self) -> dict[str, Any]:
        return {"block": self.block, "task": json.dumps({"ids": self.ids, "paths": self.paths, "labels": self.labels})}

    @classmethod
    def from_row(cls, block: int, task: str) -> "BlockTask":
        data = json.loads(task)
        return cls(int(block), tuple(data["ids"]), tuple(data["paths"]), tuple(data["labels"]))


@dataclass(frozen=True)
class BlockReceipt:
    """What a finished block wrote; saved as ``.blocks/block-NNNNN.json`` after its shard.

    Attributes:
        block: block number.
        rows: rows in its shard (0: every file was bad, no shard).
        shard_bytes: size of the shard file; a shard of another size is not this block's.
        skipped: {"path", "reason", "detail"} of the files that could not be decoded, in id order.
    """

    block: int
    rows: int
    shard_bytes: int
    skipped: tuple[dict[str, str], ...] = field(default_factory=tuple)

    @property
    def shard(self) -> str | None:
        return shard_name(self.block) if self.rows else None

    def to_json(self) -> str:
        return json.dumps({"block": self.block, "rows": self.rows, "shard_bytes": self.shard_bytes,
                           "skipped": list(self.skipped)})

    @classmethod
    def from_json(cls, text: str | bytes) -> "BlockReceipt":
        data = json.loads(text)
        return cls(int(data["block"]), int(data["rows"]), int(data["shard_bytes"]),
                   tuple(dict(s) for s in data["skipped"]))

    def is_intact(self, location: StoreLocation) -> bool:
        """True when the block's shard (if any) is on disk with the size recorded here."""
        return self.rows == 0 or location.size(shard_name(self.block)) == self.shard_bytes


def plan_blocks(source: ImageSource, shard_rows: int) -> list[BlockTask]:
    """Cut the source's ids into blocks of ``shard_rows`` consecutive ids."""
    records = source.records
    return [BlockTask(start // shard_rows, tuple(r.id for r in records[start:start + shard_rows]),
                      tuple(r.path for r in records[start:start + shard_rows]),
                      tuple(r.label for r in records[start:start + shard_rows]))
            for start in range(0, len(records), shard_rows)]


def read_receipts(location: StoreLocation) -> dict[int, BlockReceipt]:
    """The receipts on disk whose shard is intact, by block (a damaged receipt counts as absent)."""
    receipts: dict[int, BlockReceipt] = {}
    for name in location.list(RECEIPTS):
        if not (name.startswith("block-") and name.endswith(".json")):
            continue
        try:
            receipt = BlockReceipt.from_json(location.read_bytes(f"{RECEIPTS}/{name}"))
        except (ValueError, KeyError, TypeError, OSError):
            continue
        if receipt.is_intact(location):
            receipts[receipt.block] = receipt
    return receipts


def slot_batches(ids: Sequence[int], batch_size: int) -> list[list[int]]:
    """Positions into ``ids`` grouped by the global slot ``id // batch_size``.

    The local engine batches by the same slots, so with ``shard_rows`` a multiple of
    ``batch_size`` both engines send the encoder identical batches.
    """
    groups: dict[int, list[int]] = {}
    for position, image_id in enumerate(ids):
        groups.setdefault(image_id // batch_size, []).append(position)
    return [groups[slot] for slot in sorted(groups)]


def embed_block(task: BlockTask, encoder: Encoder, location: StoreLocation, schema: pa.Schema, root: Path, *,
                batch_size: int, decode_workers: int = 0, strict: bool = False) -> BlockReceipt:
    """Decode and embed one block, write its shard then its receipt (each atomically).

    Decoding and preprocessing are the local engine's (``loader.iter_decoded``), so vectors and
    skipped files match ``embed_images``. A block whose files are all bad writes no shard.

    Raises:
        BadImageError: with ``strict``, the first file that cannot be decoded.
    """
    files = [root / path for path in task.paths]
    batches = slot_batches(task.ids, batch_size)
    dtype = "float16" if schema.field("embedding").type.value_type == pa.float16() else "float32"
    positions: list[int] = []
    vectors: list[np.ndarray] = []
    widths: list[int] = []
    heights: list[int] = []
    digests: list[str] = []
    skipped: list[tuple[int, dict[str, str]]] = []
    for batch in iter_decoded(files, encoder, batches, workers=min(decode_workers, len(batches)),
                              pin_memory=encoder.device.type == "cuda"):
        for position, reason, detail in batch.skipped:
            if strict:
                raise BadImageError(f"{detail} [{reason}]; fix or remove the file, or drop --strict to skip bad files",
                                    reason)
            skipped.append((position, {"path": task.paths[position], "reason": reason, "detail": detail}))
        if len(batch.positions):
            vectors.append(encoder.embed_tensors(batch.images).astype(dtype, copy=False))
            positions += batch.positions.tolist()
            widths += batch.widths
            heights += batch.heights
            digests += batch.sha256
    shard = shard_name(task.block)
    size = 0
    if positions:
        table = shard_table(schema, [task.ids[p] for p in positions], [task.paths[p] for p in positions],
                            np.concatenate(vectors), label=[task.labels[p] for p in positions], width=widths,
                            height=heights, sha256=digests)
        size = location.write_atomic(shard, lambda stream: pq.write_table(table, stream, compression="zstd"))
    else:
        location.delete(shard)  # a stale shard of an earlier run with other files
    receipt = BlockReceipt(task.block, len(positions), size, tuple(entry for _, entry in sorted(skipped,
                                                                                               key=lambda s: s[0])))
    location.write_bytes_atomic(receipt_name(task.block), receipt.to_json().encode())
    return receipt
