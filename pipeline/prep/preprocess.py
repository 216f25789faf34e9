"""From a loaded study to the model input: float32 ``[5, 3, 96, 96]`` plus provenance.

Haim et al. 2022, "Image analysis / Preprocessing" and "DL analysis", in this order:
lesion geometry and the mid-lesion slices (checked first, so a bad study fails before the
expensive steps) -> brain mask on the image as loaded -> N4 bias field estimated inside
the brain mask -> z-score with the brain statistics of the corrected image -> the same
square crop on the five slices -> resize to 96x96 -> grey repeated to 3 channels.
Training and the node both call :func:`preprocess`; the parameters are recorded.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from pipeline.prep.bias import BiasCorrection
from pipeline.prep.bias_cache import BiasFieldCache, fit_brain_and_bias, volume_key
from pipeline.prep.brain import BrainMask
from pipeline.prep.crop import (
    CropBox,
    LesionGeometry,
    SliceSelection,
    check_lesion_can_be_read,
    crop_box,
    extract_crops,
    lesion_geometry,
    resize_crops,
    select_slices,
)
from pipeline.errors import PreprocessError
from pipeline.prep.normalize import IntensityStats, brain_statistics, zscore
from pipeline.prep.params import PreprocessParams
from pipeline.load.study import LoadedStudy
from pipeline.timing import Laps

__all__ = ["ModelInput", "CorrectedVolume", "correct_volume", "model_input_from", "preprocess"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInput:
    """The model's input for one study.

    ``array``: float32 ``[slices, channels, size, size]`` (default ``[5, 3, 96, 96]``),
    slices ordered inferior to superior, rows anterior to posterior, columns patient right
    to left (to within the acquisition's tilt, recorded in the selection). ``provenance``: JSON-serialisable record of how it was made. ``lesion_mask``:
    float32 ``[slices, size, size]``, the lesion mask cropped and resized the same way
    (fractions in 0..1; for display, e.g. ``crops.png``).
    """

    array: np.ndarray
    provenance: dict[str, Any]
    lesion_mask: np.ndarray | None = field(default=None, compare=False)


def _check_study(study: LoadedStudy) -> None:
    image, lesion = study.image, study.lesion
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise PreprocessError(f"image of series {study.series_uid} is not a 3D scalar volume")
    if lesion.GetSize() != image.GetSize():
        raise PreprocessError(
            f"lesion mask grid {lesion.GetSize()} differs from the image grid {image.GetSize()}"
        )


@dataclass(frozen=True)
class CorrectedVolume:
    """The whole corrected volume and what the crop needs (step 1 of :func:`preprocess`).

    ``corrected``: float32 ``[k, j, i]`` bias-corrected intensities (z-score them with
    ``stats``); ``bias``: the N4 result (None when ``bias_correction`` is off);
    ``timings``: seconds per step so far; ``fitted_before``: the brain mask and N4 were taken
    from a :class:`BiasFieldCache` (fitted before the job, or by another job on the same volume).
    """

    geometry: LesionGeometry
    slices: SliceSelection
    box: CropBox
    brain: BrainMask
    corrected: np.ndarray
    stats: IntensityStats
    bias: BiasCorrection | None
    timings: dict[str, float]
    fitted_before: bool = False


def _check_params(params: PreprocessParams | None) -> PreprocessParams:
    params = params if params is not None else PreprocessParams()
    if not isinstance(params, PreprocessParams):
        raise TypeError(f'Argument "params" must be a PreprocessParams, not {type(params).__name__}')
    return params


def correct_volume(study: LoadedStudy, params: PreprocessParams | None = None,
                   cache: BiasFieldCache | None = None) -> CorrectedVolume:
    """Lesion geometry, slices and crop box (checked first), brain mask, N4, brain statistics.

    ``cache``: where a brain mask and N4 fitted on the same voxels with the same parameters
    are taken from (and this fit is kept); the result is the same with or without it.

    Haim et al. 2022, "Preprocessing". Raises PreprocessError for an empty lesion, one smaller
    than a sphere of ``min_lesion_diameter_mm`` or touching the series' edge, a lesion
    too close to the first/last slice (``slice_edge_policy="error"``), an empty brain mask,
    or a brain of constant intensity.
    """
    params = _check_params(params)
    _check_study(study)
    laps = Laps()
    lap, timings = laps.lap, laps.timings

    image = study.image
    geometry = lesion_geometry(study.lesion)
    slices = select_slices(geometry, image.GetSize()[2], params)
    check_lesion_can_be_read(geometry, image.GetSize(), image.GetSpacing(), params)
    box = crop_box(sitk.GetArrayViewFromImage(study.lesion), geometry, slices, image.GetSpacing(), params)
    lap("lesion_and_slices")

    reused = False
    if cache is not None and params.bias_correction:
        fit, reused = cache.get_or_fit(volume_key(image, params, study.brain),
                                       lambda: fit_brain_and_bias(image, study.brain, params, lap))
        if reused:  # the key's hash, or the wait for a fit in progress
            timings["brain_mask"] = 0.0
            lap("bias_field")
    else:
        fit = fit_brain_and_bias(image, study.brain, params, lap)
    brain, bias = fit.brain, fit.bias
    if bias is not None:
        corrected = sitk.GetArrayFromImage(bias.corrected)
    else:
        corrected = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)

    stats = brain_statistics(corrected, sitk.GetArrayViewFromImage(brain.mask))
    lap("zscore")
    return CorrectedVolume(geometry, slices, box, brain, corrected, stats, bias, timings, reused)


def model_input_from(
    study: LoadedStudy, volume: CorrectedVolume, params: PreprocessParams | None = None
) -> ModelInput:
    """z-scored crops of the chosen slices, resized, repeated to channels (step 2 of :func:`preprocess`).

    Haim et al. 2022, "DL analysis": mid-tumour slice +-2, cropped, resized to 96x96.
    """
    params = _check_params(params)
    t = time.perf_counter()
    slices, box, stats = volume.slices, volume.box, volume.stats
    indices = np.asarray(slices.indices)
    slab = zscore(volume.corrected[indices], stats)
    local = SliceSelection(mid=slices.mid, indices=tuple(range(len(indices))), replicated=slices.replicated)
    if params.crop_pad_mode == "air":
        pad: float | None = float(zscore(np.zeros(1), stats)[0])
    elif params.crop_pad_mode == "constant":
        pad = params.crop_pad_value
    else:
        pad = None
    crops = extract_crops(slab, local, box, pad)
    resized = resize_crops(crops, params.output_size, params.interpolation)
    array = np.ascontiguousarray(np.repeat(resized[:, None], params.channels, axis=1), dtype=np.float32)
    lesion_slab = sitk.GetArrayViewFromImage(study.lesion)[indices].astype(np.float32)
    mask_resized = resize_crops(extract_crops(lesion_slab, local, box, 0.0), params.output_size, params.interpolation)
    if not np.isfinite(array).all():
        raise PreprocessError("model input has non-finite values after normalisation")
    timings = dict(volume.timings)
    timings["crop_resize"] = round(time.perf_counter() - t, 4)
    timings["total"] = round(sum(timings.values()), 4)

    provenance = _provenance(study, params, volume, timings, array)
    logger.info(
        "preprocessed study %s series %s: slices %s, box %d px, %.2f s",
        study.study_uid,
        study.series_uid,
        list(slices.indices),
        box.i1 - box.i0,
        timings["total"],
    )
    return ModelInput(array=array, provenance=provenance, lesion_mask=mask_resized)


def preprocess(study: LoadedStudy, params: PreprocessParams | None = None,
               cache: BiasFieldCache | None = None) -> ModelInput:
    """Run the preprocessing recipe on ``study``: :func:`correct_volume` then :func:`model_input_from`.

    Raises PreprocessError (one line, ending with the study and series UIDs) for an empty lesion, a lesion too close to the
    first/last slice (``slice_edge_policy="error"``), an empty brain mask, or a brain
    with constant intensity.
    """
    params = _check_params(params)
    try:
        return model_input_from(study, correct_volume(study, params, cache), params)
    except PreprocessError as exc:
        raise PreprocessError(f"{exc} (study {study.study_uid}, series {study.series_uid})") from exc


def _bias_record(bias: BiasCorrection | None) -> dict[str, Any]:
    if bias is None:
        return {"applied": False}
    return {
        "applied": True,
        "box_index": list(bias.box_index),
        "box_size": list(bias.box_size),
        "shrink": list(bias.shrink),
        "iterations_last_level": bias.iterations,
        "convergence_measure": bias.converged_measure,
    }


def _provenance(
    study: LoadedStudy, params: PreprocessParams, volume: CorrectedVolume, timings: dict[str, float], array: np.ndarray
) -> dict[str, Any]:
    geometry, slices, box, brain, stats = (
        volume.geometry, volume.slices, volume.box, volume.brain, volume.stats
    )
    bias_record = {**_bias_record(volume.bias), **({"fitted_before_the_job": True} if volume.fitted_before else {})}
    image = study.image
    nk, nj, ni = image.GetSize()[2], image.GetSize()[1], image.GetSize()[0]
    # z of each slice at the crop centre (on a tilted grid z varies across the slice)
    ci, cj = box.centre
    z_mm = [float(image.TransformContinuousIndexToPhysicalPoint((float(ci), float(cj), float(k)))[2]) for k in slices.indices]
    low, high = box.corners_lps(image, float(slices.mid))
    mid_local = sitk.GetArrayViewFromImage(study.lesion)[slices.mid]
    sources = [list(study.source_sop_uids[k]) if k < len(study.source_sop_uids) else [] for k in slices.indices]
    return {
        "study_uid": study.study_uid,
        "series_uid": study.series_uid,
        "mask_sop_uid": study.mask_sop_uid,
        "mask_kind": study.mask_kind,
        "lesion_number": study.lesion_number,
        "lesion_label": study.lesion_label,
        "image": {
            "size": [int(v) for v in image.GetSize()],
            "spacing_mm": [float(v) for v in image.GetSpacing()],
            "origin_lps_mm": [float(v) for v in image.GetOrigin()],
        },
        "lesion": {
            "centroid_lps_mm": list(geometry.centroid_lps),
            "centroid_index": list(geometry.centroid_index),
            "volume_cm3": geometry.volume_cm3,
            "voxels": geometry.voxels,
            "bbox_index_min": list(geometry.bbox_min),
            "bbox_index_max": list(geometry.bbox_max),
        },
        "slices": {
            "mid": slices.mid,
            "indices": list(slices.indices),
            "z_mm": z_mm,
            "replicated_at_edge": slices.replicated,
            "mid_slice_lesion_voxels": int(np.count_nonzero(mid_local)),
        },
        "crop_box": {
            "voxels": {"i0": box.i0, "i1": box.i1, "j0": box.j0, "j1": box.j1},
            "centre_voxel": list(box.centre),
            "side_mm": list(box.side_mm),
            "lps_mm": {"low": list(low), "high": list(high)},
            "padded": bool(box.i0 < 0 or box.j0 < 0 or box.i1 > ni or box.j1 > nj),
            "extent": params.crop_extent,
        },
        "source_sop_uids": sources,
        "brain_mask": {"method": brain.method, "volume_cm3": brain.volume_cm3},
        "bias_field": bias_record,
        "zscore": {"mean": stats.mean, "sd": stats.sd, "voxels": stats.voxels},
        "output": {"shape": list(array.shape), "dtype": str(array.dtype)},
        "params": params.to_dict(),
        "software": {"SimpleITK": sitk.Version.VersionString(), "numpy": np.__version__},
        "timings_s": timings,
        "slice_count_in_volume": nk,
    }
