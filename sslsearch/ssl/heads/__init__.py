"""Heads on top of the backbone, one per method family: projection MLP (SimCLR, MoCo) and DINO head."""
from __future__ import annotations

from .dino import DINOHead
from .projection import ProjectionHead

__all__ = ["DINOHead", "ProjectionHead"]
