"""The result objects (dicom_node.report): SR, SEG from an RTSTRUCT lesion, result card.

Each object is built on phantom studies (or small factory series for tilted grids), written
as a Part-10 file, checked by dicom3tools (``dciodvfy -new``) and DCMTK (``dsrdump``,
``dsr2html``), and read back with pydicom (strict validation) and highdicom.
"""

from __future__ import annotations

import copy
import math
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import (
    ComprehensiveSRStorage, Comprehensive3DSRStorage, EnhancedMRImageStorage, SecondaryCaptureImageStorage,
    SegmentationStorage, generate_uid,
)

from dicom_node.report import (
    CAVEAT, AlgorithmInfo, LesionFinding, build_result_card, build_sr, seg_from_volume_mask,
)
from dicom_node.report import codes as report_codes
from dicom_node.report.image_point import ImagePoint, nearest_image_point
from dicom_node.report.sr import OHIF_TRACKING_PREFIX, read_sr_result, result_text, shown_decimals
from pipeline.load.masks import load_seg_mask
from pipeline.load.select import SelectionRules
from pipeline.load.study import LoadedStudy, load_study
from tests.conftest import require_tool
from tests.dicom_factory import ball_contours, make_mr_series, make_rtstruct, ramp, tilted_axial, write_datasets

PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                 "StudyTime", "StudyID", "AccessionNumber")


def read_strict(path: Path) -> Dataset:
    """Read back with pydicom's strict validation (STYLE.md: every object written is read back).

    Strict reading is on only here: the test factories themselves write 17-character DS values.
    """
    settings = pydicom_config.settings
    before = settings.reading_validation_mode
    settings.reading_validation_mode = pydicom_config.RAISE
    try:
        ds = pydicom.dcmread(path)
        for _ in ds.iterall():  # values are decoded (and validated) on access
            pass
        return ds
    finally:
        settings.reading_validation_mode = before


@pytest.fixture
def algorithm() -> AlgorithmInfo:
    return AlgorithmInfo(name="egfr-resnet50", version="2026.1", device_uid=generate_uid(), manufacturer="egfr-node",
                         model_name="ResNet-50 5-fold ensemble", threshold=0.5, slice_aggregation="median",
                         fold_aggregation="mean")


def headers(folder: Path) -> tuple[list[Dataset], Dataset]:
    """(MR image headers, the mask object) of a phantom study folder."""
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(Path(folder).rglob("*.dcm"))]
    images = [ds for ds in datasets if ds.Modality == "MR"]
    (mask,) = [ds for ds in datasets if ds.Modality in ("SEG", "RTSTRUCT")]
    return images, mask


