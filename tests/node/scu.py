"""A pynetdicom SCU for the tests: real associations on loopback."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from pydicom.dataset import Dataset
from pynetdicom import AE, Association
from pynetdicom.sop_class import Verification

from dicom_node.receive.scp import STORAGE_SOP_CLASSES


@contextmanager
def association(port: int, *, calling: str = "TEST_SCU", called: str = "EGFR_NODE", transfer_syntaxes=None) -> Iterator[Association]:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    for cls in STORAGE_SOP_CLASSES:
        ae.add_requested_context(cls, list(transfer_syntaxes or ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]))
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def store(port: int, datasets: list[Dataset] | Dataset, **kwargs) -> list[int]:
    """C-STORE each dataset (or file path) in one association; the status codes."""
    if not isinstance(datasets, list):
        datasets = [datasets]
    with association(port, **kwargs) as assoc:
        assert assoc.is_established, "association was not established"
        statuses = []
        for ds in datasets:
            status = assoc.send_c_store(ds)
            statuses.append(int(status.Status) if status else -1)
        return statuses
