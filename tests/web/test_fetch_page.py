"""The Fetch page as the admin sees it, in headless Chromium: a search by accession number on
the node's source (Orthanc) lists the study with its series and a "Fetch and predict" button,
and no patient name. Screenshot to tests/web/artifacts/ (the README's picture). Only the
search runs here (the fetch itself, and its audit, are tests/node/test_fetch.py's)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from selenium.webdriver.common.by import By

from tests.web.conftest import PASSWORD, USER, ConsoleNode
from tests.web.test_console import ARTIFACTS, click_button, page_text, save_whole_page, wait_for_text

pytestmark = pytest.mark.timeout(300)


def test_the_fetch_page_finds_a_study_by_accession_without_naming_the_patient(console_node: ConsoleNode, browser,
                                                                              phantom_study) -> None:
    here = console_node
    study = phantom_study("axial2d", "seg", seed=91, patient_index=91)
    files = sorted(Path(study.folder).rglob("*.dcm"))
    for file in files:
        here.orthanc.upload(file)
    first = dcmread(files[0], stop_before_pixels=True)

    browser.get(here.url + "/fetch")
    wait_for_text(browser, "Sign in", where="h1")
    browser.find_element(By.NAME, "user").send_keys(USER)
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    click_button(browser, "Sign in")
    wait_for_text(browser, "Fetch and predict", where="h1")
    browser.find_element(By.NAME, "accession").send_keys(str(first.AccessionNumber))
    click_button(browser, "Search")
    wait_for_text(browser, str(first.StudyInstanceUID), where="table.fetch-results")
    text = page_text(browser)
    assert str(first.AccessionNumber) in text and "MR×" in text and "SEG×1" in text
    assert str(first.PatientName) not in text and str(first.PatientID) not in text
    assert [b.text for b in browser.find_elements(By.CSS_SELECTOR, "table.fetch-results button")] == ["Fetch and predict"]
    ARTIFACTS.mkdir(exist_ok=True)
    save_whole_page(browser, ARTIFACTS / "console-fetch.png")
    # the search was audited without its keys
    browser.get(here.url + "/audit")
    wait_for_text(browser, "fetch-query", where="main")
    assert str(first.AccessionNumber) not in page_text(browser)
