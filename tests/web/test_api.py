"""The console's guard and its API, over HTTP: refusals (wrong password, no session, no CSRF
token) change nothing; every route the OpenAPI document lists answers."""

from __future__ import annotations

import re

import requests

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


def test_every_documented_route_answers(console_node: ConsoleNode) -> None:
    here = console_node
    session, csrf = here.signed_in()
    spec = session.get(here.url + "/api/openapi.json", timeout=30).json()
    ids = {"job_id": "1", "model_id": "1", "study_uid": "1.2.826.0.1.3680043.8.498.1", "name": "pacs"}
    documented = [(path, method) for path, item in spec["paths"].items() for method in item]
    assert len(documented) >= 20, documented
    for path, method in documented:
        url = here.url + re.sub(r"\{(\w+)\}", lambda m: ids[m.group(1)], path)
        if method == "get":
            answer = session.get(url, timeout=60)
            # job 1 and bundle 1 exist once the browser test ran; a route that knows the thing answers 200
            assert answer.status_code in (200, 404), (path, answer.status_code, answer.text[:300])
            if answer.status_code == 404:
                assert answer.json()["detail"].startswith(("no job", "no model bundle", "job ")), (path, answer.text)
        else:
            # every action route is guarded: without the token it answers 403, not 404 or 500
            answer = session.request(method.upper(), url, json={} if method == "post" else None, timeout=60)
            expected = 422 if path == "/api/session" and method == "post" else 403  # sign-in needs a body, not a token
            assert answer.status_code == expected, (path, method, answer.status_code, answer.text[:300])
    health = session.get(here.url + "/api/health", timeout=30).json()
    assert health["database"] is True and 0 < health["used_percent"] < 100 and health["deleted_studies"] == 0
    metrics = session.get(here.url + "/api/metrics", timeout=30).text
    assert "egfr_node_jobs" in metrics and "egfr_node_archive_free_bytes" in metrics
