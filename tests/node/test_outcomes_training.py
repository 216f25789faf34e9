"""Retraining from the site's confirmed cases and sharing them (issue 28, items 4 and 5):
``train --from-outcomes --holdout-after`` builds the cohort from the recorded outcomes, pins
it, trains, and evaluates the new bundle on the newer cases it did not train on (a patient
with an older and a newer study is held out whole; a primary-tumour outcome is not counted);
the de-identified export holds no patient name or ID in any file, leaves out the free-text
report that came with a study, keeps a patient's two studies in one group, and re-imports
into a fresh node that trains on it with its labels."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pipeline.phantom import generate_cohort
from tests.node.process import cli, free_port, write_config

TINY = ["--folds", "2", "--epochs", "1", "--output-size", "32", "--no-bias-correction", "--no-progress"]


def _same_patient(study: Path, like: Path) -> None:
    """Make ``study``'s files name the patient of ``like``: one patient, two studies."""
    ds = pydicom.dcmread(next(like.rglob("*.dcm")), stop_before_pixels=True)
    for path in study.rglob("*.dcm"):
        other = pydicom.dcmread(path)
        other.PatientName, other.PatientID, other.PatientBirthDate = ds.PatientName, ds.PatientID, ds.PatientBirthDate
        other.save_as(path)


def _text_report(study: Path, text: str) -> None:
    """A Basic Text SR that came with the study: its free text names the patient."""
    like = pydicom.dcmread(next(study.rglob("*.dcm")), stop_before_pixels=True)
    sr = Dataset()
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                    "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName"):
        setattr(sr, keyword, getattr(like, keyword))
    sr.SOPClassUID, sr.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.88.11", generate_uid()
    sr.SeriesInstanceUID, sr.Modality, sr.SeriesNumber, sr.InstanceNumber = generate_uid(), "SR", 90, 1
    sr.Manufacturer, sr.ContentDate, sr.ContentTime = "reporting system", like.StudyDate, like.StudyTime
    sr.ValueType, sr.ContinuityOfContent, sr.CompletionFlag, sr.VerificationFlag = "CONTAINER", "SEPARATE", "COMPLETE", \
        "UNVERIFIED"
    sr.ConceptNameCodeSequence = [Dataset()]
    sr.ConceptNameCodeSequence[0].update({"CodeValue": "18748-4", "CodingSchemeDesignator": "LN",
                                          "CodeMeaning": "Diagnostic imaging report"})
    item = Dataset()
    item.RelationshipType, item.ValueType, item.TextValue = "CONTAINS", "TEXT", text
    item.ConceptNameCodeSequence = [Dataset()]
    item.ConceptNameCodeSequence[0].update({"CodeValue": "121071", "CodingSchemeDesignator": "DCM",
                                            "CodeMeaning": "Finding"})
    sr.ContentSequence = [item]
    sr.ReferencedPerformedProcedureStepSequence, sr.PerformedProcedureCodeSequence = [], []
    sr.file_meta = FileMetaDataset()
    sr.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sr.save_as(study / "report.dcm", enforce_file_format=True)


