"""Issue 31: the whole loop inside the viewer. A radiologist opens the MR in OHIF (the pinned
npm release's dist, headless Chromium), outlines the lesion with OHIF's own Ellipse or
Freehand ROI tool (mouse events through Selenium), saves the measurements with OHIF's own
"Create SR" (STOW-RS into Orthanc); Orthanc routes the new SR and the MR to the node (the
tested routing example, deploy/orthanc/); the node's SR comes back into Orthanc and OHIF
shows its result on the lesion.

Only the MR is in Orthanc at first (no SEG, no RTSTRUCT): the outline is the only mask.
The viewport is brought to the lesion's mid slice through the viewport's own API (a reader
scrolls there); the outline is drawn by mouse around the lesion's extent on that slice,
which the test knows from the phantom's ground truth. Screenshots go to
``tests/viewers/artifacts/`` (one is in the README).
"""

from __future__ import annotations

import io
import json
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from sqlalchemy import select

from db.models import Job
from pipeline.load.outline import find_outlines
from pipeline.load.study import load_study
from tests.node.peers import Orthanc
from tests.viewers.ohif_app import OHIF_VERSION, ViewerServer, install_ohif, installed_or_skip
from tests.viewers.test_ohif import ARTIFACTS, ResultsAtPacs, _VIEWPORTS_RENDERED, _click_text, _wait_for_text, open_sr
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(900)

_GO_TO_IMAGE = """
const [sop, done] = [arguments[0], arguments[arguments.length - 1]];
const viewport = window.cornerstone.getEnabledElements()[0].viewport;
const index = viewport.getImageIds().findIndex(id => id.includes(sop));
if (index < 0) { done(null); return; }
viewport.setImageIdIndex(index).then(() => done(index));
"""
_TO_PAGE = """
const viewport = window.cornerstone.getEnabledElements()[0].viewport;
const box = viewport.canvas.getBoundingClientRect();
return arguments[0].map(p => { const c = viewport.worldToCanvas(p); return [box.left + c[0], box.top + c[1]]; });
"""
_OUTLINES = """
return window.cornerstoneTools.annotation.state.getAllAnnotations()
  .filter(a => a.metadata && ['EllipticalROI', 'PlanarFreehandROI'].includes(a.metadata.toolName))
  .map(a => a.metadata.toolName);
"""


#: OHIF's measurement tracking mode for each case. In the standard mode OHIF 3.13 asks "Track
#: measurements for this series?" when a measurement is added; for a freehand outline it adds
#: the measurement in the mouse release that closes the outline, and its prompt (ViewportDialog,
#: which listens for mousedown and mouseup on the document) is dismissed by that same release,
#: as "No" (measured here: the prompt is in the page for one mutation, then gone, and "Create SR"
#: does nothing). The freehand case runs OHIF in its "simplified" tracking mode, a site setting
#: in which measurements are tracked without that prompt.
TRACKING = {"EllipticalROI": None, "PlanarFreehandROI": {"measurementTrackingMode": "'simplified'"}}


@pytest.fixture(scope="module")
def ohif_dist() -> Path:
    return installed_or_skip(install_ohif, f"OHIF {OHIF_VERSION}")


def _mr_only(study_folder: Path, tmp: Path) -> Path:
    folder = tmp / "mr-only"
    shutil.copytree(study_folder, folder, ignore=shutil.ignore_patterns("SEG"))
    return folder


def _lesion_on_its_largest_slice(study_folder: Path) -> tuple[str, np.ndarray, np.ndarray]:
    """The image of the lesion's largest cross-section, its centre and its extent (LPS mm)."""
    loaded = load_study(study_folder)
    lesion = sitk.GetArrayFromImage(loaded.lesion)
    k = int(np.argmax(lesion.reshape(lesion.shape[0], -1).sum(axis=1)))
    rows, columns = np.nonzero(lesion[k])
    to_mm = loaded.lesion.TransformContinuousIndexToPhysicalPoint
    centre = np.array(to_mm((float(columns.mean()), float(rows.mean()), float(k))))
    corner = np.array(to_mm((float(columns.max()) + 1.0, float(rows.max()) + 1.0, float(k))))
    (sop,) = loaded.source_sop_uids[k]
    return sop, centre, corner


