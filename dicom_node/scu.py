"""The node as a Storage SCU: C-STORE of its results, and C-ECHO, to a configured peer.

One association per call, proposing exactly the SOP classes and transfer syntaxes of the
files sent (each file goes in the syntax it was archived in). TCP_NODELAY is set on the
socket (DCMTK peers otherwise stall ~40 ms per message). Outbound TLS when the
destination says so.
"""

from __future__ import annotations

import logging
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pydicom import dcmread
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from dicom_node.config import Destination

__all__ = ["SendResult", "SendError", "send_files", "echo", "client_ssl_context"]

log = logging.getLogger(__name__)


class SendError(RuntimeError):
    """A C-STORE that did not succeed; ``str()`` is the one-line reason for the delivery record."""


@dataclass(frozen=True)
class SendResult:
    sop_instance_uid: str
    status: int


def client_ssl_context(destination: Destination) -> ssl.SSLContext:
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


def _associate(ae: AE, destination: Destination):  # type: ignore[no-untyped-def]
    tls_args = (client_ssl_context(destination), "") if destination.tls else None
    return ae.associate(destination.host, destination.port, ae_title=destination.ae_title,
                        tls_args=tls_args, evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)])


def _make_ae(calling_aet: str, timeout: float) -> AE:
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    return ae


def send_files(destination: Destination, paths: Sequence[Path], *, calling_aet: str, timeout: float = 30.0) -> list[SendResult]:
    """C-STORE every file to ``destination`` in one association.

    Raises SendError when the association is refused or aborted, or when a file is not
    answered with success or a warning; the reason names the destination and the UID.
    """
    datasets = [dcmread(path) for path in paths]
    ae = _make_ae(calling_aet, timeout)
    contexts = sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets})
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, [syntax])
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


def echo(destination: Destination, *, calling_aet: str, timeout: float = 10.0) -> int:
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