def write(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def dciodvfy_errors(path: Path) -> list[str]:
    done = subprocess.run([require_tool("dciodvfy"), "-new", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]


def dsrdump(path: Path) -> str:
    done = subprocess.run([require_tool("dsrdump"), "-v", "+Pl", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "E:" not in done.stderr and "W:" not in done.stderr, done.stderr
    return done.stdout


def containers(item: Dataset) -> Iterator[Dataset]:
    if item.get("ValueType") == "CONTAINER":
        yield item
    for child in item.get("ContentSequence", []):
        yield from containers(child)


def finding_for(seg: Dataset, probability: float, positive: bool, number: int = 1) -> LesionFinding:
    segment = next(s for s in seg.SegmentSequence if int(s.SegmentNumber) == number)
    return LesionFinding(segment_number=number, tracking_id=str(segment.TrackingID),
                         tracking_uid=str(segment.TrackingUID), probability=probability, positive=positive)


def point_in(images: list[Dataset], centroid_lps) -> ImagePoint:  # noqa: ANN001
    return nearest_image_point(images, centroid_lps)


def check_dates(ds: Dataset) -> None:
    """Series and content date/time: PACS and Orthanc list the series with the study."""
    for keyword in ("SeriesDate", "SeriesTime", "ContentDate", "ContentTime"):
        assert ds.get(keyword), keyword
    assert len(ds.SeriesDate) == 8 and ds.SeriesDate >= ds.StudyDate


def check_sr_file(path: Path, images: list[Dataset], seg: Dataset, finding: LesionFinding,
                  algorithm: AlgorithmInfo, sop_class: str, point: ImagePoint) -> Dataset:
    """What every SR must satisfy, read back from its file."""
    assert dciodvfy_errors(path) == []
    dump = dsrdump(path)
    value = "Positive" if finding.positive else "Negative"
    assert f'"Probability")="{finding.probability:.3f}"' in dump or f'"Probability")={finding.probability:.3f}' in dump \
        or f'"{round(finding.probability, 3):g}"' in dump, dump  # 3 decimals, not 14 digits
    assert result_text(finding) in dump and '"Comment")=' in dump
    for label in ("Imaging Measurement Report", "Image Library", "Measurement Group", "EGFR Gene Mutation",
                  f'"EGFR Gene Mutation")=({"10828004" if finding.positive else "260385009"},SCT,"{value}")',
                  '"Probability")=', '(1,UCUM,"no units")', "Secondary malignant neoplasm of brain",
                  '"Finding Site")=(12738006,SCT,"Brain")', "Algorithm Name", "decision threshold: 0.5",
                  "slice aggregation: median", "fold aggregation: mean", "Tracking Unique Identifier",
                  '"Observer Type")=(121007,DCM,"Device")', "24587-8", "Verification Flag   : UNVERIFIED",
                  "Completion Flag     : COMPLETE"):
        assert label in dump, label
    assert "CONTINUOUS" not in dump and dump.count("=SEPARATE") == 6  # report, library (+ group), measurements, 2 groups
    assert "inferred from SCOORD" in dump and "=(POINT," in dump
    html = subprocess.run([require_tool("dsr2html"), str(path)], capture_output=True, text=True, timeout=60)
    assert html.returncode == 0 and "EGFR Gene Mutation" in html.stdout and value in html.stdout, html.stderr

    ds = read_strict(path)
    assert ds.SOPClassUID == sop_class and ds.Modality == "SR"
    assert all(c.ContinuityOfContent == "SEPARATE" for c in containers(ds))
    for keyword in PATIENT_STUDY:
        assert ds.get(keyword) == images[0].get(keyword), keyword
    assert ds.SeriesInstanceUID not in (images[0].SeriesInstanceUID, seg.SeriesInstanceUID)
    assert (ds.VerificationFlag, ds.CompletionFlag) == ("UNVERIFIED", "COMPLETE")
    assert "RESEARCH USE ONLY" in ds.SeriesDescription and "not a diagnosis" in ds.SeriesDescription
    assert len(ds.SeriesDescription) <= 64
    assert ds.DeviceUID == algorithm.device_uid
    check_dates(ds)
    purposes = [item.PurposeOfReferenceCodeSequence[0].CodeValue for item in ds.ContributingEquipmentSequence]
    assert "109102" in purposes
    assert all("DeviceUID" not in item for item in ds.ContributingEquipmentSequence)
    evidence = {ref.ReferencedSOPInstanceUID for series in ds.CurrentRequestedProcedureEvidenceSequence[0]
                .ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}
    assert evidence == {*(im.SOPInstanceUID for im in images), seg.SOPInstanceUID}

    sr = hd.sr.srread(path)
    (group,) = sr.content.get_volumetric_roi_measurement_groups()
    (viewer,) = sr.content.get_image_measurement_groups()
    for each in (group, viewer):
        (evaluation,) = each.get_qualitative_evaluations()
        assert evaluation.name == report_codes.EGFR_GENE_MUTATION
        assert evaluation.value == (report_codes.POSITIVE if finding.positive else report_codes.NEGATIVE)
        assert each.tracking_uid == finding.tracking_uid  # OHIF merges them into one measurement
        assert each.finding_type == report_codes.SECONDARY_MALIGNANT_NEOPLASM_OF_BRAIN
    assert group.get_measurements() == []
    (measurement,) = viewer.get_measurements()
    assert measurement.name == report_codes.PROBABILITY and measurement.unit == report_codes.NO_UNITS
    assert measurement.value == pytest.approx(round(finding.probability, 3), abs=1e-9)
    # OHIF keeps a NUM only with a spatial coordinate under it: the lesion point, SELECTED FROM its image
    (scoord,) = measurement[0].ContentSequence
    assert (scoord.RelationshipType, scoord.ValueType, scoord.GraphicType) == ("INFERRED FROM", "SCOORD", "POINT")
    assert list(scoord.GraphicData) == pytest.approx([point.column, point.row], abs=0.01)
    (image_item,) = scoord.ContentSequence
    reference = image_item.ReferencedSOPSequence[0]
    assert (image_item.RelationshipType, reference.ReferencedSOPInstanceUID) == ("SELECTED FROM", point.sop_instance_uid)
    assert reference.get("ReferencedFrameNumber") == point.frame_number
    # the algorithm identification sits at group level (where TID 1501/1411 have it)
    names = hd.sr.utils.find_content_items(sr.content[0], name=report_codes.ALGORITHM_NAME, recursive=True)
    assert [n.value for n in names] == [algorithm.name] * 2
    assert group.tracking_identifier == finding.tracking_id
    assert viewer.tracking_identifier == f"{OHIF_TRACKING_PREFIX}:{finding.tracking_id}"
    (comment,) = hd.sr.utils.find_content_items(viewer[0], name=report_codes.COMMENT)
    assert comment.value == result_text(finding) and "research use" in comment.value
    assert group.finding_type == report_codes.SECONDARY_MALIGNANT_NEOPLASM_OF_BRAIN
    assert group.finding_sites[0].value == report_codes.BRAIN
    assert group.reference_type == hd.sr.CodedConcept("121191", "DCM", "Referenced Segment")
    segment_item, series_item = group.referenced_segment
    assert segment_item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == seg.SOPInstanceUID
    assert segment_item.ReferencedSOPSequence[0].ReferencedSegmentNumber == finding.segment_number
    assert series_item.UID == images[0].SeriesInstanceUID
    (library_item,) = hd.sr.utils.find_content_items(sr.content[0], name=codes.DCM.ImageLibrary)
    library = [ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for ref in hd.sr.utils.find_content_items(
        library_item, name=report_codes.SOURCE, recursive=True)]
    assert library == [im.SOPInstanceUID for im in images]
    return ds


@pytest.mark.parametrize(("comprehensive_3d", "positive"), [(True, True), (False, False)])
def test_sr_on_a_seg_study_is_valid_and_readable(phantom_study, algorithm, tmp_path: Path,
                                                 comprehensive_3d: bool, positive: bool) -> None:
    phantom = phantom_study("axial2d", "seg")
    images, seg = headers(phantom.folder)
    finding = finding_for(seg, 0.83456 if positive else 0.17, positive)
    point = point_in(images, phantom.lesion_centroid_lps)
    sr = build_sr(images, seg, finding, algorithm, lesion_point=point, sop_instance_uid=generate_uid(),
                  series_instance_uid=generate_uid(), comprehensive_3d=comprehensive_3d, institution_name="Clinic")
    path = write(sr, tmp_path / "sr.dcm")
    sop_class = Comprehensive3DSRStorage if comprehensive_3d else ComprehensiveSRStorage
    ds = check_sr_file(path, images, seg, finding, algorithm, sop_class, point)
    assert ds.SeriesNumber == 9901 and ds.InstitutionName == "Clinic"


def test_a_probability_beside_the_threshold_is_shown_on_the_side_its_status_says(phantom_study, algorithm,
                                                                                  tmp_path: Path) -> None:
    assert algorithm.threshold == 0.5
    assert [shown_decimals(p, t, d) for p, t, d in ((0.77, 0.5, 3), (0.49996, 0.5, 3), (0.5004, 0.5003, 3),
                                                     (0.4372, 0.4379, 2), (0.5, 0.5, 3))] == [3, 5, 4, 3, 3]
    images, seg = headers(phantom_study("axial2d", "seg").folder)
    finding = finding_for(seg, 0.49996, False)  # NEGATIVE: "0.500" would read as at the threshold
    point = point_in(images, (0.0, 0.0, 0.0))
    sr = build_sr(images, seg, finding, algorithm, lesion_point=point, sop_instance_uid=generate_uid(),
                  series_instance_uid=generate_uid())
    dump = dsrdump(write(sr, tmp_path / "sr.dcm"))
    assert "EGFR mutation NEGATIVE, score 0.49996 (not a calibrated probability" in dump and "0.500 " not in dump
    assert read_sr_result(sr).probability == 0.49996 and not read_sr_result(sr).positive


def test_sr_on_an_enhanced_mr_references_the_multiframe_instance(phantom_study, algorithm, tmp_path: Path) -> None:
    phantom = phantom_study("enhanced", "seg")
    images, seg = headers(phantom.folder)
    assert len(images) == 1 and images[0].SOPClassUID == EnhancedMRImageStorage
    finding = finding_for(seg, 0.61, True)
    point = point_in(images, phantom.lesion_centroid_lps)
    assert point.frame_number is not None and point.distance_mm <= 0.6  # 1 mm frames
    sr = build_sr(images, seg, finding, algorithm, lesion_point=point, sop_instance_uid=generate_uid(),
                  series_instance_uid=generate_uid())
    path = write(sr, tmp_path / "sr.dcm")
    check_sr_file(path, images, seg, finding, algorithm, Comprehensive3DSRStorage, point)
    dump = dsrdump(path)
    # The library entry carries the multi-frame's pixel spacing (from its functional groups), no frame position.
    assert '"Horizontal Pixel Spacing")=' in dump and "Image Position (Patient)" not in dump


def rtstruct_seg(study: LoadedStudy, images: list[Dataset], tracking_uid: str) -> Dataset:
    return seg_from_volume_mask(
        images, sitk.GetArrayFromImage(study.lesion), study.lesion.GetOrigin(), study.lesion.GetSpacing(),
        study.lesion.GetDirection(), segment_label=study.lesion_label, tracking_id="lesion-1",
        tracking_uid=tracking_uid, sop_instance_uid=generate_uid(), series_instance_uid=generate_uid(),
        manufacturer="egfr-node", software_version="0.1.0", device_uid=generate_uid(),
    )


def check_seg_round_trip(path: Path, study: LoadedStudy, rules: SelectionRules | None = None) -> None:
    """The SEG, put back on the study's volume grid by the pipeline's loader, is the raster it came from."""
    back = load_seg_mask(path, study.image, rules or SelectionRules())
    expected = sitk.GetArrayFromImage(study.lesion)
    assert expected.sum() > 0
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back.lesion), expected)
    assert back.record["segments"][0]["resampled"] is False


def test_rtstruct_lesion_becomes_a_seg_the_sr_references(phantom_study, algorithm, tmp_path: Path) -> None:
    phantom = phantom_study("axial2d", "rtstruct")
    study = load_study(phantom.folder)
    images, rtstruct = headers(phantom.folder)
    tracking_uid = generate_uid()
    seg = rtstruct_seg(study, images, tracking_uid)
    path = write(seg, tmp_path / "seg.dcm")
    assert dciodvfy_errors(path) == []
    check_seg_round_trip(path, study)

    ds = read_strict(path)
    assert ds.SOPClassUID == SegmentationStorage and ds.SegmentationType == "BINARY"
    for keyword in PATIENT_STUDY:
        assert ds.get(keyword) == images[0].get(keyword), keyword
    assert ds.SeriesInstanceUID not in (images[0].SeriesInstanceUID, rtstruct.SeriesInstanceUID)
    assert "RTSTRUCT" in ds.SeriesDescription and "research" in ds.SeriesDescription.lower()
    (segment,) = ds.SegmentSequence
    assert (segment.SegmentLabel, segment.TrackingUID, segment.TrackingID) == ("Metastasis", tracking_uid, "lesion-1")
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "14799000"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == images[0].SeriesInstanceUID
    lesion_slices = int(sitk.GetArrayViewFromImage(study.lesion).any(axis=(1, 2)).sum())
    assert ds.NumberOfFrames == lesion_slices  # the lesion's slab only (it is one blob: no empty slice inside)

    check_dates(ds)
    point = point_in(images, phantom.lesion_centroid_lps)
    sr = build_sr(images, ds, finding_for(ds, 0.42, False), algorithm, lesion_point=point,
                  sop_instance_uid=generate_uid(), series_instance_uid=generate_uid())
    check_sr_file(write(sr, tmp_path / "sr.dcm"), images, ds, finding_for(ds, 0.42, False), algorithm,
                  Comprehensive3DSRStorage, point)


@pytest.mark.parametrize("geometry", ["enhanced", "axial3d"])
def test_rtstruct_lesion_becomes_a_seg_that_opens_on_its_largest_frame(phantom_study, tmp_path: Path,
                                                                       geometry: str) -> None:
    """On an Enhanced MR and a 1 mm series; a viewer opening the SEG on its first frame sees the
    lesion at its largest, and the frames' order changes nothing of the raster."""
    phantom = phantom_study(geometry, "rtstruct")
    study = load_study(phantom.folder)
    images, _ = headers(phantom.folder)
    path = write(rtstruct_seg(study, images, generate_uid()), tmp_path / "seg.dcm")
    assert dciodvfy_errors(path) == []
    check_seg_round_trip(path, study)
    ds = pydicom.dcmread(path)
    areas = ds.pixel_array.reshape(int(ds.NumberOfFrames), -1).sum(axis=1)
    assert list(areas) == sorted(areas, reverse=True) and areas[0] > areas[-1]


@pytest.mark.parametrize(("tilt", "rules", "grid"), [
    (5.0, SelectionRules(), "acquired_tilted"),
    (15.0, SelectionRules(max_axial_tilt_degrees=10.0), "resampled"),
])
def test_seg_frames_follow_a_tilted_or_resampled_volume_grid(tmp_path: Path, tilt: float, rules: SelectionRules,
                                                            grid: str) -> None:
    source = make_mr_series(ramp((14, 24, 24)), orientation=tilted_axial(tilt), origin=(-12.0, -12.0, -6.0),
                            spacing=(1.0, 1.0, 1.0))
    rtstruct = make_rtstruct(source, {"Metastasis": ball_contours(source, (0.5, 0.2, 1.0), 4.5)})
    write_datasets([*source, rtstruct], tmp_path / "study")
    study = load_study(tmp_path / "study", rules)
    assert study.selection["volume"]["grid"] == grid
    assert (np.abs(np.array(study.image.GetDirection()) - np.eye(3).ravel()).max() > 0.05) == (grid != "resampled")
    path = write(rtstruct_seg(study, source, generate_uid()), tmp_path / "seg.dcm")
    assert dciodvfy_errors(path) == []
    check_seg_round_trip(path, study, rules)


def card_inputs() -> tuple[np.ndarray, np.ndarray, list[float]]:
    rng = np.random.default_rng(3)
    crops = rng.normal(size=(5, 96, 96))
    rows, columns = np.mgrid[:96, :96]
    disc = (((rows - 48) ** 2 + (columns - 40) ** 2) < 15**2).astype(float)
    return crops, np.stack([disc] * 5), [0.71, 0.82, 0.9, 0.64, 0.77]


def test_result_card_is_a_valid_secondary_capture_in_its_own_series(phantom_study, algorithm, tmp_path: Path) -> None:
    images, _ = headers(phantom_study("axial2d", "seg").folder)
    crops, mask, scores = card_inputs()
    kwargs = dict(sop_instance_uid=generate_uid(), series_instance_uid=generate_uid())
    card = build_result_card(images[0], crops, mask, scores, 0.77, True, algorithm, **kwargs)
    path = write(card, tmp_path / "card.dcm")
    assert dciodvfy_errors(path) == []
    ds = read_strict(path)
    assert ds.SOPClassUID == SecondaryCaptureImageStorage and ds.SeriesNumber == 9903
    check_dates(ds)
    assert (ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.BitsAllocated) == ("RGB", 3, 8)
    for keyword in PATIENT_STUDY:
        assert ds.get(keyword) == images[0].get(keyword), keyword
    assert ds.SeriesInstanceUID != images[0].SeriesInstanceUID
    assert "RESEARCH USE ONLY" in ds.SeriesDescription and ds.ImageComments == CAVEAT
    assert ds.BurnedInAnnotation == "YES"
    pixels = ds.pixel_array
    assert pixels.shape == (ds.Rows, ds.Columns, 3) and ds.Columns >= 5 * 96
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 90) & (pixels[..., 2] < 90)
    assert red.sum() > 5 * 50  # the lesion outline on every crop
    negative = build_result_card(images[0], crops, mask, scores, 0.77, False, algorithm, **kwargs)
    assert not np.array_equal(negative.pixel_array, card.pixel_array)  # the status is on the picture


def bad_calls(images: list[Dataset], seg: Dataset, algorithm: AlgorithmInfo, point: ImagePoint):
    finding = finding_for(seg, 0.8, True)
    uids = dict(sop_instance_uid=generate_uid(), series_instance_uid=generate_uid())
    sr_uids = dict(uids, lesion_point=point)
    elsewhere = ImagePoint(point.sop_class_uid, generate_uid(), None, 1.0, 1.0, 0.0)
    algo = dict(name="m", version="1", device_uid=generate_uid(), manufacturer="x", model_name="y", threshold=0.5,
                slice_aggregation="median", fold_aggregation="mean")
    other_series = copy.deepcopy(images[1])
    other_series.SeriesInstanceUID = generate_uid()
    mask = np.zeros((3, 8, 8), np.uint8)
    mask[1, 2:5, 2:5] = 1
    grid = dict(origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0, 2.0), direction=tuple(np.eye(3).ravel()))
    seg_args = dict(segment_label="Metastasis", tracking_id="lesion-1", tracking_uid=generate_uid(),
                    manufacturer="egfr-node", software_version="0.1.0", **uids)
    crops, card_mask, scores = card_inputs()
    return [
        (lambda: AlgorithmInfo(**{**algo, "threshold": 1.5}), ValueError, 'Argument "threshold" must be in'),
        (lambda: AlgorithmInfo(**{**algo, "device_uid": "model-7"}), ValueError, 'Argument "device_uid" must be a valid'),
        (lambda: AlgorithmInfo(**{**algo, "name": 7}), TypeError, 'Argument "name" must be a str'),
        (lambda: AlgorithmInfo(**{**algo, "slice_aggregation": ""}), ValueError, 'Argument "slice_aggregation" must'),
        (lambda: LesionFinding(1, "l", generate_uid(), True, True), TypeError, 'Argument "probability" must be a real'),
        (lambda: LesionFinding(1, "l", generate_uid(), math.nan, True), ValueError, 'Argument "probability" must be in'),
        (lambda: LesionFinding(0, "l", generate_uid(), 0.5, True), ValueError, 'Argument "segment_number" must be >= 1'),
        (lambda: LesionFinding(1, "l", generate_uid(), 0.5, 1), TypeError, 'Argument "positive" must be a bool'),
        (lambda: build_sr([], seg, finding, algorithm, **sr_uids), ValueError, 'Argument "source_images" must hold at'),
        (lambda: build_sr(images[0], seg, finding, algorithm, **sr_uids), TypeError, 'Argument "source_images" must be a'),
        (lambda: build_sr([images[0], other_series], seg, finding, algorithm, **sr_uids), ValueError,
         'Argument "source_images" must hold images of one series'),
        (lambda: build_sr(images, images[0], finding, algorithm, **sr_uids), ValueError, 'Argument "seg" must be a Segm'),
        (lambda: build_sr(images, seg, LesionFinding(2, "l", finding.tracking_uid, 0.8, True), algorithm, **sr_uids),
         ValueError, 'Argument "finding" must name'),
        (lambda: build_sr(images, seg, finding, "model", **sr_uids), TypeError, 'Argument "algorithm" must be an Alg'),
        (lambda: build_sr(images, seg, finding, algorithm, lesion_point=point, sop_instance_uid=uids["sop_instance_uid"],
                          series_instance_uid=images[0].SeriesInstanceUID), ValueError, 'must be a new series'),
        (lambda: build_sr(images, seg, finding, algorithm, series_number=0, **sr_uids), ValueError,
         'Argument "series_number" must be in'),
        (lambda: build_sr(images, seg, finding, algorithm, **{**sr_uids, "lesion_point": (1.0, 2.0)}), TypeError,
         'Argument "lesion_point" must be an ImagePoint'),
        (lambda: build_sr(images, seg, finding, algorithm, **{**sr_uids, "lesion_point": elsewhere}), ValueError,
         'Argument "lesion_point" must lie in one of the source images'),
        (lambda: nearest_image_point(images, (0.0, float("nan"), 0.0)), ValueError, 'Argument "point_lps" must be 3'),
        (lambda: nearest_image_point([Dataset()], (0.0, 0.0, 0.0)), ValueError, 'Argument "images" holds no image'),
        (lambda: seg_from_volume_mask(images, np.zeros_like(mask), **grid, **seg_args), ValueError,
         'Argument "mask" must hold at least one'),
        (lambda: seg_from_volume_mask(images, mask.astype(float), **grid, **seg_args), TypeError,
         'Argument "mask" must have dtype uint8'),
        (lambda: seg_from_volume_mask(images, mask[0], **grid, **seg_args), ValueError, 'Argument "mask" must be 3-D'),
        (lambda: seg_from_volume_mask(images, mask, **{**grid, "direction": (1.0,) * 9}, **seg_args), ValueError,
         'Argument "direction" must be an orthonormal'),
        (lambda: seg_from_volume_mask(images, mask, **{**grid, "spacing": (1.0, 0.0, 1.0)}, **seg_args), ValueError,
         'Argument "spacing" must be positive'),
        (lambda: build_result_card(images[0], crops, card_mask, scores[:4], 0.7, True, algorithm, **uids),
         ValueError, 'Argument "slice_scores" must have one score per crop'),
        (lambda: build_result_card(images[0], list(crops), card_mask, scores, 0.7, True, algorithm, **uids),
         TypeError, 'Argument "crops" must be a numpy array'),
        (lambda: build_result_card(images[0], crops, card_mask * 2, scores, 0.7, True, algorithm, **uids),
         ValueError, 'Argument "lesion_mask" must hold values in'),
        (lambda: build_result_card(images[0], crops, card_mask, scores, 1.7, True, algorithm, **uids),
         ValueError, 'Argument "probability" must be in'),
    ]


