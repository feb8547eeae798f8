"""MAE's light decoder: encoder tokens + mask tokens, fixed 2-D sin-cos positions, transformer blocks, pixel head."""
from __future__ import annotations

import torch
from torch import nn

from ..losses.mae import gather_tokens


def sincos_position_embedding(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding (as in MAE and MoCo v3): (rows·columns, dim) float32.

    Half the channels encode the row, half the column; each half is [sin(ω·pos), cos(ω·pos)]
    with ω = 1 / 10000^(k / (dim/4)). Patches are in row-major order.

    Raises:
        ValueError: ``dim`` not a multiple of 4.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a dim divisible by 4, got {dim}")
    rows, columns = grid
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # (dim/4,)
    row = torch.arange(rows, dtype=torch.float64).repeat_interleave(columns)  # (N,)
    column = torch.arange(columns, dtype=torch.float64).repeat(rows)  # (N,)

    def encode(position: torch.Tensor) -> torch.Tensor:
        angles = position[:, None] * omega[None, :]  # (N, dim/4)
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # (N, dim/2)

    # column first, then row: the order of the reference implementation (get_2d_sincos_pos_embed)
    return torch.cat([encode(column), encode(row)], dim=1).float()


class MAEDecoder(nn.Module):
    """The asymmetric decoder of a masked autoencoder (He et al. 2021, arXiv:2111.06377, section 3).

    Encoder tokens of the visible patches are projected to the decoder width, a shared learned
    mask token fills the masked positions, fixed sin-cos position embeddings are added (prefix
    tokens such as the class token get a zero position), and pre-norm transformer blocks run over
    all tokens; a linear layer predicts each patch's pixels.

    Args:
        encoder_dim: width of the encoder tokens.
        grid: (rows, columns) of patches of the full image.
        patch_size: p, pixels per patch side.
        in_channels: C of the images (3).
        width: decoder token width (paper: 512).
        depth: transformer blocks (paper: 8).
        heads: attention heads (paper: 16); must divide ``width``.
        mlp_ratio: hidden width of each block's MLP over ``width``.
        prefix_tokens: tokens before the patches in the encoder output (the class token: 1).

    Shapes: ``forward(tokens (B, prefix + K, encoder_dim), restore (B, N))`` → (B, N, p·p·C).
    """

    def __init__(self, encoder_dim: int, grid: tuple[int, int], patch_size: int, *, in_channels: int = 3,
                 width: int = 512, depth: int = 8, heads: int = 16, mlp_ratio: float = 4.0,
                 prefix_tokens: int = 1) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block

        if width % heads:
            raise ValueError(f"MAE decoder width {width} is not divisible by its {heads} heads")
        self.grid = tuple(grid)
        self.num_patches = grid[0] * grid[1]
        self.patch_size = patch_size
        self.prefix_tokens = prefix_tokens
        self.embed = nn.Linear(encoder_dim, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        positions = torch.cat([torch.zeros(prefix_tokens, width), sincos_position_embedding(width, self.grid)])
        self.register_buffer("position_embedding", positions.unsqueeze(0), persistent=False)  # (1, prefix+N, width)
        self.blocks = nn.Sequential(*[Block(width, heads, mlp_ratio=mlp_ratio, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.predict = nn.Linear(width, patch_size * patch_size * in_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The paper code's init: Xavier-uniform linears with zero bias, unit LayerNorms, mask token N(0, 0.02²)."""
        nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, tokens: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
        """Encoder output of the visible patches → pixel predictions for every patch.

        Args:
            tokens: (B, prefix + K, encoder_dim): prefix tokens, then the K visible patches in
                the shuffled order of ``PatchMask.keep``.
            restore: (B, N) int64, ``PatchMask.restore``.

        Returns:
            (B, N, p·p·C) predictions, patches in row-major order (float32 under autocast too).
        """
        x = self.embed(tokens)  # (B, prefix + K, width)
        prefix, visible = x[:, :self.prefix_tokens], x[:, self.prefix_tokens:]
        batch, masked = x.shape[0], self.num_patches - visible.shape[1]
        filler = self.mask_token.to(visible.dtype).expand(batch, masked, -1)
        patches = gather_tokens(torch.cat([visible, filler], dim=1), restore)  # (B, N, width), patch order
        x = torch.cat([prefix, patches], dim=1) + self.position_embedding.to(x.dtype)
        x = self.norm(self.blocks(x))
        return self.predict(x[:, self.prefix_tokens:]).float()


def default_decoder_heads(width: int) -> int:
    """Heads of 32 channels each (the paper's 512/16), at least 1, dividing ``width``."""
    heads = max(1, width // 32)
    while width % heads:
        heads -= 1
    return heads


__all__ = ["MAEDecoder", "default_decoder_heads", "sincos_position_embedding"]
