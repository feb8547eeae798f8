"""Published checkpoints by name, offline: a fake Hugging Face cache holding a saved random-init tiny DINOv2-shaped ViT."""
from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

import sslsearch
from sslsearch.cli.app import main
from sslsearch.encoders import encoder_from_fingerprint, file_sha256
from sslsearch.errors import CheckpointError, InputNotFoundError, InvalidArgumentError, UnknownNameError
from sslsearch.pretrained import find_checkpoint, hub_cache_dir, hub_repo_id

NAME = "vit_small_patch14_dinov2.lvd142m"  # the real timm name; the weights are a tiny random-init copy
TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 28}
CONFIG = {"architecture": "vit_small_patch14_dinov2", "num_classes": 0, "num_features": 32, "model_args": TINY,
          "pretrained_cfg": {"tag": "lvd142m", "input_size": [3, 28, 28], "fixed_input_size": True,
                             "interpolation": "bilinear", "crop_pct": 0.875, "mean": [0.1, 0.2, 0.3],
                             "std": [0.4, 0.5, 0.6], "num_classes": 0}}
REVISION = "0123456789abcdef0123456789abcdef01234567"

# Published checkpoints the docs list: the name must be a timm model whose weights live in timm/<name> on the Hub.
COVERED = ["vit_small_patch14_dinov2.lvd142m", "vit_small_patch14_reg4_dinov2.lvd142m",
           "vit_base_patch14_dinov2.lvd142m", "vit_base_patch14_reg4_dinov2.lvd142m",
           "vit_large_patch14_dinov2.lvd142m", "vit_large_patch14_reg4_dinov2.lvd142m",
           "vit_giant_patch14_dinov2.lvd142m", "vit_giant_patch14_reg4_dinov2.lvd142m",
           "vit_small_patch16_dinov3.lvd1689m", "vit_small_plus_patch16_dinov3.lvd1689m",
           "vit_base_patch16_dinov3.lvd1689m", "vit_large_patch16_dinov3.lvd1689m",
           "vit_huge_plus_patch16_dinov3.lvd1689m", "vit_7b_patch16_dinov3.lvd1689m",
           "convnext_tiny.dinov3_lvd1689m", "convnext_small.dinov3_lvd1689m", "convnext_base.dinov3_lvd1689m",
           "convnext_large.dinov3_lvd1689m",
           "vit_base_patch16_siglip_224.v2_webli", "vit_base_patch16_siglip_256.v2_webli",
           "vit_base_patch16_siglip_384.v2_webli", "vit_base_patch16_siglip_512.v2_webli",
           "vit_large_patch16_siglip_256.v2_webli", "vit_large_patch16_siglip_384.v2_webli",
           "vit_so400m_patch14_siglip_224.v2_webli", "vit_so400m_patch14_siglip_378.v2_webli",
           "vit_so400m_patch16_siglip_256.v2_webli", "vit_giantopt_patch16_siglip_256.v2_webli",
           "vit_base_patch16_224.mae", "vit_large_patch16_224.mae", "vit_huge_patch14_224.mae"]


@pytest.fixture
def saved_model():
    import timm

    torch.manual_seed(123)  # unlike sslsearch's seed-0 random init, so a load that did nothing cannot pass
    return timm.create_model(NAME, pretrained=False, num_classes=0, **TINY)


