"""Cohort CSV parsing (training.cohort): spellings, status values, errors that say what is accepted."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.cohort import CohortError, parse_status, read_cohort

UID1, UID2, UID3 = "1.2.826.0.1.1", "1.2.826.0.1.2", "1.2.826.0.1.3"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cohort.csv"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("header", [
    "patient_id,study_uid,egfr_status,folder",
    "PatientID,StudyInstanceUID,EGFR,path",
    "Patient ID,Study Instance UID,Label,Folder",
    "subject,study_instance_uid,egfr-status,PATH",
])
def test_column_spellings(tmp_path: Path, header: str) -> None:
    cohort = read_cohort(write(tmp_path, f"{header}\nP1,{UID1},positive,s1\nP2,{UID2},negative,s2\n"))
    assert [(e.patient_id, e.study_uid, e.label) for e in cohort.entries] == [("P1", UID1, 1), ("P2", UID2, 0)]
    assert cohort.entries[0].folder == (tmp_path / "s1").resolve()
    assert cohort.summary() == {"patients": 2, "positive": 1, "negative": 1}


@pytest.mark.parametrize("value,label", [
    ("positive", 1), ("Mutant", 1), ("1", 1), ("TRUE", 1), ("pos", 1),
    ("negative", 0), ("wild-type", 0), ("Wildtype", 0), ("0", 0), ("false", 0), ("WT", 0),
])
def test_status_values(value: str, label: int) -> None:
    assert parse_status(value) == label


def test_unknown_status_lists_what_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, f"patient_id,study_uid,egfr_status,folder\nP1,{UID1},maybe,s1\n")
    with pytest.raises(CohortError) as info:
        read_cohort(path)
    message = str(info.value)
    assert "row 2" in message and "'maybe'" in message
    for accepted in ("positive", "negative", "mutant", "wild-type", "1", "0", "true", "false"):
        assert accepted in message


def test_missing_column_names_the_spellings(tmp_path: Path) -> None:
    with pytest.raises(CohortError, match=r"no column for status.*egfr_status"):
        read_cohort(write(tmp_path, f"patient_id,study_uid,folder\nP1,{UID1},s1\n"))


def test_duplicate_patient_and_bad_uid_are_errors(tmp_path: Path) -> None:
    with pytest.raises(CohortError, match="row 3: patient listed again"):
        read_cohort(write(tmp_path, f"patient_id,study_uid,egfr,folder\nP1,{UID1},1,a\nP1,{UID2},0,b\n"))
    with pytest.raises(CohortError, match="row 2: 'abc' is not a Study Instance UID"):
        read_cohort(write(tmp_path, "patient_id,study_uid,egfr,folder\nP1,abc,1,a\n"))
    with pytest.raises(CohortError, match="no patients"):
        read_cohort(write(tmp_path, "patient_id,study_uid,egfr,folder\n"))


def test_archive_root_and_optional_columns(tmp_path: Path) -> None:
    path = write(tmp_path, f"patient_id,study_uid,egfr_status,Lesion Label,site\nP1,{UID1},mutant,Metastasis 1,A\n"
                           f"P2,{UID2},wild-type,,B\nP3,{UID3},0,,\n")
    archive = tmp_path / "archive"
    cohort = read_cohort(path, archive_root=archive)
    first, second, third = cohort.entries
    assert first.folder == archive / UID1 and first.lesion_label == "Metastasis 1" and first.group == "A"
    assert second.lesion_label is None and second.group == "B" and third.group is None
    with pytest.raises(CohortError, match="folder"):
        read_cohort(path)  # no archive root and no folder column
