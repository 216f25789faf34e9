"""Lesion (and brain) masks from a DICOM SEG, an RT Structure Set or a viewer's outline SR, on
the MR volume's grid.

Implements issue 3 point 3. SEG (Segmentation IOD, BINARY or FRACTIONAL) is decoded with
highdicom (``segread`` + ``Segmentation.get_volume``, which places frames by their Plane
Position (Patient) functional group); each segment is put on the image grid by nearest
neighbour, which is exact when the SEG lattice coincides with the image's (recorded as
``resampled: false``). FRACTIONAL values are thresholded at 0.5 of MaximumFractionalValue.
RTSTRUCT (RT ROI Contour module, CLOSED_PLANAR ContourData in patient mm) is rasterised
slice by slice in the plane the contour lies in, voxel centres inside the polygon, contours
of one ROI on one slice combined by even-odd (XOR), so holes drawn as inner contours stay
empty. Segment/ROI choice follows :class:`pipeline.load.select.SelectionRules`.

A viewer outline (an SR measurement report's closed SCOORD or SCOORD3D, issue 31) becomes a
polygon in patient mm (:mod:`pipeline.load.outline`) and is filled with the RTSTRUCT rule;
one measurement group is one lesion.

All work on any grid, including the tilted (non-identity direction) grid of a near-axial
oblique acquisition (:mod:`pipeline.load.grid`): SEG frames are placed by their patient
position and RTSTRUCT points are mapped to continuous indices through the image's origin,
spacing and direction, so contours in patient mm land on the acquired slices they were
drawn on. A contour that does not lie in a grid plane within half a voxel (drawn on a
reformat) is a MaskError naming how far it spans.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset

from pipeline.errors import MaskError
from pipeline.load.index import InstanceHeader
from pipeline.load.outline import outline_polygon_mm
from pipeline.load.select import SelectionRules
from pipeline.load.volume import frame_planes

__all__ = [
    "LoadedMask", "choose_labels", "fill_polygon", "load_outline_mask", "load_rtstruct_mask", "load_seg_mask",
    "rasterize_contours",
]

logger = logging.getLogger(__name__)

_LATTICE_TOLERANCE = 0.01  # voxel fraction within which two grids' voxel centres coincide


@dataclass(frozen=True, eq=False)  # holds images: identity, not value, equality
class LoadedMask:
    """The chosen lesion (and brain, if any) as uint8 0/1 images on the MR grid."""

    lesion: sitk.Image
    brain: sitk.Image | None
    lesion_number: int
    lesion_label: str
    record: dict[str, Any]


def choose_labels(
    labels: list[tuple[int, str, int]], rules: SelectionRules, mask_uid: str
) -> tuple[int, int | None, dict[str, Any]]:
    """Pick the lesion and brain among (number, label, voxels on the image grid).

    Lesion: the largest non-empty label matching ``lesion_label_pattern`` and not
    ``exclude_label_pattern`` ("Peritumoral edema" is not the lesion), even if it also
    matches the brain pattern, as "Brain metastasis" does; else, if ``lesion_fallback_largest``, the largest non-empty label matching
    neither ``brain_label_pattern`` nor ``exclude_label_pattern``. Brain: the largest
    non-empty label matching ``brain_label_pattern`` but not ``lesion_label_pattern``.
    """
    lesion_re, brain_re = re.compile(rules.lesion_label_pattern), re.compile(rules.brain_label_pattern)
    exclude_re = re.compile(rules.exclude_label_pattern)
    # "Brain metastasis" is a lesion: the lesion pattern wins over the brain pattern.
    named = [x for x in labels if lesion_re.search(x[1]) and not exclude_re.search(x[1]) and x[2] > 0]
    brains = [x for x in labels if brain_re.search(x[1]) and not lesion_re.search(x[1]) and x[2] > 0]
    if named:
        lesion, rule = max(named, key=lambda x: (x[2], -x[0])), "lesion_label_pattern, then largest"
    else:
        rest = [x for x in labels if not brain_re.search(x[1]) and not exclude_re.search(x[1]) and x[2] > 0]
        if not rest or not rules.lesion_fallback_largest:
            listed = ", ".join(f"{n} {label!r} ({v} voxels)" for n, label, v in labels) or "none"
            raise MaskError(f"mask {mask_uid}: no non-empty lesion segment or ROI among: {listed}")
        lesion, rule = max(rest, key=lambda x: (x[2], -x[0])), "largest (no label matched lesion_label_pattern)"
    brain = max(brains, key=lambda x: x[2]) if brains else None
    record = {
        "lesion_number": lesion[0],
        "lesion_label": lesion[1],
        "lesion_rule": rule,
        "brain_number": brain[0] if brain else None,
        "labels": [{"number": n, "label": label, "voxels": v} for n, label, v in labels],
    }
    return lesion[0], (brain[0] if brain else None), record


def _volume_to_sitk(volume: hd.Volume) -> sitk.Image:
    """highdicom Volume (array axes 0, 1, 2 -> affine columns) as a SimpleITK image."""
    array = np.asarray(volume.array)
    if array.ndim == 4:
        array = array[..., 0]
    affine = np.asarray(volume.affine, dtype=float)
    steps = [affine[:3, axis] for axis in (2, 1, 0)]  # SimpleITK index order x, y, z
    spacing = [float(np.linalg.norm(s)) for s in steps]
    direction = np.column_stack([s / n for s, n in zip(steps, spacing)])
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(spacing)
    image.SetOrigin(tuple(affine[:3, 3]))
    image.SetDirection(tuple(direction.ravel()))
    return image


def _lattice_aligned(source: sitk.Image, target: sitk.Image) -> bool:
    """True when the voxel centres of ``target`` fall on ``source``'s lattice (within 1 %).

    A single-slice source has no spacing across its plane: there, only the in-plane indices
    are checked, plus that the source plane passes through voxel centres of ``target``.
    """
    single = source.GetSize()[2] == 1
    for index in [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)]:
        cont = np.array(source.TransformPhysicalPointToContinuousIndex(target.TransformIndexToPhysicalPoint(index)))
        if single:
            cont = cont[:2]
        if float(np.abs(cont - np.round(cont)).max()) > _LATTICE_TOLERANCE:
            return False
    if single:
        cont = np.array(target.TransformPhysicalPointToContinuousIndex(source.GetOrigin()))
        if float(np.abs(cont - np.round(cont)).max()) > _LATTICE_TOLERANCE:
            return False
    return True


def _library_error(what: str, exc: Exception) -> MaskError:
    """``what (ExceptionType)``: a library's message can quote dataset content, so it is
    logged at DEBUG only and left out of the error (and its chain)."""
    logger.debug("%s: %s: %s", what, type(exc).__name__, exc)
    return MaskError(f"{what} ({type(exc).__name__})")


def load_seg_mask(path: Path, image: sitk.Image, rules: SelectionRules, *, sop_uid: str = "") -> LoadedMask:
    """Decode a SEG with highdicom and put its lesion (and brain) segment on ``image``'s grid.

    ``sop_uid`` names the SEG in errors when the file cannot be read (file names may carry
    patient details outside the archive, so they are never shown).
    """
    try:
        seg = hd.seg.segread(path)
    except Exception as exc:  # highdicom raises many kinds on malformed SEGs
        raise _library_error(f"SEG {sop_uid or '(unreadable)'}: cannot be read by highdicom", exc) from None
    uid = str(seg.SOPInstanceUID)
    fractional = seg.SegmentationType == "FRACTIONAL"
    on_grid: dict[int, np.ndarray] = {}
    labels: list[tuple[int, str, int]] = []
    per_segment: list[dict[str, Any]] = []
    for description in seg.SegmentSequence:
        number, label = int(description.SegmentNumber), str(description.get("SegmentLabel", ""))
        try:
            volume = seg.get_volume(segment_numbers=[number], rescale_fractional=True)
        except (ValueError, RuntimeError) as exc:
            raise _library_error(f"SEG {uid}: segment {number} does not form a volume", exc) from None
        values = np.asarray(volume.array)
        binary = (values >= 0.5) if fractional else (values > 0)
        volume = volume.with_array(binary.astype(np.uint8))
        source = _volume_to_sitk(volume)
        if source.GetSize()[2] == 1:  # one frame: no spacing across it; reach the nearest image plane only
            source.SetSpacing((*source.GetSpacing()[:2], 0.5 * min(image.GetSpacing())))
        aligned = _lattice_aligned(source, image)
        placed = sitk.Resample(source, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        array = sitk.GetArrayFromImage(placed)
        total, kept = int(binary.sum()), int(array.sum())
        if aligned and kept < total:
            logger.warning("SEG %s segment %d: %d of %d voxels outside the image", uid, number, total - kept, total)
        on_grid[number] = array
        labels.append((number, label, kept))
        per_segment.append(
            {"number": number, "label": label, "voxels_in_seg": total, "voxels_on_image": kept,
             "resampled": not aligned}
        )
    lesion_number, brain_number, record = choose_labels(labels, rules, uid)
    record.update({"segmentation_type": str(seg.SegmentationType), "segments": per_segment,
                   "threshold": 0.5 if fractional else None})
    if any(s["resampled"] for s in per_segment):
        logger.info("SEG %s: grid differs from the image, nearest-neighbour resampled", uid)
    return LoadedMask(
        lesion=_to_image(on_grid[lesion_number], image),
        brain=_to_image(on_grid[brain_number], image) if brain_number is not None else None,
        lesion_number=lesion_number,
        lesion_label=dict((n, lab) for n, lab, _ in labels)[lesion_number],
        record=record,
    )


def _to_image(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    out = sitk.GetImageFromArray((array > 0).astype(np.uint8))
    out.CopyInformation(reference)
    return out


def fill_polygon(xa: np.ndarray, xb: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Voxel centres (integer indices) inside a closed polygon, even-odd rule, by scanlines.

    ``xa``, ``xb``: vertex coordinates in continuous index units along the two plane axes.
    Returns a bool array of ``shape`` indexed [a, b]. Each scanline b = const crosses the
    edges with min(b0, b1) <= b < max(b0, b1) (half-open, so a vertex counts once); the
    centres between the 1st and 2nd, 3rd and 4th, ... crossings are inside.
    """
    out = np.zeros(shape, dtype=bool)
    a0, b0 = np.asarray(xa, float), np.asarray(xb, float)
    a1, b1 = np.roll(a0, -1), np.roll(b0, -1)
    lo, hi = max(int(np.ceil(b0.min())), 0), min(int(np.floor(b0.max())), shape[1] - 1)
    if hi < lo:
        return out
    rows = np.arange(lo, hi + 1, dtype=float)[:, None]
    crosses = (np.minimum(b0, b1) <= rows) & (rows < np.maximum(b0, b1))
    with np.errstate(divide="ignore", invalid="ignore"):
        at = a0 + (rows - b0) * (a1 - a0) / (b1 - b0)
    at = np.sort(np.where(crosses, at, np.inf), axis=1)
    count = crosses.sum(axis=1)
    edges = np.zeros((len(rows), shape[0] + 1), dtype=np.int32)
    for pair in range(0, int(count.max(initial=0)) - 1, 2):
        valid = count > pair + 1
        start = np.clip(np.ceil(at[valid, pair]), 0, shape[0]).astype(int)
        end = np.clip(np.ceil(at[valid, pair + 1]), 0, shape[0]).astype(int)
        row_ids = np.flatnonzero(valid)
        np.add.at(edges, (row_ids, start), 1)
        np.add.at(edges, (row_ids, end), -1)
    out[:, lo:hi + 1] = (np.cumsum(edges, axis=1)[:, :-1] > 0).T
    return out


