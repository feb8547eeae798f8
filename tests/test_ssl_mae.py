"""MAE end to end: the method's model, config checks, previews, exact resume, and `train --method mae` → `embed`."""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslsearch.cli.app import main
from sslsearch.encoders import create_backbone, create_encoder
from sslsearch.errors import InvalidArgumentError
from sslsearch.ssl import METHODS, TrainConfig, train
from sslsearch.ssl.checkpoint import load_checkpoint
from sslsearch.ssl.config import build_config, from_flat
from sslsearch.ssl.losses.mae import random_patch_mask
from sslsearch.ssl.methods.mae import MAE
from sslsearch.ssl.rundir import read_metrics
from sslsearch.store import EmbeddingStore

# test_vit: timm's 6-block, 64-wide ViT; patch 8 at 32 px gives 16 patches (4 visible at 75 % masking)
TINY = {"method": "mae", "backbone": "test_vit", "model_kwargs": {"patch_size": 8}, "image_size": 32,
        "batch_size": 8, "workers": 0, "log_every_steps": 1, "mae.decoder_depth": 2, "mae.preview_images": 4}


def tiny_config(data: Path, out: Path, **overrides: object) -> TrainConfig:
    return from_flat({**TINY, "data": str(data), "out": str(out), **overrides}, TrainConfig())


@pytest.fixture
def small_list(sample_dir: Path, tmp_path: Path) -> Path:
    """24 images of the sample set as a .txt list: 3 steps per epoch at batch 8."""
    paths = sorted(p for p in sample_dir.rglob("*") if p.suffix in (".png", ".jpg"))[::5][:24]
    listing = tmp_path / "images.txt"
    listing.write_text("".join(f"{p}\n" for p in paths))
    return listing


def build_method(**overrides: object) -> MAE:
    config = from_flat({**TINY, **overrides}, TrainConfig())
    config = dataclasses.replace(config, model_kwargs={**config.model_kwargs, "img_size": config.image_size})
    config = MAE.resolve_config(config, dataset_size=24, global_batch_size=8)
    backbone, dim = create_backbone(config.backbone, **config.model_kwargs)
    return MAE(backbone, dim, config)


def test_registered_and_resolved_like_the_paper() -> None:
    assert METHODS["mae"] is MAE
    method = build_method()
    config = method.config
    assert config.model_kwargs["global_pool"] == "avg" and config.model_kwargs["fc_norm"] is False
    assert config.mae.decoder_width == 64 and config.mae.decoder_heads == 2  # min(512, encoder width), 32 per head
    assert method.grid == (4, 4) and method.patch_size == 8
    assert config.optimizer.betas == (0.9, 0.999)  # "auto" optimizer: betas are set once it resolves to adamw
    adamw = dataclasses.replace(config, optimizer=dataclasses.replace(config.optimizer, name="adamw"))
    resolved = MAE.resolve_config(adamw, dataset_size=24, global_batch_size=8)
    assert resolved.optimizer.betas == (0.9, 0.95)
    assert MAE.optimizer_defaults.lr["adamw"] == 1.5e-4 and MAE.optimizer_defaults.weight_decay["adamw"] == 0.05


def test_encoder_sees_only_the_visible_patches() -> None:
    method = build_method()
    images = torch.randn(2, 3, 32, 32)
    mask = random_patch_mask(2, 16, 0.75, generator=torch.Generator().manual_seed(0))
    seen: list[tuple[int, ...]] = []
    hook = method.backbone.blocks[0].register_forward_hook(lambda module, args, out: seen.append(tuple(out.shape)))
    tokens = method.encode_visible(images, mask)
    hook.remove()
    assert seen == [(2, 1 + 4, 64)] and tokens.shape == (2, 5, 64)
    changed = images.clone()
    for b in range(2):  # scribble over every hidden patch: the encoder output must not move
        for n in torch.nonzero(mask.mask[b]).flatten().tolist():
            row, column = divmod(n, 4)
            changed[b, :, row * 8:(row + 1) * 8, column * 8:(column + 1) * 8] = 9.0
    torch.testing.assert_close(method.encode_visible(changed, mask), tokens)
    predictions = method.reconstruct(images, mask)
    assert predictions.shape == (2, 16, 8 * 8 * 3)


@pytest.mark.parametrize("backbone", ["test_vit", "test_vit2"])  # class token; register tokens without one
def test_encoder_with_every_patch_kept_is_timms_forward(backbone: str) -> None:
    from sslsearch.ssl.losses.mae import PatchMask

    method = build_method(backbone=backbone).eval()
    images = torch.randn(2, 3, 32, 32)
    everything = PatchMask(keep=torch.arange(16).repeat(2, 1), restore=torch.arange(16).repeat(2, 1),
                           mask=torch.zeros(2, 16))
    with torch.no_grad():
        torch.testing.assert_close(method.encode_visible(images, everything),
                                   method.backbone.forward_features(images))


def test_bf16_autocast_step_gives_a_float32_loss_and_gradients() -> None:
    method = build_method()
    from sslsearch.ssl.schedules import StepContext, TrainingPlan

    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = method([torch.randn(4, 3, 32, 32)], StepContext(0, TrainingPlan(10, 10, 1, 24, 8)))
    assert output.loss.dtype == torch.float32 and torch.isfinite(output.loss)
    output.loss.backward()
    assert method.decoder.mask_token.grad is not None and method.backbone.cls_token.grad is not None


def test_pooling_choice_keeps_the_weights() -> None:
    # a model that already pools with an fc_norm keeps its own architecture (weights must load in `embed`)
    method = build_method(backbone="test_vit2")
    assert "global_pool" not in method.config.model_kwargs
    # the class token, when asked for
    method = build_method(model_kwargs={"patch_size": 8, "global_pool": "token"})
    assert method.backbone.global_pool == "token" and "fc_norm" not in method.config.model_kwargs


