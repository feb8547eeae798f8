"""The public API: every exported name resolves, `import sslsearch` stays light, the documented example runs."""
from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import sslsearch
from sslsearch.errors import InvalidArgumentError

ROOT = Path(__file__).resolve().parents[1]


def test_every_exported_name_resolves_and_is_listed_by_dir():
    missing = [name for name in sslsearch.__all__ if getattr(sslsearch, name, None) is None]
    assert missing == []
    assert set(sslsearch.__all__) <= set(dir(sslsearch))
    assert len(set(sslsearch.__all__)) == len(sslsearch.__all__)
    with pytest.raises(AttributeError, match="no attribute 'train_heads'"):
        sslsearch.train_heads  # noqa: B018


def test_the_cli_functions_are_exported():
    for name in ("create_encoder", "embed_images", "open_store", "build_index", "load_index", "search", "deduplicate",
                 "train", "evaluate_knn", "evaluate_retrieval", "evaluate_index", "evaluate_linear",
                 "make_sample_dataset", "SSLSearchError", "SearchResult", "IndexCard", "DedupResult", "TrainResult"):
        assert name in sslsearch.__all__, name
    assert issubclass(sslsearch.StoreError, sslsearch.SSLSearchError)
    assert issubclass(sslsearch.TrainingDivergedError, sslsearch.SSLSearchError)


