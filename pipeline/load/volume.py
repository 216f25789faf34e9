"""MR volume from one series: single-frame MR slices or Enhanced MR multi-frame, in axial LPS index order.

Implements issue 3 point 2. Geometry comes from the Image Plane module (single-frame:
ImagePositionPatient, ImageOrientationPatient, PixelSpacing) or the Plane Position (Patient),
Plane Orientation (Patient) and Pixel Measures functional groups (multi-frame); intensities
from RescaleSlope/RescaleIntercept (MR Image module or Pixel Value Transformation functional
group). Slices are sorted along the slice normal (row cosines x column cosines) by the
projection of their position; anything that is not one regular stack is a VolumeError.

The oblique policy (orthogonal, acquired tilted, resampled) is :mod:`pipeline.load.grid`'s;
the branch taken is recorded as ``MRVolume.grid``.

Tolerances: direction cosines 1e-3; slice spacing 1 % of the median spacing, pixel spacing
1 % of the pixel spacing, slice positions 1 % of the distance along the normal (about
0.6 deg of tilt), each with a 0.025 mm floor so positions written with two decimals pass.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal, overload

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset

from pipeline.load.index import InstanceHeader, SeriesEntry
from pipeline.errors import VolumeError
from pipeline.load.grid import (
    DEFAULT_MAX_AXIAL_TILT_DEG,
    DEFAULT_MAX_RESAMPLE_SLICE_MM,
    GRID_ORTHOGONAL,
    GRID_RESAMPLED,
    ORIENTATION_TOLERANCE,
    grid_policy,
    orient_to_axial_lps,
)

__all__ = [
    "SPACING_RELATIVE_TOLERANCE",
    "FramePlane",
    "MRVolume",
    "frame_planes",
    "load_series_volume",
    "sort_planes",
]

logger = logging.getLogger(__name__)

SPACING_RELATIVE_TOLERANCE = 0.01  # of the median slice spacing
TILT_TOLERANCE = 0.01  # lateral shift per mm along the normal (about 0.6 degrees)
POSITION_ROUNDING_MM = 0.025  # absolute floor (mm): positions written with two decimals still pass


@dataclass(frozen=True)
class FramePlane:
    """Geometry and rescale of one frame (a single-frame instance or one frame of a multi-frame)."""

    sop_uid: str
    frame: int  # 0-based frame index in its instance
    position: tuple[float, float, float]  # ImagePositionPatient, mm
    orientation: tuple[float, ...]  # ImageOrientationPatient (row cosines, column cosines)
    pixel_spacing: tuple[float, float]  # (between rows, between columns), mm
    rows: int
    columns: int
    slope: float
    intercept: float
    slice_spacing_hint: float | None  # SpacingBetweenSlices or SliceThickness


@dataclass(frozen=True, eq=False)  # holds images: identity, not value, equality
class MRVolume:
    """The series as a float32 volume in axial LPS index order, and the source SOP UIDs of each slice k.

    ``image`` direction: exactly the identity for ``grid`` "orthogonal" and "resampled"; for
    "acquired_tilted" the acquisition's rotation (every axis within ``obliquity_deg`` of its
    LPS axis), i.e. index i ~ +x, j ~ +y, k ~ +z, and slice k is one acquired slice.
    """

    series_uid: str
    image: sitk.Image
    source_sop_uids: tuple[tuple[str, ...], ...]
    acquisition_plane: str  # "axial", "sagittal" or "coronal" (the nearest one when oblique)
    acquired: sitk.Image  # the same voxels on the acquisition grid (slices along k, true direction)
    obliquity_deg: float  # largest angle of an image axis from its patient axis; 0 when orthogonal
    resampled: bool  # True when an oblique acquisition was interpolated onto the axial grid
    grid: str = GRID_ORTHOGONAL  # GRID_ORTHOGONAL, GRID_ACQUIRED_TILTED or GRID_RESAMPLED
    tilt_deg: float = 0.0  # angle of the slice normal from its patient axis (S for axial); 0 when orthogonal
    slice_spacing_mm: float = 0.0  # spacing between the acquired slices
    grid_rule: str = ""  # one sentence: which branch of the oblique policy and why


def _group_item(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """Item of a functional group sequence for one frame: per-frame first, then shared."""
    for holder, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        groups = ds.get(holder)
        if groups is not None and len(groups) > index and sequence in groups[index]:
            items = getattr(groups[index], sequence)
            if len(items):
                item: Dataset = items[0]
                return item
    return None


@overload
def _floats(value: Any, n: Literal[2], what: str, sop_uid: str) -> tuple[float, float]: ...
@overload
def _floats(value: Any, n: Literal[3], what: str, sop_uid: str) -> tuple[float, float, float]: ...
@overload
def _floats(value: Any, n: int, what: str, sop_uid: str) -> tuple[float, ...]: ...
def _floats(value: Any, n: int, what: str, sop_uid: str) -> tuple[float, ...]:
    """``n`` floats of a DICOM value (any type: a malformed one is a VolumeError)."""
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        out = ()
    if len(out) != n:
        raise VolumeError(f"instance {sop_uid}: {what} missing or malformed")
    return out


def frame_planes(instance: InstanceHeader) -> list[FramePlane]:
    """Per-frame geometry of one MR instance (Image Plane module or functional groups)."""
    ds, uid = instance.header, instance.sop_uid
    rows, columns = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    multi = "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds
    planes = []
    for frame in range(n_frames):
        if multi:
            pos_item = _group_item(ds, frame, "PlanePositionSequence")
            ori_item = _group_item(ds, frame, "PlaneOrientationSequence")
            meas_item = _group_item(ds, frame, "PixelMeasuresSequence")
            pvt_item = _group_item(ds, frame, "PixelValueTransformationSequence")
            position = pos_item.get("ImagePositionPatient") if pos_item else None
            orientation = ori_item.get("ImageOrientationPatient") if ori_item else None
            spacing = meas_item.get("PixelSpacing") if meas_item else None
            hint = None
            if meas_item is not None:
                hint = meas_item.get("SpacingBetweenSlices") or meas_item.get("SliceThickness")
            slope = pvt_item.get("RescaleSlope", 1) if pvt_item else ds.get("RescaleSlope", 1)
            intercept = pvt_item.get("RescaleIntercept", 0) if pvt_item else ds.get("RescaleIntercept", 0)
        else:
            position, orientation = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
            spacing = ds.get("PixelSpacing")
            hint = ds.get("SpacingBetweenSlices") or ds.get("SliceThickness")
            slope, intercept = ds.get("RescaleSlope", 1), ds.get("RescaleIntercept", 0)
        planes.append(
            FramePlane(
                sop_uid=uid,
                frame=frame,
                position=_floats(position, 3, "ImagePositionPatient", uid),
                orientation=_floats(orientation, 6, "ImageOrientationPatient", uid),
                pixel_spacing=_floats(spacing, 2, "PixelSpacing", uid),
                rows=rows,
                columns=columns,
                slope=float(slope if slope not in (None, "") else 1.0),
                intercept=float(intercept if intercept not in (None, "") else 0.0),
                slice_spacing_hint=float(hint) if hint not in (None, "") else None,
            )
        )
    return planes


def sort_planes(series_uid: str, planes: list[FramePlane]) -> tuple[list[FramePlane], float, np.ndarray]:
    """Sort frames along the slice normal and check they form one regular stack.

    Returns (sorted frames, slice spacing in mm, normal). Raises VolumeError for mixed
    orientations or sizes, duplicate positions, gantry tilt and non-uniform spacing.
    """
    if not planes:
        raise VolumeError(f"series {series_uid}: no image frames")
    ori = np.array([p.orientation for p in planes])
    spread = float(np.abs(ori - ori[0]).max())
    if spread > ORIENTATION_TOLERANCE:
        raise VolumeError(
            f"series {series_uid}: mixed slice orientations "
            f"(ImageOrientationPatient differs by up to {spread:.3f} between slices)"
        )
    sizes = sorted({(p.rows, p.columns) for p in planes})
    if len(sizes) > 1:
        listed = " and ".join(f"{r}x{c}" for r, c in sizes[:3])
        raise VolumeError(f"series {series_uid}: mixed slice sizes ({listed} rows x columns)")
    spacings = np.array([p.pixel_spacing for p in planes])
    if float(np.abs(spacings - spacings[0]).max()) > SPACING_RELATIVE_TOLERANCE * float(spacings[0].min()):
        raise VolumeError(
            f"series {series_uid}: mixed pixel spacing ({spacings.min():.3f} to {spacings.max():.3f} mm)"
        )
    row, col = np.array(ori[0][:3]), np.array(ori[0][3:])
    if abs(float(row @ col)) > ORIENTATION_TOLERANCE or abs(np.linalg.norm(row) - 1) > ORIENTATION_TOLERANCE:
        raise VolumeError(f"series {series_uid}: ImageOrientationPatient is not orthonormal")
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    positions = np.array([p.position for p in planes])
    proj = positions @ normal
    order = np.argsort(proj, kind="stable")
    planes = [planes[i] for i in order]
    positions, proj = positions[order], proj[order]
    if len(planes) == 1:
        hint = planes[0].slice_spacing_hint
        return planes, float(hint) if hint and hint > 0 else 1.0, normal
    diffs = np.diff(proj)
    median = float(np.median(diffs))
    duplicate_tol = max(SPACING_RELATIVE_TOLERANCE * median, 1e-3)
    dup = np.flatnonzero(diffs < duplicate_tol)
    if dup.size:
        raise VolumeError(
            f"series {series_uid}: frames share a position ({dup.size} duplicate{'s' if dup.size > 1 else ''}, "
            f"first at {proj[dup[0]]:.2f} mm along the slice normal; several echoes, phases or stacks?)"
        )
    shift = positions - positions[0]
    along = shift @ normal
    lateral = np.linalg.norm(shift - np.outer(along, normal), axis=1)
    tilted = lateral[1:] > TILT_TOLERANCE * np.abs(along[1:]) + POSITION_ROUNDING_MM
    if tilted.any():
        angle = math.degrees(math.atan(float((lateral[1:] / np.abs(along[1:]))[tilted].max())))
        raise VolumeError(
            f"series {series_uid}: slice positions are not along the slice normal "
            f"(gantry tilt or shear of about {angle:.1f} deg)"
        )
    low, high = float(diffs.min()), float(diffs.max())
    if high - low > max(SPACING_RELATIVE_TOLERANCE * median, POSITION_ROUNDING_MM):
        gap = int(np.argmax(diffs))
        where = 0.5 * (proj[gap] + proj[gap + 1])
        raise VolumeError(
            f"series {series_uid}: slice spacing varies from {low:.2f} to {high:.2f} mm "
            f"(missing slice near {where:.2f} mm along the slice normal?)"
        )
    return planes, float(np.mean(diffs)), normal


def _read_frames(instances: dict[str, InstanceHeader], planes: list[FramePlane]) -> np.ndarray:
    """Pixel data of the sorted frames as a float32 [k, rows, cols] array, rescaled per frame."""
    cache: dict[str, np.ndarray] = {}
    out = np.empty((len(planes), planes[0].rows, planes[0].columns), dtype=np.float32)
    for k, plane in enumerate(planes):
        if plane.sop_uid not in cache:
            try:
                pixels = pydicom.dcmread(instances[plane.sop_uid].path).pixel_array
            except Exception as exc:  # truncated files, unsupported transfer syntaxes, ...
                # The library's text can name the file's path (often a patient's name): DEBUG only.
                logger.debug("instance %s: pixel decode failure: %s", plane.sop_uid, exc)
                raise VolumeError(
                    f"instance {plane.sop_uid}: pixel data cannot be decoded ({type(exc).__name__})"
                ) from None
            if pixels.ndim == 2:
                pixels = pixels[np.newaxis]
            cache = {plane.sop_uid: pixels}  # keep one instance's pixels at a time
        pixels = cache[plane.sop_uid]
        if plane.frame >= pixels.shape[0]:
            raise VolumeError(f"instance {plane.sop_uid}: frame {plane.frame + 1} has no pixel data")
        out[k] = pixels[plane.frame].astype(np.float32) * np.float32(plane.slope) + np.float32(plane.intercept)
    return out


def load_series_volume(
    series: SeriesEntry,
    *,
    resample_oblique: bool | str = "auto",
    max_axial_tilt_degrees: float = DEFAULT_MAX_AXIAL_TILT_DEG,
    max_resample_slice_mm: float = DEFAULT_MAX_RESAMPLE_SLICE_MM,
) -> MRVolume:
    """Build the series' volume, rescaled to float32, in axial LPS index order by the oblique policy.

    See :func:`pipeline.load.grid.grid_policy` for ``resample_oblique``,
    ``max_axial_tilt_degrees`` and ``max_resample_slice_mm``. ``source_sop_uids[k]``: the
    acquired slice(s) of axial slice k (for a resampled grid, those nearest its voxels).
    """
    instances = {i.sop_uid: i for i in series.instances if i.is_mr_image}
    planes = [p for inst in instances.values() for p in frame_planes(inst)]
    planes, slice_spacing, normal = sort_planes(series.series_uid, planes)
    first = planes[0]
    row, col = np.array(first.orientation[:3]), np.array(first.orientation[3:])
    image = sitk.Image([first.columns, first.rows, len(planes)], sitk.sitkUInt8)  # geometry only, for the policy
    image.SetSpacing((first.pixel_spacing[1], first.pixel_spacing[0], slice_spacing))
    image.SetOrigin(first.position)
    image.SetDirection(tuple(np.column_stack([row, col, normal]).ravel()))
    decision = grid_policy(
        image, series.series_uid, slice_spacing, resample_oblique=resample_oblique,
        max_axial_tilt_degrees=max_axial_tilt_degrees, max_resample_slice_mm=max_resample_slice_mm,
    )  # before decoding pixels: a refused series costs headers only
    voxels = _read_frames(instances, planes)
    geometry = image
    image = sitk.GetImageFromArray(voxels)
    image.CopyInformation(geometry)
    provenance = sitk.GetImageFromArray(
        np.broadcast_to(np.arange(len(planes), dtype=np.int32)[:, None, None], voxels.shape).copy()
    )
    provenance.CopyInformation(image)
    oriented = orient_to_axial_lps(image, decision.grid)
    provenance = orient_to_axial_lps(provenance, decision.grid, interpolator=sitk.sitkNearestNeighbor, outside=-1)
    index = sitk.GetArrayViewFromImage(provenance)
    source: list[tuple[str, ...]] = []
    for k in range(index.shape[0]):
        uids = [planes[i].sop_uid for i in np.unique(index[k]) if i >= 0]
        source.append(tuple(dict.fromkeys(uids)))
    resampled = decision.grid == GRID_RESAMPLED
    if decision.grid != GRID_ORTHOGONAL:
        logger.warning("series %s: %s", series.series_uid, decision.rule)
    logger.info(
        "series %s: %d %s frames -> volume %s at %s mm (%s)",
        series.series_uid, len(planes), decision.plane, oriented.GetSize(),
        tuple(round(s, 3) for s in oriented.GetSpacing()), decision.grid,
    )
    return MRVolume(
        series_uid=series.series_uid,
        image=sitk.Cast(oriented, sitk.sitkFloat32),
        source_sop_uids=tuple(source),
        acquisition_plane=decision.plane,
        acquired=image,
        obliquity_deg=decision.obliquity_deg,
        resampled=resampled,
        grid=decision.grid,
        tilt_deg=decision.tilt_deg,
        slice_spacing_mm=slice_spacing,
        grid_rule=decision.rule,
    )
