"""One study (a folder or its list of files) -> the chosen MR volume and lesion mask on the
same grid, in axial LPS index order.

Front door of issue 3 points 1-3: :func:`load_study` indexes the files
(:mod:`pipeline.load.index`), picks the mask and series (:mod:`pipeline.load.select`), builds
the volume (:mod:`pipeline.load.volume`) and puts the mask on its grid (:mod:`pipeline.load.masks`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import SimpleITK as sitk
from pydicom.dataset import Dataset

from pipeline.load.index import InstanceHeader, SeriesEntry, index_files, index_study
from pipeline.load.masks import load_outline_mask, load_rtstruct_mask, load_seg_mask
from pipeline.load.select import SelectionRules, select_mask_and_series
from pipeline.load.volume import MRVolume, load_series_volume

__all__ = ["LoadedStudy", "SelectionRules", "load_study", "series_volume"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)  # holds images: identity, not value, equality
class LoadedStudy:
    """The chosen image and lesion of one study, voxel-aligned.

    - ``image``: float32, RescaleSlope/RescaleIntercept applied, in axial LPS index order:
      index i runs towards patient left (+x), j posterior (+y), k inferior -> superior
      (+z), so slice k is an axial slice. The direction is exactly the identity for an
      acquisition along the patient axes (any plane, permuted/flipped) and for an oblique
      one resampled onto an axial grid; a near-axial oblique acquisition keeps its acquired
      slices and its direction is that tilt, every axis within
      ``SelectionRules.max_axial_tilt_degrees`` of the identity (recorded in
      ``selection["volume"]``: ``grid``, ``tilt_deg``, ``obliquity_deg``, ``direction``).
      Map index <-> patient mm with ``TransformIndexToPhysicalPoint`` /
      ``TransformPhysicalPointToIndex``, never origin + index * spacing.
    - ``lesion``: uint8 0/1 on exactly the grid of ``image``.
    - ``brain``: uint8 0/1 brain segment from the mask object when it supplies one, else None.
    - ``source_sop_uids[k]``: SOP Instance UIDs of the source images that contributed to
      axial slice k (one per slice for an axial acquisition, tilted or not, the multi-frame
      UID for an Enhanced MR, every crossing slice for a sagittal/coronal or resampled one).
    - ``selection``: JSON-serialisable record of what was chosen, by which rule, and the
      candidates rejected with their reasons.
    - ``series_instances``, ``mask_instance``: the chosen series' instances and the mask
      object, with the paths and headers indexing read (the report builds on them).
    """

    study_uid: str
    image: sitk.Image
    lesion: sitk.Image
    brain: sitk.Image | None
    series_uid: str
    mask_sop_uid: str
    mask_kind: str
    lesion_number: int
    lesion_label: str
    source_sop_uids: tuple[tuple[str, ...], ...]
    selection: dict[str, Any]
    series_instances: tuple[InstanceHeader, ...] = ()
    mask_instance: InstanceHeader | None = None

    def source_headers(self, sop_uids: Iterable[str]) -> list[Dataset]:
        """The headers (read once, at indexing) of these instances of the chosen series, in that order."""
        by_uid = {i.sop_uid: i.header for i in self.series_instances}
        return [by_uid[uid] for uid in sop_uids if uid in by_uid]


def series_volume(series: SeriesEntry, rules: SelectionRules) -> MRVolume:
    """The series' volume as a job reads it: the oblique policy of ``rules``
    (:func:`pipeline.load.volume.load_series_volume`). The bias field fitted ahead of the mask
    (:mod:`pipeline.prefit`) builds it here too, so the job's volume is the one it fitted."""
    return load_series_volume(series, resample_oblique=rules.resample_oblique,
                              max_axial_tilt_degrees=rules.max_axial_tilt_degrees,
                              max_resample_slice_mm=rules.max_resample_slice_mm)


def load_study(study: Path | Sequence[Path], rules: SelectionRules | None = None) -> LoadedStudy:
    """Load the lesion mask and the MR series it references from one study: a folder, or the
    list of its files (the node's worker passes the received instances its database lists, so
    the node's own results are never input).

    Raises SelectionError, VolumeError or MaskError (``pipeline.errors``) with one line.
    """
    rules = rules or SelectionRules()
    index = index_study(Path(study)) if isinstance(study, (str, Path)) else index_files(study)
    selection = select_mask_and_series(index, rules)
    volume = series_volume(selection.series, rules)
    raster_grid = volume.acquired if volume.resampled else None
    if selection.mask_kind == "SEG":
        mask = load_seg_mask(selection.mask.path, volume.image, rules, sop_uid=selection.mask.sop_uid)
    elif selection.mask_kind == "OUTLINE":
        mask = load_outline_mask(selection.mask, volume.image, rules, selection.series.instances,
                                 raster_grid=raster_grid)
    else:
        mask = load_rtstruct_mask(selection.mask.header, volume.image, rules, raster_grid=raster_grid)
    record = dict(selection.record)
    record["volume"] = {
        "acquisition_plane": volume.acquisition_plane,
        "grid": volume.grid,
        "grid_rule": volume.grid_rule,
        "tilt_deg": round(volume.tilt_deg, 3),
        "obliquity_deg": round(volume.obliquity_deg, 3),
        "resampled_from_oblique": volume.resampled,
        "acquired_slice_spacing_mm": round(volume.slice_spacing_mm, 6),
        "direction": [round(v, 6) for v in volume.image.GetDirection()],
        "size": list(volume.image.GetSize()),
        "spacing_mm": [round(v, 6) for v in volume.image.GetSpacing()],
        "origin_mm": [round(v, 6) for v in volume.image.GetOrigin()],
    }
    record["lesion"] = mask.record
    logger.info(
        "study %s: lesion %d (%s) of %s %s, %d voxels",
        index.study_uid, mask.lesion_number, mask.lesion_label, selection.mask_kind,
        selection.mask.sop_uid, int(sitk.GetArrayViewFromImage(mask.lesion).sum()),
    )
    return LoadedStudy(
        study_uid=index.study_uid,
        image=volume.image,
        lesion=mask.lesion,
        brain=mask.brain,
        series_uid=selection.series.series_uid,
        mask_sop_uid=selection.mask.sop_uid,
        mask_kind=selection.mask_kind,
        lesion_number=mask.lesion_number,
        lesion_label=mask.lesion_label,
        source_sop_uids=volume.source_sop_uids,
        selection=record,
        series_instances=selection.series.instances,
        mask_instance=selection.mask,
    )
