"""Mid-lesion slices, the square crop box around the lesion, and the resize to 96x96.

Haim et al. 2022, "DL analysis": "cropped images of the mid-tumor region and +-2 slices
(total of 5 slices) ... resized to a 96x96 image size"; "Preprocessing": the lesion mask
"was used to generate crop images (i.e., delimitation of the lesion mask and its
surrounding)". Arrays are numpy ``[k, j, i]`` (axial slice, row = +y posterior,
column = +x patient left: radiological display), as ``sitk.GetArrayFromImage`` gives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from pipeline.errors import PreprocessError
from pipeline.prep.params import PreprocessParams

__all__ = [
    "LesionGeometry",
    "SliceSelection",
    "CropBox",
    "lesion_geometry",
    "check_lesion_can_be_read",
    "minimum_lesion_voxels",
    "select_slices",
    "crop_box",
    "extract_crops",
    "resize_crops",
]


@dataclass(frozen=True)
class LesionGeometry:
    """Where the lesion is: centroid (continuous index i j k and LPS mm), size, bounding box."""

    centroid_index: tuple[float, float, float]
    centroid_lps: tuple[float, float, float]
    voxels: int
    volume_cm3: float
    bbox_min: tuple[int, int, int]
    bbox_max: tuple[int, int, int]  # inclusive, i j k


@dataclass(frozen=True)
class SliceSelection:
    """The axial slices fed to the model: ``indices`` (k, inferior to superior) around ``mid``."""

    mid: int
    indices: tuple[int, ...]
    replicated: bool


@dataclass(frozen=True)
class CropBox:
    """Square in-plane box in voxel indices: columns ``i0..i1-1``, rows ``j0..j1-1``.

    ``centre`` is the (i, j) voxel it is centred on; ``side_mm`` its side along i and j.
    The box may reach outside the image; those voxels are padded.
    """

    i0: int
    i1: int
    j0: int
    j1: int
    centre: tuple[int, int]
    side_mm: tuple[float, float]

    def corners_lps(self, image: sitk.Image, k: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """LPS mm of the box's outer voxel corners (low i/j, high i/j) at slice ``k``."""
        low = image.TransformContinuousIndexToPhysicalPoint((self.i0 - 0.5, self.j0 - 0.5, float(k)))
        high = image.TransformContinuousIndexToPhysicalPoint((self.i1 - 0.5, self.j1 - 0.5, float(k)))
        return tuple(low), tuple(high)


def lesion_geometry(lesion: sitk.Image) -> LesionGeometry:
    """Centroid, volume and bounding box of the non-zero voxels of ``lesion``.

    Raises PreprocessError when the lesion mask is empty.
    """
    arr = sitk.GetArrayViewFromImage(lesion)
    kji = np.nonzero(arr)
    if kji[0].size == 0:
        raise PreprocessError("lesion mask is empty on the image grid")
    centroid = (float(kji[2].mean()), float(kji[1].mean()), float(kji[0].mean()))
    x, y, z = lesion.TransformContinuousIndexToPhysicalPoint(centroid)
    lps = (float(x), float(y), float(z))
    count = int(kji[0].size)
    volume = count * float(np.prod(lesion.GetSpacing())) / 1000.0
    bmin = (int(kji[2].min()), int(kji[1].min()), int(kji[0].min()))
    bmax = (int(kji[2].max()), int(kji[1].max()), int(kji[0].max()))
    return LesionGeometry(centroid, lps, count, volume, bmin, bmax)


def minimum_lesion_voxels(spacing: tuple[float, ...], diameter_mm: float) -> int:
    """How many voxels of this spacing a sphere of ``diameter_mm`` holds (at least 1)."""
    sphere = math.pi / 6.0 * diameter_mm ** 3
    return max(1, int(sphere / float(np.prod(spacing))))


def check_lesion_can_be_read(geometry: LesionGeometry, size: tuple[int, ...], spacing: tuple[float, ...],
                             params: PreprocessParams) -> None:
    """A mask that cannot carry a lesion is refused, not predicted (issue 29): fewer voxels than
    a sphere of ``params.min_lesion_diameter_mm`` holds at the series' spacing (a stray voxel,
    a mark), or a lesion that touches the series' edge (the field of view cut it: its size,
    centre and slices would be those of a part)."""
    needed = minimum_lesion_voxels(spacing, params.min_lesion_diameter_mm)
    if geometry.voxels < needed:
        raise PreprocessError(
            f"lesion mask has {geometry.voxels} voxels, fewer than the {needed} a "
            f"{params.min_lesion_diameter_mm:g} mm sphere holds at this series' spacing "
            f"({' x '.join(f'{v:g}' for v in spacing)} mm): not a lesion the model can read "
            "(preprocessing.min_lesion_diameter_mm)")
    axes = ("columns (left-right)", "rows (front-back)", "slices")
    for axis, (low, high, n) in enumerate(zip(geometry.bbox_min, geometry.bbox_max, size)):
        if axis == 2 and params.slice_edge_policy == "replicate":
            continue  # the site asked for lesions at the first or last slice to be read (edge slices repeated)
        if n > 1 and (low == 0 or high == n - 1):
            raise PreprocessError(f"lesion touches the edge of the series along its {axes[axis]} (index "
                                  f"{low if low == 0 else high} of {n}): the field of view cut it")


