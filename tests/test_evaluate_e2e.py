"""The bench commands on real pipelines: the generated sample images and a CIFAR-style folder, embedded by a tiny model."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from sslsearch.cli.app import main
from sslsearch.embed import embed_images

ENCODER = "timm:test_resnet"


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def test_sample_data_knn_retrieval_and_report(sample_dataset, tmp_path, capsys):
    embed_images(sample_dataset.root, ENCODER, tmp_path / "emb", image_size=32, workers=0, progress=False)
    code, out, _ = run_cli(["bench", "knn", str(tmp_path / "emb"), "--json", "--device", "cpu"], capsys)
    knn = json.loads(out)
    assert code == 0 and knn["n_classes"] == 10 and knn["n_queries"] == 120 and knn["ks"] == [10, 20, 100]
    code, out, _ = run_cli(["bench", "retrieval", str(tmp_path / "emb"), "--pairs",
                            str(sample_dataset.root / "near_duplicates.csv"), "--json"], capsys)
    pairs = json.loads(out)
    assert code == 0 and pairs["n_queries"] == 2 * len(sample_dataset.near_duplicates)
    # near-duplicates are near in any encoder's space: most copies find their original first
    assert pairs["recall"]["10"] >= 0.5
    code, _, _ = run_cli(["bench", "all", str(tmp_path / "emb"), "--out", str(tmp_path / "report"), "--epochs", "2",
                          "--pairs", str(sample_dataset.root / "near_duplicates.csv")], capsys)
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert code == 0 and report["instance_retrieval"]["ground_truth"] == "instance"
    assert report["store"]["encoder"]["spec"] == ENCODER


def test_cifar_directory_to_knn(tmp_path, capsys):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("data_batch_1", 16), ("test_batch", 8)):
        labels = [i % 2 for i in range(n)]
        # class 0 dark, class 1 bright: separable even for a random-init encoder
        data = np.stack([rng.integers(0, 60, 3072) if y == 0 else rng.integers(190, 256, 3072) for y in labels])
        (root / name).write_bytes(pickle.dumps({b"data": data.astype(np.uint8), b"labels": labels}, protocol=2))
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"dark", b"bright"]}, protocol=2))
    code, _, _ = run_cli(["bench", "dataset", str(root), "--out", str(tmp_path / "images")], capsys)
    assert code == 0
    for split in ("train", "test"):
        embed_images(tmp_path / "images" / split, ENCODER, tmp_path / f"emb-{split}", image_size=32, workers=0,
                     progress=False)
    code, out, _ = run_cli(["bench", "knn", str(tmp_path / "emb-train"), "--queries", str(tmp_path / "emb-test"),
                            "--k", "3", "--json"], capsys)
    result = json.loads(out)
    assert code == 0 and result["n_classes"] == 2 and result["n_queries"] == 8 and result["n_database"] == 16
    assert result["weighted"]["3"] == 1.0
    code, out, _ = run_cli(["bench", "linear", str(tmp_path / "emb-train"), "--queries", str(tmp_path / "emb-test"),
                            "--epochs", "20", "--json"], capsys)
    assert code == 0 and json.loads(out)["test_accuracy"] == 1.0
