"""Choosing the mask and the MR series (issue 3 point 1): reasons and rules, recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage, SecondaryCaptureImageStorage, generate_uid

from pipeline.load.index import index_study
from pipeline.errors import SelectionError
from pipeline.load.select import SelectionRules, select_mask_and_series
from tests.dicom_factory import ball_contours, ball_mask, make_mr_series, make_rtstruct, make_seg, ramp, write_datasets


def _series(study_uid: str | None = None, **kwargs):
    return make_mr_series(ramp((4, 12, 12)), origin=(-6.0, -6.0, 0.0), study_uid=study_uid, **kwargs)


def _lesion_seg(source):
    return make_seg(source, {"Lesion": ball_mask(source, (0.0, 0.0, 3.0), 3.0)})


def _lesion_rtstruct(source, **kwargs):
    return make_rtstruct(source, {"GTV": ball_contours(source, (0.0, 0.0, 3.0), 3.0)}, **kwargs)


def _select(folder: Path, rules: SelectionRules | None = None):
    return select_mask_and_series(index_study(folder), rules)


def test_study_without_mask(tmp_path: Path) -> None:
    source = _series()
    write_datasets(source, tmp_path)
    with pytest.raises(SelectionError) as err:
        _select(tmp_path)
    assert str(err.value) == f"no lesion mask (SEG, RTSTRUCT or an outline SR) in study {source[0].StudyInstanceUID}"


def test_mask_without_its_image(tmp_path: Path) -> None:
    source = _series()
    seg = _lesion_seg(source)
    write_datasets([seg], tmp_path)  # the MR slices never arrived
    with pytest.raises(SelectionError) as err:
        _select(tmp_path)
    assert str(err.value) == (
        f"no usable lesion mask in study {source[0].StudyInstanceUID}: SEG {seg.SOPInstanceUID}: "
        f"mask references series {source[0].SeriesInstanceUID} which is not in the study"
    )


def test_mask_frame_of_reference_differs_from_the_image(tmp_path: Path) -> None:
    source = _series()
    structure_set = _lesion_rtstruct(source)
    other_for = generate_uid()
    structure_set.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID = other_for
    write_datasets([*source, structure_set], tmp_path)
    with pytest.raises(SelectionError, match="mask frame of reference differs from the image") as err:
        _select(tmp_path)
    assert f"({other_for} vs {source[0].FrameOfReferenceUID} of series {source[0].SeriesInstanceUID})" in str(err.value)


def test_no_mask_references_an_mr_series(tmp_path: Path) -> None:
    ct = _series()
    for ds in ct:
        ds.Modality, ds.SOPClassUID = "CT", CTImageStorage
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    structure_set = _lesion_rtstruct(ct)
    write_datasets([*ct, structure_set], tmp_path)
    with pytest.raises(SelectionError) as err:
        _select(tmp_path)
    assert str(err.value) == (
        f"no mask references an MR series in study {ct[0].StudyInstanceUID} "
        f"(references no MR series ({ct[0].SeriesInstanceUID} is CT))"
    )


def test_seg_preferred_over_rtstruct_by_default_and_recorded(tmp_path: Path) -> None:
    source = _series()
    seg, structure_set = _lesion_seg(source), _lesion_rtstruct(source, content_time="235959")
    seg.ContentDate, seg.ContentTime = "20251231", "090000"  # older than the RTSTRUCT (20260101)
    (tmp_path / "deep" / "er").mkdir(parents=True)
    write_datasets(source, tmp_path / "deep" / "er")
    write_datasets([seg, structure_set], tmp_path)
    (tmp_path / "README.txt").write_text("not DICOM")
    (tmp_path / "deep" / "notes.json").write_text("{}")
    index = index_study(tmp_path)
    assert index.skipped_files == 2
    selection = select_mask_and_series(index)
    assert selection.mask.sop_uid == seg.SOPInstanceUID
    assert selection.series.series_uid == source[0].SeriesInstanceUID
    record = json.loads(json.dumps(selection.record))  # JSON-serialisable
    assert record["rule"] == "mask_preference=SEG, then newest"
    rejected = {c["sop_instance_uid"]: c["rejected"] for c in record["candidates"]}
    assert rejected == {
        seg.SOPInstanceUID: None,
        structure_set.SOPInstanceUID: "not preferred (rule mask_preference=SEG, then newest)",
    }
    # The other way round when the rule says so, and the newest regardless of kind.
    assert _select(tmp_path, SelectionRules(mask_preference="RTSTRUCT")).mask_kind == "RTSTRUCT"
    assert _select(tmp_path, SelectionRules(mask_preference="newest")).mask.sop_uid == structure_set.SOPInstanceUID


def test_newest_of_two_structure_sets_and_usable_over_broken(tmp_path: Path) -> None:
    source = _series()
    old, new = _lesion_rtstruct(source, content_time="080000"), _lesion_rtstruct(source, content_time="170000")
    broken = _lesion_rtstruct(source, content_time="235959")
    broken.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID = generate_uid()
    write_datasets([*source, old, new, broken], tmp_path)
    selection = _select(tmp_path)
    assert selection.mask.sop_uid == new.SOPInstanceUID
    reasons = {c["sop_instance_uid"]: c["rejected"] for c in selection.record["candidates"]}
    assert reasons[old.SOPInstanceUID].startswith("not preferred")
    assert reasons[broken.SOPInstanceUID].startswith("mask frame of reference differs from the image")


def test_the_referenced_series_is_chosen_among_several(tmp_path: Path) -> None:
    first = _series()
    second = _series(study_uid=str(first[0].StudyInstanceUID))
    seg = _lesion_seg(second)
    write_datasets([*first, *second, seg], tmp_path)
    selection = _select(tmp_path)
    assert selection.series.series_uid == second[0].SeriesInstanceUID
    assert len(selection.series.instances) == 4


def test_half_written_temporary_files_are_not_read(tmp_path: Path) -> None:
    """The archive's hidden ``.<uid>.dcm.<hex>.tmp`` files and a hidden ``.incoming/`` folder are
    ignored: a truncated temp copy sorts before the complete file and must not win as a "duplicate"."""
    source = _series()
    seg = _lesion_seg(source)
    paths = write_datasets([*source, seg], tmp_path)
    (tmp_path / ".incoming").mkdir()
    for path in paths[:2]:
        truncated = path.read_bytes()[:-16]  # header complete, pixel data cut short
        (tmp_path / f".{path.name}.0a1b2c.tmp").write_bytes(truncated)
        (tmp_path / ".incoming" / path.name).write_bytes(truncated)
    (tmp_path / f"{paths[2].name}.tmp").write_bytes(paths[2].read_bytes())
    index = index_study(tmp_path)
    assert index.skipped_files == 0
    assert {h.path for h in index.by_sop_uid.values()} == set(paths)
    series = index.series[source[0].SeriesInstanceUID]
    assert len(series.instances) == len(source)
    assert _select(tmp_path).mask.sop_uid == seg.SOPInstanceUID


def test_folder_problems(tmp_path: Path) -> None:
    with pytest.raises(SelectionError, match="no DICOM files in"):
        index_study(tmp_path)
    with pytest.raises(SelectionError, match="does not exist"):
        index_study(tmp_path / "absent")
    write_datasets(_series(), tmp_path / "a")
    write_datasets(_series(), tmp_path / "b")
    with pytest.raises(SelectionError, match=r"folder holds 2 studies \("):
        index_study(tmp_path)


def test_rules_are_validated_and_serialisable() -> None:
    with pytest.raises(ValueError, match='Argument "mask_preference" must be one of'):
        SelectionRules(mask_preference="largest")
    with pytest.raises(ValueError, match='Argument "lesion_label_pattern" must be a regular expression'):
        SelectionRules(lesion_label_pattern="(unclosed")
    rules = SelectionRules(lesion_label_pattern="(?i)resected")
    assert json.loads(json.dumps(rules.to_dict()))["lesion_label_pattern"] == "(?i)resected"
    assert SelectionRules.from_dict(json.loads(json.dumps(rules.to_dict()))) == rules  # every rule round-trips


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"resample_oblique": "yes"}, r'"resample_oblique" must be true, false or "auto", not \'yes\''),
        ({"resample_oblique": 1}, r'"resample_oblique" must be true, false or "auto", not 1'),
        ({"max_axial_tilt_degrees": 45}, r'"max_axial_tilt_degrees" must be at least 0 and less than 45, not 45'),
        ({"max_axial_tilt_degrees": -1.0}, r'"max_axial_tilt_degrees" must be at least 0 and less than 45, not -1'),
        ({"max_axial_tilt_degrees": "25"}, r'"max_axial_tilt_degrees" must be a finite number, not \'25\''),
        ({"max_resample_slice_mm": 0}, r'"max_resample_slice_mm" must be more than 0, not 0'),
        ({"max_resample_slice_mm": float("nan")}, r'"max_resample_slice_mm" must be a finite number, not nan'),
    ],
)
def test_oblique_policy_rules_are_validated(values: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SelectionRules(**values)


def test_oblique_policy_defaults_and_integers_from_a_config_file() -> None:
    rules = SelectionRules()
    assert (rules.resample_oblique, rules.max_axial_tilt_degrees, rules.max_resample_slice_mm) == ("auto", 25.0, 1.5)
    from_toml = SelectionRules.from_dict({"max_axial_tilt_degrees": 10, "max_resample_slice_mm": 2})
    assert from_toml.to_dict()["max_axial_tilt_degrees"] == 10.0 and isinstance(from_toml.max_axial_tilt_degrees, float)
    assert from_toml == SelectionRules(max_axial_tilt_degrees=10.0, max_resample_slice_mm=2.0)


def test_structure_set_referencing_two_mr_series_takes_the_larger_and_says_so(tmp_path: Path) -> None:
    small = _series()
    study_uid, for_uid = str(small[0].StudyInstanceUID), str(small[0].FrameOfReferenceUID)
    large = make_mr_series(ramp((6, 12, 12)), origin=(-6.0, -6.0, 0.0), study_uid=study_uid, frame_of_reference_uid=for_uid)
    structure_set = _lesion_rtstruct(small)
    study_ref = structure_set.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    extra = type(study_ref.RTReferencedSeriesSequence[0])()
    extra.SeriesInstanceUID = large[0].SeriesInstanceUID
    study_ref.RTReferencedSeriesSequence.append(extra)
    # A non-image instance filed in the MR series (a screenshot) does not spoil it.
    screenshot = make_mr_series(ramp((1, 4, 4)), study_uid=study_uid)[0]
    screenshot.SeriesInstanceUID, screenshot.SOPClassUID = large[0].SeriesInstanceUID, SecondaryCaptureImageStorage
    screenshot.file_meta.MediaStorageSOPClassUID = screenshot.SOPClassUID
    write_datasets([*small, *large, screenshot, structure_set], tmp_path)
    selection = _select(tmp_path)
    assert selection.series.series_uid == large[0].SeriesInstanceUID
    (candidate,) = selection.record["candidates"]
    assert candidate["image_series_rule"] == "the largest of 2 referenced MR series"
    assert candidate["referenced_series"][:2] == [small[0].SeriesInstanceUID, large[0].SeriesInstanceUID]


def test_rules_round_trip_through_a_dict() -> None:
    rules = SelectionRules(mask_preference="newest", resample_oblique=True)
    assert SelectionRules.from_dict(json.loads(json.dumps(rules.to_dict()))) == rules
    rules = SelectionRules(resample_oblique="auto", max_axial_tilt_degrees=12.5, max_resample_slice_mm=1.2)
    assert SelectionRules.from_dict(json.loads(json.dumps(rules.to_dict()))) == rules
    # A rule recorded before the oblique policy had these keys still loads (defaults fill in).
    old = {k: v for k, v in SelectionRules(resample_oblique=False).to_dict().items() if not k.startswith("max_")}
    assert SelectionRules.from_dict(old) == SelectionRules(resample_oblique=False)
    with pytest.raises(ValueError, match="unknown selection rule keys: colour"):
        SelectionRules.from_dict({"colour": "red"})
