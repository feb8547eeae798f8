"""Training configuration: dataclasses with a commented default per field, YAML in and out, dotted overrides."""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import InvalidArgumentError, did_you_mean


def option(default: Any, help: str, *, runtime: bool = False) -> Any:
    """A config field with its one-line help; ``runtime`` fields may change when a run is resumed."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, "runtime": runtime})
    return field(default=default, metadata={"help": help, "runtime": runtime})


@dataclass
class AugmentationConfig:
    """View-generation knobs. ``None`` means "the default for this method and image size" (see transforms)."""

    crop_scale_min: float | None = option(None, "smallest random-resized-crop area, as a fraction of the image "
                                                "(0.08 SimCLR, 0.2 MoCo, 0.4 DINO global; for images < 96 px "
                                                "0.7 SimCLR, 0.4 MoCo and DINO)")
    crop_scale_max: float = option(1.0, "largest random-resized-crop area fraction")
    crop_ratio_min: float = option(3 / 4, "smallest crop aspect ratio (width / height)")
    crop_ratio_max: float = option(4 / 3, "largest crop aspect ratio")
    flip_probability: float = option(0.5, "probability of a horizontal flip")
    color_jitter_probability: float = option(0.8, "probability of applying colour jitter to a view")
    brightness: float = option(0.4, "colour jitter: brightness factor range ±")
    contrast: float = option(0.4, "colour jitter: contrast factor range ±")
    saturation: float = option(0.4, "colour jitter: saturation factor range ± (DINO uses 0.2)")
    hue: float = option(0.1, "colour jitter: hue shift range ± (fraction of the colour wheel)")
    grayscale_probability: float = option(0.2, "probability of converting a view to grayscale")
    blur_probability: float | None = option(None, "probability of Gaussian blur on a two-view view "
                                                  "(0.5 for images ≥ 96 px, 0 for smaller ones)")
    blur_sigma_min: float = option(0.1, "smallest blur sigma at 224 px (scaled with the image size)")
    blur_sigma_max: float = option(2.0, "largest blur sigma at 224 px (scaled with the image size)")
    solarize_probability: float = option(0.2, "DINO: probability of solarising the second global view")
    global_blur_probabilities: tuple[float, float] | None = option(
        None, "DINO: blur probability of the two global views ((1.0, 0.1) for ≥ 96 px, off for smaller)")
    local_crop_count: int = option(6, "DINO: number of small local crops besides the two global ones")
    local_crop_size: int | None = option(None, "DINO: local crop size in px (≈ 0.43 × image size, at least 32 "
                                               "and a multiple of 8)")
    local_crop_scale_min: float = option(0.05, "DINO: smallest local crop area fraction")
    local_crop_scale_max: float | None = option(None, "DINO: largest local crop area fraction (defaults to the "
                                                      "global crop_scale_min)")
    local_blur_probability: float | None = option(None, "DINO: blur probability of local crops (0.5 for ≥ 96 px)")


@dataclass
class OptimizerConfig:
    """Optimiser and schedules. ``None`` means the method's default (see methods/*.py ``DEFAULTS``)."""

    name: str = option("auto", "auto (AdamW for ViTs, LARS for SimCLR/MoCo on CNNs, SGD otherwise), sgd, lars or adamw")
    lr: float | None = option(None, "base learning rate for a global batch of 256 (scaled linearly with the batch)")
    final_lr_ratio: float = option(0.001, "the cosine schedule ends at lr × this")
    warmup_fraction: float = option(0.1, "fraction of all steps over which the lr ramps linearly from 0")
    weight_decay: float | None = option(None, "weight decay at the start (not applied to biases and norms)")
    weight_decay_final: float | None = option(None, "weight decay at the end, cosine from the start value "
                                                    "(defaults to the start value)")
    momentum: float = option(0.9, "SGD/LARS momentum")
    betas: tuple[float, float] = option((0.9, 0.999), "AdamW betas")
    lars_trust_coefficient: float = option(0.001, "LARS trust coefficient η")
    clip_grad_norm: float | None = option(None, "clip the gradient norm to this (0 = off; DINO default 3.0)")
    layer_decay: float | None = option(None, "layer-wise lr decay: backbone layer i of L trains at lr × decay^(L - i), "
                                             "heads at lr (default 0.75 with init, else 1.0 = off)")
    init_lr_ratio: float = option(0.1, "with init: the method's default base lr × this (ignored when lr is given)")


