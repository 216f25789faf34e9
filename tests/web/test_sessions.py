"""Sessions that end and guesses that stop (issue 29 item 3): a cookie kept after sign-out, a
password change or the user's removal opens nothing; an idle or too old session ends; 20
parallel wrong passwords are not all checked, the right one is then refused too, until an
admin lifts the lock-out from the shell (audited)."""

from __future__ import annotations

import contextlib
import io
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import requests

from db.console_sessions import check_session, start_session
from db.models import utcnow
from dicom_node.cli import main as cli
from dicom_node.web.auth import add_user, remove_user
from tests.web.conftest import ConsoleNode
from tests.web.test_console import write_config

pytestmark = pytest.mark.timeout(600)

SECRET = "correct horse battery"


def _sign_in(here: ConsoleNode, user: str, password: str = SECRET) -> requests.Response:
    session = requests.Session()
    answer = session.post(here.url + "/api/session", json={"user": user, "password": password}, timeout=60)
    answer.session = session  # type: ignore[attr-defined]
    return answer


def test_a_kept_cookie_opens_nothing_after_sign_out_a_password_change_or_removal(console_node: ConsoleNode) -> None:
    here = console_node
    add_user(here.config.web_users_path, "leaver", SECRET, "viewer")
    for end in ("sign-out", "password", "removal"):
        signed = _sign_in(here, "leaver")
        assert signed.status_code == 200, signed.text
        session = signed.session  # type: ignore[attr-defined]
        kept = requests.Session()
        kept.cookies.update(session.cookies)  # what an attacker copied
        assert kept.get(here.url + "/api/jobs", timeout=30).status_code == 200
        if end == "sign-out":
            out = session.delete(here.url + "/api/session", headers={"X-CSRF-Token": signed.json()["csrf_token"]},
                                 timeout=30)
            assert out.status_code == 200
        elif end == "password":
            add_user(here.config.web_users_path, "leaver", SECRET + " 2")
            add_user(here.config.web_users_path, "leaver", SECRET)  # and back: a session begun before stays ended
        else:
            remove_user(here.config.web_users_path, "leaver")
        assert kept.get(here.url + "/api/jobs", timeout=30).status_code == 401, end
        if end == "removal":
            break


def test_an_idle_or_too_old_session_ends(console_node: ConsoleNode) -> None:
    sessions = console_node.runtime.sessions
    then = utcnow() - timedelta(hours=1)
    with sessions.begin() as session:
        token = start_session(session, "someone", "stamp", now=then)
    with sessions.begin() as session:
        assert check_session(session, token, "someone", "stamp", idle=timedelta(minutes=30), max_age=timedelta(hours=8)) \
            == "session ended (idle)"
    with sessions.begin() as session:
        fresh = start_session(session, "someone", "stamp", now=utcnow() - timedelta(hours=9))
    with sessions.begin() as session:
        assert check_session(session, fresh, "someone", "stamp", idle=timedelta(days=1), max_age=timedelta(hours=8)) \
            == "session ended (expired)"


def test_parallel_guesses_lock_the_user_out_until_an_admin_lifts_it(console_node: ConsoleNode) -> None:
    here = console_node
    add_user(here.config.web_users_path, "target", SECRET, "admin")
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda i: _sign_in(here, "target", f"guess number {i}").status_code, range(20)))
    limit = here.config.web.login_max_failures
    assert answers.count(401) <= limit and answers.count(429) >= 20 - limit and set(answers) <= {401, 429}, answers
    refused = _sign_in(here, "target")  # the right password, now
    assert refused.status_code == 429 and "too many failed sign-ins" in refused.json()["detail"]
    assert int(refused.headers["Retry-After"]) >= 1
    config = write_config(here)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli(["--config", str(config), "web", "unlock", "target"]) == 0
    assert "lock-out lifted" in out.getvalue()
    assert _sign_in(here, "target").status_code == 200
    session, _ = here.signed_in()
    actions = [(e["action"], e["target"]) for e in session.get(here.url + "/api/audit", timeout=30).json()["audit"]]
    assert ("lockout", "user:target") in actions and ("unlock", "target") in actions
