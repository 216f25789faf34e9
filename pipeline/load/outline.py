"""A lesion outlined in a viewer: the closed planar regions of an SR measurement report.

Issue 31. A viewer saves its measurements as a TID 1500 Measurement Report (Enhanced SR,
Comprehensive SR, Comprehensive 3D SR): OHIF 3.x writes each annotation as a measurement
group (TID 1501) whose NUM (an area, a length) is INFERRED FROM a SCOORD on one image;
other tools (highdicom) write the planar ROI of TID 1410, the SCOORD or SCOORD3D directly in
the group. Both are found here by walking the content tree (header only: an SR has no
pixels), whatever the template, so the two forms and the nested OHIF form read the same.

A region is an outline when it encloses an area (PS3.3 C.18.6.1.2 and C.18.9.1.2):

- SCOORD (pixel coordinates on one image, column\\row, 0.0\\0.0 the outer corner of the
  top left pixel): a POLYLINE whose last point repeats its first (closed; OHIF closes its
  freehand, spline and rectangle outlines this way), a POLYGON, an ELLIPSE (major axis
  end points, then minor axis end points), a CIRCLE (centre, then a point on it);
- SCOORD3D (patient mm in a frame of reference): the same shapes, POLYGON closed by
  definition.

Points, multipoints, arrows, lengths and open polylines are not outlines, nor is an
ELLIPSOID (a volume, not a plane). The node's own result SR marks the lesion with a POINT, so
it is never read as a mask.

The outline is turned into a closed polygon in patient mm (an ellipse or circle with
:data:`ELLIPSE_VERTICES` vertices) and filled with the RT Structure Set rule
(:func:`pipeline.load.masks.rasterize_contours`): one implementation for both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from db import sop_classes

__all__ = ["ELLIPSE_VERTICES", "OUTLINE_SHAPES", "Outline", "find_outlines", "outline_frame_of_reference",
           "outline_polygon_mm", "outline_referenced_images"]

#: Vertices of the polygon an ELLIPSE or CIRCLE is filled as (the area is within 0.2 %).
ELLIPSE_VERTICES = 72
#: The graphic types that can enclose an area.
OUTLINE_SHAPES = ("POLYLINE", "POLYGON", "ELLIPSE", "CIRCLE")
_TRACKING_ID, _TRACKING_UID, _FINDING = ("112039", "DCM"), ("112040", "DCM"), ("121071", "DCM")
_CLOSED_TOLERANCE = 1e-3  # pixel or mm: a POLYLINE whose last point is this near its first is closed


@dataclass(frozen=True, eq=False)
class Outline:
    """One closed region of the report, where it lies, and the measurement group it belongs to.

    ``points``: (N, 2) pixel column/row for a SCOORD on ``image_sop_uid`` (``frame``: its
    1-based frame, None for a single-frame image), (N, 3) patient mm for a SCOORD3D in
    ``frame_of_reference_uid``. ``group``: the 1-based measurement group (the lesion), with its
    tracking identifier and UID when it has them; ``label``: the finding or tracking text.
    """

    graphic_type: str
    points: np.ndarray
    group: int
    tracking_uid: str | None = None
    tracking_id: str | None = None
    label: str = ""
    image_sop_uid: str | None = None
    frame: int | None = None
    frame_of_reference_uid: str | None = None

    @property
    def three_d(self) -> bool:
        return self.image_sop_uid is None

    def describe(self) -> str:
        """One line for records and errors: shape, where, which group."""
        where = (f"on image {self.image_sop_uid}" + (f" frame {self.frame}" if self.frame else "")
                 if not self.three_d else f"in frame of reference {self.frame_of_reference_uid}")
        return f"{self.graphic_type} {where} (group {self.group}" + (
            f", tracking UID {self.tracking_uid})" if self.tracking_uid else ")")


def _code(item: Dataset, keyword: str = "ConceptNameCodeSequence") -> tuple[str, str] | None:
    codes: Sequence[Dataset] = item.get(keyword) or ()
    if not len(codes):
        return None
    return str(codes[0].get("CodeValue", "")), str(codes[0].get("CodingSchemeDesignator", ""))


def _children(item: Dataset) -> list[Dataset]:
    return list(item.get("ContentSequence") or ())


def _closed(graphic_type: str, points: np.ndarray) -> bool:
    if graphic_type == "POLYLINE":
        return len(points) >= 4 and float(np.abs(points[0] - points[-1]).max()) <= _CLOSED_TOLERANCE
    if graphic_type == "POLYGON":
        return len(points) >= 3
    if graphic_type == "ELLIPSE":
        return len(points) == 4
    if graphic_type == "CIRCLE":
        return len(points) == 2
    return False


def _group_identity(container: Dataset) -> tuple[str | None, str | None, str]:
    """Tracking UID, tracking identifier and label of a measurement group (its direct children)."""
    uid = identifier = None
    label = ""
    for child in _children(container):
        code = _code(child)
        if code == _TRACKING_UID:
            uid = str(child.get("UID", "")) or None
        elif code == _TRACKING_ID:
            identifier = str(child.get("TextValue", "")) or None
        elif code == _FINDING and child.get("ConceptCodeSequence"):
            label = str(child.ConceptCodeSequence[0].get("CodeMeaning", ""))
    return uid, identifier, label


def _walk(items: list[Dataset], group: list[int], identity: tuple[str | None, str | None, str] | None,
          counter: list[int]) -> Iterator[tuple[Dataset, int, tuple[str | None, str | None, str] | None]]:
    """Every SCOORD/SCOORD3D item with the measurement group it is in (the nearest container
    with a tracking UID or identifier; groups numbered in document order)."""
    for item in items:
        value_type = str(item.get("ValueType", ""))
        if value_type == "CONTAINER":
            own = _group_identity(item)
            if own[0] or own[1]:
                counter[0] += 1
                yield from _walk(_children(item), [counter[0]], own, counter)
            else:
                yield from _walk(_children(item), group, identity, counter)
        elif value_type in ("SCOORD", "SCOORD3D"):
            yield item, group[0], identity
        else:
            yield from _walk(_children(item), group, identity, counter)


def _outline(item: Dataset, group: int, identity: tuple[str | None, str | None, str] | None) -> Outline | None:
    graphic_type = str(item.get("GraphicType", "")).upper()
    if graphic_type not in OUTLINE_SHAPES:
        return None
    three_d = str(item.ValueType) == "SCOORD3D"
    if three_d and graphic_type == "CIRCLE":  # SCOORD3D defines no CIRCLE (it would need a plane)
        return None
    try:
        points = np.asarray([float(v) for v in item.get("GraphicData", [])], dtype=float).reshape(-1, 3 if three_d else 2)
    except (TypeError, ValueError):
        return None
    if not len(points) or not np.isfinite(points).all() or not _closed(graphic_type, points):
        return None
    uid, identifier, label = identity or (None, None, "")
    outline = Outline(graphic_type=graphic_type, points=points, group=group, tracking_uid=uid,
                      tracking_id=identifier, label=label or identifier or "")
    if three_d:
        frame_of_reference = str(item.get("ReferencedFrameOfReferenceUID", "")) or None
        return dataclasses.replace(outline, frame_of_reference_uid=frame_of_reference) if frame_of_reference else None
    for child in _children(item):  # SELECTED FROM the image (PS3.3 C.18.6)
        references: Sequence[Dataset] = child.get("ReferencedSOPSequence") or ()
        if str(child.get("ValueType", "")) == "IMAGE" and len(references):
            frames = references[0].get("ReferencedFrameNumber")
            if isinstance(frames, (list, tuple)) or type(frames).__name__ == "MultiValue":
                frames = frames[0] if len(frames) else None
            frame = int(frames) if frames not in (None, "") else None
            return dataclasses.replace(outline, image_sop_uid=str(references[0].ReferencedSOPInstanceUID), frame=frame)
    return None


def find_outlines(ds: Dataset) -> list[Outline]:
    """The closed planar regions of an SR measurement report, in document order; [] for any
    other object (not an SR class the node reads outlines from, or no closed region)."""
    if str(ds.get("SOPClassUID", "")) not in sop_classes.OUTLINE_SR_CLASSES:
        return []
    found = []
    for item, group, identity in _walk(_children(ds), [0], None, [0]):
        outline = _outline(item, group, identity)
        if outline is not None:
            found.append(outline)
    return found


def outline_referenced_images(ds: Dataset) -> tuple[str, ...]:
    """SOP Instance UIDs of the images the report's outlines lie on, first-seen order."""
    return tuple(dict.fromkeys(o.image_sop_uid for o in find_outlines(ds) if o.image_sop_uid))


