"""``evaluate`` on patients a bundle never saw (issue 27): the default recipe's test-sized
bundle, trained on the clear cohort, separates a held-out cohort of the same design made with
another seed; the shuffled-label control's AUC interval covers chance; a study that cannot
be preprocessed is listed with its reason and counted; patients the bundle trained on are
named."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from training.evaluate import SUBGROUPS, EvaluationError, evaluate_bundle

pytestmark = pytest.mark.timeout(1200)  # the session's learned and shuffled bundles train first when run alone


def _with_a_missing_study(cohort_csv: Path, out: Path) -> Path:
    with open(cohort_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["folder"] = str(cohort_csv.parent / row["folder"])
    rows.append({**rows[0], "patient_id": "MISSING-1", "study_uid": "1.2.826.0.1.3680043.9.7.1", "folder": str(out.parent / "nowhere")})
    with open(out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out


def test_a_learned_bundle_separates_patients_it_never_saw(learned_bundle, heldout_cohort: Path, tmp_path: Path,  # noqa: ANN001
                                                          cache_dir: Path) -> None:
    cohort = _with_a_missing_study(heldout_cohort, tmp_path / "heldout.csv")
    outcome = evaluate_bundle(learned_bundle.bundle, cohort, tmp_path / "eval", cache_dir=cache_dir, bootstrap=1000)
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    print(f"held out: AUC {report['auc']:.3f} CI {report['auc_ci']}, calibration {report['figures']['calibration']}")
    assert report["auc"] >= 0.85 and report["auc_ci"][0] > 0.5
    assert report["cases_listed"] == 21 and report["cases_scored"] == 20 and report["cases_failed"] == 1
    [failure] = report["failures"]
    assert failure["study_uid"] == "1.2.826.0.1.3680043.9.7.1" and "does not exist" in failure["reason"]
    assert report["trained_on"] == report["patient_id_in_training"] == [] and "None of these studies" in report["statement"]
    f = report["figures"]
    for key in ("sensitivity", "specificity", "ppv", "npv", "accuracy"):
        assert len(f[key]["ci95"]) == 2, key
    assert {"slope", "in_the_large", "brier"} <= set(f["calibration"]) and f["calibration_raw"]["brier"] is not None
    assert len(f["net_benefit"]) >= 10 and report["subgroups"]
    text = (tmp_path / "eval" / "report.md").read_text()
    assert "MISSING" not in text  # studies are named by UID, not by patient
    assert "1.2.826.0.1.3680043.9.7.1" in text and "could not be scored" in text
    with open(tmp_path / "eval" / "cases.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 21 and sum(1 for r in rows if r["failure"]) == 1
    assert all(r["probability"] and r["status"] in ("positive", "negative") for r in rows if not r["failure"])
    # every scored patient in one band of each subgroup attribute, as cases.csv says
    for name, _ in SUBGROUPS:
        assert sum(g["patients"] for g in report["subgroups"] if g["attribute"] == name) == 20, name
    acquisition = {g["value"]: g["patients"] for g in report["subgroups"] if g["attribute"] == "acquisition"}
    assert acquisition == Counter(r["acquisition"] for r in rows if not r["failure"]) == {"3D": 20}  # 1 mm 3D phantoms
    for name in ("roc.png", "calibration.png", "decision.png"):
        assert (tmp_path / "eval" / name).read_bytes()[:4] == b"\x89PNG"
    assert outcome.cases[-1].failure and outcome.folder == (tmp_path / "eval").absolute()
    with pytest.raises(EvaluationError, match="already exists"):
        evaluate_bundle(learned_bundle.bundle, cohort, tmp_path / "eval", cache_dir=cache_dir)


def test_a_shuffled_label_bundle_is_not_better_than_chance_on_new_patients(shuffled_bundle, heldout_cohort: Path,  # noqa: ANN001
                                                                          tmp_path: Path, cache_dir: Path) -> None:
    report = evaluate_bundle(shuffled_bundle.bundle, heldout_cohort, tmp_path / "eval", cache_dir=cache_dir,
                             bootstrap=1000).report
    print(f"shuffled control, held out: AUC {report['auc']:.3f} CI {report['auc_ci']}")
    low, high = report["auc_ci"]
    assert low <= 0.5 <= high


def test_patients_the_bundle_trained_on_are_named(learned_bundle, learning_cohort: Path, tmp_path: Path,  # noqa: ANN001
                                                  cache_dir: Path) -> None:
    report = evaluate_bundle(learned_bundle.bundle, learning_cohort, tmp_path / "eval", cache_dir=cache_dir,
                             bootstrap=0).report
    assert len(report["trained_on"]) == report["cases_listed"] and "not an independent evaluation" in report["statement"]


def test_a_new_study_of_a_patient_id_the_bundle_trained_on_is_named(learned_bundle, learning_cohort: Path,  # noqa: ANN001
                                                                    heldout_cohort: Path, tmp_path: Path,
                                                                    cache_dir: Path) -> None:
    def rows(cohort_csv: Path) -> list[dict[str, str]]:
        with open(cohort_csv, newline="") as handle:
            return [{**r, "folder": str(cohort_csv.parent / r["folder"])} for r in csv.DictReader(handle)]

    training_patient = rows(learning_cohort)[0]["patient_id"]
    new = rows(heldout_cohort)
    new[0]["patient_id"] = training_patient  # a follow-up study of a patient the bundle trained on
    cohort = tmp_path / "follow-up.csv"
    with open(cohort, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(new[0]))
        writer.writeheader()
        writer.writerows(new)
    report = evaluate_bundle(learned_bundle.bundle, cohort, tmp_path / "eval", cache_dir=cache_dir, bootstrap=0).report
    assert report["trained_on"] == [] and report["patient_id_in_training"] == [new[0]["study_uid"]]
    assert "1 of these studies belong to a patient ID" in report["statement"]
    assert "None of these" not in report["statement"]
    text = (tmp_path / "eval" / "report.md").read_text()
    assert new[0]["study_uid"] in text and training_patient not in text  # named by study UID, never the patient


def test_field_strength_subgroups_name_the_nominal_field() -> None:
    from training.evaluate import _band

    # scanners write their exact field: a Siemens 1.5 T says 1.494, a 3 T says 2.89362
    values = (1.494, 2.89362, 3.0, 7.0, 1.0, 4.7, None)
    assert [_band("field_strength_t", v) for v in values] == ["1.5 T", "3 T", "3 T", "7 T", "< 1.5 T", "other", "unknown"]
