"""What the admin on call does in the console, in headless Chromium: sign in, watch a study
go from waiting to done after a C-STORE, open its job and find the crops and the probability
``queue show`` reports, see a failed delivery's reason, rerun the study and find one more SR
at the PACS, activate a second bundle, and find it all in the audit trail. Screenshots of
the queue and job pages go to ``tests/web/artifacts/`` (the README's pictures come from here).
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
from pathlib import Path
from typing import Any, Callable

import pytest

from dicom_node.cli import main as cli
from tests.conftest import require_tool
from tests.node.bundles import write_random_bundle
from tests.web.conftest import PASSWORD, USER, ConsoleNode
from tests.waiting import save_screenshot_when_still, wait_for

pytestmark = pytest.mark.timeout(600)

ARTIFACTS = Path(__file__).with_name("artifacts")


def page_text(browser) -> str:  # noqa: ANN001
    return browser.execute_script("return document.body ? document.body.innerText : ''") or ""


def wait_for_text(browser, text: str, timeout: float = 60.0, where: str = "body") -> str:  # noqa: ANN001
    from selenium.webdriver.common.by import By

    seen = [""]

    def shown() -> str:
        with contextlib.suppress(Exception):  # the element is replaced while the page refreshes
            seen[0] = browser.find_element(By.CSS_SELECTOR, where).text
        return seen[0] if text in seen[0] else ""

    try:
        return wait_for(shown, timeout, f"{text!r} in {where}", every=0.25)
    except AssertionError:
        raise AssertionError(f"{text!r} not in {where} within {timeout:g} s; it says: {seen[0][-1500:]}") from None


def click_found(find: Callable[[], Any], timeout: float = 10.0) -> None:
    """Click what ``find()`` returns. The console's pages refresh parts of themselves in place, so
    the element found may be replaced before the click reaches it (selenium's
    StaleElementReferenceException, raised before any click is dispatched): found again."""
    from selenium.common.exceptions import StaleElementReferenceException

    def clicked() -> bool:
        try:
            find().click()
        except StaleElementReferenceException:
            return False
        return True

    wait_for(clicked, timeout, "a click on an element the page kept replacing")


def click_button(browser, label: str, within: str = "main") -> None:  # noqa: ANN001
    from selenium.webdriver.common.by import By

    def button() -> Any:
        (found,) = [b for b in browser.find_elements(By.CSS_SELECTOR, f"{within} button") if b.text.strip() == label]
        return found

    click_found(button)


def save_whole_page(browser, path: Path) -> None:  # noqa: ANN001
    """A screenshot of the whole page (the window grown to its height), then the window as it was."""
    size = browser.get_window_size()
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(size["width"], max(size["height"], min(int(height) + 140, 4000)))
    save_screenshot_when_still(browser, path)
    browser.set_window_size(size["width"], size["height"])


def queue_show(config_path: Path, job_id: int) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli(["--config", str(config_path), "queue", "show", str(job_id)]) == 0
    return json.loads(out.getvalue())


def write_config(here: ConsoleNode) -> Path:
    """The node's configuration as a file, for the CLI beside the console."""
    path = here.tmp / "egfr-node.toml"
    if not path.exists():
        path.write_text(f'[storage]\ndata_dir = "{here.config.storage.data_dir}"\nfree_space_reserve_mb = 0\n')
    return path


def sr_count(here: ConsoleNode) -> int:
    """SR instances the PACS holds."""
    return sum(len(series["Instances"]) for study in here.orthanc.get("/studies")
               for series in here.orthanc.get(f"/studies/{study}/series")
               if series["MainDicomTags"].get("Modality") == "SR")


