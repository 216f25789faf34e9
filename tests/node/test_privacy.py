"""Logs carry UIDs, never patient names or IDs, at every level."""

from __future__ import annotations

import logging

import pytest

from dicom_node.receive.server import DicomNode
from tests.dicom_factory import mask_for, mr_series
from tests.node.scu import association, store


def test_no_patient_name_or_id_in_any_log_record(node: DicomNode, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    images = mr_series(2)
    for ds in images:
        ds.PatientName = "DOE^JANE"
        ds.PatientID = "MRN-55501"
    broken = mr_series(1)[0]
    broken.PatientName, broken.PatientID = "DOE^JANE", "MRN-55501"
    del broken.SeriesInstanceUID
    store(node.port, [*images, mask_for(images), images[0], broken])
    with association(node.port, calling="INTRUDER", called="NOT_US") as assoc:
        assert assoc.is_rejected
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert images[0].SOPInstanceUID in text and broken.SOPInstanceUID in text  # UIDs are what logs name
    for secret in ("DOE", "JANE", "MRN-55501"):
        assert secret not in text
