"""The EGFR result as a DICOM Structured Report: TID 1500 Measurement Report (shared/SR.md).

Content only: Datasets and small values in, a highdicom SR Dataset out; no I/O.

Tree (PS3.16): TID 1500 "Imaging Measurement Report" with the algorithm as device observer
(TID 1004), procedure reported LOINC 24587-8, an image library (TID 1600) of the source MR
images, and one TID 1411 volumetric measurement group for the lesion: tracking identifier
and UID, the referenced SEG segment, finding and finding site, algorithm identification
(TID 4019), the qualitative evaluation "EGFR Gene Mutation" = Positive | Negative and the
NUM "Probability" (unit "1") carrying its own algorithm identification. Every CONTAINER is
ContinuityOfContent SEPARATE, so DCMTK and Weasis show the concept names.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import SegmentationStorage

from dicom_node.report import codes as report_codes
from dicom_node.report._checks import (
    check_datasets, check_real, check_series_number, check_text, check_uid,
)
from dicom_node.report.image_library import image_library

__all__ = ["AlgorithmInfo", "LesionFinding", "SR_SERIES_DESCRIPTION", "build_sr", "set_containers_separate"]

SR_SERIES_DESCRIPTION = "EGFR prediction RESEARCH USE ONLY - not a diagnosis"



@dataclass(frozen=True)
class AlgorithmInfo:
    """The model bundle as an algorithm (TID 4019) and as a device observer (TID 1004).

    ``device_uid`` identifies one model bundle: a retrained model gets a new one.
    ``threshold`` is the decision threshold on the probability; ``slice_aggregation`` and
    ``fold_aggregation`` name how slice scores and fold models were combined (e.g. "median",
    "mean").
    """

    name: str
    version: str
    device_uid: str
    manufacturer: str
    model_name: str
    threshold: float
    slice_aggregation: str
    fold_aggregation: str
    positive_class: str = "EGFR mutation"

    def __post_init__(self) -> None:
        for field in ("name", "version", "manufacturer", "model_name", "slice_aggregation", "fold_aggregation",
                      "positive_class"):
            check_text(field, getattr(self, field))
        check_uid("device_uid", self.device_uid)
        object.__setattr__(self, "threshold", check_real("threshold", self.threshold, 0.0, 1.0))

    def parameters(self) -> list[str]:
        """TID 4019 Algorithm Parameters (111002), one TEXT item each."""
        return [
            f"positive class: {self.positive_class}",
            f"decision threshold: {self.threshold:g}",
            f"slice aggregation: {self.slice_aggregation}",
            f"fold aggregation: {self.fold_aggregation}",
        ]

    def identification(self) -> hd.sr.AlgorithmIdentification:
        """A fresh TID 4019 content sequence (one per place it is attached)."""
        return hd.sr.AlgorithmIdentification(name=self.name, version=self.version, parameters=self.parameters())


@dataclass(frozen=True)
class LesionFinding:
    """The prediction for one lesion: which SEG segment, its tracking identity, the result."""

    segment_number: int
    tracking_id: str
    tracking_uid: str
    probability: float
    positive: bool

    def __post_init__(self) -> None:
        if isinstance(self.segment_number, bool) or not isinstance(self.segment_number, int):
            raise TypeError(f'Argument "segment_number" must be an int, not {type(self.segment_number).__name__}')
        if self.segment_number < 1:
            raise ValueError(f'Argument "segment_number" must be >= 1, not {self.segment_number}')
        check_text("tracking_id", self.tracking_id)
        check_uid("tracking_uid", self.tracking_uid)
        object.__setattr__(self, "probability", check_real("probability", self.probability, 0.0, 1.0))
        if not isinstance(self.positive, bool):
            raise TypeError(f'Argument "positive" must be a bool, not {type(self.positive).__name__}')


def _check_seg(seg: object, segment_number: int, study_uid: str) -> Dataset:
    if not isinstance(seg, Dataset):
        raise TypeError(f'Argument "seg" must be a pydicom Dataset, not {type(seg).__name__}')
    if seg.get("SOPClassUID") != SegmentationStorage:
        raise ValueError(f'Argument "seg" must be a Segmentation (SOP class {SegmentationStorage}), '
                         f'not {seg.get("SOPClassUID")}')
    if seg.get("StudyInstanceUID") != study_uid:
        raise ValueError('Argument "seg" must belong to the study of the source images')
    numbers = [int(s.SegmentNumber) for s in seg.get("SegmentSequence", [])]
    if segment_number not in numbers:
        raise ValueError(f'Argument "finding" must name a segment of the SEG ({numbers}), not {segment_number}')
    return seg


def set_containers_separate(item: Dataset) -> None:
    """ContinuityOfContent SEPARATE on ``item`` and every CONTAINER below it.

    highdicom writes CONTINUOUS, and DCMTK dsr2html / Weasis then drop concept names.
    """
    if item.get("ValueType") == "CONTAINER":
        item.ContinuityOfContent = "SEPARATE"
    for child in item.get("ContentSequence", []):
        set_containers_separate(child)


def _measurement_group(source_series_uid: str, seg: Dataset, finding: LesionFinding,
                       algorithm: AlgorithmInfo) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """TID 1411 for the lesion. ReferencedSegment is built explicitly: highdicom 0.28.2's
    ``from_segmentation`` fails on one-segment SEGs with shared-group identification."""
    referenced_segment = hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        segment_number=finding.segment_number,
        source_series=hd.sr.SourceSeriesForSegmentation(source_series_uid),
    )
    probability = hd.sr.Measurement(
        name=report_codes.PROBABILITY,
        value=finding.probability,
        unit=report_codes.NO_UNITS,
        algorithm_id=algorithm.identification(),
    )
    evaluation = hd.sr.QualitativeEvaluation(
        name=report_codes.EGFR_GENE_MUTATION,
        value=report_codes.POSITIVE if finding.positive else report_codes.NEGATIVE,
    )
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=finding.tracking_uid, identifier=finding.tracking_id),
        referenced_segment=referenced_segment,
        finding_type=report_codes.SECONDARY_MALIGNANT_NEOPLASM_OF_BRAIN,
        finding_sites=[hd.sr.FindingSite(anatomic_location=report_codes.BRAIN)],
        algorithm_id=algorithm.identification(),
        measurements=[probability],
        qualitative_evaluations=[evaluation],
    )


def _warn_if_doubtful(seg: Dataset, finding: LesionFinding, algorithm: AlgorithmInfo) -> None:
    segment = next(s for s in seg.SegmentSequence if int(s.SegmentNumber) == finding.segment_number)
    seg_tracking_uid = segment.get("TrackingUID")
    if seg_tracking_uid and seg_tracking_uid != finding.tracking_uid:
        warnings.warn(f"finding.tracking_uid differs from the SEG segment's TrackingUID {seg_tracking_uid}: "
                      "reuse the segment's, so viewers tie the SR to the SEG", stacklevel=3)
    if finding.positive != (finding.probability >= algorithm.threshold) and finding.probability != algorithm.threshold:
        warnings.warn(f"finding.positive={finding.positive} contradicts probability {finding.probability} "
                      f"and threshold {algorithm.threshold}", stacklevel=3)


def build_sr(
    source_images: Sequence[Dataset],
    seg: Dataset,
    finding: LesionFinding,
    algorithm: AlgorithmInfo,
    *,
    sop_instance_uid: str,
    series_instance_uid: str,
    series_number: int = 9901,
    comprehensive_3d: bool = True,
    institution_name: str = "",
) -> Dataset:
    """The EGFR result of one lesion as a Comprehensive 3D SR (or Comprehensive SR).

    ``source_images``: headers of the MR images the lesion was read from (one series;
    pixel data not needed; an Enhanced MR is one multi-frame Dataset). ``seg``: the SEG
    holding the lesion segment ``finding.segment_number``, in the same study (the received
    one, or the one converted from an RTSTRUCT). Patient and study attributes are copied
    from the first source image; the SR is a new series of that study.
    """
    images = check_datasets("source_images", source_images)
    if not isinstance(finding, LesionFinding):
        raise TypeError(f'Argument "finding" must be a LesionFinding, not {type(finding).__name__}')
    if not isinstance(algorithm, AlgorithmInfo):
        raise TypeError(f'Argument "algorithm" must be an AlgorithmInfo, not {type(algorithm).__name__}')
    _check_seg(seg, finding.segment_number, str(images[0].StudyInstanceUID))
    check_uid("sop_instance_uid", sop_instance_uid)
    check_uid("series_instance_uid", series_instance_uid)
    if series_instance_uid in {str(images[0].SeriesInstanceUID), str(seg.SeriesInstanceUID)}:
        raise ValueError('Argument "series_instance_uid" must be a new series, not that of the images or the SEG')
    check_series_number("series_number", series_number)
    if not isinstance(comprehensive_3d, bool):
        raise TypeError(f'Argument "comprehensive_3d" must be a bool, not {type(comprehensive_3d).__name__}')
    if not isinstance(institution_name, str):
        raise TypeError(f'Argument "institution_name" must be a str, not {type(institution_name).__name__}')
    _warn_if_doubtful(seg, finding, algorithm)

    observer = hd.sr.ObserverContext(
        observer_type=report_codes.DEVICE_OBSERVER,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=algorithm.device_uid, name=algorithm.name,
            manufacturer_name=algorithm.manufacturer, model_name=algorithm.model_name,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=report_codes.MR_BRAIN_WO_AND_W_CONTRAST,
        imaging_measurements=[_measurement_group(str(images[0].SeriesInstanceUID), seg, finding, algorithm)],
        title=report_codes.IMAGING_MEASUREMENT_REPORT,
    )
    root = report[0]
    # The image library goes where TID 1500 puts it: before Imaging Measurements.
    position = next(i for i, item in enumerate(root.ContentSequence) if item.name == codes.DCM.ImagingMeasurements)
    root.ContentSequence.insert(position, image_library(images))
    set_containers_separate(root)

    equipment = hd.ContributingEquipment(
        manufacturer=algorithm.manufacturer,
        purpose_of_reference=report_codes.PROCESSING_EQUIPMENT,
        manufacturer_model_name=algorithm.model_name,
        software_versions=algorithm.version,
        contribution_description=f"{algorithm.name}: EGFR mutation prediction (research use)",
    )
    sr_class = hd.sr.Comprehensive3DSR if comprehensive_3d else hd.sr.ComprehensiveSR
    sr = sr_class(
        evidence=[*images, seg],
        content=root,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer=algorithm.manufacturer,
        is_complete=True,
        is_final=False,
        is_verified=False,
        institution_name=institution_name or None,
        contributing_equipment=[equipment],
    )
    sr.SeriesDescription = SR_SERIES_DESCRIPTION
    sr.ManufacturerModelName = algorithm.model_name
    sr.SoftwareVersions = algorithm.version
    sr.DeviceUID = algorithm.device_uid  # General Equipment; not inside Contributing Equipment (dciodvfy)
    set_containers_separate(sr)
    return sr
