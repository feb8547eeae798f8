"""Dataset readers: CIFAR-10/100 python batches through the restricted unpickler, label tables, ImageFolder export."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sslsearch.errors import InputNotFoundError, InvalidArgumentError, OutputExistsError
from sslsearch.evaluate import export_cifar, load_pickle, read_cifar, read_label_table
from sslsearch.sources import list_images

CIFAR10_NAMES = [b"airplane", b"automobile", b"bird"]


def cifar_batch(n: int, seed: int, labels_key: bytes = b"labels") -> dict:
    """A batch as the CIFAR files hold it: bytes keys (Python 2 pickles), (n, 3072) uint8 rows in CHW order."""
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"fake", labels_key: [int(v) for v in rng.integers(0, 3, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"x.png"] * n}


def make_cifar10(root, n: int = 6):
    root.mkdir()
    for i, name in enumerate(["data_batch_1", "data_batch_2", "test_batch"]):
        (root / name).write_bytes(pickle.dumps(cifar_batch(n, i), protocol=2))
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": CIFAR10_NAMES, b"num_vis": 3072}, protocol=2))
    return root


class Exploit:
    """Unpickling this would run a shell command if the unpickler allowed arbitrary globals."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_read_cifar10(tmp_path):
    root = make_cifar10(tmp_path / "cifar-10-batches-py")
    train = read_cifar(root, "train")
    assert train.images.shape == (12, 32, 32, 3) and train.images.dtype == np.uint8
    assert train.classes == ("airplane", "automobile", "bird")
    first = cifar_batch(6, 0)
    assert train.labels.tolist()[:6] == first[b"labels"]
    # CHW rows: red plane first, then green, then blue; pixel (row 1, column 2) of image 0
    assert train.images[0, 1, 2].tolist() == [first[b"data"][0, c * 1024 + 1 * 32 + 2] for c in range(3)]
    assert len(read_cifar(root, "test")) == 6


def test_read_cifar100(tmp_path):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    for name in ("train", "test"):
        (root / name).write_bytes(pickle.dumps(cifar_batch(5, 1, b"fine_labels"), protocol=2))
    (root / "meta").write_bytes(pickle.dumps({b"fine_label_names": [b"apple", b"bear", b"cup"],
                                              b"coarse_label_names": [b"x"]}, protocol=2))
    test = read_cifar(root, "test")
    assert test.classes == ("apple", "bear", "cup") and len(test) == 5


def test_pickles_that_name_code_are_refused(tmp_path, monkeypatch):
    root = make_cifar10(tmp_path / "cifar")
    (root / "data_batch_2").write_bytes(pickle.dumps(Exploit()))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidArgumentError, match="posix.system is not allowed|os.system is not allowed"):
        read_cifar(root, "train")
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle at all")
    with pytest.raises(InvalidArgumentError, match="not a readable pickle"):
        load_pickle(tmp_path / "junk.pkl")


def test_load_pickle_reads_arrays_and_containers(tmp_path):
    data = {"imlist": ["a", "b"], "gnd": [{"easy": np.array([1, 2]), "bbx": (1.0, 2.0)}], "n": 3, "s": {1, 2}}
    path = tmp_path / "gnd.pkl"
    path.write_bytes(pickle.dumps(data, protocol=4))
    loaded = load_pickle(path)
    assert loaded["imlist"] == ["a", "b"] and loaded["s"] == {1, 2}
    np.testing.assert_array_equal(loaded["gnd"][0]["easy"], [1, 2])


def test_bad_cifar_directories(tmp_path):
    with pytest.raises(InputNotFoundError):
        read_cifar(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputNotFoundError, match="not a CIFAR"):
        read_cifar(tmp_path / "empty")
    root = make_cifar10(tmp_path / "cifar")
    with pytest.raises(InvalidArgumentError, match="unknown CIFAR split"):
        read_cifar(root, "validation")
    (root / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(InvalidArgumentError, match="expected \\(n, 3072\\)"):
        read_cifar(root, "test")


def test_export_cifar_makes_image_folders(tmp_path):
    root = make_cifar10(tmp_path / "cifar")
    folders = export_cifar(root, tmp_path / "images")
    train = list_images(folders["train"])
    assert len(train) == 12 and set(train.classes) <= {"airplane", "automobile", "bird"}
    first = Image.open(folders["train"] / train.records[0].path)
    assert first.size == (32, 32)
    labels = read_label_table(folders["test"] / "labels.csv")
    assert len(labels) == 6 and all(path.split("/")[0] == label for path, label in labels.items())
    with pytest.raises(OutputExistsError):
        export_cifar(root, tmp_path / "images")


def test_label_tables(tmp_path):
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("path,label\na/1.png,cat\nb/2.png,dog\nc/3.png,\n")
    assert read_label_table(csv_file) == {"a/1.png": "cat", "b/2.png": "dog"}  # empty label = unlabelled
    parquet_file = tmp_path / "groups.parquet"
    pq.write_table(pa.table({"path": ["x.png", "y.png"], "group": [7, 7]}), parquet_file)
    assert read_label_table(parquet_file) == {"x.png": "7", "y.png": "7"}
    csv_file.write_text("path,label\na.png,cat\na.png,dog\n")
    with pytest.raises(InvalidArgumentError, match="two labels"):
        read_label_table(csv_file)
    csv_file.write_text("file,class\na.png,cat\n")
    with pytest.raises(InvalidArgumentError, match="expected 'path'"):
        read_label_table(csv_file)
    (tmp_path / "labels.txt").write_text("a.png cat\n")
    with pytest.raises(InvalidArgumentError, match="expected .csv or .parquet"):
        read_label_table(tmp_path / "labels.txt")
