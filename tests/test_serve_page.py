"""The web page of `sslsearch serve` in headless Chromium, driven over the DevTools protocol (a pipe, no
network beyond 127.0.0.1): give the token, upload an image, read the grid, click a result, open the duplicates.

Set SSLSEARCH_UPDATE_SCREENSHOTS=1 to also write the screenshots to docs/images/serve*.png.
"""
from __future__ import annotations

import base64
import json
import os
import select
import subprocess
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("multipart")

from serve_helpers import make_image_index  # noqa: E402
from sslsearch.dedup import deduplicate  # noqa: E402
from sslsearch.serve import Client, create_app  # noqa: E402
from sslsearch.serve.server import start_background  # noqa: E402
from test_dedup_report import CHROMIUM_FLAGS, chromium  # noqa: E402,F401 - the fixture finds or installs Chromium

TOKEN = "page-token"
DOCS_IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"


class DevTools:
    """A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe`` (fd 3 in, fd 4 out, NUL-framed)."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_chrome_read, self._write = os.pipe()
        self._read, from_chrome_write = os.pipe()
        # bash (dash takes only one-digit fds) puts our pipe ends on fds 3 and 4, where Chromium expects them.
        script = f'exec "$0" "$@" 3<&{to_chrome_read} 4>&{from_chrome_write}'
        args = [a for a in CHROMIUM_FLAGS if not a.startswith("--window-size")]
        self.process = subprocess.Popen(["bash", "-c", script, binary, *args, "--remote-debugging-pipe",
                                         f"--user-data-dir={profile}", "about:blank"],
                                        pass_fds=(to_chrome_read, from_chrome_write),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_read)
        os.close(from_chrome_write)
        self._buffer = b""
        self._next_id = 0
        self.session: str | None = None

    def call(self, method: str, params: dict | None = None, *, timeout: float = 30.0, session: bool = True) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            for raw in self._messages(deadline):
                reply = json.loads(raw)
                if reply.get("id") == self._next_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})

    def _messages(self, deadline: float) -> list[bytes]:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or self.process.poll() is not None:
            raise TimeoutError("Chromium did not answer in time")
        ready, _, _ = select.select([self._read], [], [], remaining)
        if ready:
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise TimeoutError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        *complete, self._buffer = self._buffer.split(b"\0")
        return complete

    def open_page(self, url: str) -> None:
        target = self.call("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True}, session=False)["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", {"width": 1200, "height": 900, "deviceScaleFactor": 1,
                                                          "mobile": False})
        self.call("Page.navigate", {"url": url})

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0):
        """Poll a JavaScript expression until it is truthy (bounded by ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        guarded = f"(() => {{ try {{ return ({expression}); }} catch (e) {{ return false; }} }})()"  # page loading
        while time.monotonic() < deadline:
            value = self.evaluate(guarded)
            if value:
                return value
            time.sleep(0.1)
        state = self.evaluate("document.body && document.body.dataset.state + ' / ' + "
                              "(document.getElementById('status') || {}).textContent")
        raise TimeoutError(f"waited {timeout:g} s for {expression!r}; page state: {state}")

    def upload(self, selector: str, path: Path) -> None:
        root = self.call("DOM.getDocument")["root"]["nodeId"]
        node = self.call("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        self.call("DOM.setFileInputFiles", {"files": [str(path)], "nodeId": node})

    def screenshot(self, path: Path) -> bytes:
        data = base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"})["data"])
        path.write_bytes(data)
        return data

    def close(self) -> None:
        try:
            self.call("Browser.close", session=False, timeout=10)
        except (TimeoutError, RuntimeError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        os.close(self._read)
        os.close(self._write)


GRID_IDS = "JSON.stringify(Array.from(document.querySelectorAll('#results figure')).map(f => +f.dataset.id))"
IMAGES_SHOWN = ("Array.from(document.querySelectorAll('#results img')).every(i => i.complete && i.naturalWidth > 0)"
                " && document.querySelectorAll('#results img').length > 0")


@pytest.fixture(scope="module")
def page_server(sample_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_page")
    images, store, index = make_image_index(sample_dir, root)
    deduplicate(store, root / "dups", threshold=0.995, progress=False)
    server = start_background(create_app([f"photos={index}"], token=TOKEN, duplicates=root / "dups", device="cpu"))
    try:
        yield images, server.url
    finally:
        server.stop()


def test_page_searches_an_uploaded_image_and_a_clicked_result(chromium, page_server, tmp_path):  # noqa: F811
    images, url = page_server
    query = sorted(images.glob("*/*.png"))[10]
    client = Client(url, TOKEN)
    expected = client.search([query], k=12)[0]
    assert expected.neighbors[0].path == query.relative_to(images).as_posix()
    browser = DevTools(chromium, tmp_path / "profile")
    try:
        browser.open_page(url + "/")
        # Without the token the page shows its token field; typing it loads the indexes.
        browser.wait_for("document.body.dataset.state === 'error' && !document.getElementById('token-label').hidden")
        assert "needs a token" in browser.evaluate("document.getElementById('status').textContent")
        browser.evaluate(f"var t = document.getElementById('token'); t.value = {json.dumps(TOKEN)};"
                         "t.dispatchEvent(new Event('change')); true")
        browser.wait_for("document.body.dataset.state === 'ready'")
        assert "photos (120 × 96" in browser.evaluate("document.getElementById('index').textContent")

        browser.upload("#file", query)
        browser.wait_for("document.body.dataset.state === 'results'")
        assert json.loads(browser.evaluate(GRID_IDS)) == expected.ids.tolist()
        captions = browser.evaluate("Array.from(document.querySelectorAll('#results figcaption')).map(c => c.textContent)")
        top = expected.neighbors[0]
        assert captions[0].startswith(f"#1  {top.score:.3f}") and top.path in captions[0]
        browser.wait_for(IMAGES_SHOWN)
        shot = browser.screenshot(tmp_path / "serve.png")
        assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 20_000  # a grid of pictures, not a blank page

        second = expected.neighbors[1]
        browser.evaluate(f"document.querySelector('#results figure[data-id=\"{second.id}\"]').click(); true")
        browser.wait_for(f"document.getElementById('query-label').textContent.startsWith('id {second.id}') && "
                         "document.body.dataset.state === 'results'")
        clicked = client.search(ids=[second.id], k=12)[0]
        assert json.loads(browser.evaluate(GRID_IDS)) == clicked.ids.tolist()

        browser.evaluate("document.getElementById('tab-duplicates').click(); true")
        browser.wait_for("document.body.dataset.state === 'duplicates'")
        status, _, body = client.request("GET", "/duplicates?limit=10")
        clusters = json.loads(body)["clusters"]
        assert browser.evaluate("document.querySelectorAll('#clusters section.cluster').length") == len(clusters)
        assert browser.evaluate("document.querySelectorAll('#clusters .badge.keep').length") == len(clusters)
        removed = sum(1 for c in clusters for m in c["members"] if not m["keep"])
        assert browser.evaluate("document.querySelectorAll('#clusters .badge.remove').length") == removed
        browser.wait_for("Array.from(document.querySelectorAll('#clusters img')).every(i => i.complete && "
                         "i.naturalWidth > 0)")
        duplicates_shot = browser.screenshot(tmp_path / "serve-duplicates.png")
        if os.environ.get("SSLSEARCH_UPDATE_SCREENSHOTS") == "1":
            DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
            (DOCS_IMAGES / "serve.png").write_bytes(shot)
            (DOCS_IMAGES / "serve-duplicates.png").write_bytes(duplicates_shot)
    finally:
        browser.close()