def _drag(browser, points: list[tuple[float, float]]) -> None:  # noqa: ANN001
    """Press the left button at the first point, move through the others, release."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    actions = ActionBuilder(browser, duration=20)
    actions.pointer_action.move_to_location(int(round(points[0][0])), int(round(points[0][1])))
    actions.pointer_action.pointer_down()
    for x, y in points[1:]:
        actions.pointer_action.move_to_location(int(round(x)), int(round(y)))
    actions.pointer_action.pointer_up()
    actions.perform()


def outline_and_save(browser, server: ViewerServer, study_uid: str, study_folder: Path, tool: str,  # noqa: ANN001
                     shots: Path) -> None:
    """What a reader does: open the study, go to the lesion, pick the tool in the measurement
    tools menu, outline the lesion, track the measurement, Create SR, name it, Save."""
    from selenium.webdriver.common.by import By

    sop, centre, corner = _lesion_on_its_largest_slice(study_folder)
    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument",
                            {"source": "localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));"})
    browser.get(server.url(f"/viewer?StudyInstanceUIDs={study_uid}"))
    wait_for(lambda: browser.execute_script(_VIEWPORTS_RENDERED), 120, "the first viewport to render")
    assert browser.execute_async_script(_GO_TO_IMAGE, sop) is not None, f"image {sop} is not in the viewport"
    wait_for(lambda: browser.execute_script(_VIEWPORTS_RENDERED), 60, "the lesion's image to render")
    browser.find_element(By.CSS_SELECTOR, "[data-cy='MeasurementTools-split-button-secondary']").click()
    wait_for(lambda: browser.find_element(By.CSS_SELECTOR, f"[data-cy='{tool}']").is_displayed(), 10, f"{tool} in the menu")
    browser.find_element(By.CSS_SELECTOR, f"[data-cy='{tool}']").click()
    (cx, cy), (ex, ey) = browser.execute_script(_TO_PAGE, [centre.tolist(), corner.tolist()])
    rx, ry = abs(ex - cx) + 4, abs(ey - cy) + 4  # a few pixels outside the lesion's edge, as a reader draws
    if tool == "EllipticalROI":  # OHIF's ellipse: pressed at the centre, dragged to the corner of its box
        _drag(browser, [(cx + t * rx, cy + t * ry) for t in np.linspace(0.0, 1.0, 12)])
    else:  # a freehand outline around the lesion, back to where it started (closed)
        angles = np.linspace(0.0, 2.0 * np.pi, 48)
        wobble = 1.0 + 0.08 * np.sin(3 * angles)  # a hand is not a compass
        _drag(browser, [(cx + rx * w * np.cos(a), cy + ry * w * np.sin(a)) for a, w in zip(angles, wobble)])
    wait_for(lambda: browser.execute_script(_OUTLINES) == [tool], 30, f"OHIF's {tool} annotation")
    if tool != "PlanarFreehandROI":  # standard tracking mode: OHIF asks once per series
        _wait_for_text(browser, "Track measurements for this series?", 30)
        assert _click_text(browser, "Yes")
    browser.save_screenshot(f"{shots}-drawn.png")
    if "Create SR" not in (browser.execute_script("return document.body.innerText") or ""):
        browser.find_element(By.CSS_SELECTOR, "[data-cy='trackedMeasurements-btn']").click()
    _wait_for_text(browser, "Create SR", 30)
    assert _click_text(browser, "Create SR")
    name = browser.find_element(By.CSS_SELECTOR, "[data-cy='dialog-input']")
    name.send_keys("Lesion outline")
    browser.find_element(By.CSS_SELECTOR, "[data-cy='input-dialog-save-button']").click()


def _sr_series(orthanc: Orthanc, description: str) -> list[pydicom.Dataset]:
    out = []
    for study in orthanc.get("/studies"):
        for series in orthanc.get(f"/studies/{study}/series"):
            if description in series["MainDicomTags"].get("SeriesDescription", ""):
                for instance in orthanc.get(f"/series/{series['ID']}/instances"):
                    url = f"http://127.0.0.1:{orthanc.http_port}/instances/{instance['ID']}/file"
                    with urllib.request.urlopen(url, timeout=30) as response:
                        out.append(pydicom.dcmread(io.BytesIO(response.read())))
    return out


@pytest.mark.parametrize("tool, shape", [("EllipticalROI", "ELLIPSE"), ("PlanarFreehandROI", "POLYLINE")])
def test_an_outline_drawn_and_saved_in_ohif_brings_the_answer_back_to_ohif(
        tmp_path: Path, phantom_study, ohif_dist: Path, browser, tool: str, shape: str) -> None:
    study = phantom_study("axial2d", "seg")
    pacs = ResultsAtPacs(tmp_path)
    server = ViewerServer(ohif_dist, pacs.orthanc.http_port, settings=TRACKING[tool])
    ARTIFACTS.mkdir(exist_ok=True)
    shots = ARTIFACTS / f"ohif-outline-{shape.lower()}"
    try:
        for file in sorted(_mr_only(study.folder, tmp_path).rglob("*.dcm")):
            pacs.orthanc.upload(file)
        outline_and_save(browser, server, study.study_uid, study.folder, tool, shots)

        # OHIF stored its measurement report in Orthanc by STOW-RS: an outline, of OHIF's own shape
        wait_for(lambda: _sr_series(pacs.orthanc, "Lesion outline"), 60, "OHIF's SR in Orthanc")
        (saved,) = _sr_series(pacs.orthanc, "Lesion outline")
        (outline,) = find_outlines(saved)
        assert outline.graphic_type == shape

        # Orthanc routed the SR and the MR; the node answered on that outline
        def done() -> dict | None:
            with pacs.runtime.sessions() as session:
                jobs = session.scalars(select(Job)).all()
                assert not [j for j in jobs if j.state.value == "failed"], [(j.id, j.reason) for j in jobs]
                finished = [j for j in jobs if j.state.value == "done"]
            modalities = {m for m, _ in pacs.orthanc.series_modalities()}
            return dict(finished[0].result) if finished and {"SEG"} <= modalities and \
                len(_sr_series(pacs.orthanc, "EGFR prediction")) == 1 else None

        wait_for(done, 240, "the node's SR in Orthanc")
        result = done()
        assert result is not None
        assert result["selection"]["mask_kind"] == "OUTLINE"
        assert result["selection"]["mask_sop_uid"] == saved.SOPInstanceUID
        assert result["selection"]["tracking_uid"] == outline.tracking_uid

        # OHIF shows the node's answer on the lesion (opened as every reading site opens it)
        server.stop()
        server = ViewerServer(ohif_dist, pacs.orthanc.http_port)
        viewport, panel = open_sr(browser, server, study.study_uid, shots)
        words = (f"EGFR mutation {result['status'].upper()}, score {result['probability']:.3f} (not a calibrated "
                 "probability; research use only)")
        assert words in viewport, viewport[-2000:]
        assert f"Probability: {result['probability']:.2f}" in viewport
        assert panel.count(words) >= 1
        console = browser.get_log("browser")
        (ARTIFACTS / f"{shots.name}-console.json").write_text(json.dumps(console, indent=1))
        for text in (viewport, panel):
            assert "Something went wrong" not in text
    finally:
        server.stop()
        pacs.close()
