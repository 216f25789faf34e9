"""``egfr-node models activate`` refuses what should not answer for patients (issue 27, item 5),
with a one-line reason each: a shuffled-label control, a frozen body of random filters, a
decision threshold outside [0.05, 0.95], a cross-validated AUC whose 95 % CI does not exclude
chance. ``--force`` activates it anyway: audited, shown by ``models list``, and said in the
SR the bundle then writes."""

from __future__ import annotations

from pathlib import Path

from pynetdicom.sop_class import Comprehensive3DSRStorage

from db.audit import list_audit
from pipeline.model.bundle import Manifest
from tests.node.bundles import write_random_bundle
from tests.node.peers import PynetdicomPacs
from tests.node.process import cli, free_port, write_config
from tests.node.sr_text import sr_texts
from tests.node.test_results import Node

MEASURED = {"pooled_patient_auc": 0.9, "pooled_patient_auc_ci95": [0.8, 0.97]}
CASES = {
    "shuffled": ({"training": {"data": {"labels_shuffled": True}}, "metrics": MEASURED}, "trained on shuffled labels"),
    "frozen": ({"training": {"settings": {"freeze_body": True}, "pretrained": False}, "metrics": MEASURED},
               "a frozen body of random filters"),
    "threshold": ({"threshold": 0.01, "metrics": MEASURED}, "decision threshold 0.01"),
    "chance": ({"metrics": {"pooled_patient_auc": 0.61, "pooled_patient_auc_ci95": [0.45, 0.77]}},
               "lower bound is below 0.5"),
}


def test_each_kind_is_refused_with_its_reason_and_force_activates_it_audited(tmp_path: Path) -> None:
    config = write_config(tmp_path / "node", free_port())
    assert cli(config, "db", "upgrade").returncode == 0
    for kind, (options, reason) in CASES.items():
        bundle = write_random_bundle(tmp_path / kind, **options)
        refused = cli(config, "models", "activate", str(bundle), timeout=120)
        assert refused.returncode == 1 and reason in refused.stderr and "--force" in refused.stderr, refused.stderr
        # this one reason, on a line of its own
        assert [line for line in refused.stderr.splitlines() if line.startswith("  - ")] == [
            line for line in refused.stderr.splitlines() if reason in line], refused.stderr
    listed = cli(config, "models", "list").stdout
    assert "yes" not in listed and len(listed.splitlines()) == 1 + len(CASES)  # registered (checked), none active
    reason = CASES["chance"][1]
    forced = cli(config, "models", "activate", "4", "--force", timeout=120)
    assert forced.returncode == 0 and "FORCED despite: " in forced.stdout and reason in forced.stdout, forced.stderr
    listed = cli(config, "models", "list").stdout
    assert "yes!" in listed and "despite: " in listed and reason in listed
    from dicom_node.config import load_config
    from dicom_node.store.open import open_runtime

    runtime = open_runtime(load_config(config))
    try:
        with runtime.sessions() as session:
            rows = list_audit(session)
    finally:
        runtime.close()
    assert [r.action for r in rows] == ["activate --force"] + ["activate"] * len(CASES)
    assert rows[0].outcome.startswith("bundle 4") and reason in rows[0].outcome and rows[0].user.startswith("shell")
    assert all(r.outcome.startswith("refused") for r in rows[1:])


def test_the_threshold_guard_holds_both_ends_of_its_range(tmp_path: Path) -> None:
    """[0.05, 0.95] inclusive: a threshold just above the top refuses as one just below the bottom."""
    concerns = {threshold: Manifest.read(write_random_bundle(tmp_path / str(threshold), threshold=threshold,
                                                             metrics=MEASURED)).activation_concerns()
                for threshold in (0.04, 0.05, 0.5, 0.95, 0.96)}
    assert concerns[0.05] == concerns[0.5] == concerns[0.95] == []
    for threshold in (0.04, 0.96):
        [reason] = concerns[threshold]
        assert reason.startswith(f"decision threshold {threshold:g} on the ") and "outside [0.05, 0.95]" in reason


def test_a_measured_bundle_activates_without_force(tmp_path: Path) -> None:
    config = write_config(tmp_path / "node", free_port())
    assert cli(config, "db", "upgrade").returncode == 0
    bundle = write_random_bundle(tmp_path / "bundle", threshold=0.3, metrics=MEASURED)
    done = cli(config, "models", "activate", str(bundle), timeout=120)
    assert done.returncode == 0 and "FORCED" not in done.stdout, done.stderr


def test_the_sr_of_a_forced_bundle_says_what_it_was_activated_despite(tmp_path: Path, phantom_study) -> None:
    pacs = PynetdicomPacs(tmp_path / "pacs")
    node = Node(tmp_path, pacs.port)
    try:
        node.activate(write_random_bundle(tmp_path / "bundle", **CASES["chance"][0]))
        node.arrive(phantom_study("axial2d", "seg").folder)
        job = node.worker.claim_once()
        assert job.state == "done", job.reason
        [sr] = pacs.of_class(Comprehensive3DSRStorage)
        texts = sr_texts(sr)
        assert any(t.startswith("activated despite: cross-validated AUC 0.61 (95% CI 0.45-0.77)") for t in texts), texts
        assert "cross-validated AUC: 0.61 (95% CI 0.45-0.77), out of fold, internal validation only" in texts
        assert "bias field correction (N4): on" in texts and "crop size: 32 px, slices: 5" in texts
        assert any(t.startswith("calibration: none") for t in texts)
    finally:
        node.close()
        pacs.stop()

