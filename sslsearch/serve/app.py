"""The FastAPI app of `sslsearch serve`: search endpoints over loaded indexes, store images, the web page."""
from __future__ import annotations

import hmac
import io
import logging
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Optional

from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from .. import __version__
from ..errors import BadImageError, InputNotFoundError, InvalidArgumentError, SSLSearchError, UnknownNameError
from ..index.search import SearchResult
from .catalog import DEFAULT_MAX_PIXELS, ServedIndex, UploadedImage, find_index, load_catalog
from .duplicates import DuplicatesView

log = logging.getLogger("sslsearch.serve")

DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # a whole request body
DEFAULT_MAX_QUERIES = 1024  # vectors, ids or images in one request
DEFAULT_MAX_K = 1000
THUMBNAIL_MAX = 512
_MEDIA_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".gif": "image/gif",
                ".bmp": "image/bmp", ".webp": "image/webp", ".tif": "image/tiff", ".tiff": "image/tiff",
                ".ppm": "image/x-portable-pixmap", ".pgm": "image/x-portable-graymap"}


class SearchRequest(BaseModel):
    """Body of ``POST /indexes/{name}/search``: exactly one of ``vectors`` or ``ids``."""

    model_config = ConfigDict(extra="forbid")
    vectors: Optional[list[list[float]]] = Field(None, description="(q, dim) query vectors; normalised by the server")
    ids: Optional[list[int]] = Field(None, description="store ids of vectors in the index; each is left out of its "
                                                       "own results")
    k: int = Field(10, description="neighbours per query, 1..min(ntotal, max_k)")


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _status_of(error: SSLSearchError) -> int:
    if isinstance(error, (UnknownNameError, InputNotFoundError)):
        return 404
    return 400