def rasterize_contours(contours: list[np.ndarray], image: sitk.Image) -> tuple[np.ndarray, float]:
    """Fill planar contours (N x 3 patient mm) into a [z, y, x] uint8 array on ``image``.

    Each contour is filled in the grid plane it lies in (the index axis along which it is
    flat, normally the acquisition's slice axis); contours sharing a slice are combined by
    XOR (even-odd), so an inner contour cuts a hole. Returns the array and the largest
    distance (mm) of a contour point from the plane of voxel centres it was filled into.
    Index <-> mm uses the full direction matrix, so tilted grids are handled.
    """
    size = image.GetSize()  # x, y, z
    origin, spacing = np.array(image.GetOrigin()), np.array(image.GetSpacing())
    direction = np.array(image.GetDirection()).reshape(3, 3)  # columns: index axes in LPS
    out = np.zeros(size[::-1], dtype=np.uint8)
    filled: dict[tuple[int, int], np.ndarray] = {}
    off_plane = 0.0
    for points in contours:
        if len(points) < 3:
            continue
        index = (points - origin) @ direction / spacing  # continuous index i, j, k (direction is orthonormal)
        axis = int(np.argmin(np.ptp(index, axis=0)))
        span = float(np.ptp(index[:, axis]))
        if span > 0.5:
            raise MaskError(
                f"contour is not in a plane of the image grid: its points span {span:.2f} voxels "
                f"({span * float(spacing[axis]):.2f} mm) across the nearest grid plane, more than 0.5 "
                f"(drawn on an oblique reformat?)"
            )
        plane = float(np.mean(index[:, axis]))
        k = int(round(plane))
        off_plane = max(off_plane, float(np.abs(index[:, axis] - k).max()) * float(spacing[axis]))
        if not 0 <= k < size[axis]:
            continue
        a, b = [i for i in range(3) if i != axis]
        inside = fill_polygon(index[:, a], index[:, b], (size[a], size[b]))
        key = (axis, k)
        if key not in filled:
            filled[key] = np.zeros((size[a], size[b]), dtype=bool)
        filled[key] ^= inside
    for (axis, k), plane_mask in filled.items():
        # out is [z, y, x]; plane_mask is indexed by the two remaining x/y/z axes in order.
        selector: list[Any] = [slice(None)] * 3
        selector[2 - axis] = k
        view = out[tuple(selector)]  # remaining axes in z, y, x order = reversed (a, b)
        view |= plane_mask.T.astype(np.uint8)
    return out, off_plane


