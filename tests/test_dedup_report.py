"""The dedup HTML report in a real browser: headless Chromium renders it, pages it and marks the keepers."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sslsearch.dedup.report import write_report
from sslsearch.dedup.result import ClusterMember, DuplicateCluster

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1200,900"]


def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    """Path of a Chromium binary; installed with apt when missing and SSLSEARCH_INSTALL_CHROMIUM=1."""
    found = _find_chromium()
    if found is None and os.environ.get("SSLSEARCH_INSTALL_CHROMIUM") == "1" and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, check=False, capture_output=True,
                       timeout=900)
        found = _find_chromium()
    if found is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium; or run with "
                    "SSLSEARCH_INSTALL_CHROMIUM=1 as root to install it, as scripts/test.sh does)")
    return found


def run_chromium(binary: str, page: Path, profile: Path, *extra: str, fragment: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, page.as_uri() + fragment],
                          capture_output=True, text=True, timeout=120, check=False)


def png_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def report_page(tmp_path_factory) -> tuple[Path, list[DuplicateCluster]]:
    """A report of 30 clusters (sizes 5, 4, then pairs), one image missing, 2 pages of 25."""
    root = tmp_path_factory.mktemp("report")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    clusters = []
    next_id = 0
    for cluster_id in range(30):
        size = 5 if cluster_id == 0 else 4 if cluster_id == 1 else 2
        members = []
        colour = rng.integers(0, 256, 3)
        for position in range(size):
            path = f"c{cluster_id:02d}_{position}.png"
            pixels = np.clip(colour + rng.integers(-20, 20, (40, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "RGB").save(images / path)
            members.append(ClusterMember(id=next_id, path=path, similarity=1.0 if position == 0 else 0.97 - position / 100,
                                         keep=position == 0, match="keeper" if position == 0 else "near", width=48,
                                         height=40, size_bytes=(images / path).stat().st_size))
            next_id += 1
        clusters.append(DuplicateCluster(cluster_id, tuple(members)))
    (images / "c01_3.png").unlink()  # gone by the time the report is built
    page = write_report(root / "report.html", clusters, images, title="Test <report>", subtitle="threshold 0.9")
    return page, clusters


def test_report_renders_in_chromium(chromium: str, report_page, tmp_path: Path) -> None:
    page, clusters = report_page
    dom = run_chromium(chromium, page, tmp_path / "profile-dom", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    sections = re.findall(r'<section class="cluster"[^>]*>', html)
    assert len(sections) == 30
    hidden = [s for s in sections if "hidden" in s]
    assert len(hidden) == 5  # page 1 of 2 shows 25 clusters
    assert 'id="page-label">page 1 of 2<' in html and 'data-page="1"' in html
    assert html.count('class="badge keep"') == 30 and html.count('class="badge remove"') == 35
    assert html.count('data-missing="1"') == 1
    assert html.index('id="cluster-0"') < html.index('id="cluster-1"') < html.index('id="cluster-2"')
    assert "Test &lt;report&gt;" in html  # text is escaped

    second = run_chromium(chromium, page, tmp_path / "profile-page2", "--dump-dom", fragment="#page=2")
    assert second.returncode == 0
    sections = re.findall(r'<section class="cluster"[^>]*>', second.stdout)
    assert [("hidden" in s) for s in sections] == [True] * 25 + [False] * 5
    assert 'id="page-label">page 2 of 2<' in second.stdout

    shot = tmp_path / "shot.png"
    result = run_chromium(chromium, page, tmp_path / "profile-shot", f"--screenshot={shot}")
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = png_pixels(shot)
    assert pixels.shape[:2] == (900, 1200)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100  # thumbnails, text and colours: not blank
    assert (np.abs(pixels.astype(int) - [31, 157, 85]).sum(axis=2) < 40).sum() > 200  # green keeper frames drawn


def test_report_without_clusters_and_limits(tmp_path: Path) -> None:
    page = write_report(tmp_path / "empty.html", [], tmp_path)
    assert "No duplicates found." in page.read_text()
    with pytest.raises(Exception, match="limits"):
        write_report(tmp_path / "bad.html", [], tmp_path, max_clusters=0)


def test_report_caps_clusters_and_members(report_page, tmp_path: Path) -> None:
    _, clusters = report_page
    page = write_report(tmp_path / "capped.html", clusters, report_page[0].parent / "images", max_clusters=3,
                        max_members=2).read_text()
    assert page.count('class="cluster"') == 3 and "showing the 3 largest of 30 clusters" in page
    assert "+3 more" in page and "+2 more" in page
