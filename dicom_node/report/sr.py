"""The EGFR result as a DICOM Structured Report: TID 1500 Measurement Report (shared/SR.md).

Content only: Datasets and small values in, a highdicom SR Dataset out; no I/O.

Tree (PS3.16): TID 1500 "Imaging Measurement Report" with the algorithm as device observer
(TID 1004), procedure reported LOINC 24587-8, an image library (TID 1600) of the source MR
images, and two measurement groups for the lesion, both with the tracking UID of its SEG
segment, its finding and finding site, the algorithm identification (TID 4019, at group
level) and the qualitative evaluation "EGFR Gene Mutation" = Positive | Negative:

1. TID 1501 (measurement group): the NUM "Probability" (unit "1", 3 decimals) inferred from
   a point on the lesion in the source image nearest its centre (TID 300 / TID 320: SCOORD
   POINT, SELECTED FROM that image and frame), and a Comment that says the result in words;
2. TID 1411 (volumetric ROI): the referenced SEG segment (the lesion the model read).

Every CONTAINER is ContinuityOfContent SEPARATE, so DCMTK and Weasis show the concept names.

What OHIF 3.13 (its ``cornerstone-dicom-sr`` extension and ``@cornerstonejs/adapters``)
needs, and why group 1 looks as it does (docs/conformance.md, "Which viewer shows what"):
OHIF merges the groups of one tracking UID into one measurement and takes the first group's
Tracking Identifier; the merged measurement is drawn only with a spatial coordinate under a
NUM (without one the SR view crashes, and TID 1411 does not allow one there); it is loaded
into the measurement panel only when that Tracking Identifier names a Cornerstone tool, so
it starts with ``OHIF_TRACKING_PREFIX`` (the arrow annotation: one point, nothing
recomputed from pixels) followed by the lesion's own identifier; OHIF shows the Comment
(121106) as the label and the NUM with two decimals beside the arrow, and ignores coded
values.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes
from pydicom.uid import SegmentationStorage

from dicom_node.report import codes as report_codes
from dicom_node.report.series_time import stamp_series_and_content_time
from dicom_node.report._checks import (
    check_datasets, check_real, check_series_number, check_text, check_uid,
)
from dicom_node.report.image_library import image_library
from dicom_node.report.image_point import ImagePoint

__all__ = ["AlgorithmInfo", "LesionFinding", "OHIF_TRACKING_PREFIX", "SR_SERIES_DESCRIPTION", "SRResult", "build_sr",
           "probability_words", "read_sr_result", "result_text", "set_containers_separate", "shown_decimals",
           "result_character_set"]

SR_SERIES_DESCRIPTION = "EGFR prediction RESEARCH USE ONLY - not a diagnosis"
#: Cornerstone3D's tracking identifier of its arrow annotation; OHIF loads a group whose
#: Tracking Identifier starts with it as that tool (``isValidCornerstoneTrackingIdentifier``).
OHIF_TRACKING_PREFIX = "Cornerstone3DTools@^0.1.0:ArrowAnnotate"
def result_character_set(source: Dataset) -> str | list[str] | None:
    """The Specific Character Set of a result (SR, SEG, card) made from ``source``: the
    source's own, written the way highdicom (and the standard's defined terms) accept it. The
    default repertoire ("ISO_IR 6", or none) is left out; the empty first value of a code
    extension ("\\ISO 2022 IR 87", as Japanese sites send it) is "ISO 2022 IR 6"; a value
    highdicom does not know gives UTF-8 ("ISO_IR 192"), in which pydicom re-encodes the names.
    highdicom copies the source's value as it is and refuses those forms: every job of such a
    site failed at its results."""
    from highdicom.enum import SpecificCharacterSetValues

    value = source.get("SpecificCharacterSet")
    terms = [str(v).strip() for v in (value if isinstance(value, (list, tuple, MultiValue)) else [value or ""])]
    terms = ["ISO 2022 IR 6" if not t and len(terms) > 1 else t for t in terms]
    terms = [t for t in terms if t and t != "ISO_IR 6"]
    if not terms:
        return None
    known = {v.value for v in SpecificCharacterSetValues}
    if not all(t in known for t in terms):
        return "ISO_IR 192"
    return terms[0] if len(terms) == 1 else terms


#: Decimals of the probability in the SR (what viewers print).
PROBABILITY_DECIMALS = 3



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
    #: what showed the series is post-contrast (pipeline.contrast), or "" when not recorded
    contrast_evidence: str = ""
    #: the bundle in words (``Manifest.parameter_lines``: recipe, ImageNet weights, N4, crop
    #: size, cross-validated AUC, calibration) and why it was activated despite its guards
    bundle_parameters: tuple[str, ...] = ()
    activated_despite: str = ""

    def __post_init__(self) -> None:
        for field in ("name", "version", "manufacturer", "model_name", "slice_aggregation", "fold_aggregation",
                      "positive_class"):
            check_text(field, getattr(self, field))
        if self.contrast_evidence:
            check_text("contrast_evidence", self.contrast_evidence, max_length=1024)
        object.__setattr__(self, "bundle_parameters", tuple(self.bundle_parameters))
        for line in self.bundle_parameters:
            check_text("bundle_parameters", line, max_length=1024)
        if self.activated_despite:
            check_text("activated_despite", self.activated_despite, max_length=1024)
        check_uid("device_uid", self.device_uid)
        object.__setattr__(self, "threshold", check_real("threshold", self.threshold, 0.0, 1.0))

    def parameters(self) -> list[str]:
        """TID 4019 Algorithm Parameters (111002), one TEXT item each."""
        return [
            f"positive class: {self.positive_class}",
            f"decision threshold: {self.threshold:g}",
            f"slice aggregation: {self.slice_aggregation}",
            f"fold aggregation: {self.fold_aggregation}",
            *([f"contrast evidence: {self.contrast_evidence}"] if self.contrast_evidence else []),
            *self.bundle_parameters,
            *([f"activated despite: {self.activated_despite}"] if self.activated_despite else []),
        ]

    def identification(self) -> hd.sr.AlgorithmIdentification:
        """A fresh TID 4019 content sequence (one per place it is attached)."""
        return hd.sr.AlgorithmIdentification(name=self.name, version=self.version, parameters=self.parameters())


@dataclass(frozen=True)
class LesionFinding:
    """The prediction for one lesion: which SEG segment, its tracking identity, the result.
    ``calibrated``: the probability comes from the bundle's calibration (otherwise it is the
    network's score, and the words say so)."""

    segment_number: int
    tracking_id: str
    tracking_uid: str
    probability: float
    positive: bool
    calibrated: bool = False

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
        if not isinstance(self.calibrated, bool):
            raise TypeError(f'Argument "calibrated" must be a bool, not {type(self.calibrated).__name__}')


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


