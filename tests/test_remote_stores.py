"""`bench`, `head` and `dedup` on an embedding store on s3:// (moto's local S3 server): the same results as on disk."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

import sslsearch
from sslsearch.cli.app import main
from sslsearch.embed import embed_images
from sslsearch.location import StoreLocation
from sslsearch.store import is_store

from s3_helpers import moto_s3

SPEC = "timm:test_resnet"


@pytest.fixture(scope="module")
def s3():
    yield from moto_s3()


@pytest.fixture(scope="module")
def stores(s3, tmp_path_factory) -> tuple[Path, str]:
    """The same store on local disk and copied to s3:// (22 images in 2 class folders, 3 bad files)."""
    from test_distributed_ray import make_folder

    root = tmp_path_factory.mktemp("remote")
    images = make_folder(root / "images")
    local = root / "emb"
    embed_images(images, SPEC, local, image_size=32, batch_size=8, workers=0, device="cpu", progress=False,
                 threads=1)
    uri = f"{s3}/remote/emb"
    _upload(local, uri)
    return local, uri


@pytest.fixture(scope="module")
def dense_stores(s3, tmp_path_factory) -> tuple[Path, str]:
    """A store with ids 0..n-1 (what the ivf dedup graph needs), on disk and on s3://: 400 × 16 synthetic vectors."""
    from index_helpers import make_store

    local = tmp_path_factory.mktemp("remote-dense") / "emb"
    make_store(local, 400, 16, shard_rows=100)
    uri = f"{s3}/dense/emb"
    _upload(local, uri)
    return local, uri


def _upload(local: Path, uri: str) -> None:
    remote = StoreLocation.parse(uri)
    pafs.copy_files(str(local), remote.root, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=remote.filesystem)


def run(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    captured = capsys.readouterr()
    assert exit_info.value.code in (0, None), captured.err
    return captured.out


def same_json(local_text: str, remote_text: str, local: Path, uri: str, *, drop=("seconds", "created", "command")):
    """Parse both, with the store's two names made equal and run-dependent keys (times) dropped."""
    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k not in drop}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    local_text = local_text.replace(str(local.resolve()), "STORE").replace(str(local), "STORE")
    return clean(json.loads(local_text)), clean(json.loads(remote_text.replace(uri, "STORE")))


def test_is_store_on_disk_and_on_s3(stores, tmp_path):
    local, uri = stores
    assert is_store(local) and is_store(str(local)) and is_store(uri)
    assert not is_store(local.parent / "images") and not is_store(tmp_path / "missing")
    assert not is_store(uri.rsplit("/", 1)[0] + "/nothing")


def test_bench_knn_retrieval_and_all_on_s3_equal_the_local_store(stores, capsys, tmp_path):
    local, uri = stores
    for command in ("knn", "retrieval"):
        left, right = same_json(run(capsys, "bench", command, str(local), "--json"),
                                run(capsys, "bench", command, uri, "--json"), local, uri)
        assert left == right and left["n_database"] == 22
    run(capsys, "bench", "all", str(local), "--out", str(tmp_path / "local"), "--no-linear")
    run(capsys, "bench", "all", uri, "--out", str(tmp_path / "s3"), "--no-linear")
    left, right = same_json((tmp_path / "local" / "report.json").read_text(),
                            (tmp_path / "s3" / "report.json").read_text(), local, uri)
    assert left == right and right["knn"] is not None and right["store"]["directory"] == "STORE"


def test_bench_index_reopens_the_s3_store_named_in_the_card(stores, capsys, tmp_path):
    local, uri = stores
    run(capsys, "index", "build", uri, "--out", str(tmp_path / "idx"), "--kind", "flat")
    remote = json.loads(run(capsys, "bench", "index", str(tmp_path / "idx"), "--json", "--n-queries", "10"))
    given = json.loads(run(capsys, "bench", "index", str(tmp_path / "idx"), "--store", str(local), "--json",
                           "--n-queries", "10"))
    assert [s["recall"] for s in remote["settings"]] == [s["recall"] for s in given["settings"]] == [1.0]  # flat: exact
    assert remote["ntotal"] == 22 and remote["n_queries"] == given["n_queries"] == 10


def test_head_train_predict_evaluate_on_s3_equal_the_local_store(stores, capsys, tmp_path):
    local, uri = stores
    heads = {}
    for name, store in (("local", str(local)), ("s3", uri)):
        heads[name] = tmp_path / name
        run(capsys, "head", "train", store, "--labels", "folders", "--out", str(heads[name]), "--epochs", "5",
            "--device", "cpu")
    left, right = same_json((heads["local"] / "head.json").read_text(), (heads["s3"] / "head.json").read_text(),
                            local, uri)
    assert left == right and right["store"]["directory"] == "STORE"
    for command in ("predict", "evaluate"):
        device = ("--device", "cpu") if command == "predict" else ()
        outputs = [run(capsys, "head", command, str(heads["s3"]), store, "--json", *device)
                   for store in (str(local), uri)]
        assert json.loads(outputs[0]) == json.loads(outputs[1])


@pytest.mark.parametrize("method, threshold", [("exact", "0.99"), ("ivf", "0.9")])
def test_dedup_on_s3_equals_the_local_store_and_writes_locally(stores, dense_stores, capsys, tmp_path, method,
                                                                threshold):
    """exact: the embedded images; ivf (an IVF index of the store built from its URI): synthetic vectors, ids 0..n-1."""
    local, uri = stores if method == "exact" else dense_stores
    outputs = {}
    for name, store in (("local", str(local)), ("s3", uri)):
        outputs[name] = tmp_path / name
        run(capsys, "dedup", store, "--out", str(outputs[name]), "--threshold", threshold, "--method", method, "--json")
    left, right = same_json((outputs["local"] / "summary.json").read_text(),
                            (outputs["s3"] / "summary.json").read_text(), local, uri)
    assert left == right and right["store"] == "STORE" and right["graph"]["method"] == method
    assert right["clusters"] > 0 and right["removed"] > 0
    clusters = [pq.read_table(outputs[name] / "clusters.parquet") for name in ("local", "s3")]
    assert clusters[0].equals(clusters[1])
    assert (outputs["local"] / "remove.txt").read_text() == (outputs["s3"] / "remove.txt").read_text()


def test_python_deduplicate_takes_an_s3_uri(stores, tmp_path):
    _, uri = stores
    result = sslsearch.deduplicate(uri, tmp_path / "dups", threshold=0.99, progress=False)
    assert result.images == 22 and result.summary["store"] == uri
