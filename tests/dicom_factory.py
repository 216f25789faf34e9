"""Small, valid DICOM datasets for the node's and the pipeline's tests (not the phantom: no anatomy).

MR series (single-frame, or one Legacy Converted Enhanced MR instance) of any geometry with
known stored values, and SEG / RTSTRUCT lesion masks on them, written as Part-10 files.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    MRImageStorage,
    RTStructureSetStorage,
    SegmentationStorage,
    generate_uid,
)

from pipeline.load.index import index_study
from pipeline.phantom.rtstruct_writer import referenced_frame_of_reference
from pipeline.load.volume import MRVolume, load_series_volume

MR_IMAGE_STORAGE = str(MRImageStorage)
SEGMENTATION_STORAGE = str(SegmentationStorage)
RT_STRUCTURE_SET_STORAGE = str(RTStructureSetStorage)
AXIAL = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))
SAGITTAL = ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0))
CORONAL = ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0))


def tilted_axial(degrees: float) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Axial rows along +x, columns tilted ``degrees`` about the left-right axis (an AC-PC tilt).

    Slice normal (0, -sin, cos): the slices climb towards the front of the head.
    """
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return (1.0, 0.0, 0.0), (0.0, c, s)


def oblique_sagittal(degrees: float) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Sagittal rows along +y (A->P), columns rotated ``degrees`` about the anterior-posterior axis from -z."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return (0.0, 1.0, 0.0), (s, 0.0, -c)


