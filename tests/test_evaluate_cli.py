"""`sslsearch bench ...` end to end on tiny stores: tables, JSON, reports with plots, one-line errors."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from PIL import Image

from evaluate_helpers import OTHER_ENCODER, clustered, write_store
from sslsearch.cli.app import main
from sslsearch.evaluate import PLOT_SIZE


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run the CLI in this process; (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Train and test stores (4 classes of clustered vectors) from one encoder, and one from another."""
    root = tmp_path_factory.mktemp("stores")
    train, train_y = clustered(15, 4, 16, spread=0.7, seed=0)
    test, test_y = clustered(15, 4, 16, spread=0.7, seed=0)
    test = test + 0.05 * np.random.default_rng(1).normal(size=test.shape).astype(np.float32)
    write_store(root / "train", train, [f"c{v}" for v in train_y], prefix="train_")
    write_store(root / "test", test, [f"c{v}" for v in test_y], prefix="test_")
    write_store(root / "other", test, [f"c{v}" for v in test_y], encoder=OTHER_ENCODER)
    return root


def test_knn_table_and_json(stores, capsys, tmp_path):
    code, out, _ = run_cli(["bench", "knn", str(stores / "train"), "--queries", str(stores / "test"), "--k", "5,10",
                            "--device", "cpu", "--plot", str(tmp_path / "knn.png")], capsys)
    assert code == 0 and "queries: 60 queries vs 60 database rows, 4 classes" in out and "weighted" in out
    assert Image.open(tmp_path / "knn.png").size == PLOT_SIZE
    code, out, _ = run_cli(["bench", "knn", str(stores / "train"), "--json", "--device", "cpu"], capsys)
    data = json.loads(out)
    assert code == 0 and data["split"] == "leave-one-out" and data["ks"] == [10, 20]
    assert data["weighted"]["10"] > 0.9


def test_linear_and_retrieval(stores, capsys, tmp_path):
    code, out, _ = run_cli(["bench", "linear", str(stores / "train"), "--queries", str(stores / "test"),
                            "--epochs", "5", "--json", "--device", "cpu"], capsys)
    assert code == 0 and json.loads(out)["n_test"] == 60 and json.loads(out)["test_accuracy"] > 0.8
    code, out, _ = run_cli(["bench", "retrieval", str(stores / "train"), "--device", "cpu"], capsys)
    assert code == 0 and "R@1" in out and "mAP" in out
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("a,b\nc0/train_00000.png,c0/train_00001.png\n")
    code, out, _ = run_cli(["bench", "retrieval", str(stores / "train"), "--pairs", str(pairs), "--json",
                            "--device", "cpu"], capsys)
    assert code == 0 and json.loads(out)["ground_truth"] == "instance" and json.loads(out)["n_queries"] == 2


def test_revisited_cli(stores, capsys, tmp_path):
    names = [f"train_{i:05d}" for i in range(60)]
    gnd = [{"easy": [1, 2], "hard": [3], "junk": [4]}]
    path = tmp_path / "gnd_test.pkl"
    path.write_bytes(pickle.dumps({"imlist": names, "qimlist": [names[0]], "gnd": gnd}))
    code, out, err = run_cli(["bench", "retrieval", str(stores / "train"), "--revisited", str(path)], capsys)
    assert code == 0 and "medium" in out and "not cropped" in err


@pytest.mark.parametrize("args, message", [
    (["knn", "{train}", "--queries", "{other}"], "timm:other"),
    (["knn", "{train}", "--k", "500"], "k=500 is larger than the database"),
    (["knn", "{train}", "--k", "ten"], "comma-separated integers"),
    (["knn", "{train}", "--holdout", "1.5"], "holdout fraction must be in (0, 1)"),
    (["knn", "{train}", "--queries", "{test}", "--leave-one-out"], "choose one split"),
    (["linear", "{train}", "--holdout", "0.01"], "empty"),
    (["knn", "{missing}"], "does not exist"),
    (["retrieval", "{train}", "--pairs", "{missing}"], "does not exist"),
])
def test_bad_input_is_one_line_and_exit_1(stores, capsys, args, message):
    paths = {"train": stores / "train", "test": stores / "test", "other": stores / "other",
             "missing": stores / "missing"}
    code, out, err = run_cli(["bench"] + [a.format(**paths) for a in args], capsys)
    assert code == 1 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1 and err.startswith("error: ")


def test_missing_labels_cli(tmp_path, capsys):
    vectors, labels = clustered(10, 2, 8)
    names = [str(v) for v in labels]
    names[0] = None
    store = write_store(tmp_path / "emb", vectors, names)
    code, _, err = run_cli(["bench", "knn", str(store), "--k", "3"], capsys)
    assert code == 1 and "1 of 20 rows" in err and "--drop-unlabelled" in err
    code, out, _ = run_cli(["bench", "knn", str(store), "--k", "3", "--drop-unlabelled", "--json"], capsys)
    assert code == 0 and json.loads(out)["n_queries"] == 19
    unlabelled = write_store(tmp_path / "none", vectors, None)
    code, _, err = run_cli(["bench", "knn", str(unlabelled)], capsys)
    assert code == 1 and "has no labels" in err
    table = tmp_path / "labels.csv"
    table.write_text("path,label\n" + "".join(f"unlabelled/{i:05d}.png,{labels[i]}\n" for i in range(20)))
    code, out, _ = run_cli(["bench", "knn", str(unlabelled), "--labels", str(table), "--k", "3", "--json"], capsys)
    assert code == 0 and json.loads(out)["n_classes"] == 2


def test_bench_all_writes_the_report(stores, capsys, tmp_path):
    from sslsearch.index.build import build_index

    build_index(stores / "train", tmp_path / "idx", kind="flat", device="cpu", eval_queries=10, progress=False)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 5.0 / (1 + s), "lr": 0.1}) + "\n"
                                               for s in range(0, 100, 10))
                                       + '{"step": 90, "event": "end", "final_loss": 0.1}\n{"step": 10')
    out = tmp_path / "report"
    code, stdout, _ = run_cli(["bench", "all", str(stores / "train"), "--queries", str(stores / "test"), "--out",
                               str(out), "--index", str(tmp_path / "idx"), "--run", str(run), "--epochs", "3",
                               "--device", "cpu"], capsys)
    assert code == 0 and "report written" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["knn"]["n_queries"] == 60 and report["linear"]["n_test"] == 60
    assert report["retrieval"]["ground_truth"] == "class" and report["index"]["settings"]
    assert report["training"]["skipped_lines"] == 1
    assert "final_loss" not in report["training"]["final"]  # the run's end summary is not a curve
    markdown = (out / "report.md").read_text()
    for section in ("## k-NN classification", "## Linear probe", "## Retrieval (class ground truth)",
                    "## Index: recall vs speed", "## Training", "sslsearch bench all"):
        assert section in markdown
    for name in ("knn_accuracy.png", "recall_qps.png", "training_curves.png"):
        assert f"]({name})" in markdown
        image = Image.open(out / name)
        assert image.size == PLOT_SIZE and image.getextrema() != ((255, 255),) * len(image.getbands())
    code, _, err = run_cli(["bench", "all", str(stores / "train"), "--out", str(out), "--no-linear",
                            "--device", "cpu"], capsys)
    assert code == 0  # a report folder can be rewritten
    (out / "notes.txt").write_text("mine")
    code, _, err = run_cli(["bench", "all", str(stores / "train"), "--out", str(out)], capsys)
    assert code == 1 and "--overwrite" in err
