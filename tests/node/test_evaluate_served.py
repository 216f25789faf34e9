"""``egfr-node evaluate`` scores a bundle exactly as the node serves it (issue 27): the same
studies through the real SCP and worker, and through ``evaluate`` on the node's archive,
give the same probability, to 1e-6, for every case; the SR carries it to 3 decimals. An
RTSTRUCT study is among them: the node archives a SEG it derived from it beside the received
files, and ``evaluate`` reads what the job read (the received instances), not that SEG."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from pynetdicom.sop_class import Comprehensive3DSRStorage

from dicom_node.report.sr import read_sr_result
from tests.node.bundles import write_random_bundle
from tests.node.peers import PynetdicomPacs
from tests.node.test_results import Node
from training.evaluate import main as evaluate


def test_evaluate_gives_the_probability_the_node_puts_in_its_sr(tmp_path: Path, phantom_study) -> None:
    # a non-trivial calibration and the folds combined by their logits, so a rule applied in
    # another order (per fold, on the probabilities' mean, or not at all) would give other numbers
    bundle = write_random_bundle(tmp_path / "bundle", folds=3, seed=4, fold_scale="logit", calibration={
        "method": "logistic", "intercept": -0.4, "slope": 2.5, "patients": 30, "positives": 10})
    studies = [phantom_study("axial2d", "seg"),
               phantom_study("axial2d", "rtstruct", seed=8, patient_index=1, egfr_positive=True),
               phantom_study("axial2d", "seg", seed=9, patient_index=2, egfr_positive=True)]
    pacs = PynetdicomPacs(tmp_path / "pacs")
    node = Node(tmp_path, pacs.port)
    try:
        node.activate(bundle)
        jobs = {}
        for study in studies:
            node.arrive(study.folder)
            job = node.worker.claim_once()
            assert job.state == "done", job.reason
            jobs[study.study_uid] = job
        cohort = tmp_path / "cohort.csv"
        with open(cohort, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["patient_id", "study_uid", "egfr_status"])
            writer.writerows([f"P{i}", s.study_uid, "positive" if s.egfr_positive else "negative"]
                             for i, s in enumerate(studies))
        out = tmp_path / "evaluation"
        assert evaluate(["--bundle", str(bundle), "--cohort", str(cohort), "--out", str(out), "--bootstrap", "200",
                         "--cache", str(tmp_path / "cache"), "--no-progress"],
                        archive_root=node.config.storage.archive_path, database_url=node.config.database_url) == 0
        with open(out / "cases.csv", newline="") as handle:
            cases = {row["study_uid"]: row for row in csv.DictReader(handle)}
        srs = {str(ds.StudyInstanceUID): ds for ds in pacs.of_class(Comprehensive3DSRStorage)}
        for uid, job in jobs.items():
            case = cases[uid]
            assert job.result["calibrated"] is True
            assert float(case["probability"]) == pytest.approx(job.result["probability"], abs=1e-6), uid
            assert case["status"] == job.result["status"]
            # the mask the job read (for the RTSTRUCT study: the RTSTRUCT, not the SEG the node derived from it)
            assert case["mask_sop_uid"] == job.result["selection"]["mask_sop_uid"], uid
            assert float(case["raw_score"]) == pytest.approx(job.result["raw_score"], abs=1e-6)
            assert read_sr_result(srs[uid]).probability == pytest.approx(round(float(case["probability"]), 3), abs=1e-9)
        report = json.loads((out / "report.json").read_text())
        assert report["cases_scored"] == 3 and report["cases_failed"] == 0 and report["trained_on"] == []
        assert {"auc", "auc_ci"} <= set(report) and report["bundle"]["calibration"]["slope"] == 2.5
        for name in ("report.md", "roc.png", "calibration.png", "decision.png"):
            assert (out / name).is_file(), name
    finally:
        node.close()
        pacs.stop()
