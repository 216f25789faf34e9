"""Single-frame MR Image IOD (PS3.3 A.4): one file per slice.

Modules: Patient, General Study, Patient Study, General Series, Frame of Reference, General
Equipment, General Image, Image Plane, Image Pixel, Contrast/Bolus, MR Image, VOI LUT, SOP
Common. Pixels are unsigned 16-bit (12 bits stored); some protocols add RescaleSlope /
RescaleIntercept (as Philips does), so readers must apply them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage

from pipeline.phantom.dicom_common import StudyMeta, phantom_uid, save, set_common, set_image_pixel, set_series
from pipeline.phantom.geometry import Grid

__all__ = ["Protocol", "sample_protocol", "write_single_frame_series", "format_ds"]


@dataclass(frozen=True)
class Protocol:
    """Sequence parameters of one post-contrast T1 series."""

    series_description: str
    scanning_sequence: str
    sequence_variant: str
    scan_options: str
    acquisition_type: str  # "2D" | "3D"
    repetition_time: float
    echo_time: float
    inversion_time: float | None
    flip_angle: float
    echo_train_length: int
    sequence_name: str
    pixel_bandwidth: float
    series_number: int
    rescale_slope: float | None  # None: no Modality LUT attributes


def sample_protocol(geometry: str, field_strength: float, rng: np.random.Generator) -> Protocol:
    """Realistic T1+c protocol parameters for the geometry."""
    slope = float(np.round(rng.uniform(0.8, 2.5), 5)) if rng.uniform() < 0.4 else None
    if geometry == "axial2d":
        return Protocol("AX T1 SE +C", "SE", "SK\\SP", "SP", "2D", float(rng.integers(450, 650)),
                        float(rng.uniform(8.0, 15.0)), None, 90.0, 1, "*se2d1", 130.0, int(rng.integers(5, 9)), slope)
    names = {"axial3d": "AX T1 MPRAGE +C", "sagittal3d": "SAG T1 MPRAGE +C", "enhanced": "3D T1 TFE +C"}
    tr = 1900.0 if field_strength == 1.5 else 2300.0
    return Protocol(names[geometry], "GR\\IR", "SP\\MP\\OSP", "PFP", "3D", tr, float(rng.uniform(2.3, 3.5)),
                    900.0 if field_strength == 3.0 else 1100.0, float(rng.choice([8.0, 9.0])), 1, "*tfl3d1_16ns",
                    200.0, int(rng.integers(5, 9)), slope)


def format_ds(value: float) -> str:
    """A Decimal String value of at most 16 characters."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text if len(text) <= 16 else f"{value:.8g}"


def _series_base(study: StudyMeta, grid: Grid, protocol: Protocol, series_uid: str) -> Dataset:
    ds = Dataset()
    set_common(ds, study)
    ds.SOPClassUID = MRImageStorage
    set_series(ds, study, modality="MR", series_uid=series_uid, series_number=protocol.series_number,
               series_description=protocol.series_description, protocol_name=protocol.series_description)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.ContentDate = study.study_date
    ds.AcquisitionDate = study.study_date
    m = grid.matrix
    ds.ImageOrientationPatient = [format_ds(v) for v in (*m[:, 0], *m[:, 1])]
    ds.PixelSpacing = [format_ds(grid.spacing[1]), format_ds(grid.spacing[0])]
    ds.SliceThickness = format_ds(grid.slice_thickness)
    ds.SpacingBetweenSlices = format_ds(grid.spacing[2])
    set_image_pixel(ds, rows=grid.size[1], columns=grid.size[0])
    ds.ContrastBolusAgent = "gadobutrol"
    ds.ContrastBolusRoute = "IV"
    ds.ContrastBolusVolume = "7.5"
    ds.ScanningSequence = protocol.scanning_sequence
    ds.SequenceVariant = protocol.sequence_variant
    ds.ScanOptions = protocol.scan_options
    ds.MRAcquisitionType = protocol.acquisition_type
    ds.SequenceName = protocol.sequence_name
    ds.AngioFlag = "N"
    ds.RepetitionTime = format_ds(protocol.repetition_time)
    ds.EchoTime = format_ds(protocol.echo_time)
    if protocol.inversion_time is not None:
        ds.InversionTime = format_ds(protocol.inversion_time)
    ds.EchoTrainLength = protocol.echo_train_length
    ds.NumberOfAverages = "1"
    ds.ImagingFrequency = format_ds(42.577478 * study.field_strength)
    ds.ImagedNucleus = "1H"
    ds.EchoNumbers = 1
    ds.MagneticFieldStrength = format_ds(study.field_strength)
    ds.PixelBandwidth = format_ds(protocol.pixel_bandwidth)
    ds.FlipAngle = format_ds(protocol.flip_angle)
    ds.PatientWeight = "70"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    if protocol.rescale_slope is not None:
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = format_ds(protocol.rescale_slope)
    return ds


def write_single_frame_series(folder: Path, stored: np.ndarray, grid: Grid, study: StudyMeta, protocol: Protocol,
                              uid_key: tuple[object, ...], window: tuple[float, float],
                              reverse_order: bool) -> list[Dataset]:
    """Write one MR file per slice k of ``stored`` ([k, rows, columns] uint16); return the datasets."""
    series_uid = phantom_uid(*uid_key, "series")
    base = _series_base(study, grid, protocol, series_uid)
    normal = grid.matrix[:, 2]
    n = stored.shape[0]
    datasets = []
    for k in range(n):
        ds = Dataset()
        ds.update(base)  # shares the unchanged elements; per-slice ones are set anew below
        ds.SOPInstanceUID = phantom_uid(*uid_key, "image", k)
        ds.InstanceNumber = (n - k) if reverse_order else (k + 1)
        ds.AcquisitionNumber = 1
        position = grid.slice_position(k)
        ds.ImagePositionPatient = [format_ds(v) for v in position]
        ds.SliceLocation = format_ds(float(np.dot(position, normal)))
        ds.ContentTime = study.study_time
        ds.WindowCenter = format_ds(window[0])
        ds.WindowWidth = format_ds(window[1])
        ds.SmallestImagePixelValue = int(stored[k].min())
        ds.LargestImagePixelValue = int(stored[k].max())
        ds.PixelData = np.ascontiguousarray(stored[k], dtype="<u2").tobytes()
        save(ds, folder / f"IM{ds.InstanceNumber:04d}.dcm")
        datasets.append(ds)
    return datasets
