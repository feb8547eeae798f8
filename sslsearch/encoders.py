"""Encoders: timm backbones (random init or local weights) and trained run directories, with a fingerprint."""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .devices import resolve_device
from .errors import CheckpointError, InputNotFoundError, InvalidArgumentError, unknown_name
from .files import atomic_path, atomic_write_json

ENCODER_FORMAT_VERSION = 1
ENCODER_JSON = "encoder.json"
ENCODER_WEIGHTS = "encoder.safetensors"
RANDOM_INIT_SEED = 0  # random-init encoders are seeded so the same spec always gives the same vectors
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")


@dataclass(frozen=True)
class Preprocessing:
    """Eval preprocessing: resize the shorter side to ``resize_size``, center-crop ``image_size``, normalise."""

    image_size: int = 224
    resize_size: int = 224
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocessing":
        return cls(image_size=int(data["image_size"]), resize_size=int(data["resize_size"]),
                   interpolation=str(data.get("interpolation", "bicubic")),
                   mean=tuple(float(x) for x in data["mean"]), std=tuple(float(x) for x in data["std"]))

    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """PIL RGB image → (3, image_size, image_size) float32 tensor, normalised."""
        from torchvision import transforms as T

        mode = getattr(T.InterpolationMode, self.interpolation.upper())
        return T.Compose([T.Resize(self.resize_size, interpolation=mode, antialias=True), T.CenterCrop(self.image_size),
                          T.ToTensor(), T.Normalize(self.mean, self.std)])


def list_backbones(pattern: str = "*") -> list[str]:
    """timm architecture names matching a glob pattern (e.g. ``"resnet*"``, ``"vit_small*"``)."""
    import timm

    return [name for name in timm.list_models() if fnmatch.fnmatch(name, pattern)]


def create_backbone(name: str, **model_kwargs: Any) -> tuple[torch.nn.Module, int]:
    """A timm model without classifier, random init (seeded), and its feature dim.

    Args:
        name: timm architecture name, e.g. ``resnet18`` or ``vit_small_patch16_224``.
        **model_kwargs: passed to ``timm.create_model`` (e.g. ``img_size=64, patch_size=8`` for ViTs).

    Raises:
        UnknownNameError: not a timm architecture (lists the nearest names).
    """
    import timm

    if not timm.is_model(name):
        raise unknown_name("timm model", name, timm.list_models())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        try:
            module = timm.create_model(name, pretrained=False, num_classes=0, **model_kwargs)
        except TypeError as error:
            raise InvalidArgumentError(f"timm model {name} does not accept {sorted(model_kwargs)} ({error})") from None
    return module, int(module.num_features)


def _fixed_input_size(module: torch.nn.Module) -> int | None:
    embed = getattr(module, "patch_embed", None)
    size = getattr(embed, "img_size", None)
    if size is None or getattr(embed, "dynamic_img_size", False):
        return None
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def default_preprocessing(module: torch.nn.Module, image_size: int | None = None) -> Preprocessing:
    """Preprocessing from timm's data config of ``module``; ``image_size`` overrides the crop size."""
    import timm.data

    config = timm.data.resolve_data_config({}, model=module)
    native = _fixed_input_size(module) or int(config["input_size"][-1])
    return preprocessing_for(int(image_size or native), crop_pct=float(config.get("crop_pct", 1.0) or 1.0),
                             interpolation=str(config.get("interpolation", "bicubic")), mean=tuple(config["mean"]),
                             std=tuple(config["std"]))


