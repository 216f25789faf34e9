"""Lesion mask as a DICOM Segmentation (PS3.3 A.51), BINARY, built with highdicom.

Segment 1 is the resected metastasis ("Metastasis", SCT 49755003 / 14799000) with a
TrackingID and TrackingUID; optional further segments: a second metastasis
("Metastasis 2") and the brain ("Brain", SCT 91723000 / 12738006). Frames are on the source
images' planes (one frame per source slice or source frame that holds any mask).
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from pipeline.phantom.dicom_common import MANUFACTURER, MODEL_NAME, SOFTWARE_VERSION, phantom_uid, save

__all__ = ["write_seg"]


def _description(number: int, label: str, uid_key: tuple[object, ...]) -> hd.seg.SegmentDescription:
    if label == "Brain":
        category, kind = codes.SCT.AnatomicalStructure, codes.SCT.Brain
    else:
        category, kind = codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.NeoplasmMetastatic
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=label,
        segmented_property_category=category,
        segmented_property_type=kind,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        tracking_uid=phantom_uid(*uid_key, "tracking", label),
        tracking_id=f"{label.lower().replace(' ', '-')}-1",
    )


def _make_reproducible(seg: Dataset, uid_key: tuple[object, ...], date: str, time: str) -> None:
    """Replace what highdicom fills from the clock or a random UID, so a seed gives the same file."""
    for keyword in ("ContentDate", "SeriesDate", "InstanceCreationDate"):
        setattr(seg, keyword, date)
    for keyword in ("ContentTime", "SeriesTime", "InstanceCreationTime"):
        setattr(seg, keyword, time)
    for item in seg.get("ContributingEquipmentSequence", []):
        item.ContributionDateTime = date + time
    dimension_uid = phantom_uid(*uid_key, "seg-dimension-organization")
    for item in [*seg.get("DimensionOrganizationSequence", []), *seg.get("DimensionIndexSequence", [])]:
        item.DimensionOrganizationUID = dimension_uid


def write_seg(folder: Path, source_images: list[Dataset], masks: list[tuple[str, np.ndarray]],
              uid_key: tuple[object, ...], series_number: int) -> Dataset:
    """Write a BINARY SEG with one segment per (label, [frames, rows, columns] uint8) on the sources.

    ``source_images`` are single-frame slices (one per mask frame, same order) or one
    multi-frame image whose frames match the mask frames.
    """
    stack = np.stack([m for _, m in masks], axis=-1).astype(np.uint8)
    descriptions = [_description(i + 1, label, uid_key) for i, (label, _) in enumerate(masks)]
    seg: Dataset = hd.seg.Segmentation(
        source_images=source_images,
        pixel_array=stack,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=phantom_uid(*uid_key, "seg-series"),
        series_number=series_number,
        sop_instance_uid=phantom_uid(*uid_key, "seg-instance"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME,
        software_versions=SOFTWARE_VERSION,
        device_serial_number="0001",
        content_label="LESION",
        content_description="Resected metastasis outlined on T1+c",
        content_creator_name="NEUROSURGEON^PHANTOM",
        series_description="Lesion segmentation",
    )
    _make_reproducible(seg, uid_key, source_images[0].StudyDate, source_images[0].StudyTime)
    save(seg, folder / "SEG0001.dcm")
    return seg