def _carry(array: np.ndarray, grid: sitk.Image, target: sitk.Image) -> np.ndarray:
    """A 0/1 array on ``grid`` onto ``target``: linear interpolation, then >= 0.5."""
    source = sitk.GetImageFromArray(array.astype(np.float32))
    source.CopyInformation(grid)
    moved = sitk.Resample(source, target, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    carried: np.ndarray = (sitk.GetArrayViewFromImage(moved) >= 0.5).astype(np.uint8)
    return carried


def _fill(contours: list[np.ndarray], image: sitk.Image, raster_grid: sitk.Image | None,
          what: str) -> tuple[np.ndarray, float]:
    """Planar contours (patient mm) filled on ``image``: on ``raster_grid`` (the acquisition
    grid of a resampled oblique series) first and carried over when given; errors name ``what``."""
    try:
        array, off_plane = rasterize_contours(contours, raster_grid or image)
    except MaskError as exc:
        raise MaskError(f"{what}: {exc}") from exc
    if raster_grid is not None:
        array = _carry(array, raster_grid, image)
    return array, off_plane


def _contour_points(contour: Dataset) -> np.ndarray:
    """ContourData (3006,0050) as an N x 3 array; parsed from the raw bytes when still raw.

    pydicom's per-value DS objects cost about 10 us each; a brain outline has 10^5 values.
    """
    element = contour.get_item(0x30060050)
    value = getattr(element, "value", None)
    if isinstance(value, bytes):
        return np.array(value.decode("ascii").replace("\\", " ").split(), dtype=float).reshape(-1, 3)
    return np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)


