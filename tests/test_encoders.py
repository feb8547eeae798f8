"""Tests of encoders: seeded random init, local weights (no unpickling), run-dir export, fingerprints."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sslsearch.encoders import (
    Preprocessing,
    create_encoder,
    default_preprocessing,
    encoder_from_fingerprint,
    load_state_dict,
    save_encoder,
)
from sslsearch.errors import CheckpointError, EncoderMismatchError, InputNotFoundError, UnknownNameError

IMAGES = [Image.new("RGB", (40, 30), (i * 60, 255 - i * 60, 90)) for i in range(3)]


@pytest.fixture(scope="module")
def encoder():
    return create_encoder("timm:resnet18", image_size=32, device="cpu")


def test_random_init_is_deterministic_and_normalised(encoder):
    vectors = encoder.embed_pil(IMAGES)
    assert vectors.shape == (3, 512) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    again = create_encoder("timm:resnet18", image_size=32, device="cpu")
    assert again.fingerprint.id == encoder.fingerprint.id
    np.testing.assert_array_equal(again.embed_pil(IMAGES), vectors)
    other_size = create_encoder("timm:resnet18", image_size=48, device="cpu")
    assert other_size.fingerprint.id != encoder.fingerprint.id


def test_export_and_reload_run_directory(encoder, tmp_path):
    save_encoder(tmp_path / "run", encoder.module, backbone="resnet18", model_kwargs={},
                 preprocessing=encoder.preprocessing, metadata={"method": "simclr"})
    meta = json.loads((tmp_path / "run" / "encoder.json").read_text())
    assert meta["backbone"] == "resnet18" and meta["dim"] == 512 and meta["metadata"]["method"] == "simclr"
    loaded = create_encoder(tmp_path / "run", device="cpu")
    np.testing.assert_allclose(loaded.embed_pil(IMAGES), encoder.embed_pil(IMAGES), atol=1e-6)
    rebuilt = encoder_from_fingerprint(loaded.fingerprint.to_dict(), device="cpu")
    assert rebuilt.fingerprint.id == loaded.fingerprint.id


def test_changed_weights_are_detected(encoder, tmp_path):
    save_encoder(tmp_path / "run", encoder.module, backbone="resnet18", model_kwargs={},
                 preprocessing=encoder.preprocessing)
    fingerprint = create_encoder(tmp_path / "run", device="cpu").fingerprint.to_dict()
    module = create_encoder("timm:resnet18", image_size=32, device="cpu").module
    with torch.no_grad():
        next(module.parameters()).add_(1.0)
    save_encoder(tmp_path / "run", module, backbone="resnet18", model_kwargs={}, preprocessing=encoder.preprocessing)
    with pytest.raises(EncoderMismatchError, match="has changed"):
        encoder_from_fingerprint(fingerprint, device="cpu")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_weights(encoder, tmp_path, suffix):
    path = tmp_path / f"w{suffix}"
    state = {f"module.{k}": v for k, v in encoder.module.state_dict().items()}
    if suffix == ".pth":
        torch.save({"state_dict": state, "epoch": 3}, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    loaded = create_encoder("timm:resnet18", weights=path, image_size=32, device="cpu")
    np.testing.assert_allclose(loaded.embed_pil(IMAGES), encoder.embed_pil(IMAGES), atol=1e-6)
    assert loaded.fingerprint.weights_sha256 != encoder.fingerprint.weights_sha256


def test_pickled_objects_are_not_loaded(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": Evil()}, path)
    with pytest.raises(CheckpointError, match="cannot read weights"):
        load_state_dict(path)


def test_wrong_architecture_weights(encoder, tmp_path):
    torch.save(encoder.module.state_dict(), tmp_path / "r18.pth")
    with pytest.raises(CheckpointError, match="do not fit this backbone"):
        create_encoder("timm:resnet34", weights=tmp_path / "r18.pth", device="cpu")


def test_bad_specs():
    with pytest.raises(UnknownNameError, match="did you mean 'resnet18'"):
        create_encoder("timm:resnet19", device="cpu")
    with pytest.raises(InputNotFoundError, match="neither timm"):
        create_encoder("no/such/run", device="cpu")
    with pytest.raises(InputNotFoundError, match="does not exist"):
        create_encoder("timm:resnet18", weights="missing.pth", device="cpu")


def test_vit_with_small_images():
    encoder = create_encoder("timm:vit_tiny_patch16_224", image_size=32, device="cpu")
    assert encoder.embed_pil(IMAGES).shape == (3, 192)
    assert encoder.preprocessing.image_size == 32 and not encoder.channels_last


def test_preprocessing_round_trip_and_small_images_are_not_cropped(encoder):
    pre = default_preprocessing(encoder.module, 64)
    assert pre.resize_size == 64
    assert default_preprocessing(encoder.module, 224).resize_size > 224
    assert Preprocessing.from_dict(pre.to_dict()) == pre
    assert pre.transform()(IMAGES[0]).shape == (3, 64, 64)
