"""One phantom study: anatomy, lesions, acquisition, DICOM files, and the ground truth."""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from pipeline.phantom.anatomy import head_model
from pipeline.phantom.dicom_common import sample_study_meta
from pipeline.phantom.geometry import GEOMETRIES, Grid, sample_grid, sample_pose
from pipeline.phantom.lesion import sample_lesion, sample_satellite
from pipeline.phantom.mr_single import sample_protocol, write_single_frame_series
from pipeline.phantom.outline_writer import write_outline_sr
from pipeline.phantom.render import BiasField, lesion_truth, render, sample_bias_field
from pipeline.phantom.rtstruct_writer import write_rtstruct
from pipeline.phantom.seg_writer import write_seg

__all__ = ["MASK_KINDS", "OUTLINE_KIND", "PhantomStudy", "generate_study"]

log = logging.getLogger(__name__)

MASK_KINDS = ("seg", "rtstruct")
#: a reader's ellipse on one slice, saved as a viewer saves it (an SR measurement report)
OUTLINE_KIND = "outline"
DEFAULT_EFFECT_SIZE = 0.6


@dataclass(frozen=True)
class PhantomStudy:
    """Ground truth of one generated study (what the loaders and preprocessing must recover)."""

    folder: Path
    study_uid: str
    image_series_uid: str
    mask_sop_uid: str
    egfr_positive: bool
    lesion_centroid_lps: tuple[float, float, float]
    lesion_volume_cm3: float
    bias_field: BiasField
    geometry: str
    mask_kind: str
    patient_id: str = ""
    image_sop_uids: tuple[str, ...] = ()  # per grid slice k (single-frame) or the one multi-frame file
    grid: Grid | None = None  # acquisition grid (i along rows, j down columns, k slices)
    lesion_region: str = ""  # "anterior" | "posterior" | "cerebellar"
    mask_labels: tuple[str, ...] = ("Metastasis",)  # segments / ROIs in the mask object, in order
    satellite: bool = False  # a second, smaller metastasis is in the image
    noise_sd: float = 0.0  # Rician noise SD, in real-world (rescaled) units
    white_matter_value: float = 0.0  # real-world value of white matter before the bias field
    effect_size: float = DEFAULT_EFFECT_SIZE


def _rng(*parts: object) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(str(p).encode()) for p in parts])


def _check_folder_free(folder: Path, study_uid: str) -> None:
    """Refuse to mix two studies in one folder (rewriting the same study is fine)."""
    for path in folder.rglob("*.dcm") if folder.is_dir() else ():
        other = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"]).get(
            "StudyInstanceUID")
        if other != study_uid:
            raise FileExistsError(f"{folder} already holds another study ({other}); write into an empty folder")
        return


