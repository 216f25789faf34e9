"""Every route of the console's OpenAPI document with hostile values (issue 29 item 6): ids out
of any range, negative, zero, non-numeric, path tricks, control characters, huge strings, and
bodies that are not what the route reads. No answer is a 500 (no traceback in the log); an id
that cannot exist is a 404."""

from __future__ import annotations

import re

import pytest

from tests.web.conftest import ConsoleNode

pytestmark = pytest.mark.timeout(600)

HOSTILE = ["99999999999999999999999", "-1", "0", "2147483648", "abc", "..%2F..%2Fetc%2Fpasswd", "%00", "1.2.%0a3",
           "x" * 1500, "%3Cscript%3E", "1e309", "NaN"]
BODIES = [None, b"\x00\xff not json", b"[]", b"{\"path\": null, \"status\": 7, \"source\": {}}", b"{" * 2000]


def test_every_route_answers_hostile_values_without_a_server_error(console_node: ConsoleNode) -> None:
    here = console_node
    session, csrf = here.signed_in()
    document = session.get(here.url + "/api/openapi.json", timeout=30).json()
    headers = {"X-CSRF-Token": csrf, "Content-Type": "application/json"}
    tried, failures = 0, []
    for path, methods in document["paths"].items():
        if path == "/api/session":
            continue  # signing in and out is the auth tests' (and would end this session)
        for method, operation in methods.items():
            names = re.findall(r"{(\w+)}", path)
            queries = [p["name"] for p in operation.get("parameters", []) if p["in"] == "query"]
            for value in HOSTILE:
                url = here.url + re.sub(r"{\w+}", value, path)
                params = {name: value for name in queries}
                for body in (BODIES if "requestBody" in operation else [None]):
                    answer = session.request(method.upper(), url, params=params, data=body, headers=headers, timeout=60)
                    tried += 1
                    if answer.status_code >= 500:
                        failures.append(f"{method.upper()} {url[:120]} -> {answer.status_code} {answer.text[:200]}")
            if names and "99999999999999999999999" not in str(names):
                answer = session.request(method.upper(), here.url + re.sub(r"{\w+}", "99999999999999999999999", path),
                                         headers=headers, data=b"{}", timeout=60)
                if any(n.endswith("_id") for n in names):
                    assert answer.status_code == 404, (path, method, answer.status_code, answer.text)
    assert tried > 100 and failures == [], failures[:10]
    card = session.get(here.url + "/api/jobs/99999999999999999999999/card.png", timeout=30)
    assert card.status_code == 404 and "not found" in card.json()["detail"]
    page = session.get(here.url + "/jobs/99999999999999999999999", timeout=30)
    assert page.status_code == 404


def test_pages_answer_hostile_values_without_a_server_error(console_node: ConsoleNode) -> None:
    here = console_node
    session, _ = here.signed_in()
    for path in ("/jobs/{v}", "/models/{v}", "/studies/{v}", "/queue?page={v}", "/studies?page={v}",
                 "/performance?bundle={v}", "/queue/rows?page={v}&state={v}"):
        for value in HOSTILE:
            answer = session.get(here.url + path.format(v=value), timeout=60)
            assert answer.status_code < 500, (path, value, answer.status_code)