def preprocessing_for(size: int, *, crop_pct: float, interpolation: str, mean: Sequence[float],
                      std: Sequence[float]) -> Preprocessing:
    """Center-crop ``size`` px from the image resized to ``size / crop_pct`` (timm's eval transform)."""
    # Small images (< 96 px) are usually whole objects: cropping would cut them, so resize only.
    resize = size if size < 96 else int(round(size / crop_pct))
    return Preprocessing(image_size=size, resize_size=resize, interpolation=interpolation,
                         mean=tuple(float(x) for x in mean), std=tuple(float(x) for x in std))


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a local ``.safetensors`` or ``.pth``/``.pt``/``.bin`` state dict without unpickling objects.

    Nested checkpoints (``{"state_dict": ...}`` or ``{"model": ...}``) and DDP ``module.`` prefixes are unwrapped.

    Raises:
        InputNotFoundError: the file does not exist.
        CheckpointError: the file cannot be read as a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"weights file {path} does not exist; pass a local .safetensors or .pth state dict")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any reader failure means the same thing to the user
        raise CheckpointError(f"cannot read weights {path} as a state dict ({type(error).__name__}: {error}); "
                              "expected a .safetensors file or a torch.save'd dict of tensors") from None
    for key in ("state_dict", "model", "teacher", "student"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"weights {path} hold no tensor state dict; expected name → tensor")
    return {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}


def _load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    own = module.state_dict()
    state = {k: v for k, v in state.items() if k in own or not k.startswith(("fc.", "head.", "classifier."))}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        detail = (f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}), "
                  f"{len(wrong)} of another shape (e.g. {wrong[:2]})")
        raise CheckpointError(f"weights {source} do not fit this backbone: {detail}; pass weights saved from the same "
                              "architecture (and --image-size for ViTs)")
    module.load_state_dict(state, strict=True)


@dataclass(frozen=True)
class EncoderFingerprint:
    """What makes two sets of embeddings comparable: the spec, the exact weights and the preprocessing."""

    spec: str
    weights_sha256: str
    preprocessing: dict[str, Any]
    dim: int
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    # How to rebuild this encoder (spec as given, absolute weights path, image size); not part of the id.
    source: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def id(self) -> str:
        canonical = json.dumps({"spec": self.spec, "weights": self.weights_sha256, "pre": self.preprocessing,
                                "dim": self.dim, "kw": self.model_kwargs}, sort_keys=True)
        return "enc-" + hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, **asdict(self)}


@dataclass
class Encoder:
    """A ready-to-run image encoder.

    Attributes:
        module: the backbone (eval mode, on ``device``); forward gives (n, dim) pooled features.
        dim: embedding dimension.
        preprocessing: eval preprocessing; ``transform`` turns a PIL image into an input tensor.
        fingerprint: identifies the encoder in stores and index cards.
    """

    module: torch.nn.Module
    dim: int
    preprocessing: Preprocessing
    fingerprint: EncoderFingerprint
    device: torch.device
    channels_last: bool = False
    transform: Callable[[Image.Image], torch.Tensor] = field(init=False)

    def __post_init__(self) -> None:
        self.transform = self.preprocessing.transform()

    @torch.inference_mode()
    def embed_tensors(self, batch: torch.Tensor, *, normalize: bool = True) -> np.ndarray:
        """(n, 3, H, W) preprocessed images → (n, dim) float32 numpy, L2-normalised by default."""
        batch = batch.to(self.device, non_blocking=True)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        features = self.module(batch).float()
        if normalize:
            features = torch.nn.functional.normalize(features, dim=1)
        return features.cpu().numpy()

    def embed_pil(self, images: Sequence[Image.Image], *, normalize: bool = True) -> np.ndarray:
        """A list of PIL RGB images → (n, dim) float32, L2-normalised by default."""
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return self.embed_tensors(torch.stack([self.transform(im) for im in images]), normalize=normalize)


def _is_convnet(module: torch.nn.Module) -> bool:
    return getattr(module, "patch_embed", None) is None and any(isinstance(m, torch.nn.Conv2d) for m in module.modules())


