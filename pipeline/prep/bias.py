"""N4 bias field correction (Haim et al. 2022, "Preprocessing": intensity inhomogeneity correction).

The paper used SPM; SimpleITK's N4 is the open equivalent (documented deviation). The
field is estimated on the brain-mask bounding box (plus a margin) shrunk to about
``n4_shrink_spacing_mm`` voxels, evaluated at full resolution on that box with
``GetLogBiasFieldAsImage`` and continued outside the box by its edge values; the image is
divided by ``exp(log field)``.

Note: ``GetLogBiasFieldAsImage(reference)`` maps the fitted B-spline lattice onto the
*reference image's extent*, not onto physical coordinates. Evaluating a box-fitted field on
the whole image would stretch it; hence the evaluation on the box itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from pipeline.errors import PreprocessError
from pipeline.prep.params import PreprocessParams

__all__ = ["BiasCorrection", "correct_bias_field", "shrink_factors", "mask_bounding_box"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BiasCorrection:
    """Result of :func:`correct_bias_field`.

    ``corrected``: float32 image on the input grid; ``log_field``: float32 log bias field on
    the same grid; ``box_index``/``box_size``: the estimation box (voxels, i j k order);
    ``shrink``: the per-axis shrink factors; ``iterations``: N4's elapsed iterations at the
    last level; ``converged_measure``: N4's final convergence measurement.
    """

    corrected: sitk.Image
    log_field: sitk.Image
    box_index: tuple[int, int, int]
    box_size: tuple[int, int, int]
    shrink: tuple[int, int, int]
    iterations: int
    converged_measure: float


def shrink_factors(spacing: tuple[float, ...], target_mm: float) -> tuple[int, ...]:
    """Per-axis integer shrink factors giving voxels of about ``target_mm`` (at least 1)."""
    return tuple(max(1, int(round(target_mm / s))) for s in spacing)


def mask_bounding_box(
    mask: sitk.Image, margin_mm: float
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Bounding box (index, size) of the non-zero voxels of ``mask`` plus ``margin_mm``, clipped."""
    arr = sitk.GetArrayViewFromImage(mask)
    nz = [np.flatnonzero(arr.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    if any(len(n) == 0 for n in nz):
        raise PreprocessError("brain mask is empty: cannot place the bias field box")
    spacing = mask.GetSpacing()
    size = mask.GetSize()
    index: list[int] = []
    extent: list[int] = []
    for axis in range(3):  # i j k order; numpy axes are k j i
        found = nz[2 - axis]
        pad = int(np.ceil(margin_mm / spacing[axis]))
        lo = max(0, int(found[0]) - pad)
        hi = min(size[axis], int(found[-1]) + 1 + pad)
        index.append(lo)
        extent.append(hi - lo)
    return (index[0], index[1], index[2]), (extent[0], extent[1], extent[2])


def correct_bias_field(image: sitk.Image, mask: sitk.Image, params: PreprocessParams) -> BiasCorrection:
    """Estimate the N4 bias field inside ``mask`` and divide it out of ``image`` (full resolution).

    ``image``: 3D scalar image (any real type); ``mask``: 0/1 on the same grid. Negative
    intensities are clipped to 0 and zero voxels are left out of the estimation (N4 works
    on log intensities).
    """
    img = sitk.Cast(image, sitk.sitkFloat32)
    arr = sitk.GetArrayViewFromImage(img)
    if float(arr.min()) < 0.0:
        img = sitk.Clamp(img, sitk.sitkFloat32, 0.0)
    mask_u8 = sitk.Cast(mask > 0, sitk.sitkUInt8)
    positive = sitk.Cast(img > 0, sitk.sitkUInt8)
    est_mask = sitk.And(mask_u8, positive)

    box_index, box_size = mask_bounding_box(est_mask, params.n4_box_margin_mm)
    box_img = sitk.RegionOfInterest(img, box_size, box_index)
    box_mask = sitk.RegionOfInterest(est_mask, box_size, box_index)
    factors = shrink_factors(img.GetSpacing(), params.n4_shrink_spacing_mm)
    factors = tuple(min(f, max(1, s // 4)) for f, s in zip(factors, box_size))  # keep >= 4 voxels
    small_img = sitk.Shrink(box_img, list(factors))
    small_mask = sitk.Shrink(box_mask, list(factors))
    if not sitk.GetArrayViewFromImage(small_mask).any():
        raise PreprocessError("brain mask vanishes when shrunk for bias field estimation")

    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations([params.n4_iterations] * params.n4_levels)
    n4.SetConvergenceThreshold(params.n4_convergence)
    n4.SetNumberOfHistogramBins(params.n4_histogram_bins)
    n4.SetNumberOfControlPoints([params.n4_control_points] * 3)
    n4.SetMaskLabel(1)
    n4.Execute(small_img, small_mask)

    box_log = sitk.GetArrayFromImage(n4.GetLogBiasFieldAsImage(box_img)).astype(np.float32)
    full_shape = arr.shape  # k j i
    pad = [
        (box_index[2], full_shape[0] - box_index[2] - box_size[2]),
        (box_index[1], full_shape[1] - box_index[1] - box_size[1]),
        (box_index[0], full_shape[2] - box_index[0] - box_size[0]),
    ]
    log_arr = np.pad(box_log, pad, mode="edge") if any(p != (0, 0) for p in pad) else box_log
    corrected_arr = sitk.GetArrayViewFromImage(img) / np.exp(log_arr)

    corrected = sitk.GetImageFromArray(corrected_arr.astype(np.float32, copy=False))
    corrected.CopyInformation(img)
    log_field = sitk.GetImageFromArray(log_arr)
    log_field.CopyInformation(img)
    iterations = int(n4.GetElapsedIterations())
    measure = float(n4.GetCurrentConvergenceMeasurement())
    logger.debug(
        "n4 box %s+%s shrink %s iterations %d measure %.5f", box_index, box_size, factors, iterations, measure
    )
    return BiasCorrection(
        corrected=corrected,
        log_field=log_field,
        box_index=box_index,
        box_size=box_size,
        shrink=(int(factors[0]), int(factors[1]), int(factors[2])),
        iterations=iterations,
        converged_measure=measure,
    )