def load_rtstruct_mask(
    structure_set: Dataset, image: sitk.Image, rules: SelectionRules, *, raster_grid: sitk.Image | None = None
) -> LoadedMask:
    """Rasterise the RT Structure Set's ROIs onto ``image`` and pick lesion and brain.

    ``raster_grid``: the acquisition grid when ``image`` was resampled from an oblique
    acquisition; contours are filled there (their own planes) and the fill is carried onto
    ``image`` by linear interpolation thresholded at 0.5.
    """
    uid = str(structure_set.SOPInstanceUID)
    names = {int(r.ROINumber): str(r.get("ROIName", "")) for r in structure_set.get("StructureSetROISequence", [])}
    arrays: dict[int, np.ndarray] = {}
    labels: list[tuple[int, str, int]] = []
    per_roi: list[dict[str, Any]] = []
    for roi in structure_set.get("ROIContourSequence", []):
        number = int(roi.ReferencedROINumber)
        contours = [
            _contour_points(c)
            for c in roi.get("ContourSequence", [])
            if str(c.get("ContourGeometricType", "CLOSED_PLANAR")) == "CLOSED_PLANAR"
        ]
        array, off_plane = _fill(contours, image, raster_grid, f"RTSTRUCT {uid} ROI {number}")
        arrays[number] = array
        labels.append((number, names.get(number, ""), int(array.sum())))
        per_roi.append({"number": number, "label": names.get(number, ""), "contours": len(contours),
                        "voxels_on_image": int(array.sum()), "max_off_plane_mm": round(off_plane, 3),
                        "resampled": raster_grid is not None})
    if not labels:
        raise MaskError(f"RTSTRUCT {uid}: no ROI contours")
    lesion_number, brain_number, record = choose_labels(labels, rules, uid)
    record["rois"] = per_roi
    return LoadedMask(
        lesion=_to_image(arrays[lesion_number], image),
        brain=_to_image(arrays[brain_number], image) if brain_number is not None else None,
        lesion_number=lesion_number,
        lesion_label=names.get(lesion_number, ""),
        record=record,
    )