def set_file_meta(ds: Dataset) -> None:
    """File Meta Information of ``ds`` (explicit VR little endian)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta


def patient_attributes(
    ds: Dataset, study_uid: str, *, patient_name: str = "PHANTOM^A1", patient_id: str = "PHANTOM-A1"
) -> None:
    """Patient and General Study modules."""
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = "A1"
    ds.ReferringPhysicianName = ""


def make_mr_series(
    values: np.ndarray,
    *,
    spacing: tuple[float, float, float] = (1.0, 1.0, 2.0),
    orientation: tuple[tuple[float, float, float], tuple[float, float, float]] = AXIAL,
    origin: tuple[float, float, float] = (-10.0, -12.0, 5.0),
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    slope: float = 1.0,
    intercept: float = 0.0,
    patient_name: str = "PHANTOM^A1",
    patient_id: str = "PHANTOM-A1",
    series_number: int = 1,
    series_description: str | None = None,
) -> list[Dataset]:
    """Single-frame MR slices: ``values[k, row, col]`` stored values, slice k at origin + k*spacing[2]*normal.

    ``spacing`` is (between rows, between columns, between slices) in mm.
    """
    study_uid = study_uid or generate_uid()
    series_uid, for_uid = series_uid or generate_uid(), frame_of_reference_uid or generate_uid()
    row, col = np.array(orientation[0]), np.array(orientation[1])
    normal = np.cross(row, col)
    out = []
    for k in range(values.shape[0]):
        ds = Dataset()
        patient_attributes(ds, study_uid, patient_name=patient_name, patient_id=patient_id)
        ds.SOPClassUID, ds.SOPInstanceUID = MR_IMAGE_STORAGE, generate_uid()
        ds.SeriesInstanceUID, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = series_uid, "MR", series_number, k + 1
        if series_description is not None:
            ds.SeriesDescription = series_description
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = for_uid, ""
        ds.Manufacturer = "egfr-node tests"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "GR", "NONE", ""
        ds.MRAcquisitionType, ds.EchoTime, ds.RepetitionTime, ds.EchoTrainLength = "3D", 2.0, 8.0, 1
        ds.ImageOrientationPatient = [float(v) for v in (*row, *col)]
        ds.ImagePositionPatient = [float(round(v, 6)) for v in np.array(origin) + k * spacing[2] * normal]
        ds.PixelSpacing = [spacing[0], spacing[1]]
        ds.SliceThickness = spacing[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = int(values.shape[1]), int(values.shape[2])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.WindowCenter, ds.WindowWidth = 2000, 4000
        ds.PixelData = values[k].astype(np.uint16).tobytes()
        set_file_meta(ds)
        out.append(ds)
    return out


def mr_series(
    n: int,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    rows: int = 64,
    columns: int = 64,
    seed: int = 0,
) -> list[Dataset]:
    """``n`` axial MR slices 5 mm apart, 16-bit random values, of one series (the node's tests)."""
    rng = np.random.default_rng(seed)
    values = np.stack([rng.integers(0, 4000, size=(rows, columns), dtype=np.uint16) for _ in range(n)])
    return make_mr_series(
        values, spacing=(1.0, 1.0, 5.0), origin=(-100.0, -100.0, 0.0), study_uid=study_uid, series_uid=series_uid,
        patient_name="NODE^TEST", patient_id="NODE-TEST-1", series_number=3, series_description="AX T1 +C",
    )


def make_enhanced(datasets: list[Dataset]) -> Dataset:
    """The same slices as one multi-frame instance (highdicom Legacy Converted Enhanced MR)."""
    return hd.legacy.LegacyConvertedEnhancedMRImage(
        datasets, series_instance_uid=generate_uid(), series_number=2,
        sop_instance_uid=generate_uid(), instance_number=1,
    )


def ramp(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Distinct stored values per voxel so any misplacement shows."""
    rng = np.random.default_rng(seed)
    return rng.permutation(np.arange(int(np.prod(shape)))).reshape(shape) % 4000 + 10


def source_points(datasets: list[Dataset]) -> tuple[np.ndarray, np.ndarray]:
    """Patient mm of every stored pixel centre, [k, row, col, 3] in list order, and the stored values."""
    points, values = [], []
    for ds in datasets:
        iop = np.array(ds.ImageOrientationPatient, float)
        dr, dc = (float(v) for v in ds.PixelSpacing)
        r, c = np.meshgrid(np.arange(ds.Rows), np.arange(ds.Columns), indexing="ij")
        origin = np.array(ds.ImagePositionPatient, float)
        points.append(origin + (c * dc)[..., None] * iop[:3] + (r * dr)[..., None] * iop[3:])
        values.append(np.frombuffer(ds.PixelData, dtype=np.uint16).reshape(ds.Rows, ds.Columns))
    return np.stack(points), np.stack(values)


def _plane(ds: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    iop = np.array(ds.ImageOrientationPatient, float)
    row, col = iop[:3], iop[3:]
    return np.array(ds.ImagePositionPatient, float), row, col, np.cross(row, col)


def ball_mask(source: list[Dataset], centre: tuple[float, float, float], radius: float) -> np.ndarray:
    """[k, row, col] voxel centres of ``source`` (in list order) within ``radius`` mm of ``centre``."""
    out = []
    for ds in source:
        origin, row, col = _plane(ds)[:3]
        dr, dc = (float(v) for v in ds.PixelSpacing)
        r, c = np.meshgrid(np.arange(ds.Rows), np.arange(ds.Columns), indexing="ij")
        points = origin + (c * dc)[..., None] * row + (r * dr)[..., None] * col
        out.append(np.linalg.norm(points - np.array(centre), axis=-1) < radius)
    return np.stack(out)


def ball_contours(source: list[Dataset], centre: tuple[float, float, float], radius: float, n: int = 128) -> list[np.ndarray]:
    """The ball's cross-section circle in each slice plane it crosses."""
    contours = []
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    for ds in source:
        origin, row, col, normal = _plane(ds)
        d = float((np.array(centre) - origin) @ normal)
        if abs(d) >= radius:
            continue
        r = np.sqrt(radius**2 - d**2)
        c = np.array(centre) - d * normal
        contours.append(c + r * np.cos(angles)[:, None] * row + r * np.sin(angles)[:, None] * col)
    return contours


def make_seg(source: list[Dataset], segments: dict[str, np.ndarray], *, fractional: bool = False) -> hd.seg.Segmentation:
    """A highdicom SEG of ``source``: label -> array [k, row, col] (bool, or fractions in [0, 1])."""
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=label,
            segmented_property_category=hd.sr.CodedConcept("49755003", "SCT", "Morphologically Altered Structure"),
            segmented_property_type=hd.sr.CodedConcept("108369006", "SCT", "Neoplasm"),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for n, label in enumerate(segments, start=1)
    ]
    stack = np.stack(list(segments.values()), axis=-1)
    return hd.seg.Segmentation(
        source_images=source,
        pixel_array=stack.astype(np.float32) if fractional else stack.astype(np.uint8),
        segmentation_type="FRACTIONAL" if fractional else "BINARY",
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=10,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="egfr-node tests",
        manufacturer_model_name="tests",
        software_versions="0",
        device_serial_number="0",
    )


def make_rtstruct(source: list[Dataset], rois: dict[str, list[np.ndarray]], *, content_time: str = "120000") -> Dataset:
    """An RT Structure Set on ``source``: ROI name -> closed planar contours (N x 3 mm)."""
    ref = source[0]
    ds = Dataset()
    patient_attributes(ds, str(ref.StudyInstanceUID))
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = RT_STRUCTURE_SET_STORAGE, generate_uid(), "RTSTRUCT"
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = generate_uid(), 20, 1
    ds.Manufacturer = "egfr-node tests"
    ds.StructureSetLabel = "lesion"
    ds.StructureSetDate, ds.StructureSetTime = "20260101", content_time
    ds.ContentDate, ds.ContentTime = "20260101", content_time
    ds.ReferencedFrameOfReferenceSequence = referenced_frame_of_reference(source)
    ds.StructureSetROISequence, ds.ROIContourSequence, ds.RTROIObservationsSequence = Sequence(), Sequence(), Sequence()
    for number, (name, contours) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID = number, ref.FrameOfReferenceUID
        roi.ROIName, roi.ROIGenerationAlgorithm = name, "MANUAL"
        ds.StructureSetROISequence.append(roi)
        roi_contour = Dataset()
        roi_contour.ReferencedROINumber, roi_contour.ROIDisplayColor = number, [255, 0, 0]
        roi_contour.ContourSequence = Sequence()
        for points in contours:
            contour = Dataset()
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = len(points)
            contour.ContourData = [float(round(v, 4)) for v in np.asarray(points).ravel()]
            roi_contour.ContourSequence.append(contour)
        ds.ROIContourSequence.append(roi_contour)
        observation = Dataset()
        observation.ObservationNumber, observation.ReferencedROINumber = number, number
        observation.RTROIInterpretedType, observation.ROIInterpreter = "GTV", ""
        ds.RTROIObservationsSequence.append(observation)
    set_file_meta(ds)
    return ds


def mask_for(images: list[Dataset], kind: str = "SEG") -> Dataset:
    """A header-level lesion mask object referencing ``images``' series (SEG or RTSTRUCT); a
    SEG carries one empty 1-bit frame (its Pixel Data is Type 1), not a real segmentation."""
    first = images[0]
    ds = Dataset()
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = first.StudyInstanceUID
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = first.FrameOfReferenceUID
    ds.PatientName = first.PatientName
    ds.PatientID = first.PatientID
    ds.SeriesNumber = 100
    ref_instances = Sequence()
    for image in images:
        item = Dataset()
        item.ReferencedSOPClassUID = image.SOPClassUID
        item.ReferencedSOPInstanceUID = image.SOPInstanceUID
        ref_instances.append(item)
    if kind == "SEG":
        ds.SOPClassUID = SEGMENTATION_STORAGE
        ds.Modality = "SEG"
        series = Dataset()
        series.SeriesInstanceUID = first.SeriesInstanceUID
        series.ReferencedInstanceSequence = ref_instances
        ds.ReferencedSeriesSequence = Sequence([series])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns, ds.NumberOfFrames = first.Rows, first.Columns, 1
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 1, 0, 0
        ds.PixelData = bytes((first.Rows * first.Columns + 7) // 8 + ((first.Rows * first.Columns + 7) // 8) % 2)
    else:
        ds.SOPClassUID = RT_STRUCTURE_SET_STORAGE
        ds.Modality = "RTSTRUCT"
        ds.ReferencedFrameOfReferenceSequence = referenced_frame_of_reference(images)
    set_file_meta(ds)
    return ds


def write_datasets(datasets: list[Dataset], folder: Path, shuffle_names: bool = False) -> list[Path]:
    """Write Part-10 files named by SOP Instance UID (or by random numbers when ``shuffle_names``)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        name = f"{random.getrandbits(40):x}.dcm" if shuffle_names else f"{ds.SOPInstanceUID}.dcm"
        path = folder / name
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_all(datasets: list[Dataset], folder: Path) -> list[Path]:
    """Write Part-10 files named by SOP Instance UID."""
    return write_datasets(datasets, folder)


def load(datasets: list[Dataset], folder: Path, **policy: object) -> MRVolume:
    """Write a series and load its volume through the study index (``policy``: load_series_volume keywords)."""
    write_datasets(datasets, folder)
    index = index_study(folder)
    (series,) = [s for s in index.series.values() if s.modality == "MR"]
    return load_series_volume(series, **policy)  # type: ignore[arg-type]
