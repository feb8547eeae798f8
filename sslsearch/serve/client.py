"""A Python client of `sslsearch serve` (standard library only): keep-alive HTTP, typed ``SearchResult``s."""
from __future__ import annotations

import http.client
import json
import os
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import numpy as np

from ..errors import InvalidArgumentError, ServerError
from ..index.io import IndexCard
from ..index.search import SearchResult

_RETRYABLE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, http.client.CannotSendRequest)


class Client:
    """Talk to a running ``sslsearch serve``; each thread keeps one keep-alive connection.

    Args:
        url: the server, e.g. ``http://127.0.0.1:8000``.
        token: the server's ``--token``, sent as ``Authorization: Bearer``.
        timeout: seconds to wait for a connection or an answer.

    Example:
        >>> client = Client("http://127.0.0.1:8000")  # doctest: +SKIP
        >>> for hit in client.search(["query.jpg"], k=5)[0].neighbors:  # doctest: +SKIP
        ...     print(hit.rank, hit.score, hit.path)
    """

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 60.0) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidArgumentError(f"server URL {url!r} is not http(s)://HOST[:PORT]; e.g. http://127.0.0.1:8000")
        self.url = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self._scheme, self._host, self._port = parts.scheme, parts.hostname, parts.port
        self._base = parts.path.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout = timeout
        self._local = threading.local()
        self._default_index: str | None = None

    # --- transport ---------------------------------------------------------------------------
    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            kind = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
            connection = kind(self._host, self._port, timeout=self.timeout)
            self._local.connection = connection
        return connection

    def close(self) -> None:
        """Close this thread's connection (another call opens a new one)."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None
                ) -> tuple[int, str, bytes]:
        """One HTTP exchange: ``(status, content type, body)``; a stale keep-alive connection is retried once.

        Raises:
            ServerError: the server cannot be reached.
        """
        headers = dict(self._headers)
        if content_type:
            headers["Content-Type"] = content_type
        for attempt in (0, 1):
            connection = self._connection()
            try:
                connection.request(method, self._base + path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
                return response.status, response.getheader("Content-Type", ""), data
            except _RETRYABLE:
                self.close()
                if attempt:
                    raise ServerError(f"the server {self.url} closed the connection; is it still running?") from None
            except OSError as error:
                self.close()
                raise ServerError(f"cannot reach the server {self.url} ({error}); start it with `sslsearch serve IDX` "
                                  "or check the URL") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _json(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None) -> Any:
        status, kind, data = self.request(method, path, body, content_type)
        try:
            decoded = json.loads(data) if data else None
        except ValueError:
            decoded = None
        if status >= 400:
            message = decoded.get("error") if isinstance(decoded, dict) else data[:200].decode("utf-8", "replace")
            raise ServerError(f"server {self.url}: {message} (HTTP {status})", status)
        if decoded is None and "json" not in kind:
            raise ServerError(f"server {self.url} answered {path} with {kind or 'no content type'}, not JSON; is it "
                              "an sslsearch server?", status)
        return decoded

    # --- information -------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """``GET /health``: status, version and index names."""
        return self._json("GET", "/health")

    def indexes(self) -> list[dict[str, Any]]:
        """The indexes served: name, size, encoder and whether image search works."""
        answer = self._json("GET", "/indexes")
        self._default_index = answer.get("default")
        return list(answer["indexes"])

    def card(self, index: str | None = None) -> IndexCard:
        """The card (``index.json``) of an index."""
        return IndexCard.from_dict(self._json("GET", f"/indexes/{self._index(index)}"))

    def _index(self, index: str | None) -> str:
        if index is None:
            if self._default_index is None:
                self.indexes()
            index = self._default_index
            if index is None:
                raise ServerError(f"the server {self.url} serves no index")
        return quote(index, safe="")

    # --- search ------------------------------------------------------------------------------
    def search(self, queries: Sequence[str | os.PathLike[str]] | None = None, *, vectors: Any = None,
               ids: Sequence[int] | None = None, k: int = 10, index: str | None = None) -> list[SearchResult]:
        """Search by image files (or folders), by ``vectors`` or by store ``ids``: give exactly one.

        Returns:
            One ``SearchResult`` per query, with neighbour paths relative to the server's store root.

        Raises:
            ServerError: the server refused the request (its message and HTTP status) or is unreachable.
            InvalidArgumentError: not exactly one kind of query.
        """
        given = [name for name, value in (("queries", queries), ("vectors", vectors), ("ids", ids)) if value is not None]
        if len(given) != 1:
            raise InvalidArgumentError("give exactly one of image queries, vectors= or ids="
                                       + (f" (got {' and '.join(given)})" if given else ""))
        if queries is not None:
            return self.search_images(queries, k=k, index=index)
        if vectors is not None:
            return self.search_vectors(vectors, k=k, index=index)
        return self.search_ids(ids or [], k=k, index=index)

    def search_vectors(self, vectors: Any, k: int = 10, index: str | None = None) -> list[SearchResult]:
        """(q, dim) or (dim,) query vectors → one result per row (the server L2-normalises them)."""
        matrix = np.asarray(vectors, dtype=np.float32)
        if matrix.ndim == 1:
            matrix = matrix[None, :]
        body = json.dumps({"vectors": matrix.tolist(), "k": k}).encode()
        return _results(self._json("POST", f"/indexes/{self._index(index)}/search", body, "application/json"))

    def search_ids(self, ids: Sequence[int], k: int = 10, index: str | None = None) -> list[SearchResult]:
        """Neighbours of vectors already in the index, by store id (each left out of its own results)."""
        body = json.dumps({"ids": [int(i) for i in ids], "k": k}).encode()
        return _results(self._json("POST", f"/indexes/{self._index(index)}/search", body, "application/json"))

    def search_images(self, paths: Sequence[str | os.PathLike[str]], k: int = 10, index: str | None = None
                      ) -> list[SearchResult]:
        """Upload image files (every image of a folder given) and search them; results are named by the paths.

        Raises:
            InputNotFoundError: a path that does not exist.
        """
        from ..sources import query_image_files

        files = query_image_files(paths)
        boundary = uuid.uuid4().hex
        parts = []
        for position, file in enumerate(files):
            # The server names results by the uploaded file name; the position keeps two "a.png" apart.
            parts.append(_part(boundary, "files", Path(file).read_bytes(), f"{position}/{Path(file).name}"))
        parts.append(_part(boundary, "k", str(int(k)).encode()))
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        answer = self._json("POST", f"/indexes/{self._index(index)}/search/images", body,
                            f"multipart/form-data; boundary={boundary}")
        results = _results(answer)
        return [_renamed(result, file) for result, file in zip(results, files)]

    def image(self, image_id: int, index: str | None = None, *, size: int | None = None) -> bytes:
        """The bytes of a store image (a JPEG thumbnail of at most ``size`` px when given)."""
        query = f"?size={int(size)}" if size else ""
        status, _, data = self.request("GET", f"/indexes/{self._index(index)}/images/{int(image_id)}{query}")
        if status >= 400:
            try:
                message = json.loads(data).get("error")
            except (ValueError, AttributeError):
                message = data[:200].decode("utf-8", "replace")
            raise ServerError(f"server {self.url}: {message} (HTTP {status})", status)
        return data


def _part(boundary: str, field: str, data: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{field}"' + (f'; filename="{filename}"' if filename else "")
    kind = "Content-Type: application/octet-stream\r\n" if filename else ""
    return f"--{boundary}\r\nContent-Disposition: {disposition}\r\n{kind}\r\n".encode() + data + b"\r\n"


def _renamed(result: SearchResult, name: str) -> SearchResult:
    return SearchResult(name, result.ids, result.scores, result.skipped, result.paths)


def _results(answer: dict[str, Any]) -> list[SearchResult]:
    results = []
    for item in answer["results"]:
        neighbors = item.get("neighbors", [])
        ids = np.array([n["id"] for n in neighbors], dtype=np.int64)
        scores = np.array([n["score"] for n in neighbors], dtype=np.float32)
        paths = {int(n["id"]): n["path"] for n in neighbors if n.get("path") is not None}
        results.append(SearchResult(item["query"], ids, scores, item.get("skipped"), paths))
    return results
