"""Duplicate clusters: union-find over similar pairs, the keep policy, and the typed clusters built from both."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import unknown_name
from .exact import ContentHasher, file_size, match_kind
from .result import ClusterMember, DuplicateCluster

if TYPE_CHECKING:
    from .against import IndexMatches
    from .rows import StoreRows

# name -> what it prefers, in order; ties always end on the smallest id, so the choice is deterministic.
KEEP_POLICIES: dict[str, str] = {
    "resolution": "largest resolution, then larger file, then smallest id",
    "file-size": "larger file, then largest resolution, then smallest id",
    "oldest": "oldest modification time, then largest resolution, then smallest id",
    "newest": "newest modification time, then largest resolution, then smallest id",
    "first": "smallest id (first path in sorted order)",
}
DEFAULT_KEEP = "resolution"


class UnionFind:
    """Disjoint sets over 0..n-1 with path halving and union by size.

    Example:
        >>> sets = UnionFind(4)
        >>> sets.union_many(np.array([0, 2]), np.array([1, 3]))
        >>> sets.labels().tolist()
        [0, 0, 2, 2]
    """

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)
        self.size = np.ones(n, dtype=np.int64)

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = int(parent[x])
        return int(x)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]

    def union_many(self, first: np.ndarray, second: np.ndarray) -> None:
        """Join every pair (first[i], second[i])."""
        for a, b in zip(np.asarray(first).tolist(), np.asarray(second).tolist()):
            self.union(a, b)

    def labels(self) -> np.ndarray:
        """(n,) int64: for each element, the smallest element of its set (a canonical set label)."""
        n = len(self.parent)
        roots = self.parent.copy()
        while True:  # pointer jumping: every element ends pointing at its root
            jumped = roots[roots]
            if np.array_equal(jumped, roots):
                break
            roots = jumped
        smallest = np.full(n, n, dtype=np.int64)
        np.minimum.at(smallest, roots, np.arange(n, dtype=np.int64))
        return smallest[roots]


def connected_groups(n: int, first: np.ndarray, second: np.ndarray) -> list[np.ndarray]:
    """The sets of 2 or more elements joined by the pairs, each sorted, largest set first (ties: smallest element).

    Args:
        n: number of elements (0..n-1).
        first, second: (m,) int arrays of joined pairs.

    Returns:
        A list of (size,) int64 arrays.

    Example:
        >>> [g.tolist() for g in connected_groups(6, np.array([4, 0]), np.array([5, 4]))]
        [[0, 4, 5]]
    """
    sets = UnionFind(n)
    sets.union_many(first, second)
    labels = sets.labels()
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]]) if n else np.zeros(0, np.int64)
    bounds = np.r_[starts, n]
    groups = [order[bounds[i]:bounds[i + 1]] for i in range(len(starts)) if bounds[i + 1] - bounds[i] > 1]
    groups.sort(key=lambda g: (-len(g), int(g[0])))
    return groups


@dataclass(frozen=True)
class ImageFacts:
    """What the keep policy looks at for one image (unknown values are -1)."""

    id: int
    width: int = -1
    height: int = -1
    size_bytes: int = -1
    mtime: float = -1.0

    @property
    def pixels(self) -> int:
        return self.width * self.height if self.width > 0 and self.height > 0 else -1


def check_keep_policy(policy: str) -> str:
    """Return ``policy`` if known, else raise UnknownNameError listing the policies."""
    if policy not in KEEP_POLICIES:
        raise unknown_name("keep policy", policy, KEEP_POLICIES)
    return policy


def _rank(facts: ImageFacts, policy: str) -> tuple:
    """Sort key: the image to keep sorts first. Unknown values (-1) lose to known ones."""
    if policy == "resolution":
        return (-facts.pixels, -facts.size_bytes, facts.id)
    if policy == "file-size":
        return (-facts.size_bytes, -facts.pixels, facts.id)
    if policy == "oldest":
        known = facts.mtime >= 0
        return (not known, facts.mtime if known else 0.0, -facts.pixels, facts.id)
    if policy == "newest":
        return (-facts.mtime, -facts.pixels, facts.id)
    return (facts.id,)


def choose_keeper(members: Sequence[ImageFacts], policy: str = DEFAULT_KEEP) -> int:
    """The id of the image to keep among ``members`` under ``policy`` (see ``KEEP_POLICIES``).

    Raises:
        UnknownNameError: an unknown policy.
        InvalidArgumentError: no members.

    Example:
        >>> choose_keeper([ImageFacts(3, 64, 64, 900), ImageFacts(1, 32, 32, 500)])
        3
    """
    check_keep_policy(policy)
    if not members:
        from ..errors import InvalidArgumentError

        raise InvalidArgumentError("choose_keeper needs at least one image")
    return min(members, key=lambda facts: _rank(facts, policy)).id


# --------------------------------------------------------------------------- building the typed clusters


def build_clusters(rows: "StoreRows", groups: Sequence[np.ndarray], keep: str, hasher: ContentHasher,
                   matches: "IndexMatches | None" = None) -> list[DuplicateCluster]:
    """Typed clusters from connected groups of nodes (store rows 0..n-1, then ``matches``' index items).

    A group with index items keeps its best-matching index item (``--against``); otherwise the keep
    policy picks the keeper. Members come keeper first, then index items, then by decreasing
    similarity to the keeper; clusters largest first (ties: store before index, smallest id), numbered
    from 0.

    Args:
        rows: the store read into memory.
        groups: (size,) int arrays of node numbers (``connected_groups``).
        keep: keep policy (``KEEP_POLICIES``).
        hasher: file and pixel hashes, to say how each member matches its keeper.
        matches: the ``--against`` index matches, or None.
    """
    n = len(rows.ids)
    best = matches.best_score() if matches is not None else None
    edges = matches.edge_scores() if matches is not None else {}
    clusters = []
    for cluster_id, group in enumerate(groups):
        store_rows = group[group < n]
        index_nodes = (group[group >= n] - n).tolist()
        if index_nodes:  # the index already holds this picture: its best-matching item is kept
            keeper_node = max(index_nodes, key=lambda node: (best[node], -int(matches.ids[node])))
            members = _index_cluster_members(rows, store_rows, index_nodes, keeper_node, matches, edges)
        else:
            members = _store_cluster_members(rows, store_rows, keep, hasher)
        members.sort(key=lambda m: (m.match != "keeper", m.source != "index", -_sortable(m.similarity), m.id))
        clusters.append(DuplicateCluster(cluster_id, tuple(members)))
    clusters.sort(key=lambda c: (-len(c), c.members[0].source != "store", c.members[0].id))
    return [DuplicateCluster(number, c.members) for number, c in enumerate(clusters)]


def removed_rows(rows: "StoreRows", clusters: Sequence[DuplicateCluster]) -> set[int]:
    """Row positions of the store images the clusters remove."""
    row_of = {int(i): r for r, i in enumerate(rows.ids.tolist())}
    return {row_of[m.id] for c in clusters for m in c.removed}


def _sortable(value: float) -> float:
    return -2.0 if value != value else value  # NaN sorts last


def _image_facts(rows: "StoreRows", row: int) -> ImageFacts:
    size_bytes, mtime = file_size(rows.absolute(row))
    if rows.width is not None and rows.height is not None:
        width, height = int(rows.width[row]), int(rows.height[row])
    else:
        width, height = _header_size(rows.absolute(row))
    return ImageFacts(id=int(rows.ids[row]), width=width, height=height, size_bytes=size_bytes, mtime=mtime)


def _header_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return -1, -1


def _store_cluster_members(rows: "StoreRows", group: np.ndarray, keep: str,
                           hasher: ContentHasher) -> list[ClusterMember]:
    facts = {int(row): _image_facts(rows, int(row)) for row in group}
    keeper_id = choose_keeper(list(facts.values()), keep)
    keeper_row = next(row for row, f in facts.items() if f.id == keeper_id)
    similarities = rows.vectors_of(group) @ rows.vectors_of(np.array([keeper_row]))[0]
    members = []
    for row, similarity in zip(group.tolist(), similarities.tolist()):
        f = facts[row]
        members.append(ClusterMember(id=f.id, path=rows.paths[row], similarity=float(min(similarity, 1.0)),
                                     keep=row == keeper_row, match=match_kind(row, keeper_row, hasher, similarity),
                                     width=f.width, height=f.height, size_bytes=f.size_bytes))
    return members


def _index_cluster_members(rows: "StoreRows", store_rows: np.ndarray, index_nodes: list[int], keeper_node: int,
                           matches: "IndexMatches", edges: dict[tuple[int, int], float]) -> list[ClusterMember]:
    keeper_vector = matches.vectors[keeper_node] if matches.vectors is not None else None
    members = []
    for node in index_nodes:
        if node == keeper_node:
            similarity = 1.0
        elif matches.vectors is not None:
            similarity = float(min(matches.vectors[node] @ keeper_vector, 1.0))
        else:
            similarity = float("nan")
        path = matches.paths[node]
        width = height = size_bytes = -1
        if path and matches.source_root is not None:
            size_bytes = file_size(matches.source_root / path)[0]
            width, height = _header_size(matches.source_root / path)
        members.append(ClusterMember(id=int(matches.ids[node]), path=path, similarity=similarity, keep=True,
                                     match="keeper" if node == keeper_node else "near", width=width, height=height,
                                     size_bytes=size_bytes, source="index"))
    for row in store_rows.tolist():
        if keeper_vector is not None:
            similarity = float(min(rows.vectors_of(np.array([row]))[0] @ keeper_vector, 1.0))
        else:
            similarity = edges.get((row, keeper_node), float("nan"))
        f = _image_facts(rows, row)
        members.append(ClusterMember(id=f.id, path=rows.paths[row], similarity=similarity, keep=False, match="near",
                                     width=f.width, height=f.height, size_bytes=f.size_bytes, source="store"))
    return members
