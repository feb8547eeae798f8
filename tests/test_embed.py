"""Tests for sslsearch.embed: vectors vs a direct forward pass, columns, bad files, resume, refusals."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from sslsearch.devices import default_workers
from sslsearch.embed import EmbedResult, embed_images, embed_paths
from sslsearch.encoders import create_encoder
from sslsearch.errors import (
    BadImageError,
    EncoderMismatchError,
    InputNotFoundError,
    InvalidArgumentError,
    LockedError,
    OutputExistsError,
    StoreError,
)
from sslsearch.loader import aligned_batches
from sslsearch.sources import list_images, load_image
from sslsearch.store import EmbeddingStore, StoreWriter

SPEC = "timm:test_resnet"


@pytest.fixture(autouse=True, scope="module")
def one_forward_thread():
    """One intra-op thread: on a shared 2-core box two spinning OpenMP threads plus decode workers
    slow these tests several-fold; results do not depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def encoder():
    """timm's tiny test ResNet (dim 96) at 32 px, CPU."""
    return create_encoder(SPEC, image_size=32, device="cpu")


def make_images(root: Path, n_per_class: int = 10, classes: tuple[str, ...] = ("disc", "box"), size: int = 32) -> Path:
    """An ImageFolder of small coloured shapes (PNG and JPEG, some not square)."""
    rng = np.random.default_rng(1)
    for label in classes:
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            width = size + (7 if i % 3 == 0 else 0)
            image = Image.new("RGB", (width, size), tuple(int(v) for v in rng.integers(120, 256, 3)))
            draw = ImageDraw.Draw(image)
            x, y = (int(v) for v in rng.integers(0, size // 2, 2))
            color = tuple(int(v) for v in rng.integers(0, 110, 3))
            (draw.ellipse if label == "disc" else draw.rectangle)((x, y, x + size // 2, y + size // 2), fill=color)
            image.save(root / label / f"{label}_{i:03d}.{'jpg' if i % 4 == 0 else 'png'}", quality=92)
    return root


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """20 good images in 2 classes; shared, read-only."""
    return make_images(tmp_path_factory.mktemp("embed") / "images")


def direct_vectors(encoder, root: Path) -> dict[str, np.ndarray]:
    """Reference: decode each image and run the encoder on it alone (path -> float32 vector)."""
    source = list_images(root)
    out = {}
    for record in source.records:
        image = load_image(source.abs_path(record)).image
        out[record.path] = encoder.embed_tensors(encoder.transform(image)[None])[0]
    return out


def read_store(directory: Path):
    store = EmbeddingStore.open(directory)
    return store, store.read_all(("id", "path", "embedding", "label", "width", "height", "sha256"))


# --------------------------------------------------------------------------- the store written


@pytest.mark.parametrize("workers", [0, 2])
def test_vectors_and_columns_match_a_direct_forward_pass(encoder, images, tmp_path, workers):
    result = embed_images(images, encoder, tmp_path / "emb", batch_size=6, workers=workers, dtype="float32",
                          shard_rows=8, progress=False)
    assert isinstance(result, EmbedResult)
    assert (result.rows, result.embedded_now, result.dim, result.skipped, result.resumed) == (20, 20, 96, (), False)
    assert result.encoder["id"] == encoder.fingerprint.id and result.images_per_second > 0
    store, table = read_store(tmp_path / "emb")
    assert store.manifest.complete and store.manifest.dtype == "float32"
    assert [s.rows for s in store.manifest.shards] == [12, 8]  # whole batches of 6 until >= shard_rows
    source = list_images(images)
    order = np.argsort(table.ids)
    assert table.ids[order].tolist() == list(range(20))
    assert [table.columns["path"][i] for i in order] == source.paths
    assert [table.columns["label"][i] for i in order] == [r.label for r in source.records]
    reference = direct_vectors(encoder, images)
    for row, path in enumerate(table.columns["path"]):
        full = images / path
        np.testing.assert_allclose(table.embeddings[row], reference[path], atol=2e-5)
        with Image.open(full) as image:
            assert (table.columns["width"][row], table.columns["height"][row]) == image.size
        assert table.columns["sha256"][row] == hashlib.sha256(full.read_bytes()).hexdigest()
    np.testing.assert_allclose(np.linalg.norm(table.embeddings, axis=1), 1.0, atol=1e-5)
    assert not list((tmp_path / "emb").glob(".*")), "no lock or temporary file is left behind"


def test_float16_is_the_default_and_rounds_the_float32_vectors(encoder, images, tmp_path):
    embed_images(images, encoder, tmp_path / "f32", dtype="float32", workers=0, progress=False)
    embed_images(images, encoder, tmp_path / "f16", workers=0, progress=False)
    store16, table16 = read_store(tmp_path / "f16")
    _, table32 = read_store(tmp_path / "f32")
    assert store16.manifest.dtype == "float16"
    np.testing.assert_array_equal(table16.embeddings, table32.embeddings.astype(np.float16).astype(np.float32))


def test_workers_do_not_change_the_vectors(encoder, images, tmp_path):
    embed_images(images, encoder, tmp_path / "w0", batch_size=8, workers=0, progress=False)
    embed_images(images, encoder, tmp_path / "w2", batch_size=8, workers=2, progress=False)
    _, a = read_store(tmp_path / "w0")
    _, b = read_store(tmp_path / "w2")
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.embeddings, b.embeddings)


def test_encoder_by_name(images, tmp_path):
    result = embed_images(images, SPEC, tmp_path / "emb", image_size=32, workers=0, progress=False)
    assert result.encoder["spec"] == SPEC and result.encoder["preprocessing"]["image_size"] == 32
    with pytest.raises(InvalidArgumentError, match="by name"):
        embed_images(images, create_encoder(SPEC, image_size=32), tmp_path / "x", image_size=64)


# --------------------------------------------------------------------------- bad files


def test_bad_files_are_skipped_with_reasons(encoder, images_with_bad_files, bad_file_reasons, tmp_path):
    result = embed_images(images_with_bad_files, encoder, tmp_path / "emb", batch_size=4, workers=2, progress=False)
    assert result.rows == result.embedded_now == 6
    assert {s.path: s.reason for s in result.skipped} == bad_file_reasons
    assert result.summary() == "embedded 6 images, skipped 3: 1 empty, 1 not_an_image, 1 truncated"
    store, table = read_store(tmp_path / "emb")
    assert {s["path"]: s["reason"] for s in store.manifest.skipped} == bad_file_reasons
    assert not set(table.columns["path"]) & set(bad_file_reasons)
    assert result.to_dict()["skipped_by_reason"] == {"empty": 1, "not_an_image": 1, "truncated": 1}


def test_strict_names_the_first_bad_file_and_leaves_no_store(encoder, images_with_bad_files, tmp_path):
    with pytest.raises(BadImageError, match=r"truncated\.jpg.*--strict"):
        embed_images(images_with_bad_files, encoder, tmp_path / "emb", workers=0, strict=True, progress=False)
    assert not (tmp_path / "emb").exists()
    (images_with_bad_files / "circle" / "truncated.jpg").unlink()
    (images_with_bad_files / "square" / "empty.png").unlink()  # the bad file left comes after 5 good ones
    with pytest.raises(BadImageError, match=r"notes\.png"):
        embed_images(images_with_bad_files, encoder, tmp_path / "emb", batch_size=1, shard_rows=1, workers=0,
                     strict=True, progress=False)
    assert not (tmp_path / "emb").exists()


def test_all_bad_files_is_an_error_and_leaves_no_store(encoder, tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"")
    (tmp_path / "bad" / "b.jpg").write_text("hello")
    with pytest.raises(InputNotFoundError, match="none of the 2 image"):
        embed_images(tmp_path / "bad", encoder, tmp_path / "emb", workers=0, progress=False)
    assert not (tmp_path / "emb").exists()
    (tmp_path / "kept").mkdir()
    with pytest.raises(InputNotFoundError):
        embed_images(tmp_path / "bad", encoder, tmp_path / "kept", workers=0, progress=False)
    assert (tmp_path / "kept").is_dir() and not any((tmp_path / "kept").iterdir())


def test_empty_folder_is_an_error(encoder, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputNotFoundError, match="no images"):
        embed_images(tmp_path / "empty", encoder, tmp_path / "emb", progress=False)
    assert not (tmp_path / "emb").exists()


# --------------------------------------------------------------------------- output directory


def test_existing_store_is_refused_without_resume_or_overwrite(encoder, images, tmp_path):
    embed_images(images, encoder, tmp_path / "emb", workers=0, progress=False)
    before = (tmp_path / "emb" / "manifest.json").read_bytes()
    with pytest.raises(StoreError, match="--resume.*--overwrite"):
        embed_images(images, encoder, tmp_path / "emb", workers=0, progress=False)
    assert (tmp_path / "emb" / "manifest.json").read_bytes() == before
    again = embed_images(images, encoder, tmp_path / "emb", workers=0, overwrite=True, progress=False)
    assert again.rows == 20 and len(EmbeddingStore.open(tmp_path / "emb")) == 20


def test_directory_with_other_data_is_refused(encoder, images, tmp_path):
    (tmp_path / "emb").mkdir()
    (tmp_path / "emb" / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="notes.txt"):
        embed_images(images, encoder, tmp_path / "emb", workers=0, progress=False)
    with pytest.raises(OutputExistsError):
        embed_images(images, encoder, tmp_path / "emb", workers=0, resume=True, progress=False)
    assert sorted(p.name for p in (tmp_path / "emb").iterdir()) == ["notes.txt"]


def test_second_writer_is_refused(encoder, images, tmp_path):
    holder = StoreWriter(tmp_path / "emb", dim=encoder.dim, dtype="float16", encoder=encoder.fingerprint.to_dict(),
                         source_root=str(images))
    try:
        with pytest.raises(LockedError, match="another process"):
            embed_images(images, encoder, tmp_path / "emb", workers=0, resume=True, progress=False)
    finally:
        holder.close(complete=False)


@pytest.mark.parametrize("bad", [{"batch_size": 0}, {"workers": -1}, {"shard_rows": 0}, {"dtype": "int8"}])
def test_bad_arguments(encoder, images, tmp_path, bad):
    with pytest.raises(InvalidArgumentError):
        embed_images(images, encoder, tmp_path / "emb", progress=False, **bad)


# --------------------------------------------------------------------------- resume


class Interrupt(Exception):
    pass


def interrupt_after(encoder, monkeypatch, batches: int) -> None:
    """Make the encoder raise on its ``batches + 1``-th forward pass (an in-process crash)."""
    calls = {"n": 0}
    original = type(encoder).embed_tensors

    def flaky(self, batch, **kwargs):
        calls["n"] += 1
        if calls["n"] > batches:
            raise Interrupt("simulated crash")
        return original(self, batch, **kwargs)

    monkeypatch.setattr(type(encoder), "embed_tensors", flaky)


@pytest.mark.parametrize("crash_after", [0, 1, 3])
def test_resume_after_a_crash_gives_the_uninterrupted_result(encoder, images_with_bad_files, tmp_path, monkeypatch,
                                                            crash_after):
    data = tmp_path / "data"
    shutil.copytree(images_with_bad_files, data)
    make_images(data / "more", n_per_class=5)
    embed_images(data, encoder, tmp_path / "ref", batch_size=3, workers=0, shard_rows=2, progress=False)
    with monkeypatch.context() as patch:
        interrupt_after(encoder, patch, crash_after)
        with pytest.raises(Interrupt):
            embed_images(data, encoder, tmp_path / "emb", batch_size=3, workers=0, shard_rows=2, progress=False)
    if crash_after == 0:
        assert not (tmp_path / "emb").exists()
    else:
        with pytest.raises(StoreError, match="incomplete"):
            EmbeddingStore.open(tmp_path / "emb")
        with pytest.raises(StoreError, match="--resume"):
            embed_images(data, encoder, tmp_path / "emb", batch_size=3, workers=0, progress=False)
    result = embed_images(data, encoder, tmp_path / "emb", batch_size=3, workers=2, shard_rows=2, resume=True,
                          progress=False)
    assert result.resumed == (crash_after > 0) and result.rows == 16
    bad = {"circle/truncated.jpg", "square/empty.png", "square/notes.png"}
    done_before = [r for r in list_images(data).records[: 3 * crash_after] if r.path not in bad]
    assert result.embedded_now == 16 - len(done_before)
    _, ref = read_store(tmp_path / "ref")
    store, got = read_store(tmp_path / "emb")
    assert len(set(got.ids.tolist())) == len(got.ids) == 16
    order_ref, order_got = np.argsort(ref.ids), np.argsort(got.ids)
    assert [ref.columns["path"][i] for i in order_ref] == [got.columns["path"][i] for i in order_got]
    np.testing.assert_array_equal(ref.embeddings[order_ref], got.embeddings[order_got])
    assert len(store.manifest.skipped) == 3


def test_resume_of_a_complete_store_embeds_nothing(encoder, images, tmp_path):
    embed_images(images, encoder, tmp_path / "emb", workers=0, progress=False)
    result = embed_images(images, encoder, tmp_path / "emb", workers=0, resume=True, progress=False)
    assert (result.rows, result.embedded_now, result.resumed) == (20, 0, True)
    assert EmbeddingStore.open(tmp_path / "emb").manifest.complete


def test_resume_with_changed_images_or_encoder_is_refused(encoder, images, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(images, data)
    embed_images(data, encoder, tmp_path / "emb", workers=0, progress=False)
    manifest = (tmp_path / "emb" / "manifest.json").read_bytes()
    shutil.copy(data / "box" / "box_001.png", data / "box" / "a_new_one.png")
    with pytest.raises(StoreError, match="image set changed"):
        embed_images(data, encoder, tmp_path / "emb", workers=0, resume=True, progress=False)
    (data / "box" / "a_new_one.png").unlink()
    other = create_encoder(SPEC, image_size=40, device="cpu")
    with pytest.raises(EncoderMismatchError):
        embed_images(data, other, tmp_path / "emb", workers=0, resume=True, progress=False)
    assert (tmp_path / "emb" / "manifest.json").read_bytes() == manifest
    assert json.loads(manifest)["complete"]


def test_writer_errors_reach_the_caller_and_release_the_lock(encoder, images, tmp_path, monkeypatch):
    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(StoreWriter, "flush", full_disk)
    with pytest.raises(OSError, match="No space"):
        embed_images(images, encoder, tmp_path / "emb", batch_size=2, shard_rows=2, workers=0, progress=False)
    assert not (tmp_path / "emb" / ".sslsearch.lock").exists()


# --------------------------------------------------------------------------- helpers


def test_aligned_batches_follow_fixed_slots():
    assert aligned_batches(range(7), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert aligned_batches([1, 2, 6, 7, 8, 9], 3) == [[1, 2], [6, 7, 8], [9]]
    assert aligned_batches([], 4) == []


@pytest.mark.parametrize("cores, cpu, cuda", [(1, 0, 1), (2, 1, 2), (4, 1, 4), (16, 4, 8), (64, 8, 8)])
def test_default_workers(monkeypatch, cores, cpu, cuda):
    monkeypatch.setattr("sslsearch.devices.usable_cores", lambda: cores)
    assert (default_workers("cpu"), default_workers("cuda")) == (cpu, cuda)


def test_embed_paths_matches_the_store(encoder, images_with_bad_files, tmp_path):
    embed_images(images_with_bad_files, encoder, tmp_path / "emb", dtype="float32", workers=0, progress=False)
    _, table = read_store(tmp_path / "emb")
    stored = dict(zip(table.columns["path"], table.embeddings))
    paths = sorted(images_with_bad_files.rglob("*.*"))
    for workers in (0, 2):
        vectors, skipped = embed_paths(paths, encoder, batch_size=4, workers=workers)
        result = embed_paths(paths, encoder, batch_size=4, workers=workers)
        kept = result.kept(paths)
        assert vectors.shape == (6, encoder.dim) and vectors.dtype == np.float32 and len(kept) == 6
        assert sorted(s.reason for s in skipped) == ["empty", "not_an_image", "truncated"]
        for path, vector in zip(kept, vectors):
            np.testing.assert_allclose(vector, stored[Path(path).relative_to(images_with_bad_files).as_posix()],
                                       atol=2e-5)
    empty, none_skipped = embed_paths([], encoder)
    assert empty.shape == (0, encoder.dim) and none_skipped == []


def test_forward_runs_in_inference_mode(encoder, images, tmp_path):
    seen = []
    handle = encoder.module.register_forward_hook(lambda module, args, output: seen.append(
        (torch.is_inference_mode_enabled(), output.requires_grad)))
    try:
        embed_images(images, encoder, tmp_path / "emb", batch_size=8, workers=0, progress=False)
    finally:
        handle.remove()
    assert seen == [(True, False)] * 3


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("size", [32, 100])
def test_batched_preprocessing_equals_the_encoder_transform(encoder, images, channels_last, size):
    from sslsearch.loader import BatchPreprocessing

    encoder = create_encoder(SPEC, image_size=size, device="cpu")
    pre = BatchPreprocessing.of(encoder)
    pre = BatchPreprocessing(pre.resize_size, pre.image_size, pre.interpolation, pre.mean, pre.std, channels_last)
    pictures = [load_image(p).image for p in sorted(images.rglob("*.*"))[:5]]
    assert len({p.size for p in pictures}) == 2  # square and wide
    batch = pre.per_batch(torch.from_numpy(np.stack([pre.per_image(p) for p in pictures])))
    expected = torch.stack([encoder.transform(p) for p in pictures])
    assert batch.dtype == torch.float32 and batch.shape == expected.shape == (5, 3, size, size)
    assert batch.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert torch.equal(batch, expected)


def test_encoder_from_a_run_directory(encoder, images, tmp_path):
    from sslsearch.encoders import save_encoder

    save_encoder(tmp_path / "run", encoder.module, backbone="test_resnet", model_kwargs={},
                 preprocessing=encoder.preprocessing)
    result = embed_images(images, tmp_path / "run", tmp_path / "emb", workers=0, dtype="float32", progress=False)
    assert result.encoder["spec"].startswith("run:") and result.rows == 20
    _, from_run = read_store(tmp_path / "emb")
    reference = direct_vectors(encoder, images)
    for path, vector in zip(from_run.columns["path"], from_run.embeddings):
        np.testing.assert_allclose(vector, reference[path], atol=2e-5)