@dataclass
class SimCLRConfig:
    """SimCLR (Chen et al. 2020, arXiv:2002.05709)."""

    projection_hidden_dim: int | None = option(None, "projection MLP hidden width (default: the backbone's dim)")
    projection_dim: int = option(128, "projection output dim (the space the loss compares in)")
    temperature: float = option(0.2, "NT-Xent temperature τ")


@dataclass
class MoCoConfig:
    """MoCo v2 (Chen et al. 2020, arXiv:2003.04297). Three defaults differ from the paper, measured on the
    sample data (resnet18 @ 32 px, 300 steps, held-out k-NN): batch norm in the head, τ = 0.1 and this
    step's keys as extra negatives gave 0.138, the paper's head/τ/queue-only 0.102 (raw pixels 0.126).
    ``--set moco.head_batch_norm=false --set moco.temperature=0.2 --set moco.batch_negatives=false`` is the paper."""

    projection_hidden_dim: int | None = option(None, "projection MLP hidden width (default: the backbone's dim)")
    projection_dim: int = option(128, "projection output dim")
    head_batch_norm: bool = option(True, "batch norm in the projection MLP's hidden layer (MoCo v3 style; "
                                         "MoCo v2 has none)")
    temperature: float = option(0.1, "InfoNCE temperature τ (MoCo v2: 0.2)")
    queue_size: int = option(4096, "negatives kept in the queue (capped at half the dataset, rounded to the batch)")
    momentum: float = option(0.99, "key-encoder EMA momentum at the start (paper: 0.999 for 200+ epochs)")
    momentum_final: float | None = option(None, "key-encoder momentum at the end, cosine from the start "
                                                "(default: constant)")
    batch_norm_splits: int = option(2, "shuffled batch norm: keys are shuffled and encoded in this many groups so "
                                       "a query and its key rarely share batch statistics (1 = off)")
    symmetric: bool = option(True, "also contrast view 2 → view 1 (twice the signal per image; the paper is one-way)")
    batch_negatives: bool = option(True, "also contrast with this step's keys of the other images (fresh negatives "
                                         "from the current key encoder, as MoCo v3; under DDP this process's), "
                                         "besides the queue (MoCo v2: the queue only)")


@dataclass
class DINOConfig:
    """DINO (Caron et al. 2021, arXiv:2104.14294)."""

    recipe: str = option("auto", "auto, short or paper. short: the recipe measured to learn in 10 CPU minutes "
                                 "(centering sinkhorn, prototypes 256, teacher temperatures 0.02, no local crops, "
                                 "koleo_weight 0.1), applied only to the fields left at their defaults; paper: the "
                                 "defaults below. auto picks short when the run is short: a CPU device, "
                                 "--max-minutes ≤ 60, or fewer than 5,000 steps from --epochs; else paper. "
                                 "The run's config.yaml records the recipe chosen")
    prototypes: int = option(4096, "K, the output dim of the head (paper: 65536)")
    hidden_dim: int = option(2048, "head MLP hidden width")
    bottleneck_dim: int = option(256, "head bottleneck dim before the weight-normalised last layer")
    head_layers: int = option(3, "head MLP layers before the bottleneck output")
    head_batch_norm: bool | None = option(None, "batch norm in the head MLP (default: on for CNNs, off for ViTs)")
    norm_last_layer: bool = option(True, "fix the norm of the last layer's weight (more stable)")
    student_temperature: float = option(0.1, "student softmax temperature")
    teacher_temperature_start: float = option(0.04, "teacher temperature at the start of the warm-up")
    teacher_temperature: float = option(0.04, "teacher temperature after the warm-up (0.07 with a 30% warm-up "
                                              "suits long runs; a short run needs the sharper 0.04 to leave ln K)")
    teacher_temperature_warmup_fraction: float = option(0.3, "fraction of steps for the teacher-temperature warm-up")
    teacher_momentum: float = option(0.996, "teacher EMA momentum at the start; cosine to 1.0 at the end")
    center_momentum: float = option(0.9, "EMA momentum of the teacher-output center (mean centering)")
    centering: str = option("mean", "teacher centering: mean (the paper's EMA center) or sinkhorn (Sinkhorn-Knopp "
                                    "over the batch, as DINOv2: every prototype gets an equal share, so the "
                                    "teacher can neither go uniform nor put every image on one prototype)")
    koleo_weight: float = option(0.0, "weight of DINOv2's KoLeo regulariser on the student's backbone features of "
                                      "each global crop (spreads the batch over the sphere; DINOv2: 0.1; 0 = off)")
    freeze_last_layer_epochs: float = option(1.0, "epochs during which the head's last layer is frozen "
                                                  "(capped at 20% of the steps)")


