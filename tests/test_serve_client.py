"""A real uvicorn server on 127.0.0.1 (a free port) driven by ``Client`` and `sslsearch search --server`;
the duplicates view over a real `dedup` output directory."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("multipart")

from serve_helpers import make_image_index  # noqa: E402
from sslsearch.cli.app import main  # noqa: E402
from sslsearch.dedup import deduplicate  # noqa: E402
from sslsearch.errors import InputNotFoundError, InvalidArgumentError, ServerError  # noqa: E402
from sslsearch.index import SearchResult, load_index  # noqa: E402
from sslsearch.serve import Client, create_app  # noqa: E402
from sslsearch.serve.server import start_background  # noqa: E402
from sslsearch.store import EmbeddingStore  # noqa: E402

TOKEN = "client-token"


@pytest.fixture(scope="module")
def served(sample_dir, tmp_path_factory):
    """(images, store, index, dedup dir, server URL): a token-protected server with a duplicates view."""
    root = tmp_path_factory.mktemp("serve_client")
    images, store, index = make_image_index(sample_dir, root)
    dedup = deduplicate(store, root / "dups", threshold=0.995, progress=False)
    assert dedup.clusters, "the sample images must hold near duplicates at 0.995"
    app = create_app([str(index)], token=TOKEN, duplicates=root / "dups", device="cpu")
    server = start_background(app)
    try:
        yield images, store, index, root / "dups", server.url
    finally:
        server.stop()


def test_client_searches_like_the_index(served, tmp_path):
    images, store_dir, index_dir, _, url = served
    index = load_index(index_dir)
    with Client(url, TOKEN) as client:
        assert client.health()["indexes"] == ["idx"]
        assert client.indexes()[0]["ntotal"] == 120
        assert client.card().factory == index.card.factory
        vectors = EmbeddingStore.open(store_dir).vectors_for([1, 2])
        for got, want in zip(client.search(vectors=vectors, k=4), index.search(vectors, 4)):
            assert isinstance(got, SearchResult) and got.query == want.query
            np.testing.assert_array_equal(got.ids, want.ids)
            np.testing.assert_allclose(got.scores, want.scores, atol=1e-6)
            assert [h.path for h in got.neighbors] == [h.path for h in want.neighbors]
        single = client.search_vectors(vectors[0], k=2)  # one (dim,) vector
        assert len(single) == 1 and single[0].ids[0] == 1
        by_id = client.search(ids=[5], k=3, index="idx")
        np.testing.assert_array_equal(by_id[0].ids, index.search_ids([5], 3)[0].ids)
        query = sorted(images.glob("*/*.png"))[3]
        bad = tmp_path / "bad.png"
        bad.write_text("not an image")
        results = client.search([query, bad], k=2)
        assert [r.query for r in results] == [str(query), str(bad)]
        assert results[0].neighbors[0].path == query.relative_to(images).as_posix()
        assert results[1].skipped == "not_an_image" and len(results[1].ids) == 0
        folder = client.search([images / "circle"], k=1)
        assert len(folder) == len(list((images / "circle").iterdir()))
        path = results[0].neighbors[0].path
        assert client.image(results[0].neighbors[0].id) == (images / path).read_bytes()
        assert client.image(results[0].neighbors[0].id, size=16)[:3] == b"\xff\xd8\xff"
        for _ in range(20):  # keep-alive: one connection serves many requests
            client.search(ids=[5], k=1)


def test_client_errors_are_server_errors(served, tmp_path):
    url = served[4]
    with pytest.raises(ServerError, match="needs a token") as error:
        Client(url).indexes()
    assert error.value.status == 401
    with pytest.raises(ServerError, match="wrong token"):
        Client(url, "nope").search(ids=[1])
    client = Client(url, TOKEN)
    with pytest.raises(ServerError, match="k must be between") as error:
        client.search(ids=[1], k=0)
    assert error.value.status == 400
    with pytest.raises(ServerError, match="unknown index 'other'") as error:
        client.search(ids=[1], index="other")
    assert error.value.status == 404
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ServerError, match="empty"):
        client.search([empty])
    with pytest.raises(InvalidArgumentError, match="exactly one"):
        client.search([empty], ids=[1])
    with pytest.raises(InputNotFoundError):
        client.search([tmp_path / "missing.png"])
    with pytest.raises(ServerError, match="cannot reach"):
        Client("http://127.0.0.1:9", timeout=5).health()  # the discard port: nothing listens there
    with pytest.raises(InvalidArgumentError, match="not http"):
        Client("ftp://example.org")


def test_duplicates_view(served):
    _, _, _, dups, url = served
    client = Client(url, TOKEN)
    status, _, body = client.request("GET", "/duplicates?limit=1")
    page = json.loads(body)
    assert status == 200 and page["total"] >= 1 and len(page["clusters"]) == 1
    summary = json.loads((dups / "summary.json").read_text())
    assert page["summary"]["removed"] == summary["removed"]
    cluster = page["clusters"][0]
    assert cluster["members"][0]["keep"] is True and not any(m["keep"] for m in cluster["members"][1:])
    keeper = cluster["members"][0]
    status, kind, data = client.request("GET", f"/duplicates/images/{keeper['id']}")
    assert status == 200 and data == (served[0] / keeper["path"]).read_bytes()
    in_no_cluster = next(i for i in range(120) if i not in {m["id"] for c in json.loads(
        client.request("GET", "/duplicates?limit=200")[2])["clusters"] for m in c["members"]})
    status, _, data = client.request("GET", f"/duplicates/images/{in_no_cluster}")
    assert status == 404 and "in no duplicate cluster" in json.loads(data)["error"]
    assert client.request("GET", "/duplicates?limit=0")[0] == 422


def test_cli_search_on_a_server(served, capsys):
    images, _, _, _, url = served
    with pytest.raises(SystemExit) as exit_info:
        main(["search", "--server", url, "--token", TOKEN, "--ids", "4,9", "-k", "3", "--json"])
    captured = capsys.readouterr()
    assert exit_info.value.code in (0, None), captured.err
    answer = json.loads(captured.out)
    assert [r["query"] for r in answer["results"]] == ["id:4", "id:9"] and len(answer["results"][0]["neighbors"]) == 3
    query = sorted(images.glob("*/*.png"))[0]
    with pytest.raises(SystemExit) as exit_info:
        main(["search", "--server", url, "--token", TOKEN, str(query), "-k", "2"])
    out = capsys.readouterr().out
    assert exit_info.value.code in (0, None) and query.relative_to(images).as_posix() in out.splitlines()[2]
    with pytest.raises(SystemExit) as exit_info:
        main(["search", "--server", url, "--ids", "4"])  # no token
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.startswith("error: ") and "needs a token" in err
    assert len(err.strip().splitlines()) == 1


def test_cli_serve_wires_its_options(served, monkeypatch, capsys):
    from fastapi.testclient import TestClient

    from sslsearch.serve import server as server_module

    started = {}
    monkeypatch.setattr(server_module, "run_server", lambda app, host, port: started.update(app=app, host=host,
                                                                                           port=port))
    _, _, index, dups, _ = served
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", f"photos={index}", "--port", "8123", "--token", "t", "--duplicates", str(dups),
              "--max-queries", "1", "--device", "cpu"])
    assert exit_info.value.code in (0, None)
    assert "serving photos on http://127.0.0.1:8123/" in capsys.readouterr().err
    assert (started["host"], started["port"]) == ("127.0.0.1", 8123)
    client = TestClient(started["app"], headers={"Authorization": "Bearer t"})
    assert client.get("/health").json()["duplicates"] is True
    assert client.post("/indexes/photos/search", json={"ids": [1, 2]}).status_code == 400  # --max-queries 1
    with pytest.raises(SystemExit):
        main(["serve", str(index), "--host", "0.0.0.0", "--device", "cpu"])
    assert "without --token" in capsys.readouterr().err


def test_cli_serve_and_search_refuse_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", str(tmp_path / "nothing")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "does not exist" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exit_info:
        main(["search", "--ids", "3"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "give the index directory IDX first" in err