class _BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` (413), by Content-Length or while streaming."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"the request body is larger than the server's limit of {self.max_bytes:,} bytes; send smaller " \
                  "or fewer images (the limit is `sslsearch serve --max-upload-mb`)"
        for key, value in scope.get("headers", ()):
            if key == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await _error(413, message)(scope, receive, send)
                return
        received = 0

        async def limited_receive() -> Any:
            nonlocal received
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > self.max_bytes:  # FastAPI re-raises an HTTPException from body parsing as it is
                    raise HTTPException(413, message)
            return event

        await self.app(scope, limited_receive, send)


def _static_file(name: str) -> Path:
    return Path(str(resources.files("sslsearch.serve") / "static" / name))


def create_app(index_dirs: Sequence[str | os.PathLike[str]] | Mapping[str, ServedIndex], token: str | None = None, *,
               duplicates: str | os.PathLike[str] | None = None, device: str = "auto",
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_queries: int = DEFAULT_MAX_QUERIES, max_k: int = DEFAULT_MAX_K) -> FastAPI:
    """Build the search service over one or more index directories (each loaded once, with its encoder).

    Args:
        index_dirs: index directories (``NAME=DIR`` names one; default name: the directory's name),
            or an already loaded catalog (``load_catalog``).
        token: when given, every ``/indexes`` and ``/duplicates`` request needs ``Authorization: Bearer <token>``.
        duplicates: a ``sslsearch dedup`` output directory for the page's duplicates view.
        device: where the encoders run for image queries (auto, cpu, cuda).
        max_upload_bytes: largest request body accepted (413 above).
        max_pixels: largest uploaded image, in pixels (bigger ones are refused as decompression bombs).
        max_queries: most vectors, ids or images in one request.
        max_k: most neighbours per query.

    Raises:
        InputNotFoundError, IndexFileError: an index or dedup directory that is missing or damaged.
        InvalidArgumentError: a limit below 1, or index names that clash.

    Example:
        >>> import uvicorn  # doctest: +SKIP
        >>> uvicorn.run(create_app(["idx/"]), host="127.0.0.1", port=8000)  # doctest: +SKIP
    """
    if min(max_upload_bytes, max_pixels, max_queries, max_k) < 1:
        raise InvalidArgumentError(f"server limits must be >= 1, got max_upload_bytes={max_upload_bytes}, "
                                   f"max_pixels={max_pixels}, max_queries={max_queries}, max_k={max_k}")
    catalog = dict(index_dirs) if isinstance(index_dirs, Mapping) else load_catalog(index_dirs, device=device)
    dups = DuplicatesView.open(duplicates) if duplicates is not None else None
    app = FastAPI(title="sslsearch", version=__version__,
                  description="Nearest-neighbour search over sslsearch indexes: by image, vector or store id.")
    app.state.catalog = catalog
    app.add_middleware(_BodyLimit, max_bytes=max_upload_bytes)
    expected = f"Bearer {token}".encode() if token else None

    async def authorized(request: Request) -> None:  # async: no thread hop per request
        if expected is None:
            return
        given = request.headers.get("authorization")
        if not given:
            raise HTTPException(401, "this server needs a token: send the header `Authorization: Bearer <token>`",
                                headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.encode(), expected):
            raise HTTPException(401, "wrong token; use the one the server was started with (--token)",
                                headers={"WWW-Authenticate": "Bearer"})

    # --- errors: one JSON line, never a traceback -------------------------------------------
    @app.exception_handler(SSLSearchError)
    async def _sslsearch_error(request: Request, error: SSLSearchError) -> JSONResponse:
        extra = {"reason": error.reason} if isinstance(error, BadImageError) else {}
        return _error(_status_of(error), str(error), **extra)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
        response = _error(error.status_code, str(error.detail))
        response.headers.update(error.headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = error.errors()
        first = problems[0] if problems else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(422, f"{where}: {first.get('msg', 'invalid request')}" + (
            f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, error: Exception) -> JSONResponse:
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=error)
        return _error(500, f"internal error ({type(error).__name__}); the server log has the details")

    # --- helpers -----------------------------------------------------------------------------
    def check_k(k: int) -> None:
        if not 1 <= k <= max_k:
            raise InvalidArgumentError(f"k must be between 1 and {max_k} (the server's limit), got {k}")

    def check_count(count: int, what: str) -> None:
        if count > max_queries:
            raise InvalidArgumentError(f"{count} {what} in one request; the server takes at most {max_queries} "
                                       "(`sslsearch serve --max-queries`): split the batch")

    def payload(served: ServedIndex, k: int, results: list[SearchResult]) -> dict[str, Any]:
        return {"index": served.name, "k": k, "results": [r.to_dict() for r in results]}

    # --- page and health ---------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(_static_file("index.html"), media_type="text/html")

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> FileResponse:
        if name not in ("app.js", "style.css"):
            raise HTTPException(404, f"no static file {name!r}")
        return FileResponse(_static_file(name), media_type="text/javascript" if name.endswith(".js") else "text/css")

    @app.get("/health", summary="Liveness: the server is up and which indexes it holds")
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "indexes": list(catalog), "auth": expected is not None,
                "duplicates": dups is not None}

    # --- indexes -----------------------------------------------------------------------------
    @app.get("/indexes", summary="The indexes served (name, size, encoder, whether image search works)",
             dependencies=[Depends(authorized)])
    def indexes() -> dict[str, Any]:
        return {"indexes": [served.describe() for served in catalog.values()], "default": next(iter(catalog), None)}

    @app.get("/indexes/{name}", summary="The index card (index.json) of one index", dependencies=[Depends(authorized)])
    def card(name: str) -> dict[str, Any]:
        served = find_index(catalog, name)
        return {**served.index.card.to_dict(), "served": served.describe()}

    @app.post("/indexes/{name}/search", summary="Search by vectors or store ids (JSON); several at once is a batch",
              dependencies=[Depends(authorized)])
    def search(name: str, body: SearchRequest) -> JSONResponse:
        served = find_index(catalog, name)
        check_k(body.k)
        if (body.vectors is None) == (body.ids is None):
            raise InvalidArgumentError("give exactly one of 'vectors' (a list of query vectors) or 'ids' (store ids)")
        if body.ids is not None:
            check_count(len(body.ids), "ids")
            if not body.ids:
                raise InvalidArgumentError("'ids' is empty; give store ids like [3, 17]")
            results = served.search_ids(body.ids, body.k)
        else:
            vectors = body.vectors or []
            check_count(len(vectors), "vectors")
            if not vectors:
                raise InvalidArgumentError("'vectors' is empty; give one or more query vectors")
            if len({len(v) for v in vectors}) != 1:
                raise InvalidArgumentError("query vectors have different lengths; every vector needs "
                                           f"{served.index.dim} numbers")
            results = served.index.search(vectors, body.k)
        return JSONResponse(payload(served, body.k, results))

    @app.post("/indexes/{name}/search/images", summary="Search by uploaded images (multipart field 'files')",
              dependencies=[Depends(authorized)])
    def search_images(name: str, files: list[UploadFile] = File(..., description="one or more image files"),
                      k: int = Form(10)) -> JSONResponse:
        served = find_index(catalog, name)
        check_k(k)
        check_count(len(files), "images")
        uploads = [UploadedImage(upload.filename or f"upload-{position}", upload.file.read())
                   for position, upload in enumerate(files)]
        return JSONResponse(payload(served, k, served.search_uploads(uploads, k, max_pixels=max_pixels)))

    @app.get("/indexes/{name}/images/{image_id}", summary="A store image by id (never by path); ?size= for a thumbnail",
             dependencies=[Depends(authorized)], response_class=Response)
    def image(name: str, image_id: int, size: Optional[int] = Query(None, ge=16, le=THUMBNAIL_MAX)) -> Response:
        return _image_response(find_index(catalog, name).image_file(image_id), size)

    # --- duplicates --------------------------------------------------------------------------
    def require_duplicates() -> DuplicatesView:
        if dups is None:
            raise InputNotFoundError("this server has no duplicates view; start it with `sslsearch serve IDX "
                                     "--duplicates DUPS` (DUPS: the --out of `sslsearch dedup`)")
        return dups

    @app.get("/duplicates", summary="Clusters of the dedup run given with --duplicates, largest first (paged)",
             dependencies=[Depends(authorized)])
    def duplicates_page(offset: int = Query(0, ge=0), limit: int = Query(25, ge=1, le=200)) -> dict[str, Any]:
        return require_duplicates().page(offset, limit)

    @app.get("/duplicates/images/{image_id}", summary="An image of a duplicate cluster, by store id",
             dependencies=[Depends(authorized)], response_class=Response)
    def duplicate_image(image_id: int, size: Optional[int] = Query(None, ge=16, le=THUMBNAIL_MAX)) -> Response:
        return _image_response(require_duplicates().image_file(image_id), size)

    return app


def _image_response(path: Path, size: int | None) -> Response:
    """The file as stored, or (``size``) a JPEG thumbnail decoded with the bad-file rules of ``embed``."""
    if size is None:
        return FileResponse(path, media_type=_MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream"),
                            headers={"Cache-Control": "private, max-age=3600"})
    from ..sources import load_image

    picture = load_image(path).image
    picture.thumbnail((size, size))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=80)
    return Response(buffer.getvalue(), media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})
