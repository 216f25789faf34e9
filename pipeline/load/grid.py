"""The oblique policy: how an MR acquisition grid becomes axial LPS index order.

Split from :mod:`pipeline.load.volume` (which builds the acquisition grid and applies the
decision). Policy (:func:`grid_policy`; the numbers are rules of
:class:`pipeline.load.select.SelectionRules`), recorded as ``MRVolume.grid``:

1. ``"orthogonal"``: every slice axis within ``ORIENTATION_TOLERANCE`` (about 0.06 deg) of a
   patient axis, any plane. DICOMOrient("LPS") permutes/flips the voxels, no interpolation;
   the direction is set to exactly the identity, so index k runs over axial slices.
2. ``"acquired_tilted"``: a near-axial oblique acquisition, every image axis within
   ``max_axial_tilt_degrees`` (default 25) of its LPS axis - the usual AC-PC-aligned
   "axial" brain MRI. The ACQUIRED slices are kept, no interpolation: the native grid,
   axes permuted/flipped to the closest LPS order, so index i runs about +x (left), j about
   +y (posterior), k along the slice normal about +z (inferior -> superior), and the
   direction is a rotation within the limit of the identity. Slice k is one acquired slice.
   Downstream code must map index <-> patient mm with the image's direction
   (TransformIndexToPhysicalPoint / TransformPhysicalPointToIndex), never origin + index *
   spacing: at 100 mm from the centre a 3 deg tilt moves a slice 5 mm along z.
3. ``"resampled"``: any other oblique acquisition (sagittal/coronal-ish, or tilted more than
   the limit) is interpolated (linear) onto an axial direction-identity grid at the acquired
   spacing, ``resample_oblique="auto"`` (default) only when the slice spacing is at most
   ``max_resample_slice_mm`` (near-isotropic 3D data, default 1.5 mm); thick-slice 2D data
   is a VolumeError, because an axial slice resampled from it blends several acquired
   slices (at 5 mm spacing a 3 deg tilt crosses a whole slice 100 mm from the centre), and
   the paper's model saw acquired slices. ``resample_oblique=True`` resamples whatever the
   spacing, ``False`` refuses every such acquisition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from pipeline.errors import VolumeError

__all__ = [
    "DEFAULT_MAX_AXIAL_TILT_DEG",
    "DEFAULT_MAX_RESAMPLE_SLICE_MM",
    "GRID_ACQUIRED_TILTED",
    "GRID_ORTHOGONAL",
    "GRID_RESAMPLED",
    "ORIENTATION_TOLERANCE",
    "GridDecision",
    "axial_grid",
    "grid_policy",
    "obliquity_deg",
    "orient_to_axial_lps",
    "tilt_deg",
]

ORIENTATION_TOLERANCE = 1e-3  # on direction cosines
DEFAULT_MAX_AXIAL_TILT_DEG = 25.0  # near-axial oblique: acquired slices kept up to this tilt
DEFAULT_MAX_RESAMPLE_SLICE_MM = 1.5  # other oblique: resampled by default up to this slice spacing
GRID_ORTHOGONAL = "orthogonal"  # permuted/flipped, direction exactly the identity
GRID_ACQUIRED_TILTED = "acquired_tilted"  # near-axial oblique: acquired slices, direction near identity
GRID_RESAMPLED = "resampled"  # other oblique: interpolated onto an axial direction-identity grid
_AXIS_NAMES = ("L", "P", "S")


def obliquity_deg(image: sitk.Image) -> float:
    """Largest angle (degrees) between an image axis and the patient axis closest to it."""
    direction = np.abs(np.array(image.GetDirection()).reshape(3, 3))
    return math.degrees(math.acos(min(1.0, float(direction.max(axis=0).min()))))


def tilt_deg(image: sitk.Image) -> float:
    """Angle (degrees) between the slice normal (index axis k) and the patient axis closest to it."""
    normal = np.abs(np.array(image.GetDirection()).reshape(3, 3)[:, 2])
    return math.degrees(math.acos(min(1.0, float(normal.max()))))


def axial_grid(image: sitk.Image) -> sitk.Image:
    """An empty direction-identity grid covering ``image``'s voxel centres at its spacing.

    Spacing per patient axis is the spacing of the image axis closest to it.
    """
    oriented = sitk.DICOMOrient(image, "LPS")  # axis i closest to x, j to y, k to z
    size = np.array(image.GetSize())
    corners = np.array([
        image.TransformIndexToPhysicalPoint([int(c) for c in corner])
        for corner in np.array(np.meshgrid(*[[0, n - 1] for n in size], indexing="ij")).reshape(3, -1).T
    ])
    spacing = np.array(oriented.GetSpacing())
    low, high = corners.min(axis=0), corners.max(axis=0)
    grid = sitk.Image([int(v) for v in np.round((high - low) / spacing).astype(int) + 1], sitk.sitkUInt8)
    grid.SetSpacing(tuple(float(v) for v in spacing))
    grid.SetOrigin(tuple(float(v) for v in low))
    return grid


@dataclass(frozen=True)
class GridDecision:
    """Which branch of the oblique policy an acquisition takes (see the module docstring)."""

    grid: str  # GRID_ORTHOGONAL, GRID_ACQUIRED_TILTED or GRID_RESAMPLED
    plane: str  # nearest acquisition plane
    tilt_deg: float  # slice normal from its patient axis (0 when orthogonal)
    obliquity_deg: float  # largest image axis angle from its patient axis (0 when orthogonal)
    rule: str  # one sentence for the record


def _check_resample_oblique(value: object) -> bool | str:
    if isinstance(value, bool) or value == "auto":
        return value
    raise ValueError(f'Argument "resample_oblique" must be true, false or "auto", not {value!r}')


def grid_policy(
    image: sitk.Image,
    series_uid: str,
    slice_spacing_mm: float,
    *,
    resample_oblique: bool | str = "auto",
    max_axial_tilt_degrees: float = DEFAULT_MAX_AXIAL_TILT_DEG,
    max_resample_slice_mm: float = DEFAULT_MAX_RESAMPLE_SLICE_MM,
) -> GridDecision:
    """Decide how the acquisition grid ``image`` becomes axial (module docstring, points 1-3).

    Raises VolumeError (one line: series UID, tilt, limits, slice spacing) for an oblique
    acquisition that is neither near-axial nor allowed to be resampled.
    """
    resample_oblique = _check_resample_oblique(resample_oblique)
    oriented = sitk.DICOMOrient(image, "LPS")
    direction = np.array(oriented.GetDirection()).reshape(3, 3)
    normal = np.array(image.GetDirection()).reshape(3, 3)[:, 2]
    plane = _acquisition_plane(normal)
    if float(np.abs(direction - np.eye(3)).max()) <= ORIENTATION_TOLERANCE:
        return GridDecision(GRID_ORTHOGONAL, plane, 0.0, 0.0,
                            f"{plane} acquisition along the patient axes: permuted/flipped, no interpolation")
    tilt, oblique = tilt_deg(image), obliquity_deg(image)
    axis = _AXIS_NAMES[int(np.argmax(np.abs(normal)))]
    what = f"oblique {plane} acquisition, slice normal {tilt:.1f} deg from the {axis} axis"
    if oblique - tilt >= 0.05:
        what += f" (axes up to {oblique:.1f} deg from the patient axes)"
    if plane == "axial" and oblique <= max_axial_tilt_degrees:
        # Each axis within < 45 deg of a distinct patient axis: DICOMOrient's order is that one.
        if not (np.all(np.argmax(np.abs(direction), axis=0) == [0, 1, 2]) and np.all(np.diag(direction) > 0)):
            raise VolumeError(f"series {series_uid}: {what}: axes could not be put in LPS order")
        return GridDecision(
            GRID_ACQUIRED_TILTED, plane, tilt, oblique,
            f"{what}, within max_axial_tilt_degrees={max_axial_tilt_degrees:g}: "
            f"acquired slices kept on their tilted grid, no interpolation",
        )
    if plane == "axial":
        why_not = f"more than max_axial_tilt_degrees={max_axial_tilt_degrees:g}"
    else:
        why_not = (
            "not near-axial (acquired slices are kept only for axial tilts up to "
            f"max_axial_tilt_degrees={max_axial_tilt_degrees:g})"
        )
    if resample_oblique is False:
        raise VolumeError(
            f"series {series_uid}: {what}, {why_not}; "
            "resampling onto an axial grid is off (rule resample_oblique=false)"
        )
    if resample_oblique == "auto" and slice_spacing_mm > max_resample_slice_mm:
        raise VolumeError(
            f"series {series_uid}: {what}, {why_not}; its slices are {slice_spacing_mm:.2f} mm apart, more than "
            f"max_resample_slice_mm={max_resample_slice_mm:g}: resampling onto an axial grid would blend "
            "acquired slices (rule resample_oblique=true forces it)"
        )
    how = "rule resample_oblique=true" if resample_oblique is True else (
        f"slice spacing {slice_spacing_mm:.2f} mm <= max_resample_slice_mm={max_resample_slice_mm:g}"
    )
    return GridDecision(GRID_RESAMPLED, plane, tilt, oblique,
                        f"{what}, {why_not}: resampled (linear) onto an axial grid ({how})")


def orient_to_axial_lps(
    image: sitk.Image, grid: str, *, interpolator: int = sitk.sitkLinear, outside: float = 0.0,
) -> sitk.Image:
    """Put the acquisition grid ``image`` in axial LPS index order as decided by :func:`grid_policy`.

    ``GRID_ORTHOGONAL``: DICOMOrient("LPS") permutes/flips, direction set to exactly the
    identity. ``GRID_ACQUIRED_TILTED``: DICOMOrient("LPS") permutes/flips, the tilted
    direction is kept (no interpolation). ``GRID_RESAMPLED``: resampled onto
    :func:`axial_grid` with ``interpolator`` (voxels outside the acquisition get ``outside``).
    """
    if grid == GRID_RESAMPLED:
        return sitk.Resample(image, axial_grid(image), sitk.Transform(), interpolator, outside, image.GetPixelID())
    oriented = sitk.DICOMOrient(image, "LPS")
    if grid == GRID_ORTHOGONAL:
        oriented.SetDirection(tuple(np.eye(3).ravel()))
    elif grid != GRID_ACQUIRED_TILTED:
        raise ValueError(f'Argument "grid" must be one of {GRID_ORTHOGONAL!r}, {GRID_ACQUIRED_TILTED!r}, '
                         f"{GRID_RESAMPLED!r}, not {grid!r}")
    return oriented


def _acquisition_plane(normal: np.ndarray) -> str:
    return ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]
