"""Where a lesion sits in its source images: a point in patient space (LPS, mm) placed on the
nearest acquired image plane, in that image's pixel coordinates.

The SR's spatial coordinate (SCOORD, PS3.3 C.18.6) names one image (and frame of a
multi-frame image) and a position in it: column and row with sub-pixel resolution, where
0.0\\0.0 is the top left corner of the top left pixel, so the centre of pixel (c, r) is
(c + 0.5, r + 0.5). Single-frame images give their plane in ImagePositionPatient /
ImageOrientationPatient / PixelSpacing; an Enhanced MR in its shared and per-frame
functional groups.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

__all__ = ["ImagePoint", "nearest_image_point"]


@dataclass(frozen=True)
class ImagePoint:
    """A position in one image (``frame_number`` for a multi-frame image, else None)."""

    sop_class_uid: str
    sop_instance_uid: str
    frame_number: int | None
    column: float
    row: float
    distance_mm: float  # from the point to the image plane


@dataclass(frozen=True)
class _Plane:
    image: Dataset
    frame: int | None
    position: np.ndarray
    row_direction: np.ndarray  # along a row: columns increase
    column_direction: np.ndarray  # down a column: rows increase
    spacing: tuple[float, float]  # (between rows, between columns), as PixelSpacing


def _first(groups: Sequence[Dataset], sequence: str, keyword: str) -> Any:
    for group in groups:
        for item in group.get(sequence, []):
            if keyword in item:
                return item[keyword].value
    return None


def _planes(image: Dataset) -> Iterator[_Plane]:
    if "PerFrameFunctionalGroupsSequence" in image:
        shared = list(image.get("SharedFunctionalGroupsSequence", []))
        for number, frame in enumerate(image.PerFrameFunctionalGroupsSequence, start=1):
            groups = [frame, *shared]
            position = _first(groups, "PlanePositionSequence", "ImagePositionPatient")
            orientation = _first(groups, "PlaneOrientationSequence", "ImageOrientationPatient")
            spacing = _first(groups, "PixelMeasuresSequence", "PixelSpacing")
            if position is not None and orientation is not None and spacing is not None:
                yield _plane(image, number, position, orientation, spacing)
    elif all(k in image for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")):
        yield _plane(image, None, image.ImagePositionPatient, image.ImageOrientationPatient, image.PixelSpacing)


def _plane(image: Dataset, frame: int | None, position: Sequence[float], orientation: Sequence[float],
           spacing: Sequence[float]) -> _Plane:
    cosines = np.asarray([float(v) for v in orientation], dtype=float)
    pixel = [float(v) for v in spacing]
    return _Plane(image, frame, np.asarray([float(v) for v in position], dtype=float),
                  cosines[:3], cosines[3:], (pixel[0], pixel[1]))


def nearest_image_point(images: Sequence[Dataset], point_lps: Sequence[float]) -> ImagePoint:
    """``point_lps`` on the image plane (of ``images``, every frame of a multi-frame one)
    nearest to it, as that image's pixel coordinates, kept inside the image.

    Raises ValueError when no image carries its plane geometry.
    """
    point = np.asarray([float(v) for v in point_lps], dtype=float)
    if point.shape != (3,) or not np.isfinite(point).all():
        raise ValueError(f'Argument "point_lps" must be 3 finite numbers, not {point_lps!r}')
    best: tuple[float, _Plane] | None = None
    for image in images:
        for plane in _planes(image):
            normal = np.cross(plane.row_direction, plane.column_direction)
            distance = abs(float(np.dot(point - plane.position, normal)))
            if best is None or distance < best[0]:
                best = (distance, plane)
    if best is None:
        raise ValueError('Argument "images" holds no image with its plane (position, orientation, pixel spacing)')
    distance, plane = best
    offset = point - plane.position
    column = float(np.dot(offset, plane.row_direction)) / plane.spacing[1] + 0.5
    row = float(np.dot(offset, plane.column_direction)) / plane.spacing[0] + 0.5
    columns, rows = int(plane.image.get("Columns", 0)), int(plane.image.get("Rows", 0))
    if columns and rows:
        column, row = min(max(column, 0.0), float(columns)), min(max(row, 0.0), float(rows))
    return ImagePoint(str(plane.image.SOPClassUID), str(plane.image.SOPInstanceUID), plane.frame,
                      round(column, 2), round(row, 2), round(distance, 3))
