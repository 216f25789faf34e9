"""What a reading radiologist sees: the node's SR opened in OHIF Viewer (the pinned npm
release's prebuilt dist) in headless Chromium, against a private Orthanc's DICOMweb that
holds the phantom study and the node's results, routed the way a PACS routes them.

Asserted from the page: the SR opens on the lesion's image, the measurement panel lists the
lesion with the EGFR status and probability that ``queue show`` reports, the research-use
caveat is there, no error boundary, and the browser console has no error. Screenshots are
kept under ``tests/viewers/artifacts/`` (the README's picture comes from here).
"""

from __future__ import annotations

import json
import re
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select

from db.migrate import upgrade
from db.models import Job
from dicom_node import bundles as models
from dicom_node.config import Destination
from dicom_node.store.open import open_runtime
from dicom_node.receive.server import DicomNode
from dicom_node.worker import Worker
from tests.conftest import make_config
from tests.node.bundles import write_random_bundle
from tests.node.peers import Orthanc
from tests.waiting import save_screenshot_when_still, wait_for
from tests.viewers.ohif_app import OHIF_VERSION, ViewerServer, install_ohif, installed_or_skip

pytestmark = pytest.mark.timeout(600)

ARTIFACTS = Path(__file__).with_name("artifacts")


@pytest.fixture(scope="module")
def ohif_dist() -> Path:
    return installed_or_skip(install_ohif, f"OHIF {OHIF_VERSION}")


class ResultsAtPacs:
    """The node and a DICOMweb Orthanc that routes studies to it and stores what comes back."""

    def __init__(self, tmp: Path) -> None:
        config = make_config(tmp / "data")
        upgrade(config.database_url)
        self.runtime = open_runtime(config)
        self.node = DicomNode(config, self.runtime.archive, self.runtime.sessions)
        self.node.start()
        self.orthanc = Orthanc(tmp, node_port=self.node.port, dicomweb=True)
        node_config = replace(config, destinations=(Destination("orthanc", "ORTHANC", "127.0.0.1",
                                                                self.orthanc.dicom_port),))
        self.worker = Worker(node_config, self.runtime.sessions, self.runtime.archive)
        models.activate(self.runtime.sessions, str(write_random_bundle(tmp / "bundle")), user="test", force=True)
        self.worker.start()

    def route(self, folder: Path, timeout: float = 240.0) -> dict:
        """PACS receives the study, routes it to the node, and gets the results back; the job."""
        for file in sorted(folder.rglob("*.dcm")):
            self.orthanc.upload(file)

        def answered() -> dict | None:
            modalities = {m for m, _ in self.orthanc.series_modalities()}
            with self.runtime.sessions() as session:
                jobs = session.scalars(select(Job)).all()
                done = [j for j in jobs if j.state.value == "done"]
                failed = [j for j in jobs if j.state.value == "failed"]
                assert not failed, [(j.id, j.reason) for j in failed]
                if done and {"SR", "SEG"} <= modalities and modalities & {"OT", "SC"}:
                    return dict(done[0].result)  # SR, SEG and card are at the PACS
            return None

        result: dict = wait_for(answered, timeout, "the SR, SEG and card at the PACS", every=0.5)
        return result

    def close(self) -> None:
        self.worker.stop()
        self.node.stop()
        self.orthanc.stop()
        self.runtime.close()


def _wait_for_text(browser, text: str, timeout: float = 90.0) -> str:  # noqa: ANN001
    """The page's text once ``text`` is in it (OHIF's first-visit tour is dismissed meanwhile)."""
    body = [""]

    def shown() -> str:
        body[0] = browser.execute_script("return document.body ? document.body.innerText : ''") or ""
        if text not in body[0] and "Skip all" in body[0]:
            _click_text(browser, "Skip all")
        return body[0] if text in body[0] else ""

    try:
        return wait_for(shown, timeout, repr(text), every=0.5)
    except AssertionError:
        raise AssertionError(f"{text!r} did not appear within {timeout:g} s; the page says: {body[0][-2000:]}") from None


def _click_text(browser, text: str) -> bool:  # noqa: ANN001
    from selenium.webdriver.common.by import By

    for element in browser.find_elements(By.XPATH, f"//*[normalize-space(.)='{text}']"):
        if element.is_displayed():
            element.click()
            return True
    return False


_VIEWPORTS_RENDERED = """
const cs = window.cornerstone;
if (!cs || !cs.getEnabledElements) return false;
const elements = cs.getEnabledElements();
return elements.length > 0 && elements.every(e => e.viewport && e.viewport.viewportStatus === 'rendered');
"""
_SR_ANNOTATION_ADDED = """
const tools = window.cornerstoneTools;
if (!tools) return false;
return tools.annotation.state.getAllAnnotations().some(a => a.metadata && a.metadata.toolName === 'DICOMSRDisplay');
"""


