"""The console's guard and its API, over HTTP: refusals (wrong password, no session, no CSRF
token) change nothing; every route the OpenAPI document lists answers, each about a job, study,
bundle and destination that exists.

It sends a study of its own to the package's node, so it runs after the console tests, which
follow the first study the node receives (pytest collects the package's files by name)."""

from __future__ import annotations

import re

import requests
from sqlalchemy import select

from db.models import Job, JobState, Study
from tests.node.scu import store
from tests.waiting import wait_for
from tests.web.conftest import PASSWORD, USER, ConsoleNode


def _jobs(here: ConsoleNode) -> list[dict]:
    session, _ = here.signed_in()
    return session.get(here.url + "/api/jobs?limit=500", timeout=30).json()["jobs"]


def _actions(here: ConsoleNode) -> list[dict]:
    session, _ = here.signed_in()
    return [e for e in session.get(here.url + "/api/audit", timeout=30).json()["audit"] if e["action"] != "sign-in"]


def test_wrong_password_no_session_and_no_csrf_token_are_refused_and_change_nothing(console_node: ConsoleNode) -> None:
    here = console_node
    anonymous = requests.Session()
    wrong = anonymous.post(here.url + "/api/session", json={"user": USER, "password": PASSWORD + "x"}, timeout=30)
    assert wrong.status_code == 401 and "wrong user or password" in wrong.json()["detail"]
    unknown = anonymous.post(here.url + "/api/session", json={"user": "nobody", "password": PASSWORD}, timeout=30)
    assert unknown.status_code == 401
    form = anonymous.post(here.url + "/login", data={"user": USER, "password": "guess"}, timeout=30)
    assert form.status_code == 403  # no CSRF token from the sign-in page: refused before the password is checked

    before = _jobs(here)
    audit_before = _actions(here)
    assert anonymous.get(here.url + "/api/jobs", timeout=30).status_code == 401
    assert anonymous.post(here.url + "/api/studies/1.2.3/replay", timeout=30).status_code == 401
    page = anonymous.post(here.url + "/models/activate", data={"key": "1"}, allow_redirects=False, timeout=30)
    assert page.status_code == 303 and page.headers["location"].startswith("/login")
    assert anonymous.get(here.url + "/api/openapi.json", timeout=30).status_code == 401

    session, csrf = here.signed_in()
    active = [b["id"] for b in session.get(here.url + "/api/models", timeout=30).json()["bundles"] if b["active"]]
    for headers in ({}, {"X-CSRF-Token": "forged"}):
        refused = session.post(here.url + "/api/models/1/activate", headers=headers, timeout=30)
        assert refused.status_code == 403 and "CSRF" in refused.json()["detail"], refused.text
        refused = session.post(here.url + "/api/studies/1.2.3/replay?rerun=true", headers=headers, timeout=30)
        assert refused.status_code == 403
    form = session.post(here.url + "/models/activate", data={"key": "1", "csrf_token": "forged"}, timeout=30)
    assert form.status_code == 403
    assert [b["id"] for b in session.get(here.url + "/api/models", timeout=30).json()["bundles"] if b["active"]] == active
    assert _jobs(here) == before
    assert _actions(here) == audit_before  # nothing was done, so nothing is audited but the sign-ins

    cancel = session.post(here.url + "/api/jobs/999999/cancel", headers={"X-CSRF-Token": csrf}, timeout=30)
    assert cancel.status_code == 404 and cancel.json()["detail"] == "no job 999999"
    signed = session.get(here.url + "/api/session", timeout=30).json()
    assert signed["user"] == USER and signed["csrf_token"] == csrf


def _done_job(here: ConsoleNode, study_uid: str, timeout: float = 120) -> int:
    with here.runtime.sessions() as session:
        job = session.scalars(select(Job).join(Study).where(Study.study_uid == study_uid, Job.state == JobState.DONE)
                              .order_by(Job.id.desc())).first()
    return job.id if job is not None else 0


def test_every_documented_route_answers(console_node: ConsoleNode, phantom_study) -> None:
    here = console_node
    # a study of its own, answered: every route about a job, a study, a bundle or a destination
    # has the thing it names, and must answer 200 (a 404 would hide a broken route)
    study = phantom_study("axial2d", "seg", seed=77, patient_index=77)
    assert set(store(here.node.port, sorted(str(p) for p in study.folder.rglob("*.dcm")))) == {0}
    job_id = wait_for(lambda: _done_job(here, study.study_uid), 180, f"study {study.study_uid} answered")
    session, csrf = here.signed_in()
    spec = session.get(here.url + "/api/openapi.json", timeout=30).json()
    ids = {"job_id": str(job_id), "model_id": "1", "study_uid": study.study_uid, "name": "pacs"}
    documented = [(path, method) for path, item in spec["paths"].items() for method in item]
    assert len(documented) >= 20, documented
    for path, method in documented:
        url = here.url + re.sub(r"\{(\w+)\}", lambda m: ids[m.group(1)], path)
        if method == "get":
            answer = session.get(url, timeout=60)
            assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
        else:
            # every action route is guarded: without the token it answers 403, not 404 or 500
            answer = session.request(method.upper(), url, json={} if method == "post" else None, timeout=60)
            expected = 422 if path == "/api/session" and method == "post" else 403  # sign-in needs a body, not a token
            assert answer.status_code == expected, (path, method, answer.status_code, answer.text[:300])
    for page in ("/api/models/1", "/models/1"):  # the training patients' IDs stay in the bundle
        shown = session.get(here.url + page, timeout=30)
        assert shown.status_code == 200 and "MRN-0042" not in shown.text and "1 patients" in shown.text, page
    health = session.get(here.url + "/api/health", timeout=30).json()
    assert health["database"] is True and 0 < health["used_percent"] < 100 and health["deleted_studies"] == 0
    metrics = session.get(here.url + "/api/metrics", timeout=30).text
    assert "egfr_node_jobs" in metrics and "egfr_node_archive_free_bytes" in metrics
