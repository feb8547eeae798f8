"""A local Ray cluster for tests whose workers import this checkout's sslsearch."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import sslsearch


def local_ray() -> Iterator[object]:
    """Start Ray (2 CPUs, no dashboard, 100 MB object store), yield the module, shut it down; skip without Ray.

    Workers are separate processes: PYTHONPATH names this checkout while Ray starts, so they import
    the code under test (and inherit whatever else the environment holds then, e.g. S3 settings).
    """
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(sslsearch.__file__).parents[1]), before]))
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=100 * 2**20)
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = before
    yield ray
    ray.shutdown()
