"""`sslsearch train` through the CLI: train a tiny run, then `embed --encoder RUN`; errors are one line."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from sslsearch.cli.app import main


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


TINY = ["--backbone", "test_resnet", "--image-size", "32", "--batch-size", "16", "--workers", "0",
        "--set", "log_every_steps=2"]


def test_train_then_embed_with_the_run(sample_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run, store = tmp_path / "run", tmp_path / "emb"
    code, out, err = run_cli(["train", str(sample_dir), "--out", str(run), "--epochs", "0.5", "--json", *TINY], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["finished"] and result["encoder_exported"] and result["steps"] == 4
    for name in ("config.yaml", "metrics.jsonl", "encoder.json", "encoder.safetensors", "checkpoints/last.pt"):
        assert (run / name).exists(), name
    code, out, err = run_cli(["embed", str(sample_dir), "--encoder", str(run), "--out", str(store),
                              "--workers", "0", "--json"], capsys)
    assert code == 0, err
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["dim"] == 96
    assert "test_resnet" in manifest["encoder"]["spec"]
    table = pq.read_table(sorted(store.glob("part-*.parquet"))[0])
    assert table.num_rows == 120


def test_resume_needs_no_repeated_options(sample_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    code, _, err = run_cli(["train", str(sample_dir), "--out", str(run), "--epochs", "0.5", "--method", "moco",
                            "--set", "stop_after_steps=2", *TINY], capsys)
    assert code == 0, err
    assert not (run / "encoder.json").exists()
    code, out, err = run_cli(["train", str(sample_dir), "--out", str(run), "--resume", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["steps"] == 4 and (run / "encoder.json").exists()
    code, _, err = run_cli(["train", str(sample_dir), "--out", str(run), "--resume", "--batch-size", "8"], capsys)
    assert code == 1 and "batch_size: run has 16, now 8" in err and err.count("\n") == 1


@pytest.mark.parametrize(("args", "message"), [
    (["--method", "dinov2"], "unknown method 'dinov2' (did you mean 'dino'?)"),
    (["--backbone", "resnet181"], "did you mean"),
    (["--set", "optimizer.lrr=3"], "did you mean 'optimizer.lr'"),
    (["--set", "lr"], "is not KEY=VALUE"),
    (["--method", "dino", "--set", "dino.centering=sinkorn"], "unknown dino.centering 'sinkorn' (did you mean "
                                                              "'sinkhorn'?)"),
    (["--method", "dino", "--set", "dino.koleo_weight=-0.1"],
     "dino.koleo_weight must be 0 (off) or positive, got -0.1"),
])
def test_bad_options(sample_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str],
                     message: str) -> None:
    code, _, err = run_cli(["train", str(sample_dir), "--out", str(tmp_path / "run"), "--epochs", "1", *TINY, *args],
                           capsys)
    assert code == 1 and message in err and err.count("\n") == 1


def test_print_config(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run_cli(["train", "--print-config", "--method", "dino"], capsys)
    assert code == 0 and "method: dino" in out and "# DINO: number of small local crops" in out
