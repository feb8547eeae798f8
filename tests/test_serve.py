"""`sslsearch serve` through FastAPI's TestClient: every endpoint, and every bad request answered as 4xx JSON."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("multipart")

from fastapi.testclient import TestClient  # noqa: E402

from serve_helpers import bomb_png, make_hostile_index, make_image_index, png_bytes, truncated_jpeg  # noqa: E402
from sslsearch.errors import InputNotFoundError, InvalidArgumentError  # noqa: E402
from sslsearch.index import load_index  # noqa: E402
from sslsearch.serve import create_app  # noqa: E402
from sslsearch.serve.catalog import load_catalog, parse_index_arguments, resolve_under  # noqa: E402
from sslsearch.store import EmbeddingStore  # noqa: E402

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def image_index(sample_dir, tmp_path_factory):
    """(images, store, index) of the sample images, embedded by a tiny random-init backbone."""
    return make_image_index(sample_dir, tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    return make_hostile_index(tmp_path_factory.mktemp("hostile"))


@pytest.fixture(scope="module")
def catalog(image_index, hostile):
    """Both indexes loaded once for the module (named ``photos`` and ``hostile``)."""
    return load_catalog([f"photos={image_index[2]}", f"hostile={hostile[1]}"], device="cpu")


@pytest.fixture(scope="module")
def client(catalog):
    return TestClient(create_app(catalog))


def assert_json_error(response, status: int, *fragments: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body.get("error"), str) and "Traceback" not in response.text
    for fragment in fragments:
        assert fragment in body["error"], (fragment, body["error"])
    return body


def first_png(images):
    return sorted(images.glob("*/*.png"))[0]


# --------------------------------------------------------------------------- information


def test_health_indexes_card_and_docs(client, image_index):
    health = client.get("/health").json()
    assert health == {"status": "ok", "version": health["version"], "indexes": ["photos", "hostile"], "auth": False,
                      "duplicates": False}
    listing = client.get("/indexes").json()
    assert listing["default"] == "photos"
    photos, hostile = listing["indexes"]
    assert photos["ntotal"] == 120 and photos["image_search"] is True and photos["encoder"] == "timm:test_resnet"
    assert hostile["image_search"] is False and "rebuild" in hostile["image_search_note"]
    card = client.get("/indexes/photos").json()
    on_disk = json.loads((image_index[2] / "index.json").read_text())
    assert card["factory"] == on_disk["factory"] and card["ntotal"] == 120 and card["encoder"] == on_disk["encoder"]
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/indexes/{name}/search", "/indexes/{name}/search/images", "/indexes/{name}/images/{image_id}",
            "/health", "/duplicates"} <= set(paths)
    page = client.get("/")
    assert page.status_code == 200 and "<title>sslsearch</title>" in page.text
    assert client.get("/static/app.js").status_code == 200
    assert_json_error(client.get("/static/../app.py"), 404)


# --------------------------------------------------------------------------- search


def test_search_by_vectors_and_ids_matches_in_process(client, image_index):
    _, store_dir, index_dir = image_index
    index = load_index(index_dir)
    vectors = EmbeddingStore.open(store_dir).vectors_for([3, 40, 77])
    answer = client.post("/indexes/photos/search", json={"vectors": vectors.tolist(), "k": 5}).json()
    expected = index.search(vectors, 5)
    assert answer["index"] == "photos" and answer["k"] == 5 and len(answer["results"]) == 3
    for got, want in zip(answer["results"], expected):
        assert [n["id"] for n in got["neighbors"]] == want.ids.tolist()
        assert [n["score"] for n in got["neighbors"]] == pytest.approx(want.scores.tolist(), abs=1e-6)
        assert [n["path"] for n in got["neighbors"]] == [h.path for h in want.neighbors]
    assert [r["neighbors"][0]["id"] for r in answer["results"]] == [3, 40, 77]  # each vector finds itself
    by_id = client.post("/indexes/photos/search", json={"ids": [3, 40], "k": 4}).json()["results"]
    want = index.search_ids([3, 40], 4)
    assert [r["query"] for r in by_id] == ["id:3", "id:40"]
    assert [[n["id"] for n in r["neighbors"]] for r in by_id] == [w.ids.tolist() for w in want]
    assert 3 not in [n["id"] for n in by_id[0]["neighbors"]]  # the query itself is left out


def test_id_queries_from_memory_match_the_index(catalog, image_index, monkeypatch):
    from sslsearch.serve import catalog as catalog_module

    served, index = catalog["photos"], load_index(image_index[2])
    wanted = [0, 3, 119, 3]
    for cache_bytes in (catalog_module.ID_CACHE_BYTES, 0):  # vectors in memory, then read from the store
        monkeypatch.setattr(catalog_module, "ID_CACHE_BYTES", cache_bytes)
        got, want = served.search_ids(wanted, 6), index.search_ids(wanted, 6)
        assert [r.query for r in got] == ["id:0", "id:3", "id:119", "id:3"]
        for g, w in zip(got, want):
            assert g.ids.tolist() == w.ids.tolist() and [h.path for h in g.neighbors] == [h.path for h in w.neighbors]
            assert g.scores.tolist() == pytest.approx(w.scores.tolist(), abs=1e-6)
        with pytest.raises(InvalidArgumentError, match="id 5000 is not in store"):
            served.search_ids([1, 5000], 3)
        with pytest.raises(InvalidArgumentError, match="k=120 is more than the 119 other vectors"):
            served.search_ids([1], 120)


def test_search_by_uploaded_images_batch_with_a_bad_one(client, image_index):
    images = image_index[0]
    first, second = sorted(images.glob("*/*.png"))[:2]
    files = [("files", (first.name, first.read_bytes(), "image/png")), ("files", ("empty.png", b"", "image/png")),
             ("files", (second.name, second.read_bytes(), "image/png"))]
    response = client.post("/indexes/photos/search/images", files=files, data={"k": "3"})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["query"] for r in results] == [first.name, "empty.png", second.name]
    assert results[0]["neighbors"][0]["path"] == first.relative_to(images).as_posix()
    assert results[0]["neighbors"][0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert results[1] == {"query": "empty.png", "neighbors": [], "skipped": "empty"}
    assert results[2]["neighbors"][0]["path"] == second.relative_to(images).as_posix()


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"just some text, not a picture\n", "not_an_image"),
    (truncated_jpeg(), "truncated"),
    (bomb_png(), "decompression_bomb"),
])
def test_bad_uploads_are_400_with_the_embed_reason(client, data, reason):
    response = client.post("/indexes/photos/search/images", files=[("files", ("query.png", data, "image/png"))])
    body = assert_json_error(response, 400, "query.png")
    assert body["reason"] == reason


def test_upload_limits(catalog):
    small = TestClient(create_app(catalog, max_upload_bytes=4_000, max_pixels=20 * 20, max_queries=2))
    big = png_bytes((64, 64)) + b"\0" * 8_000  # PNG readers ignore bytes after IEND; the size limit must not
    assert_json_error(small.post("/indexes/photos/search/images", files=[("files", ("big.png", big, "image/png"))]),
                      413, "larger than the server's limit of 4,000 bytes")

    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        for _ in range(10):
            yield b"x" * 1_000

    streamed = small.post("/indexes/photos/search", content=chunks(), headers={"Content-Type": "application/json"})
    assert_json_error(streamed, 413, "larger than the server's limit")
    over_pixels = small.post("/indexes/photos/search/images", files=[("files", ("q.png", png_bytes((32, 32)), "image/png"))])
    assert assert_json_error(over_pixels, 400, "decompression bomb")["reason"] == "decompression_bomb"
    three = [("files", (f"{i}.png", png_bytes((8, 8)), "image/png")) for i in range(3)]
    assert_json_error(small.post("/indexes/photos/search/images", files=three), 400, "at most 2")
    assert_json_error(small.post("/indexes/photos/search", json={"ids": [1, 2, 3], "k": 2}), 400, "at most 2")
    with pytest.raises(InvalidArgumentError, match="limits"):
        create_app(catalog, max_k=0)


@pytest.mark.parametrize("body, status, fragment", [
    ({"ids": [3], "k": 0}, 400, "k must be between 1 and 1000"),
    ({"ids": [3], "k": 5000}, 400, "k must be between 1 and 1000"),
    ({"ids": [3], "k": 120}, 400, "k=120 is more than the 119 other vectors"),
    ({"vectors": [[0.1] * 96], "k": 121}, 400, "k=121 is more than the 120 vectors"),
    ({"ids": [3], "k": "many"}, 422, "body.k"),
    ({"ids": [3], "vectors": [[0.1] * 96]}, 400, "exactly one of"),
    ({"k": 3}, 400, "exactly one of"),
    ({"ids": []}, 400, "'ids' is empty"),
    ({"ids": [100_000]}, 400, "id 100000 is not in store"),
    ({"vectors": [[0.1] * 7]}, 400, "dim 7"),
    ({"vectors": [[0.1] * 96, [0.1] * 95]}, 400, "different lengths"),
    ({"vectors": [[0.0] * 96]}, 400, "zero or not finite"),
    ({"vectors": [["a"] * 96]}, 422, "body.vectors"),
    ({"ids": [3], "colour": "red"}, 422, "colour"),
])
def test_bad_search_requests_are_4xx_json(client, body, status, fragment):
    assert_json_error(client.post("/indexes/photos/search", json=body), status, fragment)


def test_unknown_index_and_malformed_bodies(client):
    assert_json_error(client.post("/indexes/photo/search", json={"ids": [1]}), 404, "unknown index 'photo'",
                      "did you mean 'photos'")
    assert_json_error(client.get("/indexes/nothing"), 404, "choose one of: hostile, photos")
    assert_json_error(client.post("/indexes/photos/search", content=b"{not json",
                                  headers={"Content-Type": "application/json"}), 422)
    assert_json_error(client.post("/indexes/photos/search/images", data={"k": "3"}), 422, "files")
    assert_json_error(client.get("/no/such/route"), 404)
    hostile = client.post("/indexes/hostile/search/images", files=[("files", ("q.png", png_bytes(), "image/png"))])
    assert_json_error(hostile, 400, "cannot embed query images")


def test_an_internal_error_is_500_json_without_traceback(catalog, monkeypatch):
    served = catalog["photos"]

    def broken(*args, **kwargs):
        raise RuntimeError("boom at /secret/internal/path")

    monkeypatch.setattr(served, "search_ids", broken)
    response = TestClient(create_app(catalog), raise_server_exceptions=False).post(
        "/indexes/photos/search", json={"ids": [1]})
    body = assert_json_error(response, 500, "internal error (RuntimeError)")
    assert "/secret" not in body["error"]


# --------------------------------------------------------------------------- auth


def test_token_is_required_and_checked(catalog):
    locked = TestClient(create_app(catalog, token=TOKEN))
    assert locked.get("/health").json()["auth"] is True  # liveness stays open
    assert locked.get("/").status_code == 200  # the page asks for the token itself
    missing = locked.get("/indexes")
    assert_json_error(missing, 401, "needs a token")
    assert missing.headers["www-authenticate"] == "Bearer"
    for header in (f"Bearer {TOKEN}x", "Bearer ", TOKEN, f"Basic {TOKEN}"):
        assert_json_error(locked.get("/indexes", headers={"Authorization": header}), 401, "wrong token")
    assert_json_error(locked.post("/indexes/photos/search", json={"ids": [1]}), 401)
    assert_json_error(locked.get("/indexes/photos/images/1"), 401)
    assert_json_error(locked.get("/duplicates"), 401)
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert locked.get("/indexes", headers=good).status_code == 200
    assert locked.post("/indexes/photos/search", json={"ids": [1], "k": 2}, headers=good).status_code == 200


# --------------------------------------------------------------------------- images


def test_images_are_served_by_id_only(client, image_index, hostile):
    images, store_dir, _ = image_index
    path = EmbeddingStore.open(store_dir).paths([7])[0]
    response = client.get("/indexes/photos/images/7")
    assert response.status_code == 200 and response.content == (images / path).read_bytes()
    assert response.headers["content-type"] == ("image/png" if path.endswith(".png") else "image/jpeg")
    thumb = client.get("/indexes/photos/images/7?size=16")
    assert thumb.status_code == 200 and thumb.content[:3] == b"\xff\xd8\xff"
    assert_json_error(client.get("/indexes/photos/images/7?size=100000"), 422, "size")
    assert_json_error(client.get("/indexes/photos/images/5000"), 404, "image id 5000 is not in the store")
    assert_json_error(client.get("/indexes/photos/images/-1"), 404)
    for attempt in ("../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "7%2F..%2F..%2Findex.json",
                    "7;/etc/passwd", "0x07", "7.5"):
        response = client.get(f"/indexes/photos/images/{attempt}")
        assert response.status_code in (404, 422), (attempt, response.status_code)
        assert "error" in response.json() and b"root:" not in response.content
    # A store whose paths try to leave its source root: those ids are refused, the others served.
    for image_id in (0, 1, 2):
        assert_json_error(client.get(f"/indexes/hostile/images/{image_id}"), 404, "outside the source root")
    assert client.get("/indexes/hostile/images/3").content == (hostile[0] / "ok_3.png").read_bytes()
    (hostile[0] / "ok_4.png").unlink()
    assert_json_error(client.get("/indexes/hostile/images/4"), 404, "no longer under the source root")


def test_resolve_under_and_index_names(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(png_bytes())
    (tmp_path / "a" / "notes.txt").write_text("hi")
    assert resolve_under(tmp_path / "a", "x.png", "id 1") == tmp_path / "a" / "x.png"
    (tmp_path / "b.png").write_bytes(png_bytes())
    for bad in ("../b.png", "x.png/../../b.png", str(tmp_path / "a" / "x.png"), ".", "notes.txt", "y.png", "", None):
        with pytest.raises(InputNotFoundError):
            resolve_under(tmp_path / "a", bad, "id 1")
    assert [n for n, _ in parse_index_arguments(["a/idx", "b=c/idx"])] == ["idx", "b"]
    with pytest.raises(InvalidArgumentError, match="two indexes are called 'idx'"):
        parse_index_arguments(["a/idx", "b/idx"])
    with pytest.raises(InvalidArgumentError, match="no index given"):
        parse_index_arguments([])
