"""Continued pretraining (`train --init`): every method starts from exactly the loaded weights; lr and layer decay."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import sslsearch
from sslsearch.cli.app import main
from sslsearch.errors import InvalidArgumentError
from sslsearch.ssl import train as run_training
from sslsearch.ssl.config import OptimizerConfig, TrainConfig, from_flat
from sslsearch.ssl.initialization import INIT_JSON, apply_layer_decay, layer_scales
from sslsearch.ssl.methods import get_method
from sslsearch.ssl.optimizers import INIT_LAYER_DECAY, resolve_optimizer_config
from sslsearch.ssl.train import Trainer

NAME = "vit_small_patch14_dinov2.lvd142m"
TINY_VIT = {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 28}
CONFIG = {"architecture": "vit_small_patch14_dinov2", "model_args": TINY_VIT,
          "pretrained_cfg": {"input_size": [3, 28, 28], "interpolation": "bilinear", "crop_pct": 1.0,
                             "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}}
TINY = {"image_size": 28, "batch_size": 8, "workers": 0, "log_every_steps": 1, "stop_after_steps": 1, "epochs": 1,
        "dino.prototypes": 64, "dino.hidden_dim": 64, "dino.bottleneck_dim": 32, "augmentation.local_crop_count": 2,
        "augmentation.local_crop_size": 14, "moco.queue_size": 16, "mae.decoder_width": 32, "mae.decoder_depth": 1, "mae.decoder_heads": 2}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cached_vit(tmp_path, monkeypatch):
    """A random-init tiny DINOv2-shaped ViT saved in a fake Hugging Face cache (offline); its state dict."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(7)
    model = timm.create_model(NAME, pretrained=False, num_classes=0, **TINY_VIT)
    snapshot = tmp_path / "hub" / f"models--timm--{NAME}" / "snapshots" / "rev1"
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(snapshot / "model.safetensors"))
    (snapshot / "config.json").write_text(json.dumps(CONFIG))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return model.state_dict()


@pytest.fixture
def images(sample_dir, tmp_path) -> Path:
    """32 sample images as a list file: 4 steps per epoch at batch 8."""
    paths = sorted(p for p in sample_dir.rglob("*") if p.suffix in (".png", ".jpg"))[:32]
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(str(p) for p in paths) + "\n")
    return listing


@pytest.fixture
def first_step_states(monkeypatch):
    """The backbone and exported backbone (DINO's teacher) as the first training step begins."""
    states: list[dict[str, dict[str, torch.Tensor]]] = []
    original = Trainer.train_step

    def recording(self, views):
        if not states:
            states.append({name: {k: v.detach().clone() for k, v in module.state_dict().items()}
                           for name, module in (("backbone", self.method.backbone),
                                                ("export", self.method.export_backbone()))})
        return original(self, views)

    monkeypatch.setattr(Trainer, "train_step", recording)
    return states


