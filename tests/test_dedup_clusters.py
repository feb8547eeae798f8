"""Union-find clusters and the keep policy (table tests), exact hash groups."""
from __future__ import annotations

import numpy as np
import pytest

from sslsearch.dedup.clusters import KEEP_POLICIES, ImageFacts, UnionFind, choose_keeper, connected_groups
from sslsearch.dedup.exact import chain_pairs, hash_groups
from sslsearch.errors import InvalidArgumentError, UnknownNameError


@pytest.mark.parametrize("n,pairs,expected", [
    (5, [], []),
    (4, [(0, 1), (2, 3)], [[0, 1], [2, 3]]),
    (6, [(4, 5), (0, 4)], [[0, 4, 5]]),
    (6, [(5, 4), (3, 2), (2, 1), (1, 0)], [[0, 1, 2, 3], [4, 5]]),  # larger set first
    (3, [(0, 0), (1, 1)], []),  # self pairs make no cluster
    (4, [(0, 1), (1, 0), (0, 1)], [[0, 1]]),  # repeated pairs
    (5, [(3, 4), (1, 2)], [[1, 2], [3, 4]]),  # equal sizes: smallest element first
])
def test_connected_groups(n: int, pairs: list[tuple[int, int]], expected: list[list[int]]) -> None:
    first = np.array([a for a, _ in pairs], dtype=np.int64)
    second = np.array([b for _, b in pairs], dtype=np.int64)
    assert [g.tolist() for g in connected_groups(n, first, second)] == expected


def test_union_find_long_chain_matches_reference() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    first, second = rng.integers(0, n, 1500), rng.integers(0, n, 1500)
    sets = UnionFind(n)
    sets.union_many(first, second)
    labels = sets.labels()
    # Reference: repeated min-label propagation until stable.
    reference = np.arange(n)
    changed = True
    while changed:
        before = reference.copy()
        low = np.minimum(reference[first], reference[second])
        np.minimum.at(reference, first, low)
        np.minimum.at(reference, second, low)
        reference = reference[reference]
        changed = not np.array_equal(before, reference)
    assert np.array_equal(labels, reference)


BIG = ImageFacts(id=5, width=200, height=100, size_bytes=1000, mtime=300.0)
BIG_SMALLER_FILE = ImageFacts(id=2, width=200, height=100, size_bytes=900, mtime=100.0)
SMALL_LARGE_FILE = ImageFacts(id=1, width=50, height=50, size_bytes=5000, mtime=200.0)
GONE = ImageFacts(id=0)  # file missing: nothing known


@pytest.mark.parametrize("policy,members,expected", [
    ("resolution", [BIG, BIG_SMALLER_FILE, SMALL_LARGE_FILE], 5),
    ("resolution", [BIG_SMALLER_FILE, SMALL_LARGE_FILE], 2),
    ("resolution", [ImageFacts(7, 10, 10, 10), ImageFacts(3, 10, 10, 10)], 3),  # full tie: smallest id
    ("resolution", [GONE, SMALL_LARGE_FILE], 1),  # unknown loses to known
    ("file-size", [BIG, BIG_SMALLER_FILE, SMALL_LARGE_FILE], 1),
    ("file-size", [BIG, BIG_SMALLER_FILE], 5),
    ("oldest", [BIG, BIG_SMALLER_FILE, SMALL_LARGE_FILE], 2),
    ("oldest", [GONE, BIG], 5),
    ("newest", [BIG, BIG_SMALLER_FILE, SMALL_LARGE_FILE], 5),
    ("first", [BIG, BIG_SMALLER_FILE, SMALL_LARGE_FILE, GONE], 0),
    ("resolution", [GONE, ImageFacts(id=4)], 0),
])
def test_keep_policy(policy: str, members: list[ImageFacts], expected: int) -> None:
    assert choose_keeper(members, policy) == expected
    assert choose_keeper(list(reversed(members)), policy) == expected  # order of members does not matter


def test_keep_policy_errors() -> None:
    assert set(KEEP_POLICIES) == {"resolution", "file-size", "oldest", "newest", "first"}
    with pytest.raises(UnknownNameError, match="did you mean 'resolution'"):
        choose_keeper([BIG], "resolutoin")
    with pytest.raises(InvalidArgumentError):
        choose_keeper([], "resolution")


def test_hash_groups_and_chain_pairs() -> None:
    groups = hash_groups(["a", "b", None, "a", "", "b", "a", "c"])
    assert [g.tolist() for g in groups] == [[0, 3, 6], [1, 5]]
    first, second = chain_pairs(groups)
    assert [g.tolist() for g in connected_groups(8, first, second)] == [[0, 3, 6], [1, 5]]
    empty_first, empty_second = chain_pairs([])
    assert len(empty_first) == len(empty_second) == 0
