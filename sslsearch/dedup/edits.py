"""The edits calibration copies differ by: re-exported from ``sslsearch.edits``, their one home (see there)."""
from __future__ import annotations

from ..edits import (EDIT_PRESETS, EDITS, FULL_EDITS, PRESETS, SAMPLE_EDITS, Edit, EditPreset, brightness, color,
                     crop, edit_preset, edited_copy, grayscale, hflip, jpeg, pad, resize, resolve_edits, rotate,
                     watermark, wide_crop, wide_rotate)

__all__ = ["EDITS", "EDIT_PRESETS", "FULL_EDITS", "PRESETS", "SAMPLE_EDITS", "Edit", "EditPreset", "brightness",
           "color", "crop",
           "edit_preset", "edited_copy", "grayscale", "hflip", "jpeg", "pad", "resize", "resolve_edits", "rotate",
           "watermark", "wide_crop", "wide_rotate"]
