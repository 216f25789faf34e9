"""A lesion drawn in an RTSTRUCT, re-expressed as a one-segment DICOM SEG the SR can reference.

highdicom cannot reference an RTSTRUCT ROI from TID 1411, and the hand-built COMPOSITE
"Region in Space" reference is refused by DCMTK 3.6.7 (shared/SR.md, "RTSTRUCT-based
masks"). The node therefore sends back a SEG (PS3.3 A.51, BINARY) of the rasterised ROI
and points the SR at it.

The frames lie on the pipeline's volume grid (which may be axial-resampled or tilted),
placed from that grid's origin, spacing and direction, not on the source images' planes:
frame positions, orientation and pixel measures come from the volume. Only the slab of
slices holding lesion voxels is written (first to last lesion slice, empty slices inside
kept). The frames are stored largest lesion area first (each frame carries its own plane
position, so any order is valid): a viewer that opens a SEG on its first frame shows the
lesion where it is largest, not a slice with two lesion pixels at its edge.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels.utils import pack_bits

from dicom_node.report import codes as report_codes
from dicom_node.report.series_time import stamp_series_and_content_time
from dicom_node.report.sr import result_character_set
from dicom_node.report._checks import check_datasets, check_series_number, check_text, check_uid

__all__ = ["DRAWN_AS", "OUTLINE_SEG_SERIES_DESCRIPTION", "SEG_SERIES_DESCRIPTION", "lesion_volume", "seg_from_volume_mask"]

SEG_SERIES_DESCRIPTION = "Lesion SEG from RTSTRUCT by egfr-node - research use"
OUTLINE_SEG_SERIES_DESCRIPTION = "Lesion SEG from viewer outline by egfr-node - research use"
#: what the lesion was drawn as -> the SEG's content description
DRAWN_AS = {"RTSTRUCT": "Lesion ROI of the RTSTRUCT, rasterised by egfr-node",
            "outline": "Lesion outlined in a viewer (SR), filled by egfr-node"}


def _check_grid(mask: object, origin: object, spacing: object, direction: object) -> tuple[np.ndarray, ...]:
    if not isinstance(mask, np.ndarray):
        raise TypeError(f'Argument "mask" must be a numpy array, not {type(mask).__name__}')
    if mask.ndim != 3:
        raise ValueError(f'Argument "mask" must be 3-D [k, j, i], not {mask.ndim}-D')
    if mask.dtype not in (np.uint8, np.bool_):
        raise TypeError(f'Argument "mask" must have dtype uint8 (or bool), not {mask.dtype}')
    if mask.size and int(mask.max()) > 1:
        raise ValueError('Argument "mask" must hold only 0 and 1')
    if not mask.any():
        raise ValueError('Argument "mask" must hold at least one lesion voxel')
    values = []
    for name, value, length in (("origin", origin, 3), ("spacing", spacing, 3), ("direction", direction, 9)):
        try:
            array = np.asarray(value, dtype=float)
        except (TypeError, ValueError):
            raise TypeError(f'Argument "{name}" must be a sequence of {length} numbers') from None
        if array.shape != (length,) or not np.isfinite(array).all():
            raise ValueError(f'Argument "{name}" must be {length} finite numbers, not {value!r}')
        values.append(array)
    origin_mm, spacing_mm, direction_flat = values
    if (spacing_mm <= 0).any():
        raise ValueError(f'Argument "spacing" must be positive, not {tuple(spacing_mm)}')
    matrix = direction_flat.reshape(3, 3)
    if not np.allclose(matrix.T @ matrix, np.eye(3), atol=1e-4):
        raise ValueError('Argument "direction" must be an orthonormal 3x3 matrix (row-major, columns = i, j, k axes)')
    return mask.astype(np.uint8), origin_mm, spacing_mm, matrix


def lesion_volume(mask: np.ndarray, origin: np.ndarray, spacing: np.ndarray, direction: np.ndarray,
                  frame_of_reference_uid: str | None) -> hd.Volume:
    """The slab of ``mask`` [k, j, i] between its first and last lesion slice as a highdicom Volume.

    SimpleITK index (i, j, k) with direction columns i, j, k becomes the Volume's array axes
    (k, j, i): frames are k-slices, rows run along j, columns along i.
    """
    slices = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    first, last = int(slices[0]), int(slices[-1])
    position = origin + direction[:, 2] * spacing[2] * first
    return hd.Volume.from_components(
        np.ascontiguousarray(mask[first:last + 1]),
        spacing=[float(spacing[2]), float(spacing[1]), float(spacing[0])],
        position=[float(v) for v in position],
        direction=direction[:, [2, 1, 0]].ravel().tolist(),
        coordinate_system="PATIENT",
        frame_of_reference_uid=frame_of_reference_uid,
    )


def put_largest_frame_first(seg: Dataset) -> Dataset:
    """Reorder a BINARY SEG's frames by lesion area, largest first (ties in their order): the
    per-frame functional groups (plane position, dimension index values) move with their
    pixels, so every frame stays where it is in space. highdicom always writes frames in
    spatial order, hence this step after it. DimensionOrganizationType "3D" promises frames
    in spatial order, so it goes."""
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    areas = frames.reshape(frames.shape[0], -1).sum(axis=1)
    order = np.argsort(-areas, kind="stable")
    groups = list(seg.PerFrameFunctionalGroupsSequence)
    seg.PerFrameFunctionalGroupsSequence = [groups[i] for i in order]
    seg.PixelData = pack_bits(frames[order].astype(np.uint8).ravel())
    if "DimensionOrganizationType" in seg:
        del seg.DimensionOrganizationType
    return seg


def seg_from_volume_mask(
    source_images: Sequence[Dataset],
    mask: np.ndarray,
    origin: tuple[float, float, float],
    spacing: tuple[float, float, float],
    direction: tuple[float, ...],
    *,
    segment_label: str,
    tracking_id: str,
    tracking_uid: str,
    sop_instance_uid: str,
    series_instance_uid: str,
    series_number: int = 9902,
    manufacturer: str,
    software_version: str,
    manufacturer_model_name: str = "egfr-node",
    device_serial_number: str = "1",
    device_uid: str | None = None,
    created: datetime | None = None,
    drawn_as: str = "RTSTRUCT",
) -> Dataset:
    """A BINARY SEG with one segment (the lesion) on the grid of ``mask``.

    ``mask``: uint8 0/1 [k, j, i] on the grid given by ``origin`` (centre of voxel 0, LPS mm),
    ``spacing`` (i, j, k mm) and ``direction`` (9 floats, row-major, columns = i, j, k axes),
    i.e. ``sitk.GetArrayFromImage(lesion)`` with ``lesion.GetOrigin()``, ``GetSpacing()``,
    ``GetDirection()``. ``source_images``: the MR images the RTSTRUCT was drawn on (one
    series; referenced, and patient/study copied from them). Segment: "Neoplasm, metastatic"
    (SCT 14799000) in "Morphologically abnormal structure" (SCT 49755003), algorithm type
    MANUAL (a person drew it; the node only rasterised it), with ``tracking_id`` and
    ``tracking_uid``, which the SR's measurement group reuses. ``drawn_as``: what the lesion
    was drawn as, "RTSTRUCT" or "outline" (a viewer's outline SR), said in the descriptions.
    """
    if drawn_as not in DRAWN_AS:
        raise ValueError(f'Argument "drawn_as" must be one of {", ".join(DRAWN_AS)}, not {drawn_as!r}')
    images = check_datasets("source_images", source_images)
    array, origin_mm, spacing_mm, matrix = _check_grid(mask, origin, spacing, direction)
    check_text("segment_label", segment_label)
    check_text("tracking_id", tracking_id)
    check_uid("tracking_uid", tracking_uid)
    check_uid("sop_instance_uid", sop_instance_uid)
    check_uid("series_instance_uid", series_instance_uid)
    if series_instance_uid == str(images[0].SeriesInstanceUID):
        raise ValueError('Argument "series_instance_uid" must be a new series, not that of the images')
    check_series_number("series_number", series_number)
    check_text("manufacturer", manufacturer)
    check_text("software_version", software_version)
    check_text("manufacturer_model_name", manufacturer_model_name)
    check_text("device_serial_number", device_serial_number)
    if device_uid is not None:
        check_uid("device_uid", device_uid)

    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=segment_label,
        segmented_property_category=report_codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        segmented_property_type=report_codes.NEOPLASM_METASTATIC,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        tracking_uid=tracking_uid,
        tracking_id=tracking_id,
    )
    volume = lesion_volume(array, origin_mm, spacing_mm, matrix, images[0].get("FrameOfReferenceUID"))
    seg = hd.seg.Segmentation(
        source_images=images,
        pixel_array=volume,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer=manufacturer,
        manufacturer_model_name=manufacturer_model_name,
        software_versions=software_version,
        device_serial_number=device_serial_number,
        omit_empty_frames=False,
        content_label="LESION",
        content_description=DRAWN_AS[drawn_as],
        series_description=SEG_SERIES_DESCRIPTION if drawn_as == "RTSTRUCT" else OUTLINE_SEG_SERIES_DESCRIPTION,
        specific_character_set=result_character_set(images[0]),
    )
    if device_uid is not None:
        seg.DeviceUID = device_uid
    put_largest_frame_first(seg)
    return stamp_series_and_content_time(seg, created)