@dataclass
class MAEConfig:
    """MAE (He et al. 2021, arXiv:2111.06377); ViT backbones only."""

    mask_ratio: float = option(0.75, "fraction of each image's patches hidden from the encoder (paper: 0.75)")
    decoder_depth: int = option(8, "decoder transformer blocks (paper: 8)")
    decoder_width: int | None = option(None, "decoder token width (default: min(512, encoder width); paper: 512)")
    decoder_heads: int | None = option(None, "decoder attention heads (default: width / 32, as the paper's 512 / 16)")
    norm_pixel_loss: bool = option(True, "reconstruct each patch standardised by its own mean and variance "
                                         "(paper default; better features)")
    preview_images: int = option(8, "images in the reconstruction preview PNG written at each checkpoint "
                                    "(previews/step-N.png; 0 = none)", runtime=True)


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved resolved as ``config.yaml`` in the run directory."""

    data: str = option("", "training images: a folder (ImageFolder or flat) or a .txt/.csv/.parquet list")
    out: str = option("", "run directory (config.yaml, checkpoints/, metrics.jsonl, encoder.*)", runtime=True)
    method: str = option("simclr", "simclr, moco, dino or mae")
    backbone: str = option("resnet18", "timm architecture (random init), e.g. resnet18, resnet50, vit_small_patch16_224")
    model_kwargs: dict = option({}, "extra timm.create_model arguments, e.g. {patch_size: 8} for a ViT")
    init: str | None = option(None, "start from these weights instead of a random init: timm:NAME (with pretrained), "
                                    "a run directory, a checkpoint folder, or a weights file for backbone")
    pretrained: bool = option(False, "with init timm:NAME: its published weights, from the local Hugging Face cache")
    allow_download: bool = option(False, "with init timm:NAME and pretrained: fetch weights missing from the cache",
                                  runtime=True)
    image_size: int = option(64, "training resolution (global crops) in px")
    batch_size: int = option(64, "images per step per process (global batch = batch_size × processes)")
    epochs: float | None = option(None, "passes over the data (default 100 unless max_minutes is given)")
    max_minutes: float | None = option(None, "wall-clock budget: the schedules are sized to the steps that fit")
    seed: int = option(0, "seed for initialisation, data order and augmentations")
    precision: str = option("auto", "auto (bf16 autocast on CUDA, fp32 on CPU), fp32 or bf16")
    channels_last: bool | None = option(None, "channels-last memory format (default: on for CNNs)")
    device: str = option("auto", "auto, cpu or cuda", runtime=True)
    workers: int | None = option(None, "data-loading processes (default: GPU: cores - 1, at most 8; CPU: 0 for "
                                               "in-memory images on ≤ 4 cores, else cores / 4)", runtime=True)
    preload_megabytes: int = option(2048, "decode all images into memory once when they fit in this many MB",
                                    runtime=True)
    strict: bool = option(False, "fail on the first unreadable image instead of skipping it", runtime=True)
    checkpoint_every_steps: int = option(500, "write checkpoints/step-N.pt and last.pt every N steps", runtime=True)
    keep_checkpoints: int = option(2, "step-numbered checkpoints kept (older ones are deleted)", runtime=True)
    log_every_steps: int = option(10, "append a metrics.jsonl line every N steps", runtime=True)
    stop_after_steps: int | None = option(None, "stop (with a checkpoint) after this step, keeping the full "
                                                "schedule; continue later with --resume", runtime=True)
    val: str | None = option(None, "labelled ImageFolder for the online k-NN monitor (leave-one-out)", runtime=True)
    val_every_epochs: float = option(1.0, "k-NN monitor cadence in epochs", runtime=True)
    val_max_images: int = option(2000, "k-NN monitor uses at most this many --val images", runtime=True)
    knn_k: int = option(20, "k-NN monitor: neighbours (DINO protocol)", runtime=True)
    knn_temperature: float = option(0.07, "k-NN monitor: softmax temperature of the votes", runtime=True)
    progress: bool | None = option(None, "progress bar (default: when stderr is a terminal)", runtime=True)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    simclr: SimCLRConfig = field(default_factory=SimCLRConfig)
    moco: MoCoConfig = field(default_factory=MoCoConfig)
    dino: DINOConfig = field(default_factory=DINOConfig)
    mae: MAEConfig = field(default_factory=MAEConfig)

    def method_section(self) -> Any:
        """The config section of the chosen method (``self.simclr`` for method "simclr", ...)."""
        return getattr(self, self.method, None)


RUN_CONFIG_NAME = "config.yaml"  # the resolved config in a training run directory (rundir.py)

SECTIONS = ("augmentation", "optimizer", "simclr", "moco", "dino", "mae")


# ----------------------------------------------------------------------------- dict / YAML conversion


def to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as plain nested dicts/lists (tuples become lists)."""
    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        return value
    return plain(config)


