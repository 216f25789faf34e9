"""Lesion mask as an RT Structure Set (PS3.3 A.19), written with pydicom.

Modules: Patient, General Study, RT Series, General Equipment, Structure Set, ROI Contour,
RT ROI Observations, SOP Common. Contours are CLOSED_PLANAR polygons in patient mm, one set
per acquired slice (so they lie on the image planes whatever the acquisition plane), traced
at the 0.5 iso-line of the binary mask with contourpy (marching squares); a hole is its own
contour. Each contour references its image (and frame, for a multi-frame source) in
ContourImageSequence.
"""

from __future__ import annotations

from pathlib import Path

import contourpy
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import RTStructureSetStorage

from pipeline.phantom.dicom_common import StudyMeta, phantom_uid, save, set_common, set_series
from pipeline.phantom.geometry import Grid
from pipeline.phantom.mr_single import format_ds

__all__ = ["mask_contours", "referenced_frame_of_reference", "write_rtstruct"]

DETACHED_STUDY_MANAGEMENT = "1.2.840.10008.3.1.2.3.1"  # retired; PS3.3 C.8.8.5 still names it for the study reference
_COLOURS = {"Metastasis": [255, 0, 0], "Metastasis 2": [255, 160, 0], "Brain": [0, 160, 255]}


def mask_contours(mask2d: np.ndarray) -> list[np.ndarray]:
    """Closed contours (each (N, 2) in (column, row) pixel indices) of a binary [rows, columns] mask."""
    padded = np.pad(mask2d.astype(np.float64), 1)
    generator = contourpy.contour_generator(z=padded, line_type=contourpy.LineType.Separate)
    lines = []
    for line in generator.lines(0.5):
        points = np.asarray(line)[:, :2] - 1.0
        if len(points) > 1 and np.allclose(points[0], points[-1]):
            points = points[:-1]
        if len(points) >= 3:
            lines.append(points)
    return lines


def _image_reference(source: Dataset, frame: int | None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if frame is not None:
        item.ReferencedFrameNumber = frame
    return item


def referenced_frame_of_reference(images: list[Dataset]) -> Sequence:
    """ReferencedFrameOfReferenceSequence of a structure set drawn on ``images`` (one series).

    RT Structure Set module (PS3.3 C.8.8.5): Frame of Reference > RTReferencedStudySequence >
    RTReferencedSeriesSequence > ContourImageSequence, one item per image, or per frame
    (ReferencedFrameNumber) of a multi-frame image.
    """
    first = images[0]
    contour_images = Sequence()
    for image in images:
        frames = int(image.get("NumberOfFrames", 1) or 1)
        for frame in range(1, frames + 1):
            contour_images.append(_image_reference(image, frame if frames > 1 else None))
    series_ref = Dataset()
    series_ref.SeriesInstanceUID = first.SeriesInstanceUID
    series_ref.ContourImageSequence = contour_images
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID = DETACHED_STUDY_MANAGEMENT
    study_ref.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study_ref.RTReferencedSeriesSequence = Sequence([series_ref])
    frame_ref = Dataset()
    frame_ref.FrameOfReferenceUID = first.FrameOfReferenceUID
    frame_ref.RTReferencedStudySequence = Sequence([study_ref])
    return Sequence([frame_ref])


def write_rtstruct(folder: Path, study: StudyMeta, grid: Grid, sources: list[Dataset],
                   masks: list[tuple[str, np.ndarray]], uid_key: tuple[object, ...], series_number: int) -> Dataset:
    """Write an RT Structure Set with one ROI per (label, [k, rows, columns] mask) on ``grid``.

    ``sources`` holds one dataset per slice k, or a single multi-frame dataset whose frame
    k + 1 is slice k.
    """
    multiframe = len(sources) == 1 and grid.size[2] > 1

    def reference(k: int) -> Dataset:
        return _image_reference(sources[0], k + 1) if multiframe else _image_reference(sources[k], None)

    ds = Dataset()
    set_common(ds, study)
    ds.SOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = phantom_uid(*uid_key, "rtstruct-instance")
    set_series(ds, study, modality="RTSTRUCT", series_uid=phantom_uid(*uid_key, "rtstruct-series"),
               series_number=series_number, series_description="Lesion contours")
    ds.OperatorsName = "NEUROSURGEON^PHANTOM"
    ds.InstanceNumber = 1
    ds.StructureSetLabel = "LESION"
    ds.StructureSetName = "Resected metastasis"
    ds.StructureSetDate = study.study_date
    ds.StructureSetTime = study.study_time
    ds.InstanceCreationDate = study.study_date
    ds.InstanceCreationTime = study.study_time

    ds.ReferencedFrameOfReferenceSequence = referenced_frame_of_reference(sources)

    roi_items, contour_items, observation_items = [], [], []
    matrix, spacing = grid.matrix, np.asarray(grid.spacing)
    for number, (label, mask) in enumerate(masks, start=1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = study.frame_of_reference_uid
        roi.ROIName = label
        roi.ROIGenerationAlgorithm = "MANUAL"
        roi_items.append(roi)
        contours = []
        for k in np.nonzero(mask.reshape(mask.shape[0], -1).any(axis=1))[0]:
            for line in mask_contours(mask[k]):
                ijk = np.column_stack([line[:, 0], line[:, 1], np.full(len(line), float(k))])
                points = ijk * spacing @ matrix.T + np.asarray(grid.origin)
                contour = Dataset()
                contour.ContourImageSequence = Sequence([reference(int(k))])
                contour.ContourGeometricType = "CLOSED_PLANAR"
                contour.NumberOfContourPoints = len(points)
                contour.ContourData = [format_ds(round(float(v), 3)) for v in points.ravel()]
                contours.append(contour)
        item = Dataset()
        item.ROIDisplayColor = _COLOURS.get(label, [0, 255, 0])
        item.ReferencedROINumber = number
        item.ContourSequence = Sequence(contours)
        contour_items.append(item)
        observation = Dataset()
        observation.ObservationNumber = number
        observation.ReferencedROINumber = number
        observation.RTROIInterpretedType = "ORGAN" if label == "Brain" else "GTV"
        observation.ROIInterpreter = "NEUROSURGEON^PHANTOM"
        observation_items.append(observation)
    ds.StructureSetROISequence = Sequence(roi_items)
    ds.ROIContourSequence = Sequence(contour_items)
    ds.RTROIObservationsSequence = Sequence(observation_items)
    ds.ApprovalStatus = "UNAPPROVED"
    save(ds, folder / "RS0001.dcm")
    return ds