def assert_equal_states(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(state[key].float(), value.float()), key


@pytest.mark.parametrize("method", ["simclr", "moco", "dino", "mae"])
def test_every_method_starts_from_exactly_the_published_weights(method, cached_vit, images, tmp_path,
                                                                first_step_states):
    config = from_flat({**TINY, "data": str(images), "out": str(tmp_path / "run"), "method": method,
                        "init": f"timm:{NAME}", "pretrained": True}, TrainConfig())
    result = run_training(config)
    assert result.steps == 1
    assert_equal_states(first_step_states[0]["backbone"], cached_vit)
    assert_equal_states(first_step_states[0]["export"], cached_vit)  # DINO's teacher, MoCo's key encoder too
    run = tmp_path / "run"
    record = json.loads((run / INIT_JSON).read_text())
    assert record["spec"] == f"timm:{NAME}" and len(record["weights_sha256"]) == 64


def test_a_cnn_starts_from_a_run_directory_and_a_weights_file(images, tmp_path, first_step_states):
    import timm
    from safetensors.torch import save_file

    from sslsearch.encoders import default_preprocessing, save_encoder

    torch.manual_seed(3)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    save_encoder(tmp_path / "earlier", model, backbone="test_resnet", model_kwargs={},
                 preprocessing=default_preprocessing(model, 28))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    for n, init in enumerate([tmp_path / "earlier", tmp_path / "w.safetensors"]):
        first_step_states.clear()
        config = from_flat({**TINY, "data": str(images), "out": str(tmp_path / f"run{n}"), "backbone": "test_resnet",
                            "image_size": 32, "init": str(init)}, TrainConfig())
        run_training(config)
        assert_equal_states(first_step_states[0]["backbone"], model.state_dict())


def test_continued_pretraining_defaults_a_lower_lr_and_layer_decay():
    defaults = get_method("simclr").optimizer_defaults
    scratch = resolve_optimizer_config(OptimizerConfig(), defaults, is_transformer=True)
    continued = resolve_optimizer_config(OptimizerConfig(), defaults, is_transformer=True, from_init=True)
    assert continued.lr == pytest.approx(scratch.lr * 0.1)
    assert (scratch.layer_decay, continued.layer_decay) == (1.0, INIT_LAYER_DECAY)
    given = resolve_optimizer_config(OptimizerConfig(lr=0.3, layer_decay=0.9), defaults, is_transformer=True,
                                     from_init=True)
    assert (given.lr, given.layer_decay) == (0.3, 0.9)


def test_layer_decay_scales_each_backbone_layer_and_leaves_heads_alone():
    import timm

    backbone = timm.create_model(NAME, pretrained=False, num_classes=0, **TINY_VIT)
    head = torch.nn.Linear(32, 8)
    groups = [{"params": list(backbone.parameters()) + list(head.parameters()), "apply_weight_decay": True}]
    scales = layer_scales(backbone, 0.5)
    named = dict(backbone.named_parameters())
    # depth 2: the stem (patch/position embeddings, class token) is layer 0, blocks 1 and 2; the final norm goes with the last
    assert scales[id(named["pos_embed"])] == 0.25 and scales[id(named["cls_token"])] == 0.25
    assert scales[id(named["blocks.0.attn.qkv.weight"])] == 0.5
    assert scales[id(named["blocks.1.attn.qkv.weight"])] == 1.0 and scales[id(named["norm.weight"])] == 1.0
    split = apply_layer_decay(groups, backbone, 0.5)
    by_scale = {g["lr_scale"]: g["params"] for g in split}
    assert sorted(by_scale) == [0.25, 0.5, 1.0]
    assert any(p is head.weight for p in by_scale[1.0])
    assert sum(len(g["params"]) for g in split) == len(groups[0]["params"])
    assert all(g["apply_weight_decay"] for g in split)
    assert apply_layer_decay(groups, backbone, 1.0) is groups
    with pytest.raises(InvalidArgumentError, match="layer_decay"):
        apply_layer_decay(groups, backbone, 1.5)


def test_the_optimizer_applies_the_layer_scales(cached_vit, images, tmp_path, monkeypatch):
    seen = {}
    original = Trainer.train_step

    def after_first_step(self, views):
        output = original(self, views)
        seen.setdefault("groups", [(g.get("lr_scale", 1.0), g["lr"]) for g in self.optimizer.param_groups])
        seen.setdefault("lr", self.current_lr)
        return output

    monkeypatch.setattr(Trainer, "train_step", after_first_step)
    config = from_flat({**TINY, "data": str(images), "out": str(tmp_path / "run"), "method": "simclr",
                        "init": f"timm:{NAME}", "pretrained": True, "optimizer.warmup_fraction": 0.0}, TrainConfig())
    run_training(config)
    assert {scale for scale, _ in seen["groups"]} == {0.75 ** 2, 0.75, 1.0}
    for scale, lr in seen["groups"]:
        assert lr == pytest.approx(seen["lr"] * scale)


def test_a_continued_run_resumes_and_exports_with_the_checkpoints_normalisation(cached_vit, images, tmp_path):
    run = tmp_path / "run"
    sslsearch.train(images, run, method="simclr", init=f"timm:{NAME}", pretrained=True, image_size=28, batch_size=8,
                    workers=0, epochs=1, settings={"stop_after_steps": 2})
    result = sslsearch.train(images, run, resume=True, settings={"workers": 0})
    assert result.finished and result.encoder_exported
    encoder = sslsearch.create_encoder(run, device="cpu")
    assert encoder.preprocessing.mean == (0.1, 0.2, 0.3) and encoder.preprocessing.interpolation == "bilinear"
    meta = json.loads((run / "encoder.json").read_text())
    assert meta["backbone"] == NAME and meta["metadata"]["init"] == {"spec": f"timm:{NAME}", "pretrained": True}


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def test_cli_init_errors_are_one_line(cached_vit, images, tmp_path, capsys):
    code, _, err = run_cli(["train", str(images), "--out", str(tmp_path / "a"), "--init", f"timm:{NAME}"], capsys)
    assert code == 1 and "add --pretrained" in err and err.count("\n") == 1
    code, _, err = run_cli(["train", str(images), "--out", str(tmp_path / "b"), "--init",
                            "timm:vit_small_patch14_reg4_dinov2", "--pretrained"], capsys)
    assert code == 1 and err.startswith("error: no cached weights") and err.count("\n") == 1
    code, _, err = run_cli(["train", str(images), "--out", str(tmp_path / "c"), "--init", f"timm:{NAME}",
                            "--pretrained", "--backbone", "resnet50"], capsys)
    assert code == 1 and "disagrees" in err