def select_slices(geometry: LesionGeometry, slice_count: int, params: PreprocessParams) -> SliceSelection:
    """Mid slice through the lesion centroid (nearest k) and ``+-slice_offset`` neighbours.

    Near the first/last slice: PreprocessError (``slice_edge_policy="error"``) or the edge
    slice repeated (``"replicate"``, recorded as ``replicated``).
    """
    mid = int(math.floor(geometry.centroid_index[2] + 0.5))
    wanted = list(range(mid - params.slice_offset, mid + params.slice_offset + 1))
    outside = [k for k in wanted if k < 0 or k >= slice_count]
    if outside and params.slice_edge_policy == "error":
        raise PreprocessError(
            f"lesion centre is on slice {mid} of {slice_count}: too close to the edge of the volume "
            f"for +-{params.slice_offset} slices"
        )
    indices = tuple(min(max(k, 0), slice_count - 1) for k in wanted)
    return SliceSelection(mid=mid, indices=indices, replicated=bool(outside))


def crop_box(
    lesion: np.ndarray,
    geometry: LesionGeometry,
    slices: SliceSelection,
    spacing: tuple[float, ...],
    params: PreprocessParams,
) -> CropBox:
    """The square box (in mm) holding the lesion's in-plane bounding box plus the margin.

    ``lesion``: the ``[k, j, i]`` mask array. The box is centred on the centroid voxel;
    its half side is the largest centroid-to-bounding-box-edge distance plus
    ``crop_margin_mm`` (at least ``crop_min_side_mm / 2``).
    """
    if params.crop_extent == "slices":
        sub = lesion[list(sorted(set(slices.indices)))]
        rows = np.flatnonzero(sub.any(axis=(0, 2)))
        cols = np.flatnonzero(sub.any(axis=(0, 1)))
    else:
        rows = cols = np.empty(0, dtype=np.int64)
    if rows.size == 0:  # "lesion", or no lesion voxel on the chosen slices
        i_lo, i_hi = geometry.bbox_min[0], geometry.bbox_max[0]
        j_lo, j_hi = geometry.bbox_min[1], geometry.bbox_max[1]
    else:
        i_lo, i_hi = int(cols[0]), int(cols[-1])
        j_lo, j_hi = int(rows[0]), int(rows[-1])
    ci = int(math.floor(geometry.centroid_index[0] + 0.5))
    cj = int(math.floor(geometry.centroid_index[1] + 0.5))
    sx, sy = float(spacing[0]), float(spacing[1])
    reach_i = max(ci - (i_lo - 0.5), (i_hi + 0.5) - ci) * sx
    reach_j = max(cj - (j_lo - 0.5), (j_hi + 0.5) - cj) * sy
    half_mm = max(reach_i, reach_j) + params.crop_margin_mm
    half_mm = max(half_mm, params.crop_min_side_mm / 2.0)
    hi_ = max(0, math.ceil(half_mm / sx - 0.5 - 1e-9))
    hj_ = max(0, math.ceil(half_mm / sy - 0.5 - 1e-9))
    return CropBox(
        i0=ci - hi_,
        i1=ci + hi_ + 1,
        j0=cj - hj_,
        j1=cj + hj_ + 1,
        centre=(ci, cj),
        side_mm=((2 * hi_ + 1) * sx, (2 * hj_ + 1) * sy),
    )


def extract_crops(
    volume: np.ndarray, slices: SliceSelection, box: CropBox, pad_value: float | None
) -> np.ndarray:
    """``[n, rows, cols]`` crops of ``volume[k, j, i]`` in the box; outside the image
    ``pad_value``, or the border voxels repeated when ``pad_value`` is None.
    """
    nk, nj, ni = volume.shape
    rows = np.arange(box.j0, box.j1)
    cols = np.arange(box.i0, box.i1)
    crops: np.ndarray = volume[np.ix_(np.asarray(slices.indices), np.clip(rows, 0, nj - 1), np.clip(cols, 0, ni - 1))]
    if pad_value is not None:
        crops = crops.copy()
        crops[:, (rows < 0) | (rows >= nj), :] = pad_value
        crops[:, :, (cols < 0) | (cols >= ni)] = pad_value
    return crops


def _interpolation_matrix(n_in: int, n_out: int, interpolation: str) -> np.ndarray:
    """``[n_out, n_in]`` weights: pixel-area aligned (``align_corners=False``), border clamped."""
    pos = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    weights = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    if interpolation == "nearest":
        weights[rows, np.clip(np.floor(pos + 0.5).astype(int), 0, n_in - 1)] = 1.0
        return weights
    pos = np.clip(pos, 0.0, n_in - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = pos - lo
    np.add.at(weights, (rows, lo), 1.0 - frac)
    np.add.at(weights, (rows, hi), frac)
    return weights


def resize_crops(crops: np.ndarray, size: int, interpolation: str = "linear") -> np.ndarray:
    """Resize ``[n, rows, cols]`` crops to ``[n, size, size]`` float32 (separable linear or nearest)."""
    if crops.ndim != 3:
        raise ValueError(f'Argument "crops" must be [n, rows, cols], got shape {crops.shape}')
    wr = _interpolation_matrix(crops.shape[1], size, interpolation)
    wc = _interpolation_matrix(crops.shape[2], size, interpolation)
    out: np.ndarray = np.einsum("ur,nrc,vc->nuv", wr, crops.astype(np.float64), wc, optimize=True)
    return out.astype(np.float32)
