"""What the headers say about how a series was acquired: the subgroups ``egfr-node evaluate``
reports performance over (manufacturer, field strength, slice thickness, 2D/3D acquisition,
institution). Read from the chosen series' first header, as indexing read it; an Enhanced MR
keeps the slice thickness in its shared functional groups.
"""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset

__all__ = ["acquisition_attributes"]


def _number(value: Any) -> float | None:
    try:
        return round(float(value), 3) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _text(value: Any) -> str | None:
    text = " ".join(str(value).split()) if value is not None else ""
    return text[:64] or None


def _slice_thickness(header: Dataset) -> float | None:
    value = _number(header.get("SliceThickness"))
    if value is None:
        for item in header.get("SharedFunctionalGroupsSequence", []):
            for measures in item.get("PixelMeasuresSequence", []):
                value = _number(measures.get("SliceThickness"))
    return value


def acquisition_attributes(header: Dataset) -> dict[str, Any]:
    """``manufacturer``, ``model``, ``field_strength_t``, ``slice_thickness_mm``,
    ``acquisition`` (2D/3D), ``institution``: None where the header is silent."""
    return {
        "manufacturer": _text(header.get("Manufacturer")),
        "model": _text(header.get("ManufacturerModelName")),
        "field_strength_t": _number(header.get("MagneticFieldStrength")),
        "slice_thickness_mm": _slice_thickness(header),
        "acquisition": _text(header.get("MRAcquisitionType")),
        "institution": _text(header.get("InstitutionName")),
    }
