"""MAE: hide most patches, encode the visible ones with the ViT, reconstruct the hidden pixels with a light decoder."""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
from torch import nn

from ...errors import InvalidArgumentError
from ..config import AugmentationConfig, MAEConfig, OptimizerConfig, TrainConfig
from ..heads.mae_decoder import MAEDecoder, default_decoder_heads
from ..losses.mae import PatchMask, gather_tokens, mae_loss, random_patch_mask, visible_patch_count
from ..schedules import StepContext
from ..transforms.mae import MAETransform
from .base import Method, MethodOutput, OptimizerDefaults

logger = logging.getLogger(__name__)

DECODER_MAX_WIDTH = 512  # the paper's decoder width for ViT-B/L/H
DECODER_WIDTH_WARN_RATIO = 2  # a decoder wider than 2× the encoder is no longer "light"
PREVIEW_SEED = 0x4D4145  # previews mask with their own generator: they never shift the training RNG


def _vision_transformer_class() -> type:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer


def patch_size_of(backbone: nn.Module) -> int:
    patch = backbone.patch_embed.patch_size
    return int(patch[0] if isinstance(patch, (tuple, list)) else patch)


def check_backbone(backbone: nn.Module, name: str) -> None:
    """Refuse backbones MAE cannot mask: anything but a plain timm ViT (patch tokens + blocks).

    Raises:
        InvalidArgumentError: naming the methods that do work with it.
    """
    if isinstance(backbone, _vision_transformer_class()):
        patch = backbone.patch_embed.patch_size
        if isinstance(patch, (tuple, list)) and patch[0] != patch[1]:
            raise InvalidArgumentError(f"--method mae needs square patches; {name} has {tuple(patch)}")
        if getattr(backbone, "attn_pool", None) is not None:
            raise InvalidArgumentError(f"--method mae does not train {name}'s attention pooling (global_pool map); "
                                       "set model_kwargs global_pool to avg or token")
        return
    from . import METHODS

    others = ", ".join(sorted(n for n, cls in METHODS.items() if not getattr(cls, "vision_transformer_only", False)))
    kind = "a ViT of another family" if getattr(backbone, "patch_embed", None) is not None else "not a ViT"
    raise InvalidArgumentError(f"--method mae needs a timm ViT backbone (e.g. vit_tiny_patch16_224, "
                               f"vit_small_patch16_224); {name} is {kind} — use a ViT, or train {name} "
                               f"with {others}")


def _meta_backbone(name: str, model_kwargs: dict[str, Any]) -> nn.Module:
    """The architecture without allocating weights (to read its sizes)."""
    from ...encoders import create_backbone

    with torch.device("meta"):
        module, _ = create_backbone(name, **model_kwargs)
    return module


def _same_parameters(a: nn.Module, b: nn.Module) -> bool:
    shapes_a = {k: tuple(v.shape) for k, v in a.state_dict().items()}
    return shapes_a == {k: tuple(v.shape) for k, v in b.state_dict().items()}


