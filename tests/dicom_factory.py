"""Small, valid DICOM datasets for the node's network tests (not the phantom: no anatomy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pipeline.phantom.rtstruct_writer import referenced_frame_of_reference

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"


def _meta(ds: Dataset) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta


def mr_series(
    n: int,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    rows: int = 64,
    columns: int = 64,
    seed: int = 0,
) -> list[Dataset]:
    """``n`` axial MR slices, 16-bit, of one series."""
    rng = np.random.default_rng(seed)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    out = []
    for i in range(n):
        ds = Dataset()
        ds.SOPClassUID = MR_IMAGE_STORAGE
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.PatientName = "NODE^TEST"
        ds.PatientID = "NODE-TEST-1"
        ds.Modality = "MR"
        ds.SeriesNumber = 3
        ds.InstanceNumber = i + 1
        ds.SeriesDescription = "AX T1 +C"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-100.0, -100.0, float(5 * i)]
        ds.PixelSpacing = [1.0, 1.0]
        ds.SliceThickness = 5.0
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, columns
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = rng.integers(0, 4000, size=(rows, columns), dtype=np.uint16).tobytes()
        _meta(ds)
        out.append(ds)
    return out


def mask_for(images: list[Dataset], kind: str = "SEG") -> Dataset:
    """A header-level lesion mask object referencing ``images``' series (SEG or RTSTRUCT)."""
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
    else:
        ds.SOPClassUID = RT_STRUCTURE_SET_STORAGE
        ds.Modality = "RTSTRUCT"
        ds.ReferencedFrameOfReferenceSequence = referenced_frame_of_reference(images)
    _meta(ds)
    return ds


def write_all(datasets: list[Dataset], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