def test_retrain_from_outcomes_with_a_temporal_holdout_then_share_the_cohort(tmp_path: Path) -> None:
    cohort = tmp_path / "cohort"
    generate_cohort(cohort, 14, 0.5, seed=31, geometry="axial2d", mask_kind="seg")
    with open(cohort / "labels.csv", newline="") as handle:
        labels = list(csv.DictReader(handle))
    images_and_masks = len(list(cohort.rglob("*.dcm")))
    by_status = {status: [r for r in labels if r["egfr_status"] == status] for status in ("positive", "negative")}
    # two of each class had pathology after 2026-03-01: the temporal hold-out; the third positive
    # is an older study of the first positive's patient; the third negative's status came from
    # the primary tumour only
    newer = {r["study_uid"] for rows in by_status.values() for r in rows[:2]}
    follow_up, primary_only = by_status["positive"][2], by_status["negative"][2]["study_uid"]
    _same_patient(cohort / follow_up["folder"], cohort / by_status["positive"][0]["folder"])
    _text_report(cohort / by_status["negative"][3]["folder"], "Findings for Phantom P0005, seen today: enhancing lesion")
    originals = {}
    for path in cohort.rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        originals[str(ds.StudyInstanceUID)] = (str(ds.PatientName), str(ds.PatientID))
    config = write_config(tmp_path / "node", free_port())
    assert cli(config, "db", "upgrade").returncode == 0
    assert cli(config, "import", str(cohort), "--quiet", timeout=300).returncode == 0
    outcomes = tmp_path / "outcomes.csv"
    with open(outcomes, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["study_uid", "egfr_status", "date", "source"])
        writer.writerows([r["study_uid"], r["egfr_status"], "2026-06-01" if r["study_uid"] in newer else "2026-01-15",
                          "primary_only" if r["study_uid"] == primary_only else "resection"] for r in labels)
    assert cli(config, "outcomes", "import", str(outcomes)).returncode == 0

    out = tmp_path / "retrained"
    trained = cli(config, "train", "--from-outcomes", "--holdout-after", "2026-03-01", "--out", str(out), *TINY,
                  timeout=900)
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
    assert "pinned 13 of the cohort's studies" in trained.stdout and "hold-out (pathology after 2026-03-01)" in trained.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    provenance = manifest["training"]["cohort_provenance"]
    roles = {o["study_uid"]: o["role"] for o in provenance["outcomes"]}
    assert len(roles) == 13 and primary_only not in roles and provenance["not_counted"]["other_tissue"] == 1
    assert sorted(uid for uid, role in roles.items() if role == "holdout") == sorted(newer)
    assert roles[follow_up["study_uid"]] == "holdout (same patient as a later case)"
    assert all(o["entered_by"].startswith("shell") for o in provenance["outcomes"])
    assert manifest["training"]["data"]["patients_used"] == 8  # the newer cases and the follow-up's patient never trained it
    assert not {row["study_uid"] for row in manifest["training"]["splits"]} & (newer | {follow_up["study_uid"]})
    holdout = json.loads((out / "holdout" / "report.json").read_text())
    assert holdout["cases_scored"] == 5 and holdout["trained_on"] == [] and "auc" in holdout
    assert (out / "report.md").is_file() and (out / "holdout" / "report.md").is_file()
    assert not list(out.rglob("*.npz"))  # the hold-out's preprocessed images stay in the run's cache, not the bundle
    text = "".join(p.read_text(errors="replace") for p in out.rglob("*") if p.suffix in (".csv", ".json", ".md"))
    for name, patient_id in originals.values():
        assert patient_id not in text  # the bundle groups patients by a pseudonym, never by their ID

    # A cohort to share: de-identified, consistent, and usable by another site.
    shared = tmp_path / "shared"
    exported = cli(config, "outcomes", "export-cohort", "--deidentify", str(shared), timeout=300)
    assert exported.returncode == 0 and "13 confirmed studies" in exported.stdout, exported.stderr
    files = list(shared.rglob("*.dcm"))
    primary_files = len(list((cohort / next(r["folder"] for r in labels if r["study_uid"] == primary_only)).rglob("*.dcm")))
    assert len(files) == images_and_masks - primary_files  # the text report stayed home
    for path in files:
        data = path.read_bytes()
        assert b"Phantom P0005" not in data and pydicom.dcmread(path, stop_before_pixels=True).Modality in ("MR", "SEG")
        for study_uid, (name, patient_id) in originals.items():
            assert name.encode() not in data and patient_id.encode() not in data and study_uid.encode() not in data, path
    with open(shared / "labels.csv", newline="") as handle:
        exported_labels = list(csv.DictReader(handle))
    assert sorted(r["egfr_status"] for r in exported_labels) == sorted(r["egfr_status"] for r in labels
                                                                       if r["study_uid"] != primary_only)
    groups = [r["group"] for r in exported_labels]
    assert len(set(groups)) == 12 and len({r["patient_id"] for r in exported_labels}) == 13  # one patient, two studies
    for row in exported_labels:  # the labels name the de-identified study, and its mask references its images
        study_files = [pydicom.dcmread(p, stop_before_pixels=True) for p in (shared / row["folder"]).glob("*.dcm")]
        assert {str(ds.StudyInstanceUID) for ds in study_files} == {row["study_uid"]}
        image_uids = {str(ds.SOPInstanceUID) for ds in study_files if ds.Modality == "MR"}
        [seg] = [ds for ds in study_files if ds.Modality == "SEG"]
        referenced = {str(item.ReferencedSOPInstanceUID) for series in seg.ReferencedSeriesSequence
                      for item in series.ReferencedInstanceSequence}
        assert referenced and referenced <= image_uids

    fresh = write_config(tmp_path / "fresh", free_port())
    assert cli(fresh, "db", "upgrade").returncode == 0
    assert cli(fresh, "import", str(shared), "--quiet", timeout=300).returncode == 0
    spreadsheet = tmp_path / "shared.csv"
    with open(spreadsheet, "w", newline="") as handle:  # by Study Instance UID only: read from the fresh archive
        writer = csv.writer(handle)
        writer.writerow(["patient_id", "group", "study_uid", "egfr_status"])
        writer.writerows([r["patient_id"], r["group"], r["study_uid"], r["egfr_status"]] for r in exported_labels)
    again = cli(fresh, "train", "--cohort", str(spreadsheet), "--out", str(tmp_path / "elsewhere"), *TINY, timeout=900)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert json.loads((tmp_path / "elsewhere" / "report.json").read_text())["data"]["patients_used"] == 13
