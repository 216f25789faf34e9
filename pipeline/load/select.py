"""Choose the lesion mask (SEG, RTSTRUCT or a viewer outline) and the MR series it references in one study.

Implements issue 3 point 1. The rule is data (:class:`SelectionRules`); the result records
every candidate considered and why each was rejected, so a failure reason is one line.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from dataclasses import dataclass
from typing import Any

from pipeline.load.index import InstanceHeader, SeriesEntry, StudyIndex
from pipeline.errors import SelectionError
from pipeline.load.references import mask_referenced_instances, mask_referenced_series
from pipeline.load.grid import DEFAULT_MAX_AXIAL_TILT_DEG, DEFAULT_MAX_RESAMPLE_SLICE_MM

__all__ = ["Selection", "SelectionRules", "referenced_series_uids", "select_mask_and_series"]

logger = logging.getLogger(__name__)

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
      matches, and does not match ``exclude_label_pattern`` (edema, necrosis, ...), is a
      lesion candidate; among several candidates the largest wins. When no label
      matches, the largest segment not matching ``brain_label_pattern`` or
      ``exclude_label_pattern`` is taken (``lesion_fallback_largest``).
    - ``brain_label_pattern``: a segment matching it, and not the lesion pattern ("Brain
      metastasis" is a lesion), becomes ``LoadedStudy.brain``.
    - ``image_modality``: the modality the referenced series must have.

    Oblique acquisitions (slice axes more than about 0.06 deg from the patient axes; the
    policy is :mod:`pipeline.load.grid`'s, the choice is recorded in ``LoadedStudy.selection``):

    - ``max_axial_tilt_degrees`` (default 25, 0 <= value < 45): a near-axial acquisition,
      every image axis within this angle of its LPS axis (AC-PC tilt, small in-plane
      rotation), keeps its ACQUIRED slices on their tilted grid, no interpolation; the
      tilt is recorded. 0 sends every oblique acquisition to ``resample_oblique``.
    - ``resample_oblique`` (``"auto"``, ``True`` or ``False``): any other oblique
      acquisition is interpolated (linear; masks nearest neighbour or linear >= 0.5) onto
      an axial grid: ``"auto"`` (default) only when its slice spacing is at most
      ``max_resample_slice_mm`` (default 1.5 mm: near-isotropic 3D data), and thick-slice
      2D data is refused (an axial slice resampled from it blends acquired slices, and the
      paper's model saw acquired slices); ``True`` always; ``False`` never.
    """

    mask_preference: str = "SEG"
    lesion_label_pattern: str = r"(?i)(met|lesion|tumou?r|gtv)"
    brain_label_pattern: str = r"(?i)brain"
    exclude_label_pattern: str = r"(?i)(edema|oedema|necro|skull|ventric|csf)"
    lesion_fallback_largest: bool = True
    image_modality: str = "MR"
    resample_oblique: bool | str = "auto"
    max_axial_tilt_degrees: float = DEFAULT_MAX_AXIAL_TILT_DEG
    max_resample_slice_mm: float = DEFAULT_MAX_RESAMPLE_SLICE_MM

    def __post_init__(self) -> None:
        if not (isinstance(self.resample_oblique, bool) or self.resample_oblique == "auto"):
            raise ValueError(
                f'Argument "resample_oblique" must be true, false or "auto", not {self.resample_oblique!r}'
            )
        for name in ("max_axial_tilt_degrees", "max_resample_slice_mm"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f'Argument "{name}" must be a finite number, not {value!r}')
            object.__setattr__(self, name, float(value))  # TOML/JSON integers compare and record as floats
        tilt, thick = self.max_axial_tilt_degrees, self.max_resample_slice_mm
        if not 0.0 <= tilt < 45.0:  # below 45 deg each axis has one nearest LPS axis
            raise ValueError(f'Argument "max_axial_tilt_degrees" must be at least 0 and less than 45, not {tilt:g}')
        if thick <= 0.0:
            raise ValueError(f'Argument "max_resample_slice_mm" must be more than 0, not {thick:g}')
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

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SelectionRules:
        """The rule back from :meth:`to_dict` (a model bundle or a config file)."""
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f'Argument "values" has unknown selection rule keys: {", ".join(unknown)}')
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The rule as plain JSON-serialisable values (recorded in provenance)."""
        return dataclasses.asdict(self)


# --- choosing the mask and its series -------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """The chosen mask instance and the image series it references, with the record."""

    mask: InstanceHeader
    series: SeriesEntry
    record: dict[str, Any]

    @property
    def mask_kind(self) -> str:
        """``"SEG"``, ``"RTSTRUCT"`` or ``"OUTLINE"`` (a viewer outline: an SR measurement report)."""
        return str(self.mask.mask_kind)


def referenced_series_uids(mask: InstanceHeader, index: StudyIndex) -> list[str]:
    """Series a mask references, in first-seen order.

    The series it names (:func:`pipeline.load.references.mask_referenced_series`), then the
    series of the SOP instances it names (:func:`pipeline.load.references.mask_referenced_instances`)
    that are in the study index.
    """
    series = list(mask_referenced_series(mask.header))
    for sop in mask_referenced_instances(mask.header):
        if sop in index.by_sop_uid:
            series.append(index.by_sop_uid[sop].series_uid)
    if not series and mask.outlines and mask.frame_of_reference_uid:
        # an outline in patient mm names no image: the image series of its frame of reference
        # (which of them it lies on is checked when it is filled)
        series = sorted(uid for uid, entry in index.series.items()
                        if entry.is_mr_image_series and mask.frame_of_reference_uid in entry.frame_of_reference_uids)
    return list(dict.fromkeys(series))


def _mask_datetime(mask: InstanceHeader) -> str:
    ds = mask.header
    for date_tag, time_tag in (("ContentDate", "ContentTime"), ("SeriesDate", "SeriesTime")):
        if ds.get(date_tag):
            return f"{ds.get(date_tag)}{ds.get(time_tag, '') or ''}"
    return ""


def _judge(mask: InstanceHeader, index: StudyIndex, rules: SelectionRules) -> tuple[str | None, str, str | None]:
    """Return (series_uid, "", note) when usable, else (None, reason, None)."""
    refs = referenced_series_uids(mask, index)
    if not refs and mask.outlines:  # say where the viewer's outline is, so the site can find it
        where = sorted({o.image_sop_uid for o in mask.outlines if o.image_sop_uid})
        if where:
            return None, f"outline SR: its outline lies on image {', '.join(where)}, not an image of the study", None
        frames = sorted({str(o.frame_of_reference_uid) for o in mask.outlines})
        return None, f"outline SR: its outline is in frame of reference {', '.join(frames)}, that of no MR series", None
    if not refs:
        return None, "references no image series", None
    present = [uid for uid in refs if uid in index.series]
    images = [
        uid for uid in present
        if index.series[uid].is_mr_image_series and index.series[uid].modality == rules.image_modality
    ]
    if not images:
        if not present:
            return None, f"mask references series {refs[0]} which is not in the study", None
        kinds = ", ".join(f"{uid} is {index.series[uid].modality or 'of no modality'}" for uid in present)
        return None, f"references no {rules.image_modality} series ({kinds})", None
    # Several referenced MR series present (rare): the one with most instances/frames.
    def size(uid: str) -> int:
        return sum(int(i.header.get("NumberOfFrames", 1) or 1) for i in index.series[uid].instances if i.is_mr_image)

    chosen = max(images, key=lambda uid: (size(uid), uid))
    note = f"the largest of {len(images)} referenced {rules.image_modality} series" if len(images) > 1 else None
    image_for = sorted(
        {i.frame_of_reference_uid for i in index.series[chosen].instances if i.is_mr_image and i.frame_of_reference_uid}
    )
    if len(image_for) > 1:
        return None, f"series {chosen} has {len(image_for)} frames of reference", None
    if mask.frame_of_reference_uid and image_for and mask.frame_of_reference_uid != image_for[0]:
        return None, (
            f"mask frame of reference differs from the image "
            f"({mask.frame_of_reference_uid} vs {image_for[0]} of series {chosen})"
        ), None
    return chosen, "", note


def select_mask_and_series(index: StudyIndex, rules: SelectionRules | None = None) -> Selection:
    """Pick the lesion mask and the MR series it references by ``rules``; record the choice.

    Raises SelectionError with one line naming the study and every rejected mask's reason.
    """
    rules = rules or SelectionRules()
    if not index.masks:
        raise SelectionError(f"no lesion mask (SEG, RTSTRUCT or an outline SR) in study {index.study_uid}")
    candidates: list[dict[str, Any]] = []
    usable: list[tuple[InstanceHeader, str, dict[str, Any]]] = []
    for mask in index.masks:
        series_uid, reason, note = _judge(mask, index, rules)
        entry: dict[str, Any] = {
            "sop_instance_uid": mask.sop_uid,
            "kind": mask.mask_kind,
            "series_instance_uid": mask.series_uid,
            "content_datetime": _mask_datetime(mask),
            "referenced_series": referenced_series_uids(mask, index),
            "image_series": series_uid,
            "rejected": reason or None,
        }
        if note:
            entry["image_series_rule"] = note
        candidates.append(entry)
        if series_uid is not None:
            usable.append((mask, series_uid, entry))
    if not usable:
        reasons = [c["rejected"] for c in candidates]
        if all(r == reasons[0] for r in reasons) and reasons[0].startswith("references no"):
            raise SelectionError(f"no mask references an MR series in study {index.study_uid} ({reasons[0]})")
        detail = "; ".join(f"{c['kind']} {c['sop_instance_uid']}: {c['rejected']}" for c in candidates)
        raise SelectionError(f"no usable lesion mask in study {index.study_uid}: {detail}")

    def rank(item: tuple[InstanceHeader, str, dict[str, Any]]) -> tuple[int, str, str, str]:
        mask, _, entry = item
        kind_rank = 0 if rules.mask_preference in ("newest", mask.mask_kind) else 1
        number = f"{int(mask.header.get('InstanceNumber', 0) or 0):012d}"
        return (-kind_rank, entry["content_datetime"], number, mask.sop_uid)

    usable.sort(key=rank, reverse=True)
    chosen_mask, chosen_series, _ = usable[0]
    for mask, _, entry in usable[1:]:
        entry["rejected"] = f"not preferred (rule mask_preference={rules.mask_preference}, then newest)"
    rule = "only usable mask" if len(usable) == 1 else f"mask_preference={rules.mask_preference}, then newest"
    record = {
        "study_instance_uid": index.study_uid,
        "mask_sop_instance_uid": chosen_mask.sop_uid,
        "mask_kind": chosen_mask.mask_kind,
        "series_instance_uid": chosen_series,
        "rule": rule,
        "rules": rules.to_dict(),
        "candidates": candidates,
    }
    logger.info(
        "study %s: chose %s %s on series %s (%s)",
        index.study_uid, chosen_mask.mask_kind, chosen_mask.sop_uid, chosen_series, rule,
    )
    return Selection(mask=chosen_mask, series=index.series[chosen_series], record=record)
