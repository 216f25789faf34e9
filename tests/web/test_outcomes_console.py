"""The site's outcome loop in the console, in headless Chromium (issue 28): a shadow bundle
runs beside the active one; a clinician records pathology on a job page and over the API; a
viewer cannot; a POST without the CSRF token is refused; the history shows the change; the
Performance page shows the confirmed cases, the figures and the active-against-shadow
comparison (its screenshot is the README's picture); the shadow is promoted from the models page."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from db.models import Job, JobState, Study
from db.shadow import shadow_results
from dicom_node import bundles as lifecycle
from dicom_node.web.auth import add_user
from tests.node.bundles import write_random_bundle
from tests.node.scu import store
from tests.web.conftest import ConsoleNode
from tests.web.test_console import ARTIFACTS, click_button, save_whole_page, wait_for_text
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(600)

CLINICIAN, VIEWER, SECRET = "pathologist", "reader", "tissue says 2026"


def _sign_in(here: ConsoleNode, user: str) -> tuple[requests.Session, str]:
    session = requests.Session()
    answer = session.post(here.url + "/api/session", json={"user": user, "password": SECRET}, timeout=30)
    answer.raise_for_status()
    return session, answer.json()["csrf_token"]


def _done_job(here: ConsoleNode, study_uid: str, timeout: float = 120) -> int:
    """The study's done job, once its shadow result is stored too."""
    def done_with_shadow() -> int | None:
        with here.runtime.sessions() as session:
            job = session.scalars(select(Job).join(Study).where(Study.study_uid == study_uid, Job.state == JobState.DONE)
                                  .order_by(Job.id.desc())).first()
            return job.id if job is not None and shadow_results(session, job.id) else None

    return wait_for(done_with_shadow, timeout, f"study {study_uid}: a done job with its shadow result", every=0.5)


