"""The benchmarks use the public API only: no `sslsearch.<submodule>` import in benchmarks/*.py, not even in code strings."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import sslsearch

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted((ROOT / "benchmarks").glob("*.py"))
# code handed to a subprocess (`python -c "..."`) counts too
CODE_IN_STRING = re.compile(r"\b(?:from\s+sslsearch\.[\w.]+\s+import|import\s+sslsearch\.\w)")


def internal_imports(source: str) -> list[str]:
    """`line: statement` for each import of a sslsearch submodule, and each string holding one."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("sslsearch."):
            found.append(f"{node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Import):
            found += [f"{node.lineno}: import {alias.name}" for alias in node.names if alias.name.startswith("sslsearch.")]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and CODE_IN_STRING.search(node.value):
            found.append(f"{node.lineno}: a string runs {CODE_IN_STRING.search(node.value).group(0)!r}")
    return found


def public_names_used(source: str) -> set[str]:
    """The names taken with `from sslsearch import ...` and read as `sslsearch.NAME`."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "sslsearch":
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "sslsearch":
            names.add(node.attr)
    return names


def test_there_are_benchmarks_to_check():
    assert len(BENCHMARKS) >= 10


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda path: path.name)
def test_benchmark_imports_only_the_public_api(path):
    assert internal_imports(path.read_text(encoding="utf-8")) == [], (
        f"{path.name} imports sslsearch internals; use `import sslsearch` / `from sslsearch import NAME` (add the "
        "name to sslsearch/__init__.py if users need it too, else keep the helper in benchmarks/)")


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda path: path.name)
def test_benchmark_uses_only_exported_names(path):
    unknown = public_names_used(path.read_text(encoding="utf-8")) - set(sslsearch.__all__)
    assert unknown == set(), f"{path.name} uses sslsearch names that are not in sslsearch.__all__"


@pytest.mark.parametrize(("source", "expected"), [
    ("from sslsearch.index import build_index", ["1: from sslsearch.index import ..."]),
    ("import sslsearch.store as s", ["1: import sslsearch.store"]),
    ("x = 1\ncode = 'from sslsearch.cli.app import main; main()'", ["2: a string runs 'from sslsearch.cli.app import'"]),
    ("import sslsearch\nfrom sslsearch import build_index, __version__", []),
    ('"""Uses ``sslsearch.index.synthetic`` vectors."""', []),  # prose naming a module is fine
    ("from .provenance import git_commit", []),
])
def test_the_check_finds_internal_imports(source, expected):
    assert internal_imports(source) == expected
