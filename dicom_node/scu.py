"""The node as an SCU: C-STORE of its results and C-ECHO to a configured peer; C-FIND,
C-MOVE and C-GET (Study Root) from a configured source.

One association per call; a C-STORE proposes exactly the SOP classes and transfer syntaxes of
the files sent (each file goes in the syntax it was archived in). TCP_NODELAY is set on the
socket (DCMTK peers otherwise stall ~40 ms per message). Outbound TLS when the
destination says so.
"""

from __future__ import annotations

import logging
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, Association, build_role, evt
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from dicom_node.config import Peer

__all__ = ["SendResult", "SendError", "RetrieveCounts", "send_files", "echo", "client_ssl_context", "c_find",
           "c_move", "c_get", "RETRIEVED_CLASSES"]

log = logging.getLogger(__name__)


class SendError(RuntimeError):
    """A C-STORE that did not succeed; ``str()`` is the one-line reason for the delivery record."""


@dataclass(frozen=True)
class SendResult:
    sop_instance_uid: str
    status: int


def client_ssl_context(destination: Peer) -> ssl.SSLContext:
    """Client TLS: verify the destination with its CA bundle (system CAs when empty); present
    the node's certificate when configured (mutual TLS)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=destination.ca_certificates or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False  # DICOM peers are configured by address; the CA check remains
    if destination.certificate:
        context.load_cert_chain(destination.certificate, destination.private_key or None)
    return context


def _nodelay(event: evt.Event) -> None:
    try:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError):  # pragma: no cover - socket already gone
        pass


def _associate(ae: AE, destination: Peer, *, ext_neg: list[Any] | None = None,
               extra_handlers: list[Any] | None = None) -> Association:
    tls_args = (client_ssl_context(destination), "") if destination.tls else None
    return ae.associate(destination.host, destination.port, ae_title=destination.ae_title, ext_neg=ext_neg,
                        tls_args=tls_args, evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay), *(extra_handlers or [])])


def _make_ae(calling_aet: str, timeout: float) -> AE:
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    return ae


def send_files(destination: Peer, paths: Sequence[Path], *, calling_aet: str, timeout: float = 30.0) -> list[SendResult]:
    """C-STORE every file to ``destination`` in one association.

    Raises SendError when the association is refused or aborted, or when a file is not
    answered with success or a warning; the reason names the destination and the UID.
    """
    datasets = [dcmread(path) for path in paths]
    ae = _make_ae(calling_aet, timeout)
    contexts = sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets})
    for sop_class, syntax in contexts:
        # Implicit VR Little Endian too, the one every storage SCP must accept: pynetdicom
        # re-encodes an explicit-VR file for a peer that takes only that
        ae.add_requested_context(sop_class, [syntax, ImplicitVRLittleEndian] if syntax == ExplicitVRLittleEndian
                                 else [syntax])
    where = f"{destination.name} ({destination.ae_title}@{destination.host}:{destination.port})"
    assoc = _associate(ae, destination)
    if not assoc.is_established:
        state = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "not established"
        raise SendError(f"association with {where} {state}")
    results: list[SendResult] = []
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = int(status.Status) if status and "Status" in status else -1
            uid = str(ds.SOPInstanceUID)
            if code == -1:
                raise SendError(f"{where}: no answer to C-STORE of {uid} (timeout or connection lost)")
            if code != 0 and not 0xB000 <= code <= 0xBFFF:
                comment = str(status.get("ErrorComment", "")).strip()
                raise SendError(f"{where}: C-STORE of {uid} answered 0x{code:04X}" + (f" ({comment})" if comment else ""))
            results.append(SendResult(uid, code))
    finally:
        if assoc.is_established:
            assoc.release()
    return results


def echo(destination: Peer, *, calling_aet: str, timeout: float = 10.0) -> int:
    """C-ECHO ``destination``; the status (0 = success). Raises SendError when not associated."""
    ae = _make_ae(calling_aet, timeout)
    ae.add_requested_context(Verification)
    assoc = _associate(ae, destination)
    if not assoc.is_established:
        raise SendError(f"association with {destination.ae_title} at {destination.host}:{destination.port} was not established")
    try:
        status = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    return int(status.Status) if status and "Status" in status else -1


# --- query and retrieve (Study Root) -----------------------------------------------------

#: The storage classes a C-GET takes (the SCP role is offered for each): the images and masks
#: the pipeline reads.
RETRIEVED_CLASSES: tuple[str, ...] = (
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image
    "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR Image
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT Structure Set
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
)
_PENDING = (0xFF00, 0xFF01)


@dataclass(frozen=True)
class RetrieveCounts:
    """A C-MOVE's or C-GET's final sub-operation counts."""

    completed: int
    failed: int
    warning: int
    status: int


def _open(source: Peer, ae: AE, what: str, **kwargs: Any) -> Association:
    assoc = _associate(ae, source, **kwargs)
    if not assoc.is_established:
        state = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "not established"
        raise SendError(f"{what}: association with {source.where()} {state}")
    return assoc


def c_find(source: Peer, identifier: Dataset, *, calling_aet: str, timeout: float = 30.0) -> list[Dataset]:
    """C-FIND ``identifier`` (its QueryRetrieveLevel set) on ``source``: the matches. Raises
    SendError when the association fails or the query ends with a failure status."""
    ae = _make_ae(calling_aet, timeout)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = _open(source, ae, "C-FIND")
    matches: list[Dataset] = []
    try:
        for status, found in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind):
            code = int(status.Status) if status and "Status" in status else -1
            if code in _PENDING and found is not None:
                matches.append(found)
            elif code == -1:
                raise SendError(f"{source.where()}: no answer to C-FIND (timeout or connection lost)")
            elif code != 0:
                raise SendError(f"{source.where()}: C-FIND answered 0x{code:04X}")
    finally:
        if assoc.is_established:
            assoc.release()
    return matches


def _final_counts(source: Peer, what: str, responses: Iterator[tuple[Dataset, Dataset | None]]) -> RetrieveCounts:
    last: Dataset | None = None
    for status, _identifier in responses:
        if not status or "Status" not in status:
            raise SendError(f"{source.where()}: no answer to {what} (timeout or connection lost)")
        last = status
        if int(status.Status) not in _PENDING:
            break
    assert last is not None
    code = int(last.Status)
    counts = RetrieveCounts(int(last.get("NumberOfCompletedSuboperations", 0) or 0),
                            int(last.get("NumberOfFailedSuboperations", 0) or 0),
                            int(last.get("NumberOfWarningSuboperations", 0) or 0), code)
    if code != 0 and not 0xB000 <= code <= 0xBFFF:
        comment = str(last.get("ErrorComment", "")).strip()
        raise SendError(f"{source.where()}: {what} answered 0x{code:04X}" + (f" ({comment})" if comment else "")
                        + f"; {counts.completed} sent, {counts.failed} failed")
    return counts


def c_move(source: Peer, identifier: Dataset, *, move_destination: str, calling_aet: str,
           timeout: float = 30.0) -> RetrieveCounts:
    """C-MOVE what ``identifier`` names from ``source`` to the AE title ``move_destination``
    (the node's own: the source sends it C-STOREs on a new association)."""
    ae = _make_ae(calling_aet, timeout)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = _open(source, ae, "C-MOVE")
    try:
        return _final_counts(source, "C-MOVE", assoc.send_c_move(identifier, move_destination,
                                                                 StudyRootQueryRetrieveInformationModelMove))
    finally:
        if assoc.is_established:
            assoc.release()


def c_get(source: Peer, identifier: Dataset, store: Callable[[bytes, str], int], *, calling_aet: str,
          timeout: float = 30.0) -> RetrieveCounts:
    """C-GET what ``identifier`` names from ``source``; each instance arrives as a C-STORE on
    the same association and is passed to ``store(part10_bytes, transfer_syntax_uid)``, whose
    return value is the C-STORE status sent back."""
    ae = _make_ae(calling_aet, timeout)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for sop_class in RETRIEVED_CLASSES:
        ae.add_requested_context(sop_class)
    roles = [build_role(sop_class, scp_role=True) for sop_class in RETRIEVED_CLASSES]

    def on_store(event: evt.Event) -> int:
        spooled = getattr(event, "dataset_path", None)  # pynetdicom's chunked mode, when a process set it
        try:
            data = Path(spooled).read_bytes() if spooled else event.encoded_dataset(include_meta=True)
        except (OSError, AttributeError):
            return 0xA700
        return store(data, str(event.context.transfer_syntax))

    assoc = _open(source, ae, "C-GET", ext_neg=roles, extra_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        return _final_counts(source, "C-GET", assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet))
    finally:
        if assoc.is_established:
            assoc.release()
