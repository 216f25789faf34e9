"""Retraining from the site's confirmed cases and sharing them (issue 28, items 4 and 5):
``train --from-outcomes --holdout-after`` builds the cohort from the recorded outcomes, pins
it, trains, and evaluates the new bundle on the newer cases it did not train on; the
de-identified export holds no patient name or ID in any file and re-imports into a fresh
node that trains on it with its labels."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pydicom

from pipeline.phantom import generate_cohort
from tests.node.process import cli, free_port, write_config

TINY = ["--folds", "2", "--epochs", "1", "--output-size", "32", "--no-bias-correction", "--no-progress"]


def test_retrain_from_outcomes_with_a_temporal_holdout_then_share_the_cohort(tmp_path: Path) -> None:
    cohort = tmp_path / "cohort"
    generate_cohort(cohort, 12, 0.5, seed=31, geometry="axial2d", mask_kind="seg")
    with open(cohort / "labels.csv", newline="") as handle:
        labels = list(csv.DictReader(handle))
    originals = {}
    for path in cohort.rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        originals[str(ds.StudyInstanceUID)] = (str(ds.PatientName), str(ds.PatientID))
    config = write_config(tmp_path / "node", free_port())
    assert cli(config, "db", "upgrade").returncode == 0
    assert cli(config, "import", str(cohort), "--quiet", timeout=300).returncode == 0
    # two of each class had pathology after 2026-03-01: the temporal hold-out
    newer = {r["study_uid"] for status in ("positive", "negative") for r in [x for x in labels if x["egfr_status"] == status][:2]}
    outcomes = tmp_path / "outcomes.csv"
    with open(outcomes, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["study_uid", "egfr_status", "date", "source"])
        writer.writerows([r["study_uid"], r["egfr_status"], "2026-06-01" if r["study_uid"] in newer else "2026-01-15",
                          "resection"] for r in labels)
    assert cli(config, "outcomes", "import", str(outcomes)).returncode == 0

    out = tmp_path / "retrained"
    trained = cli(config, "train", "--from-outcomes", "--holdout-after", "2026-03-01", "--out", str(out), *TINY,
                  timeout=900)
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
    assert "pinned 12 of the cohort's studies" in trained.stdout and "hold-out (pathology after 2026-03-01)" in trained.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    provenance = manifest["training"]["cohort_provenance"]
    assert len(provenance["outcomes"]) == 12 and sum(o["role"] == "holdout" for o in provenance["outcomes"]) == 4
    assert all(o["entered_by"].startswith("shell") for o in provenance["outcomes"])
    assert manifest["training"]["data"]["patients_used"] == 8  # the four newer cases never trained it
    holdout = json.loads((out / "holdout" / "report.json").read_text())
    assert holdout["cases_scored"] == 4 and holdout["trained_on"] == [] and "auc" in holdout
    assert (out / "report.md").is_file() and (out / "holdout" / "report.md").is_file()
    text = "".join(p.read_text(errors="replace") for p in out.rglob("*") if p.suffix in (".csv", ".json", ".md"))
    for name, patient_id in originals.values():
        assert patient_id not in text  # the bundle groups patients by a pseudonym, never by their ID

    # A cohort to share: de-identified, consistent, and usable by another site.
    shared = tmp_path / "shared"
    exported = cli(config, "outcomes", "export-cohort", "--deidentify", str(shared), timeout=300)
    assert exported.returncode == 0 and "12 confirmed studies" in exported.stdout, exported.stderr
    files = list(shared.rglob("*.dcm"))
    assert len(files) == len(list(cohort.rglob("*.dcm")))
    for path in files:
        data = path.read_bytes()
        for study_uid, (name, patient_id) in originals.items():
            assert name.encode() not in data and patient_id.encode() not in data and study_uid.encode() not in data, path
    with open(shared / "labels.csv", newline="") as handle:
        exported_labels = list(csv.DictReader(handle))
    assert sorted(r["egfr_status"] for r in exported_labels) == sorted(r["egfr_status"] for r in labels)
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
        writer.writerow(["patient_id", "study_uid", "egfr_status"])
        writer.writerows([r["patient_id"], r["study_uid"], r["egfr_status"]] for r in exported_labels)
    again = cli(fresh, "train", "--cohort", str(spreadsheet), "--out", str(tmp_path / "elsewhere"), *TINY, timeout=900)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert json.loads((tmp_path / "elsewhere" / "report.json").read_text())["data"]["patients_used"] == 12
