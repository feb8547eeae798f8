"""End-to-end `sslsearch head train|predict|export` on sample images embedded with a tiny random-init backbone."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from evaluate_helpers import OTHER_ENCODER, write_store
from sslsearch.cli.app import main
from sslsearch.embed import embed_images
from sslsearch.errors import InvalidArgumentError
from sslsearch.head import export_onnx, load_head, predict_head

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
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="module")
def store(sample_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("head_cli") / "emb"
    embed_images(sample_dir, SPEC, out, image_size=32, workers=0, device="cpu", progress=False)
    return out


@pytest.fixture(scope="module")
def head_dir(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("head_cli_head") / "head"
    with pytest.raises(SystemExit) as exit_info:
        main(["head", "train", str(store), "--labels", "folders", "--out", str(out), "--kind", "mlp",
              "--epochs", "15", "--device", "cpu", "--json"])
    assert exit_info.value.code in (0, None)
    return out


def test_train_writes_the_head_directory(store, tmp_path, capsys):
    code, out, err = run_cli(["head", "train", str(store), "--labels", "folders", "--out", str(tmp_path / "h"),
                              "--epochs", "3", "--device", "cpu", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert len(result["labels"]) == 10 and result["n_train"] + result["n_validation"] == 120
    assert result["epochs_run"] == len(result["history"]) <= 3
    head = json.loads((tmp_path / "h" / "head.json").read_text())
    assert head["encoder"]["spec"] == SPEC and head["dim"] == 96 and head["kind"] == "linear"
    assert set(json.loads((tmp_path / "h" / "metrics.json").read_text())) >= {"validation", "train", "history"}
    again = ["head", "train", str(store), "--labels", "folders", "--out", str(tmp_path / "h"), "--epochs", "3",
             "--device", "cpu"]
    code, out, err = run_cli(again, capsys)
    assert_one_line_error(code, err, "already holds a head", "--overwrite")
    code, out, err = run_cli(again + ["--overwrite"], capsys)
    assert code == 0 and "linear head, 10 classes" in out


def test_predict_images_matches_predict_store(head_dir, store, sample_dir, tmp_path, capsys):
    code, out, err = run_cli(["head", "predict", str(head_dir), str(sample_dir), "--out", str(tmp_path / "p.parquet"),
                              "--device", "cpu"], capsys)
    assert code == 0, err
    table = pq.read_table(tmp_path / "p.parquet")
    assert table.column_names == ["id", "path", "label", "score", "probabilities"] and table.num_rows == 120
    head = load_head(head_dir)
    from_images = np.asarray(table.column("probabilities").to_pylist(), np.float32)
    paths = [str(Path(p).relative_to(sample_dir)) for p in table.column("path").to_pylist()]
    from_store = predict_head(head, store)
    order = {p: i for i, p in enumerate(from_store.paths)}
    # the store holds float16 vectors: the two differ by its rounding only
    assert np.abs(from_images - from_store.probabilities[[order[p] for p in paths]]).max() < 2e-3
    assert set(table.column("label").to_pylist()) <= set(head.labels)
    code, out, err = run_cli(["head", "predict", str(head_dir), str(store)], capsys)
    assert code == 0 and out.splitlines()[0].split() == ["id", "path", "label", "score"] and len(out.splitlines()) == 122


def test_evaluate_command(head_dir, store, capsys):
    code, out, err = run_cli(["head", "evaluate", str(head_dir), str(store), "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["rows"] == 120 and np.asarray(result["metrics"]["confusion"]).shape == (10, 10)
    code, out, err = run_cli(["head", "evaluate", str(head_dir), str(store)], capsys)
    assert code == 0 and out.startswith("120 rows: accuracy ")


def test_predict_skips_bad_images(head_dir, images_with_bad_files, capsys):
    code, out, err = run_cli(["head", "predict", str(head_dir), str(images_with_bad_files), "--json",
                              "--device", "cpu"], capsys)
    assert code == 0
    assert len(json.loads(out)["predictions"]) == 6 and err.count("skipped") == 3


def test_predict_refuses_a_store_of_another_encoder(head_dir, tmp_path, capsys):
    other = write_store(tmp_path / "other", np.eye(4, 96, dtype=np.float32), None, encoder=OTHER_ENCODER)
    code, _, err = run_cli(["head", "predict", str(head_dir), str(other), "--out", str(tmp_path / "p.parquet")], capsys)
    assert_one_line_error(code, err, "timm:other", SPEC, "sslsearch embed")
    assert not (tmp_path / "p.parquet").exists()


def test_bad_labels_file_is_one_line(store, tmp_path, capsys):
    (tmp_path / "labels.csv").write_text("image,label\na.png,cat\n")
    code, _, err = run_cli(["head", "train", str(store), "--labels", str(tmp_path / "labels.csv"), "--out",
                            str(tmp_path / "h")], capsys)
    assert_one_line_error(code, err, "labels.csv", "'path' or 'id'")
    code, _, err = run_cli(["head", "predict", str(tmp_path / "nothing"), str(store)], capsys)
    assert_one_line_error(code, err, "not a head directory")


def test_export_without_onnx_packages_says_what_to_install(head_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # makes `import onnxscript` fail
    with pytest.raises(InvalidArgumentError, match=r"sslsearch\[onnx\]"):
        export_onnx(head_dir, tmp_path / "h.onnx")
    assert not (tmp_path / "h.onnx").exists()


def test_onnx_export_matches_torch(head_dir, sample_dir, tmp_path, capsys):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    onnxruntime = pytest.importorskip("onnxruntime")
    from torchvision import transforms as T

    code, out, err = run_cli(["head", "export", str(head_dir), "--onnx", str(tmp_path / "h.onnx"), "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["verified"] and result["max_abs_difference"] < 1e-4 and result["image_size"] == 32
    # independently: real images, preprocessed to [0, 1] pixels as the metadata says, against predict_head
    head = load_head(head_dir)
    files = sorted(sample_dir.rglob("*.png"))[:5]
    pre = head.encoder["preprocessing"]
    to_pixels = T.Compose([T.Resize(pre["resize_size"], interpolation=T.InterpolationMode.BILINEAR, antialias=True),
                           T.CenterCrop(pre["image_size"]), T.ToTensor()])
    from PIL import Image

    pixels = np.stack([to_pixels(Image.open(f).convert("RGB")).numpy() for f in files])
    session = onnxruntime.InferenceSession(str(tmp_path / "h.onnx"), providers=["CPUExecutionProvider"])
    probabilities, embeddings = session.run(["probabilities", "embeddings"], {"images": pixels})
    expected = predict_head(head, files, device="cpu").probabilities
    assert np.abs(probabilities - expected).max() < 1e-4
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    single = session.run(["probabilities"], {"images": pixels[:1]})[0]
    assert np.abs(single - expected[:1]).max() < 1e-4
    metadata = session.get_modelmeta().custom_metadata_map
    assert json.loads(metadata["labels"]) == list(head.labels) and metadata["encoder_spec"] == SPEC
    code, _, err = run_cli(["head", "export", str(head_dir), "--onnx", str(tmp_path / "h.onnx")], capsys)
    assert_one_line_error(code, err, "already exists")