def write_snapshot(repo_dir: Path, model: torch.nn.Module, *, bin_file: bool = False, config: bool = True) -> Path:
    """The Hub cache layout: refs/main → snapshots/<rev>/{model.safetensors|pytorch_model.bin, config.json}."""
    from safetensors.torch import save_file

    snapshot = repo_dir / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(REVISION)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if bin_file:
        torch.save(state, snapshot / "pytorch_model.bin")
    else:
        save_file(state, str(snapshot / "model.safetensors"))
    if config:
        (snapshot / "config.json").write_text(json.dumps(CONFIG))
    return snapshot


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1, the cache in tmp, and any socket connection fails the test."""
    cache = tmp_path / "hub"
    cache.mkdir()
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    connect = socket.socket.connect

    def refuse_network(sock, address, *args):
        if sock.family in (socket.AF_INET, socket.AF_INET6):  # local (AF_UNIX) sockets of multiprocessing may pass
            raise AssertionError(f"network access attempted: {address}")
        return connect(sock, address, *args)

    monkeypatch.setattr(socket.socket, "connect", refuse_network)
    return cache


def repo_dir(cache: Path, name: str = NAME) -> Path:
    return cache / f"models--timm--{name}"


def assert_same_weights(module: torch.nn.Module, model: torch.nn.Module) -> None:
    loaded, saved = module.state_dict(), model.state_dict()
    assert loaded.keys() == saved.keys()
    for key, value in saved.items():
        assert torch.equal(loaded[key].cpu(), value), key


def test_loads_the_cached_checkpoint_offline_with_its_own_preprocessing(offline, saved_model):
    snapshot = write_snapshot(repo_dir(offline), saved_model)
    encoder = sslsearch.create_encoder(f"timm:{NAME}", pretrained=True, device="cpu")
    assert_same_weights(encoder.module, saved_model)
    pre = encoder.preprocessing
    assert (pre.image_size, pre.interpolation, pre.mean, pre.std) == (28, "bilinear", (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    assert encoder.dim == 32
    assert encoder.fingerprint.weights_sha256 == file_sha256(snapshot / "model.safetensors")
    random_init = sslsearch.create_encoder(f"timm:{NAME}", device="cpu")
    assert random_init.fingerprint.id != encoder.fingerprint.id


def test_the_name_without_its_tag_finds_timms_default_checkpoint(offline, saved_model):
    write_snapshot(repo_dir(offline), saved_model)
    assert hub_repo_id("vit_small_patch14_dinov2") == ("timm/vit_small_patch14_dinov2.lvd142m", None)
    encoder = sslsearch.create_encoder("timm:vit_small_patch14_dinov2", pretrained=True, device="cpu")
    assert_same_weights(encoder.module, saved_model)


def test_hf_home_layout_and_a_pytorch_bin_checkpoint(offline, saved_model, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    assert hub_cache_dir() == (tmp_path / "hf-home" / "hub", "$HF_HOME/hub")
    write_snapshot(repo_dir(tmp_path / "hf-home" / "hub"), saved_model, bin_file=True)
    encoder = sslsearch.create_encoder(f"timm:{NAME}", pretrained=True, device="cpu")
    assert_same_weights(encoder.module, saved_model)


def test_a_local_checkpoint_folder_or_file(offline, saved_model, tmp_path):
    folder = write_snapshot(tmp_path / "elsewhere", saved_model)
    from_folder = sslsearch.create_encoder(f"timm:{NAME}", weights=folder, device="cpu")
    assert_same_weights(from_folder.module, saved_model)
    assert from_folder.preprocessing.interpolation == "bilinear"  # config.json of the folder
    from_file = sslsearch.create_encoder(f"timm:{NAME}", weights=folder / "model.safetensors", pretrained=True,
                                         device="cpu")
    assert from_file.fingerprint.id == from_folder.fingerprint.id


def test_without_config_json_the_preprocessing_is_timms_registry_entry(offline, saved_model, tmp_path):
    write_snapshot(repo_dir(offline), saved_model, config=False)
    with pytest.raises(CheckpointError, match="do not fit this backbone"):
        # without config.json the model_args are unknown, so the tiny weights cannot fit the full-size model
        sslsearch.create_encoder(f"timm:{NAME}", pretrained=True, device="cpu")
    checkpoint = find_checkpoint(NAME)
    assert checkpoint.config_file is None
    pre = checkpoint.preprocessing()
    assert pre.image_size == 518 and pre.interpolation == "bicubic"


def test_another_image_size_resamples_the_position_embeddings(offline, saved_model):
    write_snapshot(repo_dir(offline), saved_model)
    encoder = sslsearch.create_encoder(f"timm:{NAME}", pretrained=True, image_size=42, device="cpu")
    assert encoder.preprocessing.image_size == 42
    assert tuple(encoder.module.pos_embed.shape) == (1, 1 + 3 * 3, 32)
    loaded, saved = encoder.module.state_dict(), saved_model.state_dict()
    for key, value in saved.items():
        if key != "pos_embed":
            assert torch.equal(loaded[key], value), key
    assert encoder.embed_tensors(torch.zeros(2, 3, 42, 42)).shape == (2, 32)


def test_a_missing_checkpoint_names_the_folder_searched_and_the_fetch_command(offline):
    with pytest.raises(InputNotFoundError) as error:
        sslsearch.create_encoder(f"timm:{NAME}", pretrained=True, device="cpu")
    message = str(error.value)
    assert str(repo_dir(offline)) in message and "$HF_HUB_CACHE" in message
    assert f"hf download timm/{NAME}" in message and "\n" not in message


def test_a_misspelled_name_or_tag_lists_the_nearest_names(offline):
    with pytest.raises(UnknownNameError, match="did you mean 'vit_small_patch14_dinov2'"):
        sslsearch.create_encoder("timm:vit_smal_patch14_dinov2", pretrained=True, device="cpu")
    with pytest.raises(UnknownNameError, match="did you mean 'vit_small_patch14_dinov2.lvd142m'"):
        sslsearch.create_encoder("timm:vit_small_patch14_dinov2.lvd124m", pretrained=True, device="cpu")


def test_allow_download_under_hf_hub_offline_is_refused(offline):
    with pytest.raises(InvalidArgumentError, match="HF_HUB_OFFLINE"):
        sslsearch.create_encoder(f"timm:{NAME}", pretrained=True, allow_download=True, device="cpu")
    with pytest.raises(InvalidArgumentError, match="goes with --pretrained"):
        sslsearch.create_encoder(f"timm:{NAME}", allow_download=True, device="cpu")


def test_allow_download_fetches_through_huggingface_hub(offline, saved_model, monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE")
    source = write_snapshot(tmp_path / "remote", saved_model)
    calls = []

    def fake_download(repo_id, filename, revision=None, **kwargs):  # stands in for the Hub: writes into the cache
        calls.append((repo_id, filename))
        snapshot = repo_dir(offline) / "snapshots" / REVISION
        snapshot.mkdir(parents=True, exist_ok=True)
        (snapshot / filename).write_bytes((source / filename).read_bytes())
        return str(snapshot / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    with pytest.raises(InputNotFoundError, match="no cached weights"):
        sslsearch.create_encoder(f"timm:{NAME}", pretrained=True, device="cpu")
    assert calls == []  # nothing is fetched without --allow-download
    encoder = sslsearch.create_encoder(f"timm:{NAME}", pretrained=True, allow_download=True, device="cpu")
    assert calls == [(f"timm/{NAME}", "model.safetensors"), (f"timm/{NAME}", "config.json")]
    assert_same_weights(encoder.module, saved_model)


def test_a_corrupt_checkpoint_or_config_is_one_error(offline, saved_model):
    snapshot = write_snapshot(repo_dir(offline), saved_model)
    (snapshot / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        sslsearch.create_encoder(f"timm:{NAME}", pretrained=True, device="cpu")
    (snapshot / "config.json").write_text(json.dumps({**CONFIG, "architecture": "resnet50"}))
    with pytest.raises(CheckpointError, match="describes a resnet50"):
        sslsearch.create_encoder(f"timm:{NAME}", pretrained=True, device="cpu")
    (snapshot / "config.json").write_text(json.dumps(CONFIG))
    (snapshot / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="cannot read weights"):
        sslsearch.create_encoder(f"timm:{NAME}", pretrained=True, device="cpu")


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def test_cli_missing_and_corrupt_checkpoints_are_one_line_exit_1(offline, saved_model, sample_dir, tmp_path, capsys):
    args = ["embed", str(sample_dir), "--encoder", f"timm:{NAME}", "--pretrained", "--out", str(tmp_path / "emb")]
    code, out, err = run_cli(args, capsys)
    assert code == 1 and err.startswith("error: no cached weights") and err.count("\n") == 1
    snapshot = write_snapshot(repo_dir(offline), saved_model)
    (snapshot / "model.safetensors").write_bytes(b"garbage")
    code, out, err = run_cli(args, capsys)
    assert code == 1 and err.startswith("error: cannot read weights") and err.count("\n") == 1
    assert not (tmp_path / "emb" / "manifest.json").exists()


def test_embed_search_and_dedup_with_a_pretrained_encoder(offline, saved_model, sample_dir, tmp_path, capsys):
    write_snapshot(repo_dir(offline), saved_model)
    code, out, err = run_cli(["embed", str(sample_dir), "--encoder", f"timm:{NAME}", "--pretrained", "--out",
                              str(tmp_path / "emb"), "--workers", "0", "--json"], capsys)
    assert code == 0, err
    store = sslsearch.open_store(tmp_path / "emb")
    assert store.encoder["weights_sha256"] == file_sha256(repo_dir(offline) / "snapshots" / REVISION /
                                                          "model.safetensors")
    assert store.encoder["preprocessing"]["interpolation"] == "bilinear"
    assert encoder_from_fingerprint(store.encoder, device="cpu").fingerprint.id == store.encoder["id"]
    sslsearch.build_index(tmp_path / "emb", tmp_path / "idx", kind="flat", progress=False)
    path = store.paths([4])[0]
    # the query is embedded by the encoder rebuilt (offline) from the index's fingerprint: it finds its stored vector
    hits = sslsearch.search(tmp_path / "idx", sample_dir / path, k=store.manifest.rows, device="cpu")
    assert [hit.score for hit in hits[0].neighbors if hit.path == path][0] > 0.999
    result = sslsearch.deduplicate(sample_dir, tmp_path / "dups", encoder=f"timm:{NAME}", pretrained=True,
                                   threshold=0.999, device="cpu", progress=False)
    assert sslsearch.open_store(tmp_path / "dups" / "embeddings").encoder["id"] == store.encoder["id"]
    assert result.images == store.manifest.rows


def test_covered_names_are_timm_models_published_under_timm():
    import timm

    for name in COVERED:
        assert timm.is_model(name), name
        assert hub_repo_id(name) == (f"timm/{name}", None), name


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vit_small_patch14_dinov2.lvd142m", "vit_small_patch14_reg4_dinov2.lvd142m",
                                  "vit_small_patch16_dinov3.lvd1689m", "vit_base_patch16_siglip_224.v2_webli",
                                  "vit_base_patch16_224.mae"])
def test_covered_architectures_build_and_load_their_own_state_dict(name, offline, tmp_path):
    """Full-size random init saved as a Hub snapshot, then loaded by name (no real weights here)."""
    import timm

    model = timm.create_model(name, pretrained=False, num_classes=0)
    from safetensors.torch import save_file

    snapshot = repo_dir(offline, name) / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(snapshot / "model.safetensors"))
    encoder = sslsearch.create_encoder(f"timm:{name}", pretrained=True, device="cpu", image_size=224)
    out = encoder.embed_tensors(torch.zeros(1, 3, 224, 224))
    assert out.shape == (1, model.num_features) and np.isfinite(out).all()
