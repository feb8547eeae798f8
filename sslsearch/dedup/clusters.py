"""Duplicate clusters: union-find over similar pairs, and the keep policy that picks one image per cluster."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import unknown_name

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
