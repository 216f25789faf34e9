"""Issue 31: a lesion outlined in a viewer and saved as an SR measurement report is the mask.

The phantom's outline SR is written as OHIF saves an ellipse (an Enhanced SR, TID 1500, an
area INFERRED FROM a SCOORD ELLIPSE on one image). It goes through the real SCP and worker;
the node's answer names the outline (its measurement group's tracking UID, the outline SR in
its evidence), the node's own SR is never taken for an outline, and an outline saved again (a
new SR, as OHIF saves one each time) makes a new job that reads the newer outline.
"""

from __future__ import annotations

import copy
from datetime import timedelta
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom.sop_class import Comprehensive3DSRStorage, SegmentationStorage

from db.models import utcnow
from dicom_node.store.header import read_header
from pipeline.load.outline import find_outlines
from tests.node.scu import store
from tests.node.test_results import Node, bundle_a, pacs  # noqa: F401 (fixtures)


def test_an_outline_sr_gets_the_answer_on_the_lesion_it_outlines(tmp_path, pacs, bundle_a, phantom_study) -> None:  # noqa: F811
    study = phantom_study("axial2d", "outline")
    outline_file = next(study.folder.rglob("SR/*.dcm"))
    outline = dcmread(outline_file)
    [drawn] = find_outlines(outline)
    node = Node(tmp_path, pacs.port)
    try:
        node.activate(bundle_a)
        node.arrive(study.folder)
        job = node.worker.claim_once()
        assert job.state == "done", job.reason
        selection = job.result["selection"]
        assert selection["mask_kind"] == "OUTLINE" and selection["mask_sop_uid"] == outline.SOPInstanceUID
        assert selection["mask"] == "viewer outline (ELLIPSE) on 1 slice"
        assert selection["tracking_uid"] == drawn.tracking_uid
        assert "complete by content: the mask and the image it names are in" in job.queued_because

        [sr] = pacs.of_class(Comprehensive3DSRStorage)
        [seg] = pacs.of_class(SegmentationStorage)  # the outline, filled, as a SEG the SR can point to
        assert seg.SegmentSequence[0].TrackingUID == drawn.tracking_uid
        assert seg.SeriesDescription == "Lesion SEG from viewer outline by egfr-node - research use"
        evidence = {str(i.ReferencedSOPInstanceUID) for s in sr.CurrentRequestedProcedureEvidenceSequence
                    for series in s.ReferencedSeriesSequence for i in series.ReferencedSOPSequence}
        assert outline.SOPInstanceUID in evidence
        sr_file = next(p for p in pacs.files() if str(sr.SOPInstanceUID) in p.name)
        content = hd.sr.srread(sr_file).content
        assert {g.tracking_uid for g in content.get_volumetric_roi_measurement_groups()} == {drawn.tracking_uid}

        # the node's own SR (a POINT on the lesion) is no outline, from the node or from elsewhere
        assert find_outlines(sr) == [] and read_header(sr).mask_kind is None
        assert set(store(node.scp.port, [str(p) for p in pacs.files()])) <= {0x0000, 0xB006}
        assert node.worker.scan_once(now=utcnow() + timedelta(seconds=60)) == []

        # the radiologist moves the outline and saves again: a new SR, a new job, the newer outline read
        again = _saved_again(outline, tmp_path / "again", shift_pixels=3.0)
        node.send(again.parent)
        [queued] = node.worker.scan_once(now=utcnow() + timedelta(seconds=60))
        rerun = node.worker.claim_once()
        assert rerun.id == queued.id != job.id and rerun.state == "done", rerun.reason
        assert rerun.result["selection"]["mask_sop_uid"] != outline.SOPInstanceUID
        assert rerun.result["selection"]["mask_sop_uid"] == dcmread(again).SOPInstanceUID
    finally:
        node.close()


def _saved_again(outline, folder: Path, shift_pixels: float) -> Path:  # type: ignore[no-untyped-def]
    """The outline SR as a viewer saves it again: a new instance, later, the ellipse moved."""
    ds = copy.deepcopy(outline)
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.ContentTime = f"{int(str(ds.ContentTime)[:2]) + 1:02d}{str(ds.ContentTime)[2:]}"

    def shift(items) -> None:  # type: ignore[no-untyped-def]
        for item in items:
            if item.get("ValueType") == "SCOORD":
                item.GraphicData = [float(v) + shift_pixels for v in item.GraphicData]
            shift(item.get("ContentSequence", []))

    shift(ds.ContentSequence)
    folder.mkdir()
    path = folder / "SR.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert np.asarray(find_outlines(ds)[0].points).min() > 0
    return path