def test_an_admin_follows_a_study_from_arrival_to_result_and_steers_it(console_node: ConsoleNode, browser,
                                                                         phantom_study) -> None:
    from selenium.webdriver.common.by import By

    here = console_node
    ARTIFACTS.mkdir(exist_ok=True)
    study = phantom_study("axial2d", "rtstruct")

    # Not signed in: the sign-in page; a wrong password is refused.
    browser.get(here.url + "/queue")
    wait_for_text(browser, "Sign in", where="h1")
    browser.find_element(By.NAME, "user").send_keys(USER)
    browser.find_element(By.NAME, "password").send_keys("not the password")
    click_button(browser, "Sign in")
    wait_for_text(browser, "Wrong user or password")
    browser.find_element(By.NAME, "user").send_keys(USER)
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    click_button(browser, "Sign in")
    wait_for_text(browser, "Queue", where="h1")
    health = wait_for_text(browser, "SCP listening", where="#health")
    assert "studies deleted by retention" in health and "high watermark 90 %" in health, health

    # PACS sends the study; the page refreshes itself: waiting, then done.
    files = sorted(study.folder.rglob("*.dcm"))
    sent = subprocess.run([require_tool("storescu"), "-aec", "EGFR_NODE", "127.0.0.1", str(here.node.port),
                           *map(str, files)], capture_output=True, text=True, timeout=120)
    assert sent.returncode == 0, sent.stderr[-2000:]
    rows = wait_for_text(browser, "waiting", 30, where="#job-rows")
    assert study.study_uid in rows
    rows = wait_for_text(browser, "EGFR ", 180, where="#job-rows")
    assert "done" in rows, rows
    assert browser.execute_script("return document.body.dataset.refreshedAt"), "the queue page did not refresh in place"
    save_screenshot_when_still(browser, ARTIFACTS / "console-queue.png")

    # The job page: the probability queue show reports, the crops image, the failed delivery's reason.
    shown = queue_show(write_config(here), 1)
    click_found(lambda: browser.find_element(By.LINK_TEXT, "1"))  # in the rows the page refreshes
    wait_for_text(browser, "Job 1", where="h1")
    assert browser.find_element(By.ID, "probability").text == f"{shown['result']['probability']:.3f}"
    answer = browser.find_element(By.ID, "answer").text
    assert f"EGFR mutation {shown['result']['status'].upper()}" in answer
    assert "Research use only" in answer
    assert f"ID {study.patient_id}" in browser.find_element(By.CSS_SELECTOR, ".patient").text
    card = browser.find_element(By.ID, "card")
    assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", card) > 100
    assert browser.find_elements(By.CSS_SELECTOR, ".plot svg polyline"), "no per-slice score plot"
    deliveries = wait_for_text(browser, "offline", 30, where="#deliveries")
    failed = [d for d in shown["deliveries"] if d["destination"] == "offline"]
    assert failed and all(d["state"] == "failed" for d in failed), shown["deliveries"]
    assert failed[0]["last_error"] in deliveries
    assert "sent" in deliveries  # the PACS got its copy
    save_whole_page(browser, ARTIFACTS / "console-job.png")
    wait_for_text(browser, "delivery", 10, where="#last-error")

    # Rerun: a new job, and one more SR at the PACS.
    before = sr_count(here)
    assert before >= 1
    click_button(browser, "Rerun")
    wait_for_text(browser, "Job 2", where="h1")
    assert "queued (replay of job 1)" in page_text(browser)
    wait_for(lambda: queue_show(write_config(here), 2)["state"] == "done" and sr_count(here) >= before + 1, 180,
             "the rerun's job done and its SR at the PACS", every=1)
    assert sr_count(here) == before + 1

    # A second bundle, activated from the models page: its random weights were never measured, so
    # the guards refuse it with the reason; ticking "despite its guards" activates it, shown as forced.
    second = write_random_bundle(here.tmp / "bundle-2", seed=1, version="2.0.0")
    browser.get(here.url + "/models")
    browser.find_element(By.CSS_SELECTOR, "form.activate input[name=key]").send_keys(str(second))
    click_button(browser, "Check and activate")
    flash = wait_for_text(browser, "refused", 60, where=".flash")
    assert "no cross-validated AUC recorded" in flash and "--force" in flash
    browser.find_element(By.CSS_SELECTOR, "form.activate input[name=key]").send_keys("2")
    browser.find_element(By.CSS_SELECTOR, "form.activate input[name=force]").click()
    click_button(browser, "Check and activate")
    flash = wait_for_text(browser, "active", 60, where=".flash")
    assert "2.0.0" in flash and "FORCED despite: no cross-validated AUC recorded" in flash
    assert "active" in browser.find_element(By.ID, "bundle-2").text and "forced" in browser.find_element(By.ID, "bundle-2").text
    assert "active" not in browser.find_element(By.ID, "bundle-1").text

    # The destinations page says why the offline one fails; everything done is audited.
    browser.get(here.url + "/destinations")
    assert failed[0]["last_error"] in browser.find_element(By.ID, "destination-offline").text
    browser.get(here.url + "/audit")
    audit = page_text(browser)
    assert f"{USER}" in audit and "rerun" in audit and "activate --force" in audit
    assert "refused: wrong user or password" in audit
    assert study.patient_id and study.patient_id not in audit  # patient data only on a signed-in job page