def outline_frame_of_reference(outlines: list[Outline] | tuple[Outline, ...]) -> str | None:
    """The frame of reference of the first outline in patient mm (SCOORD3D), if any."""
    return next((o.frame_of_reference_uid for o in outlines if o.frame_of_reference_uid), None)


def _ellipse(centre: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    angles = np.linspace(0.0, 2.0 * np.pi, ELLIPSE_VERTICES, endpoint=False)[:, None]
    vertices: np.ndarray = centre + np.cos(angles) * a + np.sin(angles) * b
    return vertices


def _polygon(graphic_type: str, points: np.ndarray) -> np.ndarray:
    """The outline as polygon vertices in its own coordinates (pixels or mm), not repeated."""
    if graphic_type == "ELLIPSE":
        centre = points[:2].mean(axis=0)
        return _ellipse(centre, points[0] - centre, (points[2] - points[3]) / 2.0)
    if graphic_type == "CIRCLE":
        centre, radius = points[0], points[1] - points[0]
        if len(centre) == 2:
            other = np.array([-radius[1], radius[0]])
        else:  # a circle in 3D needs its plane: SCOORD3D CIRCLE is not defined (PS3.3 C.18.9.1.2)
            raise ValueError("a CIRCLE in patient coordinates has no plane")
        return _ellipse(centre, radius, other)
    if len(points) > 3 and float(np.abs(points[0] - points[-1]).max()) <= _CLOSED_TOLERANCE:
        return points[:-1]  # a POLYLINE closed by repeating its first point (a POLYGON may do the same)
    return points


def outline_polygon_mm(outline: Outline, position: tuple[float, ...] | None = None,
                       orientation: tuple[float, ...] | None = None,
                       pixel_spacing: tuple[float, float] | None = None) -> np.ndarray:
    """The outline as a closed polygon (N x 3, patient mm, last vertex not repeated).

    A pixel outline needs its image frame's plane: ``position`` (ImagePositionPatient, the
    centre of the top left pixel), ``orientation`` (row then column direction cosines) and
    ``pixel_spacing`` (between rows, between columns). Pixel coordinate (c, r) is the point
    (c - 0.5, r - 0.5) pixel steps from that centre, as PS3.3 C.18.6.1.1 places 0.0\\0.0 at the
    outer corner of the top left pixel.
    """
    polygon = _polygon(outline.graphic_type, outline.points)
    if outline.three_d:
        return polygon
    if position is None or orientation is None or pixel_spacing is None:
        raise ValueError(f"outline {outline.describe()}: the image plane is needed to place it")
    row_direction, column_direction = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    between_rows, between_columns = pixel_spacing
    columns, rows = polygon[:, 0] - 0.5, polygon[:, 1] - 0.5
    polygon_mm: np.ndarray = (np.asarray(position)[None, :] + columns[:, None] * between_columns * row_direction[None, :]
                              + rows[:, None] * between_rows * column_direction[None, :])
    return polygon_mm