def create_encoder(spec: str | os.PathLike[str], *, weights: str | os.PathLike[str] | None = None,
                   image_size: int | None = None, device: str | torch.device = "auto", pretrained: bool = False,
                   allow_download: bool = False) -> Encoder:
    """The one door to encoders.

    Args:
        spec: ``timm:<model-name>`` (random init unless ``weights`` or ``pretrained``), or a training run
            directory (or any directory) holding ``encoder.json`` + ``encoder.safetensors``.
        weights: a local ``.safetensors`` / ``.pth`` state dict for a ``timm:`` spec, or a checkpoint
            folder (weights + timm's ``config.json``, e.g. a Hugging Face snapshot folder).
        image_size: overrides the eval crop size (and a ViT's input size).
        device: ``auto``, ``cpu`` or ``cuda``.
        pretrained: the published weights of the timm name, from the local Hugging Face cache (or
            ``weights``), with the checkpoint's own preprocessing; nothing is downloaded unless
            ``allow_download`` (see ``sslsearch.pretrained.find_checkpoint``).
        allow_download: with ``pretrained``, fetch weights missing from the cache from the Hub.

    Raises:
        UnknownNameError, InputNotFoundError, CheckpointError, InvalidArgumentError.

    Example:
        >>> encoder = create_encoder("timm:resnet18", image_size=64)
        >>> encoder.dim
        512
        >>> dino = create_encoder("timm:vit_small_patch14_dinov2.lvd142m", pretrained=True)  # doctest: +SKIP
    """
    torch_device = resolve_device(device)
    if image_size is not None and image_size < 8:
        raise InvalidArgumentError(f"--image-size must be at least 8 px, got {image_size}")
    spec = str(spec)
    checkpoint = None
    if spec.startswith("timm:"):
        name = spec.removeprefix("timm:")
        if pretrained or (weights is not None and Path(weights).is_dir()):
            from .pretrained import find_checkpoint

            checkpoint = find_checkpoint(name, path=weights, allow_download=allow_download)
            weights = checkpoint.weights
        elif allow_download:
            raise InvalidArgumentError("--allow-download goes with --pretrained (published weights by name)")
        kwargs: dict[str, Any] = dict(checkpoint.model_args) if checkpoint is not None else {}
        module, dim = create_backbone(name, **kwargs)
        native = _fixed_input_size(module)
        if image_size and native is not None and native != image_size:
            kwargs["img_size"] = image_size  # ViTs need their position embeddings sized for the input
            module, dim = create_backbone(name, **kwargs)
        if checkpoint is not None:
            from .pretrained import load_checkpoint_state

            _load_into(module, load_checkpoint_state(module, checkpoint), str(checkpoint.weights))
            weights_id = file_sha256(checkpoint.weights)
            preprocessing = checkpoint.preprocessing(image_size)
        else:
            if weights is not None:
                _load_into(module, load_state_dict(weights), str(weights))
                weights_id = file_sha256(weights)
            else:
                weights_id = f"random-init(seed={RANDOM_INIT_SEED})"
            preprocessing = default_preprocessing(module, image_size)
        canonical_spec = f"timm:{name}"
    else:
        directory = Path(spec)
        if not directory.exists():
            raise InputNotFoundError(f"encoder {spec!r} is neither timm:<model-name> nor an existing run directory; "
                                     "use e.g. timm:resnet18 or the --out of `sslsearch train`")
        if weights is not None or pretrained:
            raise InvalidArgumentError("--weights and --pretrained go with a timm:<model-name> encoder; a run directory "
                                       "has its own weights")
        meta = read_encoder_json(directory)
        kwargs = dict(meta.get("model_kwargs", {}))
        module, dim = create_backbone(meta["backbone"], **kwargs)
        weights_path = directory / ENCODER_WEIGHTS
        _load_into(module, load_state_dict(weights_path), str(weights_path))
        weights_id = file_sha256(weights_path)
        preprocessing = Preprocessing.from_dict(meta["preprocessing"])
        if image_size is not None:
            preprocessing = Preprocessing(image_size, image_size if image_size < 96 else preprocessing.resize_size,
                                          preprocessing.interpolation, preprocessing.mean, preprocessing.std)
        canonical_spec = f"run:{directory.resolve().name}/{meta['backbone']}"
    module.eval().to(torch_device)
    channels_last = _is_convnet(module)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    source = {"spec": spec if spec.startswith("timm:") else str(Path(spec).resolve()),
              "weights": str(Path(weights).resolve()) if weights is not None else None, "image_size": image_size}
    if checkpoint is not None:
        # the snapshot path, not the blob a Hub cache symlink resolves to: config.json sits beside the former
        source.update(weights=os.path.abspath(checkpoint.weights), pretrained=True)
    fingerprint = EncoderFingerprint(spec=canonical_spec, weights_sha256=weights_id,
                                     preprocessing=preprocessing.to_dict(), dim=dim, model_kwargs=kwargs, source=source)
    return Encoder(module=module, dim=dim, preprocessing=preprocessing, fingerprint=fingerprint,
                   device=torch_device, channels_last=channels_last)


