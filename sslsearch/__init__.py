"""sslsearch: vector retrieval on self-supervised image embeddings.

Modules: errors (exceptions), files (atomic writes, locks), sources (list/decode images),
sample_data (offline sample set), encoders (timm / trained encoders), store (Parquet embedding
store), embed (extraction), index/ (FAISS choice, build, search), dedup, evaluate, ssl/ (training).
"""
from __future__ import annotations

__version__ = "0.1.0"
