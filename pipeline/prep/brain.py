"""Brain mask for the z-score statistics (Haim et al. 2022, "Preprocessing": "the brain extracted image").

Two methods, chosen by ``PreprocessParams.brain_mask_method``: a classical chain that
needs no downloaded weights (Otsu -> erode -> largest component -> dilate -> fill holes,
radii in mm, holes filled in 3D and then per axial slice so the ventricles count as
brain as in a skull-stripped image, run on the image shrunk to about ``brain_mask_spacing_mm``) or a brain
segment supplied with the lesion in the SEG.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from pipeline.prep.bias import shrink_factors
from pipeline.errors import PreprocessError
from pipeline.prep.params import PreprocessParams

__all__ = ["BrainMask", "otsu_chain_mask", "brain_mask"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrainMask:
    """A uint8 0/1 brain mask on the image grid and the method that produced it."""

    mask: sitk.Image
    method: str
    volume_cm3: float


def _radius_voxels(radius_mm: float, spacing: tuple[float, ...]) -> list[int]:
    return [int(round(radius_mm / s)) for s in spacing]


def _fill_axial_holes(mask: sitk.Image) -> sitk.Image:
    """Fill holes slice by slice (axial): ventricles and cisterns open to the outside in 3D."""
    arr = sitk.GetArrayFromImage(mask).astype(bool)
    for k in range(arr.shape[0]):
        if arr[k].any():
            arr[k] = ndimage.binary_fill_holes(arr[k])
    filled = sitk.GetImageFromArray(arr.astype(np.uint8))
    filled.CopyInformation(mask)
    return filled


def otsu_chain_mask(image: sitk.Image, params: PreprocessParams) -> sitk.Image:
    """Otsu -> erode -> largest component -> dilate -> fill holes (3D, then per axial
    slice), on a working grid of about ``brain_mask_spacing_mm``; returned as uint8 0/1 on
    the grid of ``image``.
    """
    factors = shrink_factors(image.GetSpacing(), params.brain_mask_spacing_mm)
    work = sitk.Cast(image, sitk.sitkFloat32)
    if any(f > 1 for f in factors):
        work = sitk.Shrink(work, list(factors))
    spacing = work.GetSpacing()
    mask = sitk.OtsuThreshold(work, 0, 1, 200)
    erode = _radius_voxels(params.brain_erode_mm, spacing)
    if any(erode):
        mask = sitk.BinaryErode(mask, erode, sitk.sitkBall, 0, 1)
    components = sitk.RelabelComponent(sitk.ConnectedComponent(mask), sortByObjectSize=True)
    mask = sitk.Cast(components == 1, sitk.sitkUInt8)
    dilate = _radius_voxels(params.brain_dilate_mm, spacing)
    if any(dilate):
        mask = sitk.BinaryDilate(mask, dilate, sitk.sitkBall, 0, 1)
    mask = sitk.BinaryFillhole(mask, fullyConnected=False, foregroundValue=1)
    mask = _fill_axial_holes(mask)
    if any(f > 1 for f in factors):
        mask = sitk.Resample(mask, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.Cast(mask, sitk.sitkUInt8)


def brain_mask(image: sitk.Image, segment: sitk.Image | None, params: PreprocessParams) -> BrainMask:
    """The brain mask the recipe asks for: the supplied ``segment`` or the Otsu chain.

    Raises PreprocessError when the mask is empty, or when a segment is required
    (``brain_mask_fallback="error"``) and none was supplied.
    """
    method = params.brain_mask_method
    if method == "segment":
        if segment is not None:
            if segment.GetSize() != image.GetSize():
                raise PreprocessError(
                    f"brain segment grid {segment.GetSize()} differs from the image grid {image.GetSize()}"
                )
            mask = sitk.Cast(segment > 0, sitk.sitkUInt8)
            mask.CopyInformation(image)
        elif params.brain_mask_fallback == "error":
            raise PreprocessError("brain_mask_method is 'segment' but the mask object has no brain segment")
        else:
            logger.info("no brain segment supplied; falling back to the Otsu chain")
            method = "otsu_chain"
    if method == "otsu_chain":
        mask = otsu_chain_mask(image, params)
    count = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
    if count == 0:
        raise PreprocessError(f"brain mask ({method}) is empty")
    volume_cm3 = count * float(np.prod(image.GetSpacing())) / 1000.0
    return BrainMask(mask=mask, method=method, volume_cm3=volume_cm3)