class MAE(Method):
    """Masked autoencoder (He et al. 2021, "Masked Autoencoders Are Scalable Vision Learners", arXiv:2111.06377).

    Each image gets its own random mask of ``mask_ratio`` of its patches. The ViT encoder (patch
    embedding, position embedding, class token, blocks, final norm) runs on the visible patches
    only; a light transformer decoder (``MAEDecoder``) takes the encoded tokens plus a mask token
    at every hidden position and predicts the pixels of every patch. The loss is the mean squared
    error on the hidden patches only, against per-patch standardised pixels by default. The encoder
    alone is exported, mean-pooling its patch tokens unless ``model_kwargs`` chose another pooling.

    At every checkpoint a preview PNG (original / masked / reconstruction of the current batch's
    first ``mae.preview_images`` images) is written to ``previews/step-N.png`` in the run directory.
    """

    name = "mae"
    min_batch_size = 1
    vision_transformer_only = True
    optimizer_defaults = OptimizerDefaults(lr={"adamw": 1.5e-4, "sgd": 0.05, "lars": 0.3},
                                           weight_decay={"adamw": 0.05, "sgd": 1e-4, "lars": 1e-6},
                                           cnn_optimizer="adamw")
    adamw_betas = (0.9, 0.95)  # the paper's; used when optimizer.betas is left at the generic default

    def __init__(self, backbone: nn.Module, feature_dim: int, config: TrainConfig) -> None:
        super().__init__(backbone, feature_dim, config)
        check_backbone(backbone, config.backbone)
        section: MAEConfig = config.mae
        self.section = section
        self.patch_size = patch_size_of(backbone)
        check_image_size(config.image_size, self.patch_size, config.backbone)
        side = config.image_size // self.patch_size
        self.grid = (side, side)
        self.num_patches = side * side
        visible_patch_count(self.num_patches, section.mask_ratio)  # a clear error for a bad ratio, before any step
        width = section.decoder_width or min(DECODER_MAX_WIDTH, feature_dim)
        heads = section.decoder_heads or default_decoder_heads(width)
        check_decoder(width, heads, section.decoder_depth, feature_dim)
        pool = config.model_kwargs.get("global_pool")
        if pool is not None and pool != backbone.global_pool:
            backbone.reset_classifier(0, global_pool=pool)  # same weights (see resolve_config), new pooling
        self.decoder = MAEDecoder(feature_dim, self.grid, self.patch_size, in_channels=getattr(backbone, "in_chans", 3),
                                  width=width, depth=section.decoder_depth, heads=heads,
                                  prefix_tokens=backbone.num_prefix_tokens)
        from ...encoders import default_preprocessing

        preprocessing = default_preprocessing(backbone, config.image_size)
        self.mean, self.std = tuple(preprocessing.mean), tuple(preprocessing.std)
        self._preview_batch: torch.Tensor | None = None

    # -- configuration ---------------------------------------------------------------------------

    @classmethod
    def resolve_config(cls, config: TrainConfig, *, dataset_size: int, global_batch_size: int) -> TrainConfig:
        """Check the backbone and the mask; fill the decoder size; export mean-pooled patch tokens by default.

        The pooling goes into ``model_kwargs`` (``global_pool: avg, fc_norm: false``) only when it
        leaves the architecture's weights unchanged, so ``encoder.json`` rebuilds the trained network.

        Raises:
            InvalidArgumentError: a non-ViT backbone, a mask ratio outside (0, 1), an image size
                the ViT was not built for, a decoder width its heads do not divide.
        """
        model = _meta_backbone(config.backbone, config.model_kwargs)
        check_backbone(model, config.backbone)
        patch = patch_size_of(model)
        native = model.patch_embed.img_size
        native = int(native[0] if isinstance(native, (tuple, list)) else native)
        if native != config.image_size and not getattr(model, "dynamic_img_size", False):
            raise InvalidArgumentError(f"model_kwargs img_size {native} differs from --image-size {config.image_size}; "
                                       "drop img_size from model_kwargs (it follows --image-size)")
        check_image_size(config.image_size, patch, config.backbone)
        section = config.mae
        visible_patch_count((config.image_size // patch) ** 2, section.mask_ratio)
        width = section.decoder_width or min(DECODER_MAX_WIDTH, model.embed_dim)
        heads = section.decoder_heads or default_decoder_heads(width)
        check_decoder(width, heads, section.decoder_depth, model.embed_dim)
        from ..distributed import rank

        if width > DECODER_WIDTH_WARN_RATIO * model.embed_dim and rank() == 0:
            logger.warning(f"warning: mae.decoder_width {width} is more than {DECODER_WIDTH_WARN_RATIO}× the "
                           f"encoder's width {model.embed_dim}; the decoder will cost more than the encoder — "
                           f"the paper's decoder is narrower than its encoder (try {min(512, model.embed_dim)})")
        kwargs = dict(config.model_kwargs)
        if "global_pool" not in kwargs:
            pooled = {**kwargs, "global_pool": "avg"}
            if model.num_prefix_tokens and "fc_norm" not in kwargs:
                pooled["fc_norm"] = False  # keep the final norm on the tokens, where pretraining used it
            if _same_parameters(model, _meta_backbone(config.backbone, pooled)):
                kwargs = pooled
        optimizer = config.optimizer
        if optimizer.name == "adamw" and tuple(optimizer.betas) == OptimizerConfig().betas:
            optimizer = dataclasses.replace(optimizer, betas=cls.adamw_betas)
        return dataclasses.replace(config, model_kwargs=kwargs, optimizer=optimizer,
                                   mae=dataclasses.replace(section, decoder_width=width, decoder_heads=heads))

    @classmethod
    def build_transform(cls, image_size: int, augmentation: AugmentationConfig, mean: tuple[float, ...],
                        std: tuple[float, ...]) -> MAETransform:
        return MAETransform(image_size, augmentation, mean, std)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The base groups, with the run's AdamW betas on each (the trainer builds AdamW with the generic ones)."""
        groups = super().parameter_groups()
        if self.config.optimizer.name == "adamw":
            for group in groups:
                group["betas"] = tuple(self.config.optimizer.betas)
        return groups

    # -- the model -------------------------------------------------------------------------------

    def encode_visible(self, images: torch.Tensor, mask: PatchMask) -> torch.Tensor:
        """The ViT on the visible patches only: (B, 3, H, W) → (B, prefix + K, dim) normed tokens.

        Position embeddings are added before masking, so each kept token knows where it came from.
        """
        backbone = self.backbone
        x = backbone._pos_embed(backbone.patch_embed(images))  # (B, prefix + N, dim)
        prefix = backbone.num_prefix_tokens
        x = torch.cat([x[:, :prefix], gather_tokens(x[:, prefix:], mask.keep)], dim=1)  # (B, prefix + K, dim)
        x = backbone.norm_pre(x)
        x = backbone.blocks(x)
        return backbone.norm(x)

    def reconstruct(self, images: torch.Tensor, mask: PatchMask) -> torch.Tensor:
        """Pixel predictions of every patch: (B, N, p·p·3) float32."""
        return self.decoder(self.encode_visible(images, mask), mask.restore)

    # -- the step ----------------------------------------------------------------------------------

    def forward_loss(self, views: list[torch.Tensor], ctx: StepContext) -> MethodOutput:
        images = views[0]  # (B, 3, S, S)
        if images.shape[-2:] != (self.grid[0] * self.patch_size, self.grid[1] * self.patch_size):
            raise InvalidArgumentError(f"MAE was built for {self.grid[0] * self.patch_size} px images, got "
                                       f"{tuple(images.shape[-2:])}")
        mask = random_patch_mask(images.shape[0], self.num_patches, self.section.mask_ratio, device=images.device)
        predictions = self.reconstruct(images, mask)
        loss = mae_loss(predictions, images, mask.mask, self.patch_size, norm_pixel_loss=self.section.norm_pixel_loss)
        if self.section.preview_images > 0:
            self._preview_batch = images[:self.section.preview_images].detach()
        return MethodOutput(loss=loss)

    def on_step_end(self, ctx: StepContext) -> None:
        done = ctx.step + 1
        stop_at = ctx.plan.total_steps
        if self.config.stop_after_steps is not None:
            stop_at = min(stop_at, self.config.stop_after_steps)
        if done % self.config.checkpoint_every_steps == 0 or done >= stop_at:
            self.write_preview(done)

    # -- previews ------------------------------------------------------------------------------------

    @torch.no_grad()
    def preview(self, images: torch.Tensor, *, seed: int = PREVIEW_SEED) -> Any:
        """A PIL image: one row per image of ``images`` ((B, 3, S, S), normalised), columns original /
        masked / reconstruction. Masks come from a generator seeded by ``seed``, never the global RNG."""
        from ..preview import preview_grid, reconstruct

        generator = torch.Generator(device="cpu").manual_seed(seed)
        mask = random_patch_mask(images.shape[0], self.num_patches, self.section.mask_ratio, device=images.device,
                                 generator=generator)
        with torch.autocast(images.device.type, enabled=False):
            predictions = self.reconstruct(images.float(), mask)
        masked, reconstruction = reconstruct(images, predictions, mask.mask, self.patch_size,
                                             norm_pixel_loss=self.section.norm_pixel_loss)
        return preview_grid([images.float().cpu(), masked.cpu(), reconstruction.cpu()], self.mean, self.std)

    def write_preview(self, step: int) -> None:
        """Write ``previews/step-<step>.png`` in the run directory (main process only)."""
        from ..distributed import rank
        from ..preview import preview_path, save_preview

        if self._preview_batch is None or not self.config.out or rank() != 0:
            return
        save_preview(self.preview(self._preview_batch, seed=PREVIEW_SEED + step), preview_path(self.config.out, step))


def check_image_size(image_size: int, patch: int, name: str) -> None:
    """Raises InvalidArgumentError when the image does not split into whole patches (naming the nearest sizes)."""
    if image_size % patch:
        lower = image_size // patch * patch
        raise InvalidArgumentError(f"--image-size {image_size} is not a multiple of {name}'s {patch} px patches; "
                                   f"use {lower or patch} or {lower + patch}")


def check_decoder(width: int, heads: int, depth: int, encoder_dim: int) -> None:
    """Raises InvalidArgumentError for a decoder that cannot be built."""
    if width < 4 or width % 4:
        raise InvalidArgumentError(f"mae.decoder_width must be a positive multiple of 4 (sin-cos positions), "
                                   f"got {width}; e.g. {min(512, encoder_dim)}")
    if heads < 1 or width % heads:
        raise InvalidArgumentError(f"mae.decoder_heads {heads} does not divide mae.decoder_width {width}; "
                                   f"use {default_decoder_heads(width)}")
    if depth < 1:
        raise InvalidArgumentError(f"mae.decoder_depth must be at least 1, got {depth}; the paper uses 8")