def _coerce(value: Any, annotation: Any, name: str) -> Any:
    """Convert a YAML/flag value to the annotated type, or raise a one-line error naming the field."""
    hint = annotation
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~")):
            if type(None) in typing.get_args(hint):
                return None
        for option_type in options:
            try:
                return _coerce(value, option_type, name)
            except InvalidArgumentError:
                continue
        raise InvalidArgumentError(f"config field {name} = {value!r} is not a {hint}; fix it in the YAML or flag")
    if origin is tuple:
        items = value if isinstance(value, (list, tuple)) else str(value).strip("()[]").split(",")
        args = typing.get_args(hint)
        if len(items) != len(args):
            raise InvalidArgumentError(f"config field {name} = {value!r} needs {len(args)} values, e.g. [0.9, 0.999]")
        return tuple(_coerce(v, a, name) for v, a in zip(items, args))
    if hint is dict or origin is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise InvalidArgumentError(f"config field {name} = {value!r} is not a mapping, e.g. {{patch_size: 8}}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise InvalidArgumentError(f"config field {name} = {value!r} is not true/false")
    if hint in (int, float):
        if isinstance(value, bool):
            raise InvalidArgumentError(f"config field {name} = {value!r} is not a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise InvalidArgumentError(f"config field {name} = {value!r} is not a number") from None
        if hint is int:
            if number != int(number):
                raise InvalidArgumentError(f"config field {name} = {value!r} must be a whole number")
            return int(number)
        return number
    if hint is str:
        if isinstance(value, (dict, list)):
            raise InvalidArgumentError(f"config field {name} = {value!r} is not a string")
        return str(value)
    return value


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(data: dict[str, Any], base: TrainConfig | None = None, *, source: str = "config") -> TrainConfig:
    """Apply nested ``data`` onto ``base`` (or the defaults); unknown keys are errors with a did-you-mean."""
    config = dataclasses.replace(base) if base is not None else TrainConfig()
    config = from_flat(flatten(data), config, source=source)
    return config


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optimizer": {"lr": 0.1}} → {"optimizer.lr": 0.1} (only config sections are descended into)."""
    flat: dict[str, Any] = {}
    for key, value in (data or {}).items():
        name = f"{prefix}{key}"
        if not prefix and key in SECTIONS and isinstance(value, dict):
            flat.update(flatten(value, f"{key}."))
        else:
            flat[name] = value
    return flat


def from_flat(overrides: dict[str, Any], base: TrainConfig, *, source: str = "flag") -> TrainConfig:
    """Apply dotted overrides (``{"optimizer.lr": 0.1, "method": "moco"}``) to a copy of ``base``.

    Raises:
        InvalidArgumentError: an unknown key (with the nearest names) or a value of the wrong type.
    """
    top = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    sections = {s: dataclasses.replace(top[s]) for s in SECTIONS}
    top_types = _field_types(TrainConfig)
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        if section:
            if section not in SECTIONS:
                raise InvalidArgumentError(f"unknown config section {section!r} in {source} key {key!r}"
                                           f"{_near(section, SECTIONS)}; sections: {', '.join(SECTIONS)}")
            target = sections[section]
            types_ = _field_types(type(target))
            if name not in types_:
                raise InvalidArgumentError(f"unknown config field {key!r} in {source}{_near(name, types_, section)}")
            setattr(target, name, _coerce(value, types_[name], key))
        else:
            if name not in top_types or name in SECTIONS:
                raise InvalidArgumentError(f"unknown config field {key!r} in {source}{_near(name, top_types)}")
            top[name] = _coerce(value, top_types[name], key)
    top.update(sections)
    return TrainConfig(**top)


def _near(name: str, choices: Any, section: str = "") -> str:
    return did_you_mean(name, choices, limit=2, cutoff=0.5, prefix=f"{section}." if section else "")


def load_yaml(path: str | os.PathLike[str], base: TrainConfig | None = None) -> TrainConfig:
    """Read a YAML config file (any subset of the fields, nested by section) onto ``base``.

    Raises:
        InputNotFoundError / InvalidArgumentError: a missing file, bad YAML, an unknown field.
    """
    from ..errors import InputNotFoundError

    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"config file {path} does not exist; write one with `sslsearch train --print-config`")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise InvalidArgumentError(f"config file {path} is not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InvalidArgumentError(f"config file {path} must hold a mapping of field: value, got {type(data).__name__}")
    return from_dict(data, base, source=str(path))


def load_run_config(run: str | os.PathLike[str]) -> TrainConfig:
    """The resolved config a training run was started with (``RUN/config.yaml``).

    Raises:
        InputNotFoundError: ``run`` is not a run directory.
    """
    from ..errors import InputNotFoundError

    path = Path(run) / RUN_CONFIG_NAME
    if not path.is_file():
        raise InputNotFoundError(f"{Path(run)} is not a training run (no {RUN_CONFIG_NAME}); "
                                 "start one without --resume")
    config = load_yaml(path)
    saved = yaml.safe_load(path.read_text()) or {}
    if isinstance(saved.get("dino"), dict) and "recipe" not in saved["dino"]:
        # saved before dino.recipe existed: the run trained with its fields as saved, no recipe applied
        config = dataclasses.replace(config, dino=dataclasses.replace(config.dino, recipe="paper"))
    return config


def to_yaml(config: TrainConfig, *, comments: bool = True) -> str:
    """The config as YAML, each field preceded by its help text as a comment."""
    lines: list[str] = []

    def emit(obj: Any, indent: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                doc = (type(value).__doc__ or "").strip().splitlines()[0]
                lines.append("")
                if comments:
                    lines.append(f"{indent}# {doc}")
                lines.append(f"{indent}{f.name}:")
                emit(value, indent + "  ")
                continue
            if comments and f.metadata.get("help"):
                lines.append(f"{indent}# {f.metadata['help']}")
            dumped = yaml.safe_dump({f.name: to_dict(value) if isinstance(value, tuple) else value},
                                    default_flow_style=True, width=10_000).strip()
            lines.append(f"{indent}{dumped[1:-1] if dumped.startswith('{') else dumped}")

    emit(config, "")
    return "\n".join(lines).lstrip("\n") + "\n"


def differences(saved: TrainConfig, current: TrainConfig) -> list[str]:
    """Non-runtime fields whose values differ, as "field: run has X, now Y" (only the chosen method's section)."""
    out: list[str] = []

    def compare(a: Any, b: Any, prefix: str) -> None:
        for f in dataclasses.fields(a):
            if f.metadata.get("runtime"):
                continue
            left, right = getattr(a, f.name), getattr(b, f.name)
            if dataclasses.is_dataclass(left):
                if f.name in ("simclr", "moco", "dino", "mae") and f.name != current.method:
                    continue
                compare(left, right, f"{prefix}{f.name}.")
            elif to_dict(left) != to_dict(right):
                out.append(f"{prefix}{f.name}: run has {to_dict(left)!r}, now {to_dict(right)!r}")

    compare(saved, current, "")
    return out


def build_config(overrides: dict[str, Any], *, config_file: str | os.PathLike[str] | None = None,
                 resume_run: str | os.PathLike[str] | None = None) -> TrainConfig:
    """The config of a ``train`` call: defaults (or, when resuming, the run's saved config), then the YAML
    file, then explicit overrides (dotted keys; ``None`` values are ignored).

    Resuming starts from the run's config so that a bare ``--resume`` needs no repeated options;
    any option given that differs from the run is refused later by the trainer.
    """
    if resume_run is not None:
        # stop_after_steps belongs to the session that set it, not to the run
        config = dataclasses.replace(load_run_config(resume_run), stop_after_steps=None)
    else:
        config = TrainConfig()
    if config_file is not None:
        config = load_yaml(config_file, config)
    return from_flat({k: v for k, v in overrides.items() if v is not None}, config)


def parse_assignments(assignments: list[str]) -> dict[str, Any]:
    """``["optimizer.lr=0.1", "dino.prototypes=1024"]`` → ``{"optimizer.lr": 0.1, ...}`` (values parsed as YAML).

    Raises:
        InvalidArgumentError: an item without ``=``.
    """
    parsed: dict[str, Any] = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidArgumentError(f"--set {item!r} is not KEY=VALUE, e.g. --set optimizer.lr=0.1")
        try:
            parsed[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed[key.strip()] = value
    return parsed
