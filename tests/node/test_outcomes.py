"""The site's outcome loop (issue 28): pathology outcomes recorded with their history (a bad
CSV row named, nothing of its file applied), the served model's running performance on them,
a shadow bundle that runs after the active result and is never sent (Orthanc gets exactly
one SR per study), skipped under a backlog, compared with the active one, then promoted."""

from __future__ import annotations

import csv
from datetime import date, timedelta
from pathlib import Path

import pydicom
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from db import bundles
from db.audit import list_audit
from db.models import utcnow
from db.outcomes import OutcomeError, OutcomeValue, get_outcome, history
from db.shadow import shadow_results
from dicom_node import bundles as lifecycle
from dicom_node import outcomes
from dicom_node.metrics import live_collector
from tests.node.bundles import QUICK, write_random_bundle
from tests.node.peers import Orthanc
from tests.node.process import cli, free_port, write_config
from tests.node.scu import store
from tests.node.test_results import Node
from tests.waiting import wait_for


def _csv(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patient_id", "study_uid", "egfr_status", "date", "source", "subtype"])
        writer.writerows(rows)
    return path


def test_outcomes_import_all_or_nothing_export_and_history(tmp_path: Path, phantom_study) -> None:
    a = phantom_study("axial2d", "seg")
    b = phantom_study("axial2d", "seg", seed=9, patient_index=2, egfr_positive=True)
    config = write_config(tmp_path / "node", free_port())
    assert cli(config, "db", "upgrade").returncode == 0
    for study in (a, b):
        assert cli(config, "import", str(study.folder), "--quiet", timeout=120).returncode == 0
    today = date.today().isoformat()
    patient_a, patient_b = (str(pydicom.dcmread(next(s.folder.rglob("*.dcm")), stop_before_pixels=True).PatientID)
                            for s in (a, b))
    bad = _csv(tmp_path / "bad.csv", [["P1", a.study_uid, "negative", today, "resection", ""],
                                      ["P2", b.study_uid, "maybe", today, "biopsy", ""]])
    done = cli(config, "outcomes", "import", str(bad))
    assert done.returncode == 1 and "line 3" in done.stderr and "nothing of" in done.stderr, done.stderr
    unknown = _csv(tmp_path / "unknown.csv", [[patient_a, a.study_uid, "negative", today, "resection", ""],
                                              ["P9", "1.2.826.0.1.3680043.9.7.99", "positive", today, "resection", ""]])
    done = cli(config, "outcomes", "import", str(unknown))
    assert done.returncode == 1 and "line 3" in done.stderr and "not in this node's archive" in done.stderr
    assert "0 outcomes written" in cli(config, "outcomes", "export", str(tmp_path / "none.csv")).stdout  # nothing applied
    swapped = _csv(tmp_path / "swapped.csv", [[patient_a, a.study_uid, "negative", today, "resection", ""],
                                              [patient_a, b.study_uid, "positive", today, "biopsy", ""]])
    done = cli(config, "outcomes", "import", str(swapped))  # line 3 names a's patient with b's study
    assert done.returncode == 1 and "line 3: the patient ID does not match" in done.stderr, done.stderr
    assert patient_a not in done.stderr and patient_b not in done.stderr
    assert "0 outcomes written" in cli(config, "outcomes", "export", str(tmp_path / "none.csv")).stdout
    good = _csv(tmp_path / "good.csv", [[f" {patient_a.lower()}", a.study_uid, "negative", today, "resection", ""],
                                        ["", b.study_uid, "positive", today, "biopsy", "L858R"]])
    done = cli(config, "outcomes", "import", str(good))
    assert done.returncode == 0 and "2 recorded or changed" in done.stdout, done.stderr
    again = _csv(tmp_path / "again.csv", [[patient_a, a.study_uid, "not assessable", today, "resection", ""]])
    assert cli(config, "outcomes", "import", str(again)).returncode == 0
    assert cli(config, "outcomes", "export", str(tmp_path / "out.csv")).returncode == 0
    with open(tmp_path / "out.csv", newline="") as handle:
        exported = {row["study_uid"]: row for row in csv.DictReader(handle)}
    assert exported[a.study_uid]["egfr_status"] == "not_assessable"
    assert exported[b.study_uid]["subtype"] == "L858R" and exported[b.study_uid]["source"] == "biopsy"
    usage = cli(config, "archive", "usage").stdout
    assert "2 pinned" in usage, usage  # a confirmed case is kept from retention
    from dicom_node.config import load_config
    from dicom_node.store.open import open_runtime

    runtime = open_runtime(load_config(config))
    try:
        with runtime.sessions() as session:
            changes = history(session, a.study_uid)
        assert [c.new["status"] for c in changes] == ["not_assessable", "negative"]  # newest first
        assert changes[0].old["status"] == "negative" and changes[1].old is None and changes[0].via == "import"
        # a refused change is audited (it used to be rolled back with the change it refused)
        with pytest.raises(OutcomeError):
            outcomes.record(runtime.sessions, "1.2.826.0.1.3680043.9.7.404", OutcomeValue("negative", "resection"),
                            user="alice", via="console")
        with runtime.sessions() as session:
            [entry] = [e for e in list_audit(session) if e.user == "alice"]
        assert entry.action == "outcome" and entry.outcome.startswith("refused: ") and "9.7.404" in entry.target
        with pytest.raises(OutcomeError, match="needs the status positive"):
            OutcomeValue("negative", "resection", subtype="L858R")
        with pytest.raises(OutcomeError, match="in the future"):
            OutcomeValue("negative", "resection", date.today() + timedelta(days=2))
    finally:
        runtime.close()


def _send(node: Node, folder: Path) -> None:
    assert set(store(node.scp.port, sorted(str(p) for p in folder.rglob("*.dcm")))) == {0}


def test_running_performance_and_a_shadow_bundle_never_sent(tmp_path: Path, phantom_study) -> None:
    orthanc = Orthanc(tmp_path)
    node = Node(tmp_path, orthanc.dicom_port)  # Orthanc is the node's PACS destination
    try:
        active = node.activate(write_random_bundle(tmp_path / "active", seed=1, name="active-bundle", params=QUICK))
        candidate = lifecycle.set_shadow(node.runtime.sessions, str(write_random_bundle(tmp_path / "candidate", seed=2,
                                                                                        name="candidate", params=QUICK)), user="test")
        studies = [phantom_study("axial2d", "seg", seed=20 + k, patient_index=20 + k, egfr_positive=k % 2 == 0)
                   for k in range(6)]
        jobs = []
        for study in studies[:4]:  # one at a time: no backlog, the shadow runs after each
            node.arrive(study.folder)
            jobs.append(node.worker.claim_once())
        for study in studies[4:]:  # two queued together: the first's shadow is skipped under the backlog
            _send(node, study.folder)
        assert len(node.worker.scan_once(now=utcnow() + timedelta(seconds=10))) == 2
        jobs += [node.worker.claim_once(), node.worker.claim_once()]
        assert [j.state for j in jobs] == ["done"] * 6, [j.reason for j in jobs]
        with node.runtime.sessions() as session:
            shadows = [shadow_results(session, j.id) for j in jobs]
        assert [[s.state for s in rows] for rows in shadows] == [["done"]] * 4 + [["skipped"], ["done"]]
        assert "backlog" in shadows[4][0].reason
        assert shadows[0][0].model_id == candidate.id and shadows[0][0].result["probability"] is not None
        # the shadow's answers are never sent: Orthanc holds one SR (and one card) per study, from the active bundle
        wait_for(lambda: [m for m, _ in orthanc.series_modalities()].count("SR") >= 6, 60, "six SRs at Orthanc", every=0.5)
        modalities = [m for m, _ in orthanc.series_modalities()]
        assert modalities.count("SR") == 6, modalities
        for job in jobs:
            assert job.result["model"]["id"] == active

        # pathology for five of them, a sixth from the primary tumour only (counted apart)
        for k, (study, job) in enumerate(zip(studies, jobs)):
            value = OutcomeValue("positive" if study.egfr_positive else "negative",
                                 "primary_only" if k == 5 else ("resection" if k % 2 else "biopsy"), date.today())
            outcomes.record(node.runtime.sessions, study.study_uid, value, user="pathologist", via="api")
        report = outcomes.performance_of(node.runtime.sessions, active, resamples=200)
        assert report["confirmed"] == {"positive": 3, "negative": 2} and report["not_counted"]["primary_only"] == 1
        assert report["caution"] and "fewer than 10" in report["caution"]
        f = report["figures"]
        assert 0.0 <= f["auc"] <= 1.0 and f["patients"] == 5 and len(f["auc_ci"]) == 2
        assert f["sensitivity"]["count"][1] == 3 and f["specificity"]["count"][1] == 2
        expected = sum(1 for s, j in zip(studies[:5], jobs) if (j.result["status"] == "positive") != s.egfr_positive)
        assert len(report["discordant"]) == expected and all(d["job_id"] in {j.id for j in jobs} for d in report["discordant"])
        # the bundle folder moved away: no invented 0.5, the statuses the node gave, and it says so
        (tmp_path / "active").rename(tmp_path / "active-moved")
        moved = outcomes.performance_of(node.runtime.sessions, active, resamples=200)
        assert "manifest cannot be read" in moved["caution"] and "fewer than 10" in moved["caution"]
        assert moved["figures"]["sensitivity"]["count"] == f["sensitivity"]["count"]
        assert moved["figures"]["specificity"]["count"] == f["specificity"]["count"]
        (tmp_path / "active-moved").rename(tmp_path / "active")
        compared = outcomes.comparison(node.runtime.sessions, active, candidate.id, resamples=200)
        assert compared["cases"] == 4  # the five counted, less the one whose shadow was skipped
        assert compared["paired"] is not None and set(compared["paired"]) >= {"difference", "ci95"}

        registry = CollectorRegistry()
        registry.register(live_collector(node.runtime.archive, node.runtime.sessions))
        page = generate_latest(registry).decode()
        assert f'egfr_node_outcomes_confirmed{{bundle="{active}",class="positive",role="active"}} 3.0' in page
        assert f'egfr_node_shadow_results{{bundle="{candidate.id}",state="skipped"}} 1.0' in page

        promoted = lifecycle.promote(node.runtime.sessions, user="test", force=True)
        with node.runtime.sessions() as session:
            assert bundles.active(session).id == candidate.id == promoted.id and bundles.shadow(session) is None
        with node.runtime.sessions() as session:
            assert get_outcome(session, studies[0].study_uid).updated_by == "pathologist"
    finally:
        node.close()
        orthanc.stop()
