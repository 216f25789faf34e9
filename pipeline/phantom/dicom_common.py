"""DICOM attributes every phantom object shares: Patient, General Study, General Equipment, SOP Common.

UIDs are ``2.25`` UIDs of name-based (version 5) UUIDs of the seed and the object's name,
so the same seed writes the same files. (``pydicom.uid.generate_uid(prefix=None, ...)``
ignores ``entropy_srcs`` and returns a random UUID, so it cannot be used for this.)
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

__all__ = ["MANUFACTURER", "StudyMeta", "phantom_uid", "sample_study_meta", "save", "set_common", "set_image_pixel", "set_series"]

MANUFACTURER = "egfr-node phantom"
MODEL_NAME = "MNI152 head phantom"
SOFTWARE_VERSION = "egfr-node 0.1.0"
_NAMESPACE = uuid.UUID("6f0a3c9e-5b1d-4e7a-9c2f-0e9d7b4a1c55")


def phantom_uid(*parts: object) -> str:
    """A UID that depends only on ``parts`` (seed, patient index, object name, ...)."""
    name = "|".join(["egfr-node-phantom", *(str(p) for p in parts)])
    return f"2.25.{uuid.uuid5(_NAMESPACE, name).int}"


@dataclass(frozen=True)
class StudyMeta:
    """Patient and study attributes of one phantom study."""

    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    age: str
    study_uid: str
    study_date: str
    study_time: str
    accession: str
    study_id: str
    frame_of_reference_uid: str
    field_strength: float
    institution: str


def sample_study_meta(rng: np.random.Generator, key: tuple[object, ...], patient_index: int) -> StudyMeta:
    """Patient demographics as in the paper's cohort (age 62 +- 12), dates 2009-2019."""
    age = int(np.clip(round(62 + 12 * rng.standard_normal()), 30, 89))
    year = int(rng.integers(2009, 2020))
    month, day = int(rng.integers(1, 13)), int(rng.integers(1, 29))
    hour, minute, second = int(rng.integers(7, 19)), int(rng.integers(0, 60)), int(rng.integers(0, 60))
    birth_month, birth_day = int(rng.integers(1, 13)), int(rng.integers(1, 29))
    birth_year = year - age - (1 if (birth_month, birth_day) > (month, day) else 0)
    return StudyMeta(
        patient_name=f"PHANTOM^P{patient_index:04d}",
        patient_id=f"PHANTOM-{patient_index:04d}",
        birth_date=f"{birth_year:04d}{birth_month:02d}{birth_day:02d}",
        sex="F" if rng.uniform() < 0.45 else "M",
        age=f"{age:03d}Y",
        study_uid=phantom_uid(*key, "study"),
        study_date=f"{year:04d}{month:02d}{day:02d}",
        study_time=f"{hour:02d}{minute:02d}{second:02d}",
        accession=f"PH{patient_index:06d}",
        study_id=str(1000 + patient_index),
        frame_of_reference_uid=phantom_uid(*key, "frame-of-reference"),
        field_strength=float(rng.choice([1.5, 3.0])),
        institution="egfr-node phantom clinic",
    )


def set_common(ds: Dataset, study: StudyMeta) -> None:
    """Patient, General Study, Patient Study and General Equipment modules."""
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = study.birth_date
    ds.PatientSex = study.sex
    ds.PatientAge = study.age
    ds.StudyInstanceUID = study.study_uid
    ds.StudyDate = study.study_date
    ds.StudyTime = study.study_time
    ds.ReferringPhysicianName = "REFERRER^PHANTOM"
    ds.StudyID = study.study_id
    ds.AccessionNumber = study.accession
    ds.StudyDescription = "MRI BRAIN W CONTRAST"
    ds.Manufacturer = MANUFACTURER
    ds.InstitutionName = study.institution
    ds.ManufacturerModelName = MODEL_NAME
    ds.DeviceSerialNumber = "0001"
    ds.SoftwareVersions = SOFTWARE_VERSION


def set_series(
    ds: Dataset,
    study: StudyMeta,
    *,
    modality: str,
    series_uid: str,
    series_number: int,
    series_description: str,
    protocol_name: str | None = None,
) -> None:
    """General Series (PS3.3 C.7.3.1) and Frame of Reference (C.7.4.1) attributes.

    ``protocol_name`` marks an acquired image series: it also sets ProtocolName,
    BodyPartExamined ("BRAIN") and PatientPosition ("HFS", head first supine).
    """
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    if protocol_name is not None:
        ds.ProtocolName = protocol_name
        ds.BodyPartExamined = "BRAIN"
        ds.PatientPosition = "HFS"
    ds.SeriesDate = study.study_date
    ds.SeriesTime = study.study_time
    ds.FrameOfReferenceUID = study.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""


def set_image_pixel(ds: Dataset, rows: int, columns: int) -> None:
    """Image Pixel module (PS3.3 C.7.6.3) of the phantom's MR images: unsigned 16-bit, 12 bits stored."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0


def save(ds: Dataset, path: Path) -> None:
    """Write ``ds`` as a DICOM Part 10 file, explicit VR little endian."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