def test_import_sslsearch_does_not_import_torch_or_faiss():
    code = ("import sys, sslsearch; heavy = [m for m in ('torch', 'faiss', 'timm', 'pyarrow') if m in sys.modules]; "
            "print(','.join(heavy) or 'none')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "none"


def _python_api_block(path: Path) -> str | None:
    """The first ```python block after the heading "Python API" (else the first heading that contains it; None:
    no such heading)."""
    text = path.read_text(encoding="utf-8")
    heading = (re.search(r"^#+ Python API\s*$", text, flags=re.MULTILINE)
               or re.search(r"^#+ .*Python API.*$", text, flags=re.MULTILINE))
    if heading is None:
        return None
    block = re.search(r"^```python\n(.*?)^```", text[heading.end():], flags=re.MULTILINE | re.DOTALL)
    assert block is not None, f"{path.name}: no ```python block under the heading {heading.group(0)!r}"
    return block.group(1)


@pytest.mark.parametrize("document", ["docs/python-api.md", "README.md"])
def test_the_documented_python_api_example_runs(document, tmp_path, monkeypatch):
    path = ROOT / document
    if not path.is_file():
        pytest.skip(f"{document} does not exist")
    code = _python_api_block(path)
    if code is None:
        pytest.skip(f"{document} has no Python API heading")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SSLSEARCH_NO_PROGRESS", "1")
    exec(compile(code, str(path), "exec"), {"__name__": "__docs__"})  # noqa: S102 - our own documentation


# ----------------------------------------------------------------------------- the wrappers


@pytest.fixture(scope="module")
def embedded(sample_dir, tmp_path_factory):
    """The sample images embedded with timm:test_resnet, and a flat index over them."""
    out = tmp_path_factory.mktemp("api")
    encoder = sslsearch.create_encoder("timm:test_resnet", image_size=32, device="cpu")
    sslsearch.embed_images(sample_dir, encoder, out / "emb", batch_size=64, workers=0, progress=False)
    sslsearch.build_index(out / "emb", out / "idx", kind="flat", progress=False)
    return out


def test_search_takes_exactly_one_kind_of_query(embedded):
    with pytest.raises(InvalidArgumentError, match="exactly one kind"):
        sslsearch.search(embedded / "idx")
    with pytest.raises(InvalidArgumentError, match="got vectors and ids"):
        sslsearch.search(embedded / "idx", vectors=np.ones((1, 4)), ids=[1])


def test_search_by_vectors_ids_and_npy_file_agree_with_the_index(embedded, tmp_path):
    index = sslsearch.load_index(embedded / "idx")
    store = sslsearch.open_store(embedded / "emb")
    vectors = store.vectors_for([3, 7]).astype(np.float32)
    np.save(tmp_path / "q.npy", vectors)
    direct = index.search(vectors, k=4)
    by_array = sslsearch.search(embedded / "idx", vectors=vectors, k=4)
    by_file = sslsearch.search(index, vectors=tmp_path / "q.npy", k=4)
    assert [[n.id for n in r.neighbors] for r in by_array] == [[n.id for n in r.neighbors] for r in direct]
    assert [[n.id for n in r.neighbors] for r in by_file] == [[n.id for n in r.neighbors] for r in direct]
    by_id = sslsearch.search(index, ids=[3], k=4)
    assert 3 not in [n.id for n in by_id[0].neighbors]  # its own id is left out
    assert [n.id for n in by_id[0].neighbors] == [n.id for n in index.search_ids([3], k=4)[0].neighbors]


def test_search_by_image_finds_the_image_itself(embedded, sample_dir):
    store = sslsearch.open_store(embedded / "emb")
    path = store.paths([10])[0]
    result = sslsearch.search(embedded / "idx", sample_dir / path, k=1, device="cpu")
    assert result[0].neighbors[0].path == path


def test_evaluate_wrappers_match_the_library_calls(embedded):
    from sslsearch.evaluate import knn_evaluate
    from sslsearch.evaluate.labels import load_split

    split = load_split(embedded / "emb", holdout=0.3, seed=1)
    expected = knn_evaluate(split, ks=[5], device="cpu")
    result = sslsearch.evaluate_knn(embedded / "emb", holdout=0.3, seed=1, ks=[5], device="cpu")
    assert result.weighted == expected.weighted and result.majority == expected.majority
    card = sslsearch.index_info(embedded / "idx")
    assert card.ntotal == sslsearch.open_store(embedded / "emb").manifest.rows


def test_deduplicate_refuses_a_folder_that_is_not_a_store(sample_dir, tmp_path):
    with pytest.raises(InvalidArgumentError, match="not an embedding store"):
        sslsearch.deduplicate(sample_dir, tmp_path / "dups")


def test_train_builds_the_config_as_the_cli_does(monkeypatch, tmp_path):
    train_module = importlib.import_module("sslsearch.ssl.train")  # `sslsearch.ssl.train` the attribute is the function

    seen = {}
    monkeypatch.setattr(train_module, "train", lambda config, resume=False: seen.update(config=config, resume=resume))
    sslsearch.train("images", tmp_path / "run", method="dino", backbone="test_resnet", max_minutes=1.5,
                    settings={"optimizer.lr": 0.25, "dino.prototypes": 128})
    config = seen["config"]
    assert (config.data, config.out, config.method, config.backbone) == ("images", str(tmp_path / "run"), "dino",
                                                                         "test_resnet")
    assert config.max_minutes == 1.5 and config.optimizer.lr == 0.25 and config.dino.prototypes == 128
    assert config.batch_size == sslsearch.TrainConfig().batch_size  # untouched fields keep their defaults
    base = sslsearch.TrainConfig(image_size=48, epochs=2)
    sslsearch.train("images", tmp_path / "run", config=base)
    assert seen["config"].image_size == 48 and seen["config"].epochs == 2 and seen["config"].data == "images"


def test_train_config_takes_set_strings_a_run_directory_and_refuses_resume_without_out(tmp_path):
    from sslsearch.ssl import to_yaml

    config = sslsearch.train_config(method="dino", settings=["optimizer.lr=0.5", "dino.prototypes=256"])
    assert (config.method, config.optimizer.lr, config.dino.prototypes) == ("dino", 0.5, 256)
    assert sslsearch.train_config(settings="seed=7").seed == 7
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(to_yaml(sslsearch.train_config(method="mae", image_size=48)))
    saved = sslsearch.train_config(config=run, batch_size=8)  # the run's config, then the options
    assert (saved.method, saved.image_size, saved.batch_size) == ("mae", 48, 8)
    with pytest.raises(InvalidArgumentError, match="not KEY=VALUE"):
        sslsearch.train_config(settings=["optimizer.lr"])
    with pytest.raises(InvalidArgumentError, match="pass out"):
        sslsearch.train_config(resume=True)


@pytest.mark.parametrize(("method", "settings", "views"), [
    ("simclr", {}, [(3, 32, 32)] * 2),
    ("dino", {"augmentation.local_crop_count": 3, "augmentation.local_crop_size": 16},
     [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3),
])
def test_training_transform_gives_the_views_of_the_method(method, settings, views):
    from PIL import Image

    config = sslsearch.train_config(method=method, backbone="test_resnet", image_size=32, settings=settings)
    transform = sslsearch.training_transform(config)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    assert [tuple(view.shape) for view in transform(image)] == views
    half = sslsearch.training_transform(config, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert all(view.min() >= -1.0 and view.max() <= 1.0 for view in half(image))


def test_load_split_once_then_evaluate_it_several_ways(embedded):
    split = sslsearch.load_split(embedded / "emb", holdout=0.3, seed=1)
    assert isinstance(split, sslsearch.EvaluationSplit) and split.kind == "holdout"
    from_split = sslsearch.evaluate_knn(split, ks=[5], device="cpu")
    from_store = sslsearch.evaluate_knn(embedded / "emb", holdout=0.3, seed=1, ks=[5], device="cpu")
    assert from_split.weighted == from_store.weighted
    assert sslsearch.evaluate_retrieval(split, ks=[1], device="cpu").recall[1] == sslsearch.evaluate_retrieval(
        embedded / "emb", holdout=0.3, seed=1, ks=[1], device="cpu").recall[1]
    with pytest.raises(InvalidArgumentError, match="already split"):
        sslsearch.evaluate_knn(split, holdout=0.5)


def test_index_search_params_and_their_ladder(tmp_path):
    vectors = sslsearch.synthetic_embeddings(3000, 32, seed=3)
    with sslsearch.StoreWriter(tmp_path / "emb", dim=32, dtype="float32", source_root="/synthetic",
                               encoder={"id": "enc-synthetic", "spec": "synthetic:32", "dim": 32}) as writer:
        writer.write(np.arange(len(vectors)), [f"v/{i}.png" for i in range(len(vectors))], vectors)
    sslsearch.build_index(tmp_path / "emb", tmp_path / "ivf", kind="ivf", device="cpu", eval_queries=50, progress=False)
    index = sslsearch.load_index(tmp_path / "ivf")
    ladder = index.search_param_ladder()
    nlist = ladder[-1]["nprobe"]
    assert ladder[0] == {"nprobe": 1} and nlist > 1 and [s["nprobe"] for s in ladder] == sorted(
        s["nprobe"] for s in ladder)
    queries = sslsearch.synthetic_embeddings(3100, 32, seed=3)[3000:]
    _, truth = sslsearch.exact_search(queries, vectors, 10, device="cpu")
    index.set_search_params({"nprobe": 1})
    low = sslsearch.recall_at_k(index.search_arrays(queries, 10)[1], truth)
    index.set_search_params(ladder[-1])  # every list: exact
    assert sslsearch.recall_at_k(index.search_arrays(queries, 10)[1], truth) == 1.0 > low
    with pytest.raises(InvalidArgumentError, match="no search parameter efSearch"):
        index.set_search_params({"efSearch": 64})
    sslsearch.build_index(tmp_path / "emb", tmp_path / "flat", kind="flat", device="cpu", progress=False)
    flat = sslsearch.load_index(tmp_path / "flat")
    assert flat.search_param_ladder() == [{}]
    with pytest.raises(InvalidArgumentError, match="searched exactly"):
        flat.set_search_params({"nprobe": 4})


def test_python_dash_m_sslsearch_runs_the_command_line():
    done = subprocess.run([sys.executable, "-m", "sslsearch", "index", "info", "no-such-index"], capture_output=True,
                          text=True, cwd=ROOT)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr


# every command of the CLI and the public function that does what it does
CLI_TO_API = {
    "sample-data": "make_sample_dataset", "train": "train", "embed": "embed_images", "index build": "build_index",
    "index info": "index_info", "search": "search", "dedup": "deduplicate", "serve": "create_app",
    "bench knn": "evaluate_knn", "bench linear": "evaluate_linear", "bench retrieval": "evaluate_retrieval",
    "bench index": "evaluate_index", "bench all": "run_benchmarks", "bench dataset": "export_cifar",
    "head train": "train_head", "head predict": "predict_head", "head evaluate": "evaluate_head",
    "head export": "export_onnx",
}


def test_every_cli_command_has_a_public_function():
    import typer.main

    from sslsearch.cli.app import app

    def commands(group, prefix=""):
        for name, command in group.commands.items():
            yield from commands(command, f"{prefix}{name} ") if hasattr(command, "commands") else [prefix + name]

    assert sorted(commands(typer.main.get_command(app))) == sorted(CLI_TO_API), "map the new command to its function"
    for command, name in CLI_TO_API.items():
        assert name in sslsearch.__all__ and callable(getattr(sslsearch, name)), command