def shown_decimals(probability: float, threshold: float | None, decimals: int = PROBABILITY_DECIMALS, *,
                   threshold_beside: bool = False) -> int:
    """The decimals to show ``probability`` with: ``decimals``, or more (up to 6) while the
    rounded number would sit on the other side of ``threshold`` than the status says (0.49996
    against 0.5 is NEGATIVE, and "0.500" would read as POSITIVE: it is shown as 0.49996).
    ``threshold_beside``: the threshold is printed with the same decimals, so more too while the
    two would read alike (0.450 against 0.4549 is not "0.45 ... threshold 0.45")."""
    if threshold is None:
        return decimals

    def misread(d: int) -> bool:
        shown, cut = f"{probability:.{d}f}", f"{threshold:.{d}f}"
        return (float(shown) >= threshold) != (probability >= threshold) or \
            (threshold_beside and probability != threshold and shown == cut)

    while decimals < 6 and misread(decimals):
        decimals += 1
    return decimals


def probability_words(probability: float, calibrated: bool, decimals: int = PROBABILITY_DECIMALS,
                      threshold: float | None = None) -> str:
    """"probability 0.734 (calibrated" or "score 0.734 (not a calibrated probability": what
    the number is, said wherever it is shown (SR, card, console). With ``threshold``, more
    decimals where fewer would put the shown number on the wrong side of it."""
    decimals = shown_decimals(probability, threshold, decimals)
    if calibrated:
        return f"probability {probability:.{decimals}f} (calibrated"
    return f"score {probability:.{decimals}f} (not a calibrated probability"