def open_sr(browser, server: ViewerServer, study_uid: str, shots: Path) -> tuple[str, str]:  # noqa: ANN001
    """Open the study as a reader would: wait for the first image, double-click the SR in the
    study browser, scroll where OHIF needs it (below), accept OHIF's offer to track the SR's
    measurements, open the measurement panel. Returns the page text of the SR viewport and of
    the panel; screenshots of both go to ``shots``-*.png.

    OHIF 3.13's SR viewport can draw its image (already in the cache) before it has told its
    annotation tool which measurements are its own, and nothing redraws it until the image
    changes: measured here, 5 of 6 openings after the first image has rendered show no arrow
    and no label, and each shows both once the viewport renders again. A reader scrolls; the
    test scrolls one image on and back when the label is not there within 10 s. The
    onboarding tour is marked as seen before the app loads, since a click on it would also
    dismiss the tracking prompt."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.by import By

    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument",
                            {"source": "localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));"})
    browser.get(server.url(f"/viewer?StudyInstanceUIDs={study_uid}"))
    _wait_for_text(browser, "EGFR prediction", 120)
    wait_for(lambda: browser.execute_script(_VIEWPORTS_RENDERED), 120, "the first viewport to render")
    (sr,) = [e for e in browser.find_elements(By.CSS_SELECTOR, "[data-cy='study-browser-thumbnail-no-image']")
             if "EGFR prediction" in e.text]
    ActionChains(browser).double_click(sr).perform()
    wait_for(lambda: browser.execute_script(_SR_ANNOTATION_ADDED), 120, "the SR's annotation to load")
    wait_for(lambda: browser.execute_script(_VIEWPORTS_RENDERED), 120, "the SR viewport to render")
    try:
        viewport = _wait_for_text(browser, "EGFR mutation", 10)
    except AssertionError:  # OHIF's race (see above): scroll one image on and back, as a reader does
        print("OHIF drew the SR viewport without its annotation; scrolling one image on and back")
        (element,) = [e for e in browser.find_elements(By.CSS_SELECTOR, "[data-viewport-uid]") if e.is_displayed()]
        origin = ScrollOrigin.from_element(element)
        ActionChains(browser).scroll_from_origin(origin, 0, 120).perform()
        wait_for(lambda: browser.execute_script(_VIEWPORTS_RENDERED), 30, "the next image to render")
        ActionChains(browser).scroll_from_origin(origin, 0, -120).perform()
    try:
        viewport = _wait_for_text(browser, "EGFR mutation", 60)
    except AssertionError:
        browser.save_screenshot(f"{shots}-not-drawn.png")
        console = browser.get_log("browser")
        Path(f"{shots}-not-drawn-console.json").write_text(json.dumps(console, indent=1))
        raise
    save_screenshot_when_still(browser, f"{shots}-viewport.png")
    _wait_for_text(browser, "continue tracking measurements", 60)
    assert _click_text(browser, "Yes")
    panel_button = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "[data-cy='trackedMeasurements-btn']"), 30,
                            "the tracked measurements button")[0]
    if "Findings" not in (browser.execute_script("return document.body.innerText") or ""):
        panel_button.click()
    panel = _wait_for_text(browser, "Findings (1)", 30)
    save_screenshot_when_still(browser, f"{shots}-panel.png")
    return viewport, panel


def _referenced_instance_number(orthanc: Orthanc, study_folder: Path) -> int:
    """InstanceNumber of the image the SR's lesion point lies in (what OHIF must open on)."""
    import io

    import pydicom

    (study,) = orthanc.get("/studies")
    (sr_id,) = [i["ID"] for s in orthanc.get(f"/studies/{study}/series") if s["MainDicomTags"].get("Modality") == "SR"
                for i in orthanc.get(f"/series/{s['ID']}/instances")]
    with urllib.request.urlopen(f"http://127.0.0.1:{orthanc.http_port}/instances/{sr_id}/file", timeout=30) as response:
        sr = pydicom.dcmread(io.BytesIO(response.read()))
    (scoord,) = [item for item in _items(sr) if item.get("ValueType") == "SCOORD"]
    uid = scoord.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    for path in study_folder.rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.SOPInstanceUID == uid:
            return int(ds.InstanceNumber)
    raise AssertionError(f"the SR points at {uid}, which is not in the study")


def _items(ds):  # noqa: ANN001, ANN202
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _items(item)


@pytest.mark.parametrize("mask_kind", ["rtstruct", "seg"])
def test_ohif_shows_the_egfr_status_and_probability_from_the_sr(tmp_path: Path, phantom_study, ohif_dist: Path,
                                                               browser, mask_kind: str) -> None:
    study = phantom_study("axial2d", mask_kind)
    pacs = ResultsAtPacs(tmp_path)
    server = ViewerServer(ohif_dist, pacs.orthanc.http_port)
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        result = pacs.route(study.folder)
        viewport, panel = open_sr(browser, server, study.study_uid, ARTIFACTS / f"ohif-{mask_kind}")
        console = browser.get_log("browser")
        (ARTIFACTS / f"ohif-{mask_kind}-console.json").write_text(json.dumps(console, indent=1))
        # the test bundle's random folds carry no calibration: the words say it is a score, not a probability
        assert result["calibrated"] is False
        words = (f"EGFR mutation {result['status'].upper()}, score {result['probability']:.3f} (not a calibrated "
                 "probability; research use only)")
        # the SR viewport: the lesion's image, the arrow's label and the probability beside it
        assert words in viewport, viewport[-2000:]
        assert f"Probability: {result['probability']:.2f}" in viewport
        number = _referenced_instance_number(pacs.orthanc, study.folder)
        assert re.search(rf"\bI:\s*{number}\b", viewport), (number, viewport[-600:])
        # the measurement panel lists the lesion with the result, once
        assert panel.count(words) >= 1 and "Findings (1)" in panel
        assert "Secondary malignant neoplasm of brain" in panel
        for text in (viewport, panel):
            assert "Something went wrong" not in text and "not compatible with this application" not in text
        severe = [e["message"] for e in console if e["level"] == "SEVERE" and "favicon" not in e["message"]]
        assert severe == []
    finally:
        server.stop()
        pacs.close()
