"""Choose the lesion mask (SEG or RTSTRUCT) and the MR series it references in one study.

Implements issue 3 point 1. The rule is data (:class:`SelectionRules`); the result records
every candidate considered and why each was rejected, so a failure reason is one line.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["SelectionRules"]

_MASK_PREFERENCES = ("SEG", "RTSTRUCT", "newest")


@dataclass(frozen=True)
class SelectionRules:
    """How to choose among several masks, series and segments.

    Defaults:
    - ``mask_preference="SEG"``: a usable SEG wins over a usable RTSTRUCT (a SEG is
      voxel-exact; an RTSTRUCT is rasterised); ``"RTSTRUCT"`` the reverse; ``"newest"``
      ignores the kind. Within a kind, the newest mask wins (ContentDate/ContentTime,
      then SeriesDate/SeriesTime, then InstanceNumber), ties broken by SOP Instance UID.
    - ``lesion_label_pattern``: a segment (SegmentLabel) or ROI (ROIName) whose label
      matches is a lesion candidate; among several matches the largest wins. When no label
      matches, the largest segment not matching ``brain_label_pattern`` or
      ``exclude_label_pattern`` is taken (``lesion_fallback_largest``).
    - ``brain_label_pattern``: a segment matching it becomes ``LoadedStudy.brain``.
    - ``image_modality``: the modality the referenced series must have.
    """

    mask_preference: str = "SEG"
    lesion_label_pattern: str = r"(?i)(met|lesion|tumou?r|gtv)"
    brain_label_pattern: str = r"(?i)brain"
    exclude_label_pattern: str = r"(?i)(edema|oedema|necro|skull|ventric|csf)"
    lesion_fallback_largest: bool = True
    image_modality: str = "MR"

    def __post_init__(self) -> None:
        if self.mask_preference not in _MASK_PREFERENCES:
            raise ValueError(
                f'Argument "mask_preference" must be one of {_MASK_PREFERENCES}, '
                f"not {self.mask_preference!r}"
            )
        for name in ("lesion_label_pattern", "brain_label_pattern", "exclude_label_pattern"):
            try:
                re.compile(getattr(self, name))
            except re.error as exc:
                raise ValueError(f'Argument "{name}" must be a regular expression: {exc}') from exc

    def to_dict(self) -> dict[str, Any]:
        """The rule as plain JSON-serialisable values (recorded in provenance)."""
        return dataclasses.asdict(self)
