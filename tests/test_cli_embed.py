"""End-to-end tests of `sslsearch embed`: summary and JSON output, errors, SIGKILL + --resume, the lock."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslsearch.cli.app import main
from sslsearch.embed import embed_images
from sslsearch.store import EmbeddingStore

SPEC = "timm:test_resnet"
CLI = [sys.executable, "-c", "from sslsearch.cli.app import main; main()"]
BAD = {"c0/bad_empty.png": "empty", "c1/bad_text.jpg": "not_an_image", "c2/bad_cut.png": "truncated"}
# Subprocesses run with one forward thread, like this module (see one_forward_thread).
ENV = {**os.environ, "SSLSEARCH_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True, scope="module")
def one_forward_thread():
    """One intra-op thread: on a shared 2-core box two spinning OpenMP threads plus decode workers
    slow these tests several-fold; results do not depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run the CLI in this process; (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def make_folder(root: Path, n: int) -> Path:
    """``n`` random 32x32 PNGs in 4 class folders, plus the three bad files of ``BAD``."""
    rng = np.random.default_rng(7)
    for i in range(n):
        folder = root / f"c{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"img_{i:04d}.png")
    (root / "c0" / "bad_empty.png").write_bytes(b"")
    (root / "c1" / "bad_text.jpg").write_text("not an image")
    png = (root / "c2" / "img_0002.png").read_bytes()
    (root / "c2" / "bad_cut.png").write_bytes(png[: len(png) // 2])
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("cli_embed") / "images", 200)


def test_summary_and_json(folder, tmp_path, capsys):
    code, out, err = run_cli(["embed", str(folder), "--encoder", SPEC, "--image-size", "32", "--out",
                              str(tmp_path / "emb"), "--workers", "0"], capsys)
    assert code == 0, err
    assert out.splitlines()[0] == "embedded 200 images, skipped 3: 1 empty, 1 not_an_image, 1 truncated"
    assert f"store {tmp_path / 'emb'}: 200 rows, dim 96, {SPEC}" in out and "images/s" in out
    assert "skipped c0/bad_empty.png: empty" in err
    code, out, err = run_cli(["embed", str(folder), "-e", SPEC, "--image-size", "32", "-o", str(tmp_path / "emb"),
                              "--resume", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert (report["rows"], report["embedded_now"], report["dim"], report["resumed"]) == (200, 0, 96, True)
    assert report["skipped_by_reason"] == {"empty": 1, "not_an_image": 1, "truncated": 1}
    assert {s["path"]: s["reason"] for s in report["skipped"]} == BAD


@pytest.fixture(scope="module")
def outputs(folder, tmp_path_factory) -> Path:
    """A folder with a complete store ``emb/`` and a folder ``other/`` holding a user's file; read-only."""
    root = tmp_path_factory.mktemp("outputs")
    embed_images(folder, SPEC, root / "emb", image_size=32, workers=0, progress=False)
    (root / "other").mkdir()
    (root / "other" / "keep.txt").write_text("x")
    return root


@pytest.mark.parametrize("args, message", [
    (["--out", "{existing}/emb"], "already holds an embedding store; pass --resume"),
    (["--out", "{existing}/other"], "already holds 1 other file(s)"),
    (["--out", "{tmp}/new", "--strict"], "bad_empty.png: file is empty"),
    (["--out", "{tmp}/new", "--encoder", "timm:resnet_18"], "unknown timm model 'resnet_18'"),
    (["--out", "{tmp}/new", "--dtype", "int8"], "unknown embedding dtype 'int8'"),
    (["--out", "{tmp}/new", "--batch-size", "0"], "--batch-size must be > 0"),
    (["--out", "{tmp}/new", "--threads", "0"], "threads must be > 0"),
    (["--out", "{tmp}/new", "--device", "tpu"], "unknown device 'tpu'"),
])
def test_errors_are_one_line_and_exit_1(folder, outputs, tmp_path, capsys, args, message):
    argv = ["embed", str(folder), "--encoder", SPEC, "--image-size", "32", "--workers", "0"]
    argv += [a.format(tmp=tmp_path, existing=outputs) for a in args]
    code, out, err = run_cli(argv, capsys)
    assert code == 1 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in (outputs / "other").iterdir()) == ["keep.txt"]
    assert EmbeddingStore.open(outputs / "emb").manifest.complete


def test_missing_and_empty_inputs(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for data, message in ((tmp_path / "nope", "does not exist"), (tmp_path / "empty", "no images found")):
        code, _, err = run_cli(["embed", str(data), "--encoder", SPEC, "--out", str(tmp_path / "emb")], capsys)
        assert code == 1 and message in err and err.count("\n") == 1
    assert not (tmp_path / "emb").exists()


# --------------------------------------------------------------------------- SIGKILL and resume


def shard_count(directory: Path) -> int:
    return len(list(directory.glob("part-*.parquet")))


def run_and_kill(argv: list[str], out: Path, kill_at_shards: int) -> int:
    """Start the CLI in its own process group; SIGKILL it (and its decode workers) once ``kill_at_shards`` shards exist.

    Returns the number of shards on disk after the kill.
    """
    process = subprocess.Popen(CLI + argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                               env=ENV)
    try:
        deadline = time.monotonic() + 120
        while shard_count(out) < kill_at_shards and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        finished_first = process.poll() is not None
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait()
        _, err = process.communicate()
    assert not finished_first, f"embed ended before it could be killed (rc {process.returncode}): {err.decode()}"
    return shard_count(out)


def test_sigkill_then_resume_equals_an_uninterrupted_run(folder, tmp_path, capsys):
    reference = embed_images(folder, SPEC, tmp_path / "ref", image_size=32, batch_size=8, workers=0, progress=False)
    out = tmp_path / "emb"
    argv = ["embed", str(folder), "--encoder", SPEC, "--image-size", "32", "--out", str(out), "--batch-size", "8",
            "--shard-rows", "8", "--workers", "2"]
    first = run_and_kill(argv, out, kill_at_shards=1)
    assert 1 <= first < 25
    manifest = json.loads((out / "manifest.json").read_text())
    assert not manifest["complete"] and (out / ".sslsearch.lock").exists()  # a dead owner's lock, taken over below
    second = run_and_kill(argv + ["--resume"], out, kill_at_shards=first + 3)
    assert first + 3 <= second < 25
    code, stdout, err = run_cli(argv + ["--resume"], capsys)  # the last resume in-process: saves a startup
    assert code == 0, err
    assert stdout.startswith("embedded ") and "(resumed: " in stdout
    assert "skipped 3: 1 empty, 1 not_an_image, 1 truncated" in stdout

    ref = EmbeddingStore.open(tmp_path / "ref").read_all(("id", "path", "embedding"))
    got_store = EmbeddingStore.open(out)
    got = got_store.read_all(("id", "path", "embedding", "sha256"))
    assert len(got.ids) == len(set(got.ids.tolist())) == reference.rows == 200
    assert set(got.columns["path"]) == set(ref.columns["path"])
    assert not set(got.columns["path"]) & set(BAD)
    ref_order, got_order = np.argsort(ref.ids), np.argsort(got.ids)
    np.testing.assert_array_equal(ref.ids[ref_order], got.ids[got_order])
    np.testing.assert_array_equal(ref.embeddings[ref_order], got.embeddings[got_order])  # float16, bit for bit
    assert {s["path"]: s["reason"] for s in got_store.manifest.skipped} == BAD
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_a_second_live_process_is_refused(folder, tmp_path, capsys):
    out = tmp_path / "emb"
    holder_code = (
        "import sys; from sslsearch.store import StoreWriter\n"
        f"w = StoreWriter({str(out)!r}, dim=96, dtype='float16', encoder={{'id': 'x', 'spec': 'x'}}, source_root='.')\n"
        "print('ready', flush=True); sys.stdin.read(); w.close(complete=False)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", holder_code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "ready"
        before = (out / "manifest.json").read_bytes()
        for flag in ("--resume", "--overwrite"):
            code, _, err = run_cli(["embed", str(folder), "--encoder", SPEC, "--image-size", "32", "--out", str(out),
                                    "--workers", "0", flag], capsys)
            assert code == 1 and f"being written by another process (pid {holder.pid}" in err, err
        assert (out / "manifest.json").read_bytes() == before
        assert json.loads((out / ".sslsearch.lock").read_text())["pid"] == holder.pid
    finally:
        holder.communicate("", timeout=60)
    assert holder.returncode == 0


@pytest.mark.parametrize("args", [["--version"], ["--version", "embed", "--help"]])
def test_version_needs_no_command(args, capsys):
    import sslsearch

    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert out.strip() == f"sslsearch {sslsearch.__version__}"