def test_a_clinician_records_pathology_and_the_performance_page_shows_how_the_node_did(
        console_node: ConsoleNode, browser, phantom_study) -> None:  # noqa: ANN001
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    here = console_node
    ARTIFACTS.mkdir(exist_ok=True)
    add_user(here.config.web_users_path, CLINICIAN, SECRET, "clinician")
    add_user(here.config.web_users_path, VIEWER, SECRET, "viewer")
    shadow = lifecycle.set_shadow(here.runtime.sessions, str(write_random_bundle(here.tmp / "bundle-shadow", seed=5,
                                                                                   version="3.0.0-candidate")),
                                  user="oncall")
    studies = [phantom_study("axial2d", "seg", seed=40 + k, patient_index=40 + k, egfr_positive=k < 2) for k in range(4)]
    jobs = {}
    for study in studies:  # one at a time: no backlog, so the shadow runs after each
        assert set(store(here.node.port, sorted(str(p) for p in study.folder.rglob("*.dcm")))) == {0}
        jobs[study.study_uid] = _done_job(here, study.study_uid)

    # The clinician records the first study's pathology on its job page, then corrects it.
    first = studies[0]
    browser.get(here.url + "/login")
    browser.find_element(By.NAME, "user").send_keys(CLINICIAN)
    browser.find_element(By.NAME, "password").send_keys(SECRET)
    click_button(browser, "Sign in")
    wait_for_text(browser, "Queue", where="h1")
    browser.get(here.url + f"/jobs/{jobs[first.study_uid]}")
    wait_for_text(browser, "Shadow bundle (stored, never sent)", where="#shadow")
    assert "shadow: EGFR" in browser.find_element(By.ID, "shadow").text
    assert not [b for b in browser.find_elements(By.CSS_SELECTOR, "main button") if b.text in ("Replay", "Rerun")]
    for status in ("negative", "positive"):
        Select(browser.find_element(By.NAME, "status")).select_by_value(status)
        Select(browser.find_element(By.NAME, "source")).select_by_value("resection")
        browser.find_element(By.NAME, "date").send_keys(date.today().strftime("%m%d%Y"))
        click_button(browser, "Record outcome")
        wait_for_text(browser, f"outcome recorded: EGFR {status}", where=".flash")
    history = browser.find_element(By.ID, "outcome-history").text
    assert history.count(CLINICIAN) == 2 and "negative (resection)" in history and "positive (resection)" in history

    # The other three over the API, as the clinician; the viewer may read but not record.
    clinician, token = _sign_in(here, CLINICIAN)
    for study in studies[1:]:
        body = {"status": "positive" if study.egfr_positive else "negative", "source": "biopsy",
                "date": date.today().isoformat()}
        answer = clinician.put(here.url + f"/api/studies/{study.study_uid}/outcome", json=body,
                               headers={"X-CSRF-Token": token}, timeout=30)
        assert answer.status_code == 200 and answer.json()["changed"], answer.text
    forged = clinician.put(here.url + f"/api/studies/{first.study_uid}/outcome", json={"status": "negative",
                           "source": "biopsy"}, timeout=30)
    assert forged.status_code == 403 and "CSRF" in forged.json()["detail"]
    viewer, viewer_token = _sign_in(here, VIEWER)
    refused = viewer.put(here.url + f"/api/studies/{first.study_uid}/outcome", json={"status": "negative",
                         "source": "biopsy"}, headers={"X-CSRF-Token": viewer_token}, timeout=30)
    assert refused.status_code == 403 and "viewer" in refused.json()["detail"]
    form = viewer.post(here.url + f"/studies/{first.study_uid}/outcome", data={"status": "negative", "source": "biopsy",
                                                                              "csrf_token": viewer_token}, timeout=30)
    assert form.status_code == 403
    assert "Record outcome" not in viewer.get(here.url + f"/jobs/{jobs[first.study_uid]}", timeout=30).text
    shown = viewer.get(here.url + f"/api/studies/{first.study_uid}/outcome", timeout=30).json()
    assert shown["outcome"]["status"] == "positive" and [c["new"]["status"] for c in shown["history"]] == [
        "positive", "negative"]

    # The Performance page: the active bundle on the four confirmed cases, against the shadow.
    performance = clinician.get(here.url + "/api/performance", timeout=60).json()
    assert performance["confirmed"] == {"positive": 2, "negative": 2}
    assert performance["caution"] and performance["figures"]["patients"] == 4
    assert performance["comparison"]["b"] == shadow.id and performance["comparison"]["cases"] == 4
    browser.get(here.url + "/performance")
    confirmed = wait_for_text(browser, "Confirmed cases", where="#confirmed")
    assert "2 EGFR positive, 2 negative" in confirmed
    assert "fewer than 10 confirmed cases" in browser.find_element(By.ID, "caution").text
    assert "ROC AUC" in browser.find_element(By.ID, "figures").text
    assert browser.find_element(By.ID, "reliability").get_attribute("src").startswith("data:image/png;base64,")
    assert "paired bootstrap" in browser.find_element(By.ID, "paired").text
    save_whole_page(browser, ARTIFACTS / "performance.png")

    # An admin promotes the shadow (random folds: its guards refuse it; forced, audited).
    session, csrf = here.signed_in()
    promoted = session.post(here.url + "/api/models/promote?force=true", headers={"X-CSRF-Token": csrf}, timeout=60)
    assert promoted.status_code == 200 and "FORCED despite" in promoted.json()["outcome"], promoted.text
    bundles = {b["id"]: b for b in session.get(here.url + "/api/models", timeout=30).json()["bundles"]}
    assert bundles[shadow.id]["active"] and not bundles[shadow.id]["shadow"]
    audit = session.get(here.url + "/api/audit", timeout=30).json()
    actions = [entry["action"] for entry in audit["audit"]]
    assert "outcome" in actions and "activate --force" in actions and "shadow" in actions


def test_a_user_without_a_role_in_the_file_is_an_admin(tmp_path: Path) -> None:
    """Users written before roles (``name:scrypt$...``) stay admins; a bad role names the line."""
    from dicom_node.web.auth import Users, UsersFileError, hash_password, read_users

    path = tmp_path / "users"
    path.write_text(f"old:{hash_password('long enough')}\nnew:viewer:{hash_password('long enough')}\n")
    users = Users(path)
    assert users.role("old") == "admin" and users.role("new") == "viewer" and users.check("new", "long enough")
    path.write_text(f"x:superuser:{hash_password('long enough')}\n")
    with pytest.raises(UsersFileError, match="line 1: role 'superuser'"):
        read_users(path)