def test_bad_arguments_raise_named_errors(phantom_study, algorithm) -> None:
    phantom = phantom_study("axial2d", "seg")
    images, seg = headers(phantom.folder)
    calls = bad_calls(images, seg, algorithm, point_in(images, phantom.lesion_centroid_lps))
    for call, error, message in calls:
        with pytest.raises(error, match=message.replace("(", r"\(")):
            call()


def test_doubtful_findings_warn_with_the_fix(phantom_study, algorithm) -> None:
    phantom = phantom_study("axial2d", "seg")
    images, seg = headers(phantom.folder)
    uids = dict(sop_instance_uid=generate_uid(), series_instance_uid=generate_uid(),
                lesion_point=point_in(images, phantom.lesion_centroid_lps))
    good = finding_for(seg, 0.8, True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_sr(images, seg, good, algorithm, **uids)  # nothing doubtful: no warning
    other_uid = LesionFinding(1, good.tracking_id, generate_uid(), 0.8, True)
    with pytest.warns(UserWarning, match="reuse the segment's"):
        build_sr(images, seg, other_uid, algorithm, **uids)
    contradiction = LesionFinding(1, good.tracking_id, good.tracking_uid, 0.2, True)
    with pytest.warns(UserWarning, match="contradicts probability 0.2"):
        build_sr(images, seg, contradiction, algorithm, **uids)


def test_lesion_point_lies_on_the_lesion_in_the_nearest_image(phantom_study) -> None:
    """The SR's point (what OHIF draws its arrow at) is inside the lesion mask of that image."""
    for geometry in ("axial2d", "sagittal3d"):
        phantom = phantom_study(geometry, "seg")
        study = load_study(phantom.folder)
        images, _ = headers(phantom.folder)
        point = point_in(images, phantom.lesion_centroid_lps)
        image = next(im for im in images if im.SOPInstanceUID == point.sop_instance_uid)
        assert point.distance_mm <= float(image.get("SpacingBetweenSlices", image.SliceThickness)) / 2 + 0.01
        # back to patient space, then to the pipeline's lesion mask: inside the lesion
        column, row = point.column - 0.5, point.row - 0.5
        cosines = np.array(image.ImageOrientationPatient, dtype=float)
        spacing = [float(v) for v in image.PixelSpacing]
        lps = (np.array(image.ImagePositionPatient, dtype=float) + cosines[:3] * column * spacing[1]
               + cosines[3:] * row * spacing[0])
        index = study.lesion.TransformPhysicalPointToIndex([float(v) for v in lps])
        assert study.lesion[index] == 1, geometry



@pytest.mark.parametrize(("character_set", "written"), [
    ("ISO_IR 6", None), (["", "ISO 2022 IR 87"], ["ISO 2022 IR 6", "ISO 2022 IR 87"]), ("ISO_IR 100", "ISO_IR 100"),
    ("ISO_IR 999", "ISO_IR 192"),
])
def test_results_keep_the_images_character_set_in_a_form_every_reader_takes(algorithm, tmp_path: Path, character_set,
                                                                          written) -> None:  # noqa: ANN001
    # a Japanese site's images ("\ISO 2022 IR 87": highdicom refuses the empty first value) and
    # plain ASCII ("ISO_IR 6": refused too) used to make every job of theirs fail at its results
    name = "Yamada^Tarou=山田^太郎" if "87" in str(character_set) else "YAMADA^TAROU"
    values = np.ones((4, 16, 16), dtype=np.uint16)
    images = make_mr_series(values, patient_name=name)
    for ds in images:
        ds.SpecificCharacterSet = character_set
        ds.IssuerOfPatientID = "HOSP-A"
    mask = np.zeros((4, 16, 16), np.uint8)
    mask[1:3, 5:9, 5:9] = 1
    seg = seg_from_volume_mask(images, mask, (-10.0, -12.0, 5.0), (1.0, 1.0, 2.0), (1, 0, 0, 0, 1, 0, 0, 0, 1),
                               segment_label="Lesion 1", tracking_id="L1", tracking_uid=generate_uid(),
                               sop_instance_uid=generate_uid(), series_instance_uid=generate_uid(), manufacturer="m",
                               software_version="1")
    finding = LesionFinding(1, "L1", str(seg.SegmentSequence[0].TrackingUID), 0.7, True)
    sr = build_sr(images, seg, finding, algorithm, lesion_point=nearest_image_point(images, (-4.0, -6.0, 8.0)),
                  sop_instance_uid=generate_uid(), series_instance_uid=generate_uid())
    crops, card_mask, scores = card_inputs()
    card = build_result_card(images[0], crops, card_mask, scores, 0.7, True, algorithm, sop_instance_uid=generate_uid(),
                             series_instance_uid=generate_uid())
    for kind, ds in (("seg", seg), ("sr", sr), ("card", card)):
        back = pydicom.dcmread(write(ds, tmp_path / f"{kind}.dcm"))
        assert back.get("SpecificCharacterSet") == written, kind
        assert str(back.PatientName) == name and back.IssuerOfPatientID == "HOSP-A", kind