def read_encoder_json(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check ``encoder.json`` of an exported encoder directory."""
    directory = Path(directory)
    path = directory / ENCODER_JSON
    if not path.is_file():
        raise InputNotFoundError(f"{directory} holds no {ENCODER_JSON}: not an exported encoder; train one with "
                                 "`sslsearch train DATA --out RUN` (it exports when training ends)")
    try:
        meta = json.loads(path.read_text())
        meta["backbone"], meta["preprocessing"]  # noqa: B018 - required keys
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{path} is not a valid encoder description ({error})") from None
    if int(meta.get("format_version", 1)) > ENCODER_FORMAT_VERSION:
        raise CheckpointError(f"{path} has encoder format {meta['format_version']}, newer than this sslsearch reads")
    return meta


def save_encoder(directory: str | os.PathLike[str], module: torch.nn.Module, *, backbone: str,
                 model_kwargs: dict[str, Any], preprocessing: Preprocessing, metadata: dict[str, Any] | None = None) -> Path:
    """Export a backbone as ``encoder.safetensors`` + ``encoder.json`` (both written atomically).

    The weights are written first, so a present ``encoder.json`` always describes complete weights.
    """
    from safetensors.torch import save_file

    from . import __version__

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    with atomic_path(directory / ENCODER_WEIGHTS) as tmp:
        save_file(state, str(tmp))
    dim = int(getattr(module, "num_features", 0)) or None
    atomic_write_json(directory / ENCODER_JSON, {
        "format_version": ENCODER_FORMAT_VERSION, "backbone": backbone, "model_kwargs": dict(model_kwargs),
        "dim": dim, "preprocessing": preprocessing.to_dict(), "metadata": dict(metadata or {}),
        "sslsearch_version": __version__,
    })
    return directory


def encoder_from_fingerprint(fingerprint: dict[str, Any], *, device: str | torch.device = "auto") -> Encoder:
    """Rebuild the encoder that a store or index was made with (to embed query images the same way).

    Raises:
        EncoderMismatchError: the encoder cannot be rebuilt identically (weights moved or changed).
    """
    from .errors import EncoderMismatchError

    source = fingerprint.get("source") or {}
    if not source.get("spec"):
        raise EncoderMismatchError(f"the index does not record how to rebuild its encoder {fingerprint.get('spec')}; "
                                   "embed the queries yourself and search with --vectors")
    weights = source.get("weights")
    if source.get("pretrained") and weights and not Path(weights).exists():
        weights = None  # the cache moved: find the same checkpoint by name (the id check below compares it)
    try:
        encoder = create_encoder(source["spec"], weights=weights, image_size=source.get("image_size"),
                                 device=device, pretrained=bool(source.get("pretrained")))
    except (InputNotFoundError, CheckpointError) as error:
        raise EncoderMismatchError(f"cannot rebuild the encoder {fingerprint.get('spec')} the index was built with "
                                   f"({error}); embed the queries yourself and search with --vectors") from None
    if encoder.fingerprint.id != fingerprint.get("id"):
        raise EncoderMismatchError(
            f"the encoder at {source['spec']} has changed since the index was built (now {encoder.fingerprint.id}, "
            f"index has {fingerprint.get('id')}); re-embed and rebuild the index, or search with --vectors")
    return encoder
