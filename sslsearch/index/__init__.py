"""FAISS indexes over an embedding store: spec (pure choice), build, io (files + card), search, exact, gpu.

Public API: ``choose_index_spec``, ``build_index``, ``load_index`` → ``Index`` (``search``,
``search_ids``, ``search_images``, ``search_arrays``), ``exact_search``, ``IndexCard``,
``SearchResult``, ``Neighbor``.
"""
from __future__ import annotations

from .build import build_index
from .exact import exact_search, recall_at_k
from .io import IndexCard, read_card
from .search import Index, Neighbor, SearchResult, load_index
from .spec import KINDS, IndexSpec, choose_index_spec, parse_memory

__all__ = ["KINDS", "Index", "IndexCard", "IndexSpec", "Neighbor", "SearchResult", "build_index", "choose_index_spec",
           "exact_search", "load_index", "parse_memory", "read_card", "recall_at_k"]