def result_text(finding: LesionFinding, threshold: float | None = None) -> str:
    """The result in words, as the SR's Comment and the viewers' label say it."""
    status = "POSITIVE" if finding.positive else "NEGATIVE"
    words = probability_words(finding.probability, finding.calibrated, threshold=threshold)
    return f"EGFR mutation {status}, {words}; research use only)"


def _lesion_coordinates(point: ImagePoint) -> hd.sr.CoordinatesForMeasurement:
    """TID 320 under the probability: a POINT on the lesion, SELECTED FROM its image (and frame)."""
    source = hd.sr.SourceImageForRegion(point.sop_class_uid, point.sop_instance_uid,
                                        referenced_frame_numbers=[point.frame_number] if point.frame_number else None)
    return hd.sr.CoordinatesForMeasurement(graphic_type=hd.sr.GraphicTypeValues.POINT,
                                           graphic_data=np.array([[point.column, point.row]], dtype=float),
                                           source_image=source)


def _viewer_group(finding: LesionFinding, algorithm: AlgorithmInfo,
                  lesion_point: ImagePoint) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 for the lesion, as OHIF reads it (see the module docstring): the Tracking
    Identifier naming Cornerstone's arrow, the probability NUM inferred from a point on the
    lesion, the result in words as the Comment, and the coded status."""
    probability = hd.sr.Measurement(
        name=report_codes.PROBABILITY,
        value=round(finding.probability, shown_decimals(finding.probability, algorithm.threshold)),
        unit=report_codes.NO_UNITS,
        referenced_coordinates=[_lesion_coordinates(lesion_point)],
    )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=finding.tracking_uid,
                                                     identifier=f"{OHIF_TRACKING_PREFIX}:{finding.tracking_id}"[:64]),
        finding_type=report_codes.SECONDARY_MALIGNANT_NEOPLASM_OF_BRAIN,
        finding_sites=[hd.sr.FindingSite(anatomic_location=report_codes.BRAIN)],
        algorithm_id=algorithm.identification(),
        measurements=[probability],
        qualitative_evaluations=[_evaluation(finding)],
    )
    group[0].ContentSequence.append(hd.sr.TextContentItem(
        name=report_codes.COMMENT, value=result_text(finding, algorithm.threshold), relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    return group


def _evaluation(finding: LesionFinding) -> hd.sr.QualitativeEvaluation:
    return hd.sr.QualitativeEvaluation(
        name=report_codes.EGFR_GENE_MUTATION,
        value=report_codes.POSITIVE if finding.positive else report_codes.NEGATIVE,
    )


def _volumetric_group(source_series_uid: str, seg: Dataset, finding: LesionFinding,
                      algorithm: AlgorithmInfo) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """TID 1411 for the lesion: the SEG segment it was read from, and the coded status.
    ReferencedSegment is built explicitly: highdicom 0.28.2's ``from_segmentation`` fails on
    one-segment SEGs with shared-group identification."""
    referenced_segment = hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        segment_number=finding.segment_number,
        source_series=hd.sr.SourceSeriesForSegmentation(source_series_uid),
    )
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=finding.tracking_uid, identifier=finding.tracking_id),
        referenced_segment=referenced_segment,
        finding_type=report_codes.SECONDARY_MALIGNANT_NEOPLASM_OF_BRAIN,
        finding_sites=[hd.sr.FindingSite(anatomic_location=report_codes.BRAIN)],
        algorithm_id=algorithm.identification(),
        qualitative_evaluations=[_evaluation(finding)],
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
    lesion_point: ImagePoint,
    sop_instance_uid: str,
    series_instance_uid: str,
    series_number: int = 9901,
    comprehensive_3d: bool = True,
    institution_name: str = "",
    created: datetime | None = None,
    mask_report: Dataset | None = None,
) -> Dataset:
    """The EGFR result of one lesion as a Comprehensive 3D SR (or Comprehensive SR).

    ``source_images``: headers of the MR images the lesion was read from (one series;
    pixel data not needed; an Enhanced MR is one multi-frame Dataset). ``seg``: the SEG
    holding the lesion segment ``finding.segment_number``, in the same study (the received
    one, or the one converted from an RTSTRUCT). ``lesion_point``: where the lesion is in one
    of ``source_images`` (:func:`dicom_node.report.image_point.nearest_image_point`). Patient
    and study attributes are copied from the first source image; the SR is a new series of
    that study. ``mask_report``: the viewer's measurement report whose outline was the lesion
    (issue 31; its header): listed in the Current Requested Procedure Evidence (the objects
    the SR was made from), while ``finding.tracking_uid`` is its measurement group's, so a
    viewer ties the answer to the outline.
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
    if not isinstance(lesion_point, ImagePoint):
        raise TypeError(f'Argument "lesion_point" must be an ImagePoint, not {type(lesion_point).__name__}')
    if lesion_point.sop_instance_uid not in {str(ds.SOPInstanceUID) for ds in images}:
        raise ValueError('Argument "lesion_point" must lie in one of the source images')
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
        # OHIF merges groups of one tracking UID and takes the first one's Tracking Identifier
        imaging_measurements=[_viewer_group(finding, algorithm, lesion_point),
                              _volumetric_group(str(images[0].SeriesInstanceUID), seg, finding, algorithm)],
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
    if mask_report is not None and str(mask_report.get("StudyInstanceUID", "")) != str(images[0].StudyInstanceUID):
        raise ValueError('Argument "mask_report" must be of the study of the source images')
    sr = sr_class(
        evidence=[*images, seg, *([mask_report] if mask_report is not None else [])],
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
        specific_character_set=result_character_set(images[0]),
    )
    sr.SeriesDescription = SR_SERIES_DESCRIPTION
    sr.ManufacturerModelName = algorithm.model_name
    sr.SoftwareVersions = algorithm.version
    sr.DeviceUID = algorithm.device_uid  # General Equipment; not inside Contributing Equipment (dciodvfy)
    set_containers_separate(sr)
    return stamp_series_and_content_time(sr, created)


