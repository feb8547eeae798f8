"""Published checkpoints by timm name, offline first: the local Hugging Face cache, a local folder or file, or the Hub on request.

A checkpoint is a weights file (``model.safetensors`` or ``pytorch_model.bin``) and, beside it,
timm's ``config.json`` (architecture, ``model_args``, and ``pretrained_cfg``: input size, mean/std,
interpolation, crop pct). Nothing here touches the network unless ``allow_download`` is given;
the model itself is always created with ``pretrained=False`` and the state dict loaded by us.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CheckpointError, InputNotFoundError, InvalidArgumentError, unknown_name

WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")  # the names timm publishes, preferred first
CONFIG_FILE = "config.json"
TRUE_VALUES = ("1", "true", "yes", "on")


def hub_cache_dir() -> tuple[Path, str]:
    """The Hugging Face hub cache this process would use, and where that came from.

    Order as in huggingface_hub: ``$HF_HUB_CACHE``, ``$HUGGINGFACE_HUB_CACHE``, ``$HF_HOME/hub``,
    ``$XDG_CACHE_HOME/huggingface/hub``, ``~/.cache/huggingface/hub``.
    """
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            return Path(os.environ[variable]).expanduser(), f"${variable}"
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub", "$HF_HOME/hub"
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "huggingface" / "hub", "$XDG_CACHE_HOME/huggingface/hub"
    return Path("~/.cache/huggingface/hub").expanduser(), "the default cache"


def hub_repo_id(name: str) -> tuple[str, str | None]:
    """The Hub repository (and revision, if pinned) timm publishes ``name``'s weights in.

    ``vit_small_patch14_dinov2`` → ``timm/vit_small_patch14_dinov2.lvd142m`` (timm's default tag).
    """
    import timm.models

    try:
        config = timm.models.get_pretrained_cfg(name)
    except (RuntimeError, ValueError, KeyError):  # an unknown tag: timm raises rather than returning None
        config = None
    repo = getattr(config, "hf_hub_id", None) or f"timm/{name}"
    repo, _, revision = repo.partition("@")
    return repo, revision or None


def _snapshot_dir(repo_dir: Path, revision: str | None) -> Path | None:
    """The snapshot of a cached repo: the pinned revision, else refs/main, else the newest one with weights."""
    snapshots = repo_dir / "snapshots"
    ref = repo_dir / "refs" / (revision or "main")
    if ref.is_file():
        pinned = snapshots / ref.read_text().strip()
        if pinned.is_dir():
            return pinned
    if revision and (snapshots / revision).is_dir():
        return snapshots / revision
    candidates = [d for d in snapshots.iterdir() if d.is_dir()] if snapshots.is_dir() else []
    with_weights = [d for d in candidates if any((d / f).is_file() for f in WEIGHTS_FILES)]
    return max(with_weights or candidates, key=lambda d: d.stat().st_mtime, default=None)


def _weights_in(folder: Path) -> Path | None:
    return next((folder / f for f in WEIGHTS_FILES if (folder / f).is_file()), None)


@dataclass(frozen=True)
class PretrainedCheckpoint:
    """A resolved checkpoint: where its weights are, and what its config says.

    Attributes:
        name: the timm model name asked for (``vit_small_patch14_dinov2.lvd142m``).
        weights: the weights file (``.safetensors`` or a torch-saved state dict).
        source: ``hf-cache``, ``local`` or ``download``.
        architecture: timm architecture from config.json (None when there is none).
        model_args: extra ``timm.create_model`` arguments the weights were saved with.
        pretrained_cfg: the preprocessing fields (input_size, mean, std, interpolation, crop_pct).
        config_file: the config.json read, or None when the preprocessing came from timm's registry.
    """

    name: str
    weights: Path
    source: str
    architecture: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    pretrained_cfg: dict[str, Any] = field(default_factory=dict)
    config_file: Path | None = None

    def preprocessing(self, image_size: int | None = None) -> Any:
        """The eval ``Preprocessing`` of the checkpoint's config; ``image_size`` overrides the crop size."""
        from .encoders import preprocessing_for

        config = self.pretrained_cfg
        try:
            native = int(config["input_size"][-1])  # timm's eval default (test_input_size only when asked)
            size = int(image_size or native)
            return preprocessing_for(size, crop_pct=float(config.get("crop_pct") or 1.0),
                                     interpolation=str(config.get("interpolation") or "bicubic"),
                                     mean=tuple(float(x) for x in config["mean"]),
                                     std=tuple(float(x) for x in config["std"]))
        except (KeyError, TypeError, ValueError, IndexError) as error:
            where = self.config_file or f"timm's registry entry for {self.name}"
            raise CheckpointError(f"{where} lacks usable preprocessing ({type(error).__name__}: {error}); expected "
                                  "pretrained_cfg with input_size, mean, std") from None


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot read {path} as JSON ({error}); expected timm's config.json beside the "
                              "weights") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds {type(data).__name__}, expected a JSON object (timm's config.json)")
    return data


def _checkpoint(name: str, weights: Path, source: str) -> PretrainedCheckpoint:
    """Pair a weights file with the config.json beside it (or timm's registry config for ``name``)."""
    config_path = weights.parent / CONFIG_FILE
    if config_path.is_file():
        data = _read_config(config_path)
        # timm's older single-dict format keeps the preprocessing at the top level
        pretrained_cfg = data.get("pretrained_cfg", data)
        model_args = data.get("model_args") or {}
        if not isinstance(pretrained_cfg, dict) or not isinstance(model_args, dict):
            raise CheckpointError(f"{config_path}: pretrained_cfg and model_args must be JSON objects")
        architecture = data.get("architecture") or pretrained_cfg.get("architecture")
        wanted = name.split(".")[0]
        if architecture and architecture != wanted:
            raise CheckpointError(f"{config_path} describes a {architecture}, not timm:{name}; use "
                                  f"--encoder timm:{architecture} with these weights, or the checkpoint of {name}")
        return PretrainedCheckpoint(name, weights, source, architecture, dict(model_args), dict(pretrained_cfg),
                                    config_path)
    import timm.models

    try:
        registry = timm.models.get_pretrained_cfg(name)
    except (RuntimeError, ValueError, KeyError):
        registry = None
    return PretrainedCheckpoint(name, weights, source, pretrained_cfg=registry.to_dict() if registry else {})


def _check_name(name: str) -> None:
    """A timm model and, when a tag is given, one timm publishes weights under (else the nearest names)."""
    import timm

    if not timm.is_model(name):
        raise unknown_name("timm model", name, timm.list_models())
    architecture, _, tag = name.partition(".")
    if tag:
        published = timm.list_pretrained(f"{architecture}.*")
        if name not in published:
            raise unknown_name(f"pretrained checkpoint of {architecture}", name, published)


def _not_cached(name: str, repo: str, searched: Path, origin: str) -> InputNotFoundError:
    return InputNotFoundError(
        f"no cached weights for timm:{name}: searched {searched} ({origin}); on a connected machine run "
        f"`hf download {repo}` (or `huggingface-cli download {repo}`) and copy that cache folder here (or point "
        "HF_HUB_CACHE at it), pass --weights DIR|FILE, or add --allow-download")


def find_checkpoint(name: str, *, path: str | os.PathLike[str] | None = None,
                    allow_download: bool = False) -> PretrainedCheckpoint:
    """Find the published weights of the timm model ``name`` without touching the network (unless asked).

    Args:
        name: timm model name, with or without its pretrained tag (``vit_small_patch14_dinov2.lvd142m``).
        path: a local checkpoint folder (``model.safetensors`` or ``pytorch_model.bin`` + ``config.json``,
            e.g. a Hub snapshot folder) or weights file (config.json beside it is used when present).
            Default: the Hugging Face cache (``models--timm--NAME/snapshots/<rev>/``).
        allow_download: when the cache has no copy, download it with huggingface_hub (refused
            under ``HF_HUB_OFFLINE=1``).

    Raises:
        InputNotFoundError: not cached (the message names the folder searched and the command that
            fetches it), or no weights file in ``path``.
        CheckpointError: an unreadable or mismatched config.json.
        InvalidArgumentError: ``allow_download`` under ``HF_HUB_OFFLINE=1``.
        UnknownNameError: not a timm model, or a tag timm publishes no weights under (nearest names listed).

    Example:
        >>> find_checkpoint("vit_small_patch14_dinov2.lvd142m").weights  # doctest: +SKIP
        PosixPath('.../models--timm--vit_small_patch14_dinov2.lvd142m/snapshots/<rev>/model.safetensors')
    """
    if path is not None:
        path = Path(path).expanduser()
        if path.is_dir():
            weights = _weights_in(path)
            if weights is None:
                raise InputNotFoundError(f"checkpoint folder {path} holds none of {', '.join(WEIGHTS_FILES)}; pass a "
                                         "Hub snapshot folder or a weights file")
            return _checkpoint(name, weights, "local")
        if not path.is_file():
            raise InputNotFoundError(f"weights {path} do not exist; pass a checkpoint folder or a .safetensors/.bin "
                                     "file")
        return _checkpoint(name, path, "local")
    _check_name(name)
    repo, revision = hub_repo_id(name)
    cache, origin = hub_cache_dir()
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    snapshot = _snapshot_dir(repo_dir, revision) if repo_dir.is_dir() else None
    weights = _weights_in(snapshot) if snapshot is not None else None
    if weights is not None:
        return _checkpoint(name, weights, "hf-cache")
    if not allow_download:
        raise _not_cached(name, repo, repo_dir, origin)
    return _download(name, repo, revision)


def _download(name: str, repo: str, revision: str | None) -> PretrainedCheckpoint:
    """Fetch config.json and the weights into the Hugging Face cache (only with --allow-download)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in TRUE_VALUES:
        raise InvalidArgumentError(f"--allow-download was given but HF_HUB_OFFLINE is set, so timm:{name} cannot be "
                                   f"fetched; unset HF_HUB_OFFLINE, or fetch it with `hf download {repo}`")
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import EntryNotFoundError
    except ImportError:
        raise InvalidArgumentError("--allow-download needs huggingface_hub; pip install 'sslsearch[hub]' (or "
                                   "huggingface_hub)") from None
    try:
        weights = None
        for filename in WEIGHTS_FILES:
            try:
                weights = Path(hf_hub_download(repo, filename, revision=revision))
                break
            except EntryNotFoundError:
                continue
        if weights is None:
            raise InputNotFoundError(f"the Hub repository {repo} holds none of {', '.join(WEIGHTS_FILES)}")
        try:
            hf_hub_download(repo, CONFIG_FILE, revision=revision)
        except EntryNotFoundError:
            pass  # the registry's preprocessing is used instead
    except InputNotFoundError:
        raise
    except Exception as error:  # noqa: BLE001 - network, auth, missing repo: one line the user can act on
        raise InputNotFoundError(f"downloading {repo} failed ({type(error).__name__}: {str(error).splitlines()[0]}); "
                                 f"check the name and the connection, or fetch it with `hf download {repo}`") from None
    return _checkpoint(name, weights, "download")


def load_checkpoint_state(module: Any, checkpoint: PretrainedCheckpoint) -> dict[str, Any]:
    """The checkpoint's state dict, adapted to ``module`` by timm's own filter for its model family.

    Raises:
        CheckpointError: unreadable weights, or a filter that cannot adapt them.
    """
    from .encoders import load_state_dict

    return adapt_state_dict(module, load_state_dict(checkpoint.weights), f"weights {checkpoint.weights}")


def adapt_state_dict(module: Any, state: dict[str, Any], source: str) -> dict[str, Any]:
    """``state`` passed through timm's ``checkpoint_filter_fn`` of ``module``'s model family, when it has one.

    The filter resizes position embeddings when the input size differs from the checkpoint's
    (``--image-size 224`` with a DINOv2 saved at 518) and maps older key layouts, as timm does
    when it loads pretrained weights itself.

    Raises:
        CheckpointError: the filter cannot adapt them (``source`` names the weights in the message).
    """
    import sys

    adapt = getattr(sys.modules.get(type(module).__module__), "checkpoint_filter_fn", None)
    if adapt is None:
        return state
    try:
        return adapt(state, module)
    except Exception as error:  # noqa: BLE001 - a foreign state dict can fail inside timm in many ways
        detail = str(error).splitlines()[0] if str(error) else ""
        raise CheckpointError(f"{source} do not fit this {type(module).__name__} ({type(error).__name__}: {detail}); "
                              "pass weights of the same architecture") from None