@pytest.mark.parametrize(("overrides", "message"), [
    ({"backbone": "test_resnet", "model_kwargs": {}}, "needs a timm ViT backbone.*dino, moco, simclr"),
    ({"mae.mask_ratio": 1.0}, "between 0 and 1"),
    ({"mae.mask_ratio": 0.0}, "between 0 and 1"),
    ({"mae.mask_ratio": 0.97}, "leaves 0 visible"),
    ({"image_size": 36}, "not a multiple of test_vit's 8 px patches; use 32 or 40"),
    ({"mae.decoder_heads": 3}, "does not divide"),
    ({"model_kwargs": {"patch_size": 8, "img_size": 64, "dynamic_img_size": False}},
     "img_size 64 differs from --image-size 32"),
    ({"backbone": "test_vit3"}, "global_pool map"),
])
def test_bad_input_is_a_one_line_error_and_writes_nothing(small_list: Path, tmp_path: Path, overrides: dict,
                                                          message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message) as info:
        train(tiny_config(small_list, tmp_path / "run", epochs=1, **overrides))
    assert "\n" not in str(info.value)
    run = tmp_path / "run"
    assert not (run / "checkpoints").exists() and not (run / "config.yaml").exists()


def test_bad_input_through_the_cli_exits_1(small_list: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(small_list), "--out", str(tmp_path / "run"), "--method", "mae", "--backbone",
              "test_resnet", "--image-size", "32", "--batch-size", "8", "--epochs", "1"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --method mae needs a timm ViT backbone") and "\n" not in err


def test_wide_decoder_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="sslsearch.ssl.methods.mae"):
        build_method(**{"mae.decoder_width": 256})
    assert any("more than 2× the encoder's width 64" in r.getMessage() for r in caplog.records)


def test_preview_is_written_without_touching_the_training_rng(tmp_path: Path) -> None:
    method = build_method(out=str(tmp_path))
    images = torch.randn(3, 3, 32, 32)
    torch.manual_seed(7)
    before = torch.get_rng_state()
    grid = method.preview(images)
    assert torch.equal(torch.get_rng_state(), before)
    pixels = np.asarray(grid)
    assert pixels.shape[0] > 3 * 96 and pixels.shape[1] > 3 * 96  # 3 rows × 3 columns, enlarged cells
    assert pixels.std() > 10


def test_train_cli_then_embed(sample_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run, store = tmp_path / "run", tmp_path / "emb"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(sample_dir), "--out", str(run), "--method", "mae", "--backbone", "test_vit",
              "--image-size", "32", "--batch-size", "40", "--epochs", "1", "--workers", "0",
              "--set", "model_kwargs={patch_size: 8}", "--set", "mae.decoder_depth=1",
              "--set", "checkpoint_every_steps=2", "--set", "mae.preview_images=3"])
    out = capsys.readouterr()
    assert exit_info.value.code in (0, None), out.err
    assert "finished: mae test_vit, 3 steps" in out.err + out.out
    previews = sorted(p.name for p in (run / "previews").iterdir())
    assert previews == ["step-00000002.png", "step-00000003.png"]
    with Image.open(run / "previews" / "step-00000003.png") as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 10 and pixels.shape[0] >= 3 * 96
    meta = json.loads((run / "encoder.json").read_text())
    assert meta["model_kwargs"] == {"patch_size": 8, "img_size": 32, "global_pool": "avg", "fc_norm": False}
    assert meta["metadata"]["method"] == "mae"
    state = load_checkpoint(run)["model"]
    assert any(k.startswith("decoder.") for k in state)
    with pytest.raises(SystemExit) as exit_info:
        main(["embed", str(sample_dir), "--encoder", str(run), "--out", str(store), "--workers", "0"])
    assert exit_info.value.code in (0, None), capsys.readouterr().err
    embedded = EmbeddingStore.open(store)
    assert len(embedded) == 120 and embedded.dim == 64
    assert np.isfinite(embedded.read_all().embeddings).all()
    encoder = create_encoder(run, device="cpu")
    assert encoder.dim == 64 and not any(k.startswith("decoder") for k in encoder.module.state_dict())
    trained = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    for name, value in encoder.module.state_dict().items():
        torch.testing.assert_close(value, trained[name])


def test_resume_continues_exactly(small_list: Path, tmp_path: Path) -> None:
    # 4 steps over 2 epochs straight, vs 2 + resume + 2 (masks come from the restored RNG)
    straight = train(tiny_config(small_list, tmp_path / "straight", epochs=4 / 3, checkpoint_every_steps=2))
    assert straight.finished and straight.steps == 4 and straight.encoder_exported
    first = train(tiny_config(small_list, tmp_path / "resumed", epochs=4 / 3, stop_after_steps=2))
    assert first.steps == 2 and not first.finished
    second = train(dataclasses.replace(build_config({}, resume_run=tmp_path / "resumed"), workers=1), resume=True)
    assert second.steps == 4 and second.finished
    expected, actual = load_checkpoint(tmp_path / "straight")["model"], load_checkpoint(tmp_path / "resumed")["model"]
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
    losses = [[r["loss"] for r in read_metrics(tmp_path / run) if "loss" in r and "event" not in r]
              for run in ("straight", "resumed")]
    assert len(losses[0]) == 4 and losses[1] == pytest.approx(losses[0], rel=1e-5)
    assert sorted(p.name for p in (tmp_path / "resumed" / "previews").iterdir()) == \
        ["step-00000002.png", "step-00000004.png"]