def generate_study(out_dir: Path, *, seed: int, geometry: str = "axial2d", mask_kind: str = "seg",
                   egfr_positive: bool = False, patient_index: int = 0,
                   effect_size: float = DEFAULT_EFFECT_SIZE, satellite: bool | None = None,
                   satellite_in_mask: bool | None = None, brain_segment: bool | None = None,
                   apply_bias_field: bool = True, outline_jitter_mm: float = 0.0) -> PhantomStudy:
    """Write one phantom T1+c study with its lesion mask under ``out_dir/PHANTOM-nnnn``.

    The images depend on (seed, patient_index, geometry, egfr_positive, effect_size) only, so
    the same call with ``mask_kind`` "seg" and "rtstruct" writes the same image series with
    two kinds of mask. ``satellite`` (a second small lesion), ``satellite_in_mask`` (it is a
    second segment / ROI) and ``brain_segment`` (a "Brain" segment / ROI) are drawn at random
    when None. ``apply_bias_field=False`` writes the same study without the bias field (the
    returned ``bias_field`` is then flat), for tests of bias correction. ``mask_kind="outline"``
    writes, instead of a SEG or RTSTRUCT, an ellipse around the lesion on its largest slice as a
    viewer saves it (an Enhanced SR), moved by ``outline_jitter_mm`` at random when asked.
    """
    if geometry not in GEOMETRIES:
        raise ValueError(f'Argument "geometry" must be one of {", ".join(GEOMETRIES)}, not {geometry!r}')
    if mask_kind not in (*MASK_KINDS, OUTLINE_KIND):
        raise ValueError(f'Argument "mask_kind" must be one of {", ".join((*MASK_KINDS, OUTLINE_KIND))}, '
                         f'not {mask_kind!r}')
    if not 0.0 <= effect_size <= 1.0:
        raise ValueError(f'Argument "effect_size" must be in [0, 1], not {effect_size}')
    key = (seed, patient_index, geometry, bool(egfr_positive), f"{effect_size:.4f}")
    rng = _rng("image", *key)
    head = head_model()
    study = sample_study_meta(rng, key, patient_index)
    grid = sample_grid(geometry, rng)
    pose = sample_pose(rng)
    lesion = sample_lesion(head, rng, egfr_positive=egfr_positive, effect_size=effect_size)
    draw_satellite, draw_in_mask, draw_brain = rng.uniform(size=3)
    satellite = bool(draw_satellite < 0.3) if satellite is None else satellite
    lesions = [lesion, sample_satellite(head, rng, lesion)] if satellite else [lesion]
    rendered = render(head, grid, pose, lesions)
    bias = sample_bias_field(rng, np.asarray(pose.to_patient(np.array([[0.0, 18.0, 12.0]]))[0]))
    protocol = sample_protocol(geometry, study.field_strength, rng)
    if not apply_bias_field:
        bias = BiasField(bias.centre_lps, bias.half_extent_mm, tuple(0.0 for _ in bias.coefficients))

    # Bias field, Rician noise, intensity scale, 12-bit storage.
    wm_value = float(rng.uniform(300.0, 1300.0))
    noise_fraction = float(rng.uniform(0.02, 0.045))
    field = bias.on_grid(grid.origin, grid.spacing, grid.direction, grid.size)
    signal = rendered.relative * field * np.float32(wm_value)
    sd = noise_fraction * wm_value
    noisy = np.hypot(signal + rng.normal(0.0, sd, signal.shape).astype(np.float32),
                     rng.normal(0.0, sd, signal.shape).astype(np.float32))
    slope = protocol.rescale_slope or 1.0
    stored = np.clip(np.rint(noisy / slope), 0, 4095).astype(np.uint16)
    window = (wm_value * 0.75, wm_value * 1.6)

    folder = Path(out_dir) / study.patient_id
    _check_folder_free(folder, study.study_uid)
    image_folder = folder / f"MR{protocol.series_number:02d}"
    if geometry == "enhanced":
        from pipeline.phantom.mr_enhanced import write_enhanced_image

        sources = [write_enhanced_image(image_folder, stored, grid, study, protocol, key, window)]
    else:
        sources = write_single_frame_series(image_folder, stored, grid, study, protocol, key, window,
                                            reverse_order=bool(rng.uniform() < 0.5))
    image_series_uid = sources[0].SeriesInstanceUID

    satellite_in_mask = bool(draw_in_mask < 0.5) if satellite_in_mask is None else satellite_in_mask
    brain_segment = bool(draw_brain < 0.3) if brain_segment is None else brain_segment
    masks = [("Metastasis", rendered.lesion_mask)]
    if satellite and satellite_in_mask:
        masks.append(("Metastasis 2", rendered.satellite_mask))
    if brain_segment:
        masks.append(("Brain", rendered.brain_mask))
    mask_key = (*key, mask_kind)
    if mask_kind == "seg":
        mask_ds = write_seg(folder / "SEG", sources, masks, mask_key, series_number=100)
    elif mask_kind == "outline":  # the reader's ellipse around the lesion on one slice (issue 31)
        mask_ds = write_outline_sr(folder / "SR", grid, sources, rendered.lesion_mask, mask_key, series_number=102,
                                   jitter_mm=outline_jitter_mm, seed=zlib.crc32(repr(mask_key).encode()))
    else:
        mask_ds = write_rtstruct(folder / "RTSTRUCT", study, grid, sources, masks, mask_key,
                                 series_number=101)
    centroid, volume = lesion_truth(pose, lesion)
    log.info("phantom study written",
             extra={"study_uid": study.study_uid, "geometry": geometry, "mask_kind": mask_kind})
    return PhantomStudy(
        folder=folder,
        study_uid=study.study_uid,
        image_series_uid=image_series_uid,
        mask_sop_uid=str(mask_ds.SOPInstanceUID),
        egfr_positive=bool(egfr_positive),
        lesion_centroid_lps=centroid,
        lesion_volume_cm3=volume,
        bias_field=bias,
        geometry=geometry,
        mask_kind=mask_kind,
        patient_id=study.patient_id,
        image_sop_uids=tuple(str(ds.SOPInstanceUID) for ds in sources),
        grid=grid,
        lesion_region=lesion.region,
        mask_labels=tuple(label for label, _ in masks),
        satellite=bool(satellite),
        noise_sd=float(sd),
        white_matter_value=wm_value,
        effect_size=float(effect_size),
    )