@dataclass(frozen=True)
class SRResult:
    """What an SR written by :func:`build_sr` says, read back with highdicom."""

    positive: bool
    probability: float
    tracking_uid: str


def read_sr_result(path_or_dataset: object) -> SRResult:
    """The status and probability of an SR written by :func:`build_sr` (a path or a Dataset),
    through highdicom's TID 1500 API: the TID 1501 group's probability and status, checked
    against the TID 1411 group's status. Raises ValueError if the SR does not hold them."""
    sr = hd.sr.srread(path_or_dataset) if not isinstance(path_or_dataset, Dataset) else hd.sr.Comprehensive3DSR.from_dataset(
        path_or_dataset) if path_or_dataset.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34" else hd.sr.ComprehensiveSR.from_dataset(
        path_or_dataset)
    groups = sr.content.get_image_measurement_groups()
    volumetric = sr.content.get_volumetric_roi_measurement_groups()
    if len(groups) != 1 or len(volumetric) != 1:
        raise ValueError(f"expected one measurement group and one volumetric ROI group, found {len(groups)} and {len(volumetric)}")
    probabilities = [m.value for m in groups[0].get_measurements() if m.name == report_codes.PROBABILITY]
    statuses = [e.value for g in (groups[0], volumetric[0]) for e in g.get_qualitative_evaluations()
                if e.name == report_codes.EGFR_GENE_MUTATION]
    if len(probabilities) != 1 or len(statuses) != 2 or statuses[0] != statuses[1]:
        raise ValueError("the SR does not hold one probability and one consistent EGFR status")
    return SRResult(statuses[0] == report_codes.POSITIVE, float(probabilities[0]), str(groups[0].tracking_uid))
