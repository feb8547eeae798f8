"""Self-supervised losses, one per method (NT-Xent, InfoNCE with a queue, DINO), and the KoLeo regulariser."""
from __future__ import annotations

from .dino import DINOLoss
from .info_nce import InfoNCELoss, info_nce_loss
from .koleo import koleo_loss
from .nt_xent import NTXentLoss, nt_xent_loss

__all__ = ["DINOLoss", "InfoNCELoss", "NTXentLoss", "info_nce_loss", "koleo_loss", "nt_xent_loss"]
