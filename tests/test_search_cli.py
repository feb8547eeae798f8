"""End-to-end CLI: `index build`, `index info`, `search` on embedded sample images, and every bad input
(exit code 1, one line on stderr, no traceback)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from index_helpers import make_store
from sslsearch.cli.app import main
from sslsearch.embed import embed_images

SPEC = "timm:test_resnet"


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run the CLI in this process; (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="module")
def images_store(sample_dir, tmp_path_factory) -> tuple[Path, Path]:
    """The sample images (plus a truncated file) embedded with a tiny random-init backbone, and its index."""
    root = tmp_path_factory.mktemp("cli")
    images = root / "images"
    shutil.copytree(sample_dir, images)
    embed_images(images, SPEC, root / "emb", image_size=32, workers=0, device="cpu", progress=False)
    return images, root / "emb"


@pytest.fixture(scope="module")
def image_index(images_store, tmp_path_factory) -> Path:
    _, store = images_store
    out = tmp_path_factory.mktemp("cli_index") / "idx"
    main_args = ["index", "build", str(store), "--out", str(out), "--json"]
    with pytest.raises(SystemExit) as exit_info:
        main(main_args)
    assert exit_info.value.code in (0, None)
    return out


def test_build_info_and_search_by_image(images_store, image_index, capsys):
    images, store = images_store
    code, out, err = run_cli(["index", "info", str(image_index)], capsys)
    assert code == 0 and "Flat (flat, metric ip)" in out and "timm:test_resnet" in out and "recall" in out
    code, out, _ = run_cli(["index", "info", str(image_index), "--json", "--verify"], capsys)
    card = json.loads(out)
    assert code == 0 and card["ntotal"] == 120 and card["encoder"]["spec"] == SPEC and card["recall_at_10"] == 1.0
    query = sorted(images.glob("*/*.png"))[0]
    code, out, err = run_cli(["search", str(image_index), str(query), "-k", "3", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)["results"][0]
    top = result["neighbors"][0]
    assert result["query"] == str(query)
    assert top["path"] == query.relative_to(images).as_posix() and top["score"] == pytest.approx(1.0, abs=1e-3)
    code, out, err = run_cli(["search", str(image_index), str(query), "-k", "2"], capsys)
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["query", "rank", "score", "id", "path"] and len(lines) == 4
    assert query.relative_to(images).as_posix() in lines[2]


def test_search_a_folder_with_a_bad_image(images_store, image_index, tmp_path, capsys):
    images, _ = images_store
    folder = tmp_path / "queries"
    folder.mkdir()
    good = sorted(images.glob("*/*.png"))[:2]
    for path in good:
        shutil.copy(path, folder / path.name)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    code, out, err = run_cli(["search", str(image_index), str(folder), "-k", "1", "--json"], capsys)
    assert code == 0, err
    results = json.loads(out)["results"]
    assert len(results) == 3
    broken = next(r for r in results if r["query"].endswith("broken.png"))
    assert broken["neighbors"] == [] and broken["skipped"]
    assert all(r["neighbors"][0]["score"] > 0.999 for r in results if r is not broken)


def test_search_by_ids_and_vectors(image_index, tmp_path, capsys):
    code, out, err = run_cli(["search", str(image_index), "--ids", "3,17", "-k", "4", "--json"], capsys)
    assert code == 0, err
    results = json.loads(out)["results"]
    assert [r["query"] for r in results] == ["id:3", "id:17"]
    assert all(len(r["neighbors"]) == 4 and int(r["query"][3:]) not in [n["id"] for n in r["neighbors"]]
               for r in results)
    dim = json.loads(run_cli(["index", "info", str(image_index), "--json"], capsys)[1])["dim"]
    np.save(tmp_path / "q.npy", np.random.default_rng(0).standard_normal((2, dim)).astype(np.float32))
    code, out, err = run_cli(["search", str(image_index), "--vectors", str(tmp_path / "q.npy"), "-k", "3"], capsys)
    assert code == 0 and "row:0" in out and "row:1" in out


# ----------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, Path]:
    """A 300-vector synthetic store and its flat index."""
    root = tmp_path_factory.mktemp("bad")
    make_store(root / "emb", 300)
    with pytest.raises(SystemExit):
        main(["index", "build", str(root / "emb"), "--out", str(root / "idx")])
    return root / "emb", root / "idx"


def test_build_bad_inputs(small, tmp_path, capsys):
    store, index = small
    assert_one_line_error(*run_cli(["index", "build", str(tmp_path / "nope"), "--out", str(tmp_path / "i")],
                                   capsys)[::2], "does not exist")
    code, _, err = run_cli(["index", "build", str(store), "--out", str(tmp_path / "i"), "--kind", "hsnw"], capsys)
    assert_one_line_error(code, err, "unknown index kind 'hsnw'", "did you mean 'hnsw'", "auto", "ivfpq")
    code, _, err = run_cli(["index", "build", str(store), "--out", str(tmp_path / "i"), "--memory-budget", "1KB"],
                           capsys)
    assert_one_line_error(code, err, "too small", "at least")
    code, _, err = run_cli(["index", "build", str(store), "--out", str(tmp_path / "i"), "--memory-budget", "lots"],
                           capsys)
    assert_one_line_error(code, err, "cannot read memory size 'lots'")
    other = tmp_path / "other"
    other.mkdir()
    (other / "photo.jpg").write_bytes(b"precious")
    code, _, err = run_cli(["index", "build", str(store), "--out", str(other)], capsys)
    assert_one_line_error(code, err, "already holds", "other file")
    assert (other / "photo.jpg").read_bytes() == b"precious"
    code, _, err = run_cli(["index", "build", str(store), "--out", str(index)], capsys)
    assert_one_line_error(code, err, "already holds an index", "--overwrite")
    assert run_cli(["index", "build", str(store), "--out", str(tmp_path / "i"), "--memory-budget", "none"],
                   capsys)[0] == 0


def test_search_bad_inputs(small, tmp_path, capsys):
    _, index = small
    idx = str(index)
    assert_one_line_error(*run_cli(["search", str(tmp_path / "nope"), "--ids", "1"], capsys)[::2], "does not exist")
    assert_one_line_error(*run_cli(["search", idx, "--ids", "1", "-k", "0"], capsys)[::2], "k must be > 0")
    assert_one_line_error(*run_cli(["search", idx, "--ids", "1", "-k", "-2"], capsys)[::2], "k must be > 0")
    assert_one_line_error(*run_cli(["search", idx, "--ids", "1", "-k", "300"], capsys)[::2], "use -k 299")
    np.save(tmp_path / "q.npy", np.ones((2, 32), np.float32))
    assert_one_line_error(*run_cli(["search", idx, "--vectors", str(tmp_path / "q.npy"), "-k", "301"], capsys)[::2],
                          "k=301 is more than the 300")
    np.save(tmp_path / "wrong.npy", np.ones((2, 48), np.float32))
    assert_one_line_error(*run_cli(["search", idx, "--vectors", str(tmp_path / "wrong.npy")], capsys)[::2],
                          "dim 48", "timm:synthetic")
    assert_one_line_error(*run_cli(["search", idx, "--vectors", str(tmp_path / "none.npy")], capsys)[::2],
                          "do not exist")
    assert_one_line_error(*run_cli(["search", idx, str(tmp_path / "none.png")], capsys)[::2], "does not exist")
    assert_one_line_error(*run_cli(["search", idx], capsys)[::2], "exactly one kind of query")
    assert_one_line_error(*run_cli(["search", idx, "--ids", "1", "--vectors", str(tmp_path / "q.npy")], capsys)[::2],
                          "--vectors and --ids")
    assert_one_line_error(*run_cli(["search", idx, "--ids", "3,x"], capsys)[::2], "comma-separated integers")
    assert_one_line_error(*run_cli(["search", idx, "--ids", "100000"], capsys)[::2], "not in store")


def test_damaged_index_files(small, tmp_path, capsys):
    _, index = small
    broken = tmp_path / "broken"
    shutil.copytree(index, broken)
    data = bytearray((broken / "index.faiss").read_bytes())
    data[:4] = b"XXXX"
    (broken / "index.faiss").write_bytes(bytes(data))
    assert_one_line_error(*run_cli(["search", str(broken), "--ids", "1"], capsys)[::2], "corrupted")
    assert_one_line_error(*run_cli(["index", "info", str(broken), "--verify"], capsys)[::2], "corrupted")
    mismatched = tmp_path / "mismatched"
    shutil.copytree(index, mismatched)
    card = json.loads((mismatched / "index.json").read_text())
    (mismatched / "index.json").write_text(json.dumps({**card, "dim": 64}))
    assert_one_line_error(*run_cli(["search", str(mismatched), "--ids", "1"], capsys)[::2],
                          "does not match its card")
    (mismatched / "index.json").write_text(json.dumps({**card, "size_bytes": card["size_bytes"] + 1}))
    assert_one_line_error(*run_cli(["index", "info", str(mismatched), "--verify"], capsys)[::2],
                          "does not match its card")
    (mismatched / "index.json").unlink()
    assert_one_line_error(*run_cli(["index", "info", str(mismatched)], capsys)[::2], "not an sslsearch index")