def load_outline_mask(
    report: InstanceHeader, image: sitk.Image, rules: SelectionRules, series: Sequence[InstanceHeader], *,
    raster_grid: sitk.Image | None = None,
) -> LoadedMask:
    """Fill the viewer outlines of an SR measurement report (:mod:`pipeline.load.outline`) onto
    ``image`` and pick the lesion: one measurement group is one lesion, the largest chosen as
    for a SEG (:func:`choose_labels`; a group's label is its finding or tracking identifier).

    Only outlines on an image of ``series`` (the chosen MR series), or in patient mm in its
    frame of reference, are read; the others are listed in the record. Each is turned into a
    polygon in patient mm and filled with the RT Structure Set rule
    (:func:`rasterize_contours`), on ``raster_grid`` (the acquisition grid) when ``image`` was
    resampled from an oblique acquisition, then carried as an RTSTRUCT is.
    """
    uid = report.sop_uid
    planes = {(p.sop_uid, p.frame): p for instance in series for p in frame_planes(instance)}
    single = {instance.sop_uid for instance in series if int(instance.header.get("NumberOfFrames", 1) or 1) == 1}
    frames_of_reference = {i.frame_of_reference_uid for i in series if i.frame_of_reference_uid}
    groups: dict[int, list[np.ndarray]] = {}
    names: dict[int, str] = {}
    read: list[dict[str, Any]] = []
    elsewhere: list[str] = []
    for outline in report.outlines:
        if outline.three_d:
            if outline.frame_of_reference_uid not in frames_of_reference:
                elsewhere.append(outline.describe())
                continue
            polygon = outline_polygon_mm(outline)
        else:
            frame = 0 if outline.image_sop_uid in single else (outline.frame or 1) - 1
            plane = planes.get((str(outline.image_sop_uid), frame))
            if plane is None:
                elsewhere.append(outline.describe())
                continue
            polygon = outline_polygon_mm(outline, plane.position, plane.orientation, plane.pixel_spacing)
        groups.setdefault(outline.group, []).append(polygon)
        names.setdefault(outline.group, outline.label)
        read.append({"group": outline.group, "graphic_type": outline.graphic_type, "tracking_uid": outline.tracking_uid,
                     "tracking_id": outline.tracking_id, "image_sop_uid": outline.image_sop_uid,
                     "frame": outline.frame, "frame_of_reference_uid": outline.frame_of_reference_uid})
    if not groups:
        listed = "; ".join(elsewhere) or "none"
        raise MaskError(f"outline SR {uid}: no outline lies on an image of the chosen series ({listed})")
    arrays: dict[int, np.ndarray] = {}
    labels: list[tuple[int, str, int]] = []
    per_group: list[dict[str, Any]] = []
    for group, polygons in groups.items():
        array, off_plane = _fill(polygons, image, raster_grid, f"outline SR {uid} group {group}")
        arrays[group] = array
        labels.append((group, names[group], int(array.sum())))
        slices = int(np.count_nonzero(array.reshape(array.shape[0], -1).any(axis=1)))
        per_group.append({"group": group, "label": names[group], "outlines": len(polygons),
                          "voxels_on_image": int(array.sum()), "slices": slices,
                          "max_off_plane_mm": round(off_plane, 3), "resampled": raster_grid is not None})
    lesion_number, _, record = choose_labels(labels, rules, uid)
    chosen = next(o for o in read if o["group"] == lesion_number)
    slices = next(g["slices"] for g in per_group if g["group"] == lesion_number)
    record.update({
        "brain_number": None,  # a viewer outline is the lesion only
        "groups": per_group,
        "outlines": read,
        "outlines_not_on_series": elsewhere,
        "tracking_uid": chosen["tracking_uid"],
        "tracking_id": chosen["tracking_id"],
        "description": f"viewer outline ({chosen['graphic_type']}) on {slices} slice{'s' if slices != 1 else ''}",
    })
    return LoadedMask(
        lesion=_to_image(arrays[lesion_number], image),
        brain=None,
        lesion_number=lesion_number,
        lesion_label=names[lesion_number],
        record=record,
    )
