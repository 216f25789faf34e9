"""The lesion outlined on one slice as a viewer saves it: an Enhanced SR measurement report.

Written the way OHIF 3.x saves an ellipse (issue 31): TID 1500 with one measurement group
(TID 1501) per lesion, its tracking identifier and UID, and an area NUM INFERRED FROM a
SCOORD ELLIPSE on one image (pixel coordinates, 0.0\\0.0 the outer corner of the top left
pixel); or, with ``form="tid1410"``, the planar ROI of TID 1410 as highdicom writes it. The
ellipse is the one a reader would draw around the lesion's largest cross-section: centred
on it, its axes the cross-section's principal axes, sized so that a uniform ellipse of the
same second moments fits, moved and scaled by ``jitter_mm`` at random when asked.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from pipeline.phantom.dicom_common import MANUFACTURER, phantom_uid, save
from pipeline.phantom.geometry import Grid

__all__ = ["OUTLINE_FORMS", "lesion_ellipse", "write_outline_sr"]

OUTLINE_FORMS = ("ohif", "tid1410")


def lesion_ellipse(mask2d: np.ndarray, spacing: tuple[float, float], rng: np.random.Generator | None = None,
                   jitter_mm: float = 0.0) -> np.ndarray:
    """ELLIPSE graphic data (4 x 2 pixel column/row: major axis ends, minor axis ends) around
    the non-zero pixels of ``mask2d`` ([rows, columns]); ``spacing``: (column, row) mm."""
    rows, columns = np.nonzero(mask2d)
    if not len(rows):
        raise ValueError("the slice holds no lesion pixel")
    xy = np.column_stack([columns, rows]).astype(float) * np.asarray(spacing)  # mm in the image plane
    centre = xy.mean(axis=0)
    values, vectors = np.linalg.eigh(np.cov((xy - centre).T) + np.eye(2) * 1e-6)
    radii = 2.0 * np.sqrt(values)  # a uniform ellipse of semi-axis a has variance a^2 / 4
    if rng is not None and jitter_mm > 0:
        centre = centre + rng.normal(0.0, jitter_mm / np.sqrt(2.0), 2)
        radii = np.maximum(radii + rng.normal(0.0, jitter_mm / 2.0, 2), 1.0)
    major, minor = vectors[:, 1] * radii[1], vectors[:, 0] * radii[0]
    points: np.ndarray = np.array([centre + major, centre - major, centre + minor, centre - minor]) / np.asarray(spacing)
    return points + 0.5  # pixel index -> SCOORD pixel coordinate (centre of pixel 0 is 0.5)


def write_outline_sr(folder: Path, grid: Grid, sources: list[Dataset], lesion_mask: np.ndarray,
                     uid_key: tuple[object, ...], series_number: int, *, form: str = "ohif",
                     jitter_mm: float = 0.0, seed: int = 0) -> Dataset:
    """Write the outline SR of the lesion ``lesion_mask`` ([k, rows, columns] on ``grid``).

    ``sources``: one dataset per slice k, or one multi-frame dataset whose frame k + 1 is slice
    k. The outline lies on the acquired slice with the largest cross-section of the lesion.
    """
    if form not in OUTLINE_FORMS:
        raise ValueError(f'Argument "form" must be one of {", ".join(OUTLINE_FORMS)}, not {form!r}')
    areas = lesion_mask.reshape(lesion_mask.shape[0], -1).sum(axis=1)
    k = int(np.argmax(areas))
    rng = np.random.default_rng(seed) if jitter_mm > 0 else None
    graphic = lesion_ellipse(lesion_mask[k], (grid.spacing[0], grid.spacing[1]), rng, jitter_mm)
    multiframe = len(sources) == 1 and grid.size[2] > 1
    image = sources[0] if multiframe else sources[k]
    source = hd.sr.SourceImageForRegion.from_source_image(image, referenced_frame_numbers=[k + 1] if multiframe else None)
    tracking = hd.sr.TrackingIdentifier(uid=phantom_uid(*uid_key, "outline-tracking"), identifier="Lesion 1")
    semi = np.linalg.norm((graphic[0] - graphic[1]) * grid.spacing[:2]) / 2.0
    semi_minor = np.linalg.norm((graphic[2] - graphic[3]) * grid.spacing[:2]) / 2.0
    area = float(np.pi * semi * semi_minor)
    if form == "ohif":
        coordinates = hd.sr.CoordinatesForMeasurement(
            graphic_type=hd.sr.GraphicTypeValues.ELLIPSE, graphic_data=graphic,
            source_image=hd.sr.SourceImageForRegion.from_source_image(
                image, referenced_frame_numbers=[k + 1] if multiframe else None))
        measurement = hd.sr.Measurement(name=codes.SCT.Area,
                                        value=round(area, 2), unit=codes.UCUM.SquareMillimeter,
                                        referenced_coordinates=[coordinates])
        group: hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations = (
            hd.sr.MeasurementsAndQualitativeEvaluations(tracking_identifier=tracking, measurements=[measurement]))
    else:
        region = hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.ELLIPSE, graphic_data=graphic,
                                   source_image=source)
        group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(tracking_identifier=tracking,
                                                                     referenced_region=region)
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_person_context=hd.sr.ObserverContext(
                observer_type=codes.DCM.Person,
                observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name="READER^PHANTOM"))),
        procedure_reported=hd.sr.CodedConcept("24587-8", "LN", "MR brain W and WO contrast IV"),
        imaging_measurements=[group],
    )
    sr: Dataset = hd.sr.EnhancedSR(
        evidence=[image], content=report, series_instance_uid=phantom_uid(*uid_key, "outline-series"),
        series_number=series_number, sop_instance_uid=phantom_uid(*uid_key, "outline-instance"), instance_number=1,
        manufacturer=MANUFACTURER, series_description="Measurements", is_complete=True,
    )
    for date, time in (("ContentDate", "ContentTime"), ("SeriesDate", "SeriesTime")):  # a seed gives the same file
        setattr(sr, date, image.StudyDate)
        setattr(sr, time, image.get("StudyTime", "120000"))
    save(sr, folder / "SR0001.dcm")
    return sr
