"""STOW-RS out: a destination that is a DICOMweb base URL gets the SR, the SEG and the card
by STOW-RS, with the C-STORE destinations' retry and same-UID rules, and the delivery record
says what the server answered. The server is Orthanc with its DICOMweb plugin, on loopback."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread

from db.deliveries import deliveries_of_job
from dicom_node.config import DeliverySection, Destination
from tests.node.peers import Orthanc
from tests.node.process import free_port
from tests.node.test_results import Node, bundle_a  # noqa: F401 (fixture)
from tests.waiting import wait_for


def _deliveries(node: Node, job_id: int) -> list:
    with node.runtime.sessions() as s:
        return deliveries_of_job(s, job_id)


def test_a_dicomweb_destination_down_then_up_receives_the_sr_seg_and_card_once(tmp_path: Path, bundle_a, phantom_study) -> None:
    http_port = free_port()  # Orthanc is not up yet
    web = Destination("archive-web", dicomweb_url=f"http://127.0.0.1:{http_port}/dicom-web")
    wrong = Destination("wrong-root", dicomweb_url=f"http://127.0.0.1:{http_port}/no-such-root")
    node = Node(tmp_path, None, destinations=(web, wrong),
                delivery=DeliverySection(initial_backoff_seconds=0.2, max_backoff_seconds=1.0, timeout_seconds=5.0,
                                         max_attempts=20))
    orthanc = None
    try:
        job = node.answer(bundle_a, phantom_study("axial2d", "rtstruct").folder)
        made = job.result["instances"]
        assert set(made) >= {"sr", "seg", "card"} and all(made.values())
        first = _deliveries(node, job.id)
        assert len(first) == 6 and all(d.state == "retrying" for d in first), first
        assert all("cannot connect" in (d.last_error or "") and "STOW-RS" in d.last_error for d in first), first

        orthanc = Orthanc(tmp_path / "orthanc", dicomweb=True, http_port=http_port)
        def tried_again() -> bool:
            node.worker.deliver_due()
            views = _deliveries(node, job.id)
            return all(d.state not in ("retrying", "pending") for d in views if d.destination == "archive-web") \
                and all(d.attempts >= 2 for d in views if d.destination == "wrong-root")

        wait_for(tried_again, 60, "the deliveries tried again after Orthanc came up")
        views = _deliveries(node, job.id)
        assert {d.state for d in views if d.destination == "archive-web"} == {"sent"}, views
        # a server that answers, but not as DICOMweb: the record names the HTTP status
        assert all(d.state == "retrying" and "HTTP 404" in d.last_error for d in views if d.destination == "wrong-root"), views

        # Orthanc holds exactly the node's three results, under their own UIDs, whole
        held = {}
        for instance in orthanc.get("/instances"):
            tags = orthanc.get(f"/instances/{instance}/simplified-tags")
            held[tags["SOPInstanceUID"]] = tags["Modality"]
        assert sorted(held) == sorted(made.values()), held
        assert sorted(held.values()) == sorted(["SR", "SEG", "OT" if "OT" in held.values() else "SC"])
        sr_path = node.config.storage.archive_path.rglob(f"{made['sr']}.dcm")
        archived = dcmread(next(sr_path))
        [sr_id] = [i for i in orthanc.get("/instances")
                   if orthanc.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"] == made["sr"]]
        served = orthanc.get(f"/instances/{sr_id}/simplified-tags")
        assert served["StudyInstanceUID"] == str(archived.StudyInstanceUID)
    finally:
        node.close()
        if orthanc:
            orthanc.stop()
