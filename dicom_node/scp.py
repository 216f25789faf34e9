"""The Storage SCP: C-ECHO and C-STORE for the classes PACS routes to the node.

Nothing acknowledged is lost: the encoded dataset is written to the archive (fsynced) and
recorded in the database before the success status goes back. Status codes say what
happened: 0xB006 (warning) stored earlier with other content, first copy kept; 0xA700 out
of space; 0xA701 database unavailable; 0xA900 dataset does not match the request; 0xC210
undecodable; 0xC220 a required attribute missing or invalid; 0xC211 anything else (logged
with its traceback). The reason also goes back in the response's Error Comment.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom import uid as dicom_uid
from pynetdicom import AE, _config as pynetdicom_config, evt, sop_class
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from db.ingest import RecordOutcome
from dicom_node.archive import Archive, ArchiveFull
from dicom_node.config import Config
from dicom_node.intake import store_instance
from dicom_node.received_header import NonConformant, ReceivedHeader, SOPClassMismatch, read_header

__all__ = [
    "STORAGE_SOP_CLASSES",
    "TRANSFER_SYNTAXES",
    "Status",
    "StoreCounters",
    "handle_store",
    "DicomNode",
    "make_ssl_context",
]

log = logging.getLogger(__name__)

# Privacy and speed: pynetdicom must not log identifiers (C-FIND/MOVE keys carry patient
# names) nor run its per-PDU debug handlers.
pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
pynetdicom_config.LOG_HANDLER_LEVEL = "none"

STORAGE_SOP_CLASSES: tuple[str, ...] = (
    sop_class.MRImageStorage,
    sop_class.EnhancedMRImageStorage,
    sop_class.LegacyConvertedEnhancedMRImageStorage,
    sop_class.SegmentationStorage,
    sop_class.RTStructureSetStorage,
    sop_class.BasicTextSRStorage,
    sop_class.EnhancedSRStorage,
    sop_class.ComprehensiveSRStorage,
    sop_class.Comprehensive3DSRStorage,
    sop_class.ExtensibleSRStorage,
    sop_class.SecondaryCaptureImageStorage,
    sop_class.EncapsulatedPDFStorage,
)

#: In order of preference: pynetdicom accepts, per proposed context, the first of these the
#: peer offers. Lossless encodings first (a peer offering the JPEG-LS it holds beside
#: uncompressed sends it unconverted, and need not be able to decode it), then uncompressed,
#: lossy last (never ask a peer to compress lossily what it holds losslessly).
TRANSFER_SYNTAXES: tuple[str, ...] = (
    dicom_uid.JPEGLSLossless,
    dicom_uid.JPEG2000Lossless,
    dicom_uid.RLELossless,
    dicom_uid.JPEGLosslessSV1,
    dicom_uid.JPEGLossless,
    dicom_uid.ExplicitVRLittleEndian,
    dicom_uid.ImplicitVRLittleEndian,
    dicom_uid.DeflatedExplicitVRLittleEndian,
    dicom_uid.JPEGLSNearLossless,
    dicom_uid.JPEG2000,
    dicom_uid.JPEGBaseline8Bit,
    dicom_uid.JPEGExtended12Bit,
)


class Status:
    """C-STORE / C-ECHO status codes the node answers with (PS3.4 B.2.3, PS3.7 C)."""

    SUCCESS = 0x0000
    CONFLICT_FIRST_COPY_KEPT = 0xB006  # warning, elements discarded: the earlier copy is kept
    OUT_OF_RESOURCES = 0xA700  # archive below its free-space reserve or disk full
    DATABASE_UNAVAILABLE = 0xA701  # out of resources: the record could not be committed
    DATASET_DOES_NOT_MATCH = 0xA900  # SOP class/instance differs from the request
    CANNOT_UNDERSTAND = 0xC210  # the dataset cannot be decoded
    NON_CONFORMANT = 0xC220  # a required attribute is missing or invalid
    PROCESSING_FAILURE = 0xC211  # anything else, logged with its traceback


@dataclass
class StoreCounters:
    """Per-process counts of C-STORE outcomes (for logs and tests)."""

    stored: int = 0
    duplicates: int = 0
    conflicts: int = 0
    failures: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)


def _status(code: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]
    return ds


def handle_echo(event: evt.Event) -> int:
    return Status.SUCCESS


def handle_store(
    event: evt.Event, archive: Archive, sessions: sessionmaker[Session], counters: StoreCounters
) -> int | Dataset:
    """C-STORE: archive the encoded dataset, record it, then answer (never the other way round)."""
    request = event.request
    calling_aet = event.assoc.requestor.ae_title.strip() if event.assoc else ""
    affected = str(request.AffectedSOPInstanceUID or "")
    try:
        header = read_header(event.dataset, str(request.AffectedSOPClassUID or ""), affected)
    except SOPClassMismatch as exc:
        counters.add("failures")
        log.error("C-STORE %s from %s refused: %s", affected, calling_aet, exc, extra={"sop_instance_uid": affected})
        return _status(Status.DATASET_DOES_NOT_MATCH, str(exc))
    except NonConformant as exc:
        counters.add("failures")
        log.error("C-STORE %s from %s refused: %s", affected, calling_aet, exc, extra={"sop_instance_uid": affected})
        return _status(Status.NON_CONFORMANT, str(exc))
    except Exception as exc:  # pydicom raises many kinds on a garbled stream
        counters.add("failures")
        # The library's message may quote element values: the type at ERROR, the text at DEBUG.
        log.error("C-STORE %s from %s: dataset cannot be decoded: %s", affected, calling_aet,
                  type(exc).__name__, extra={"sop_instance_uid": affected})
        log.debug("decode failure detail: %s", exc)
        return _status(Status.CANNOT_UNDERSTAND, f"dataset cannot be decoded: {type(exc).__name__}")
    extra = {"study_uid": header.study_uid, "sop_instance_uid": header.sop_instance_uid}
    try:
        return _archive_and_record(event, header, calling_aet, archive, sessions, counters)
    except ArchiveFull as exc:
        counters.add("failures")
        log.error("C-STORE %s refused: %s", header.sop_instance_uid, exc.strerror, extra=extra)
        return _status(Status.OUT_OF_RESOURCES, "archive out of disk space")
    except SQLAlchemyError as exc:
        counters.add("failures")
        log.error("C-STORE %s: database unavailable: %s", header.sop_instance_uid, type(exc).__name__, extra=extra)
        return _status(Status.DATABASE_UNAVAILABLE, "database unavailable")
    except Exception:
        counters.add("failures")
        log.exception("C-STORE %s: unexpected failure", header.sop_instance_uid, extra=extra)
        return _status(Status.PROCESSING_FAILURE, "processing failure")


def _archive_and_record(
    event: evt.Event,
    header: ReceivedHeader,
    calling_aet: str,
    archive: Archive,
    sessions: sessionmaker[Session],
    counters: StoreCounters,
) -> int | Dataset:
    encoded = event.encoded_dataset(include_meta=True)
    outcome = store_instance(archive, sessions, encoded, header, str(event.context.transfer_syntax), calling_aet=calling_aet)
    counters.add({RecordOutcome.NEW: "stored", RecordOutcome.DUPLICATE: "duplicates", RecordOutcome.CONFLICT: "conflicts"}[outcome])
    if outcome is RecordOutcome.CONFLICT:
        # Stored earlier with other content: the first copy stays. A warning, not a failure,
        # so the sender logs it and does not retry in a loop.
        return _status(Status.CONFLICT_FIRST_COPY_KEPT, "stored earlier with other content; first copy kept")
    return Status.SUCCESS


def make_ssl_context(certificate: str, private_key: str, ca_certificates: str = "") -> ssl.SSLContext:
    """Server-side TLS context; with ``ca_certificates`` peers must present a certificate it signed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=certificate, keyfile=private_key)
    if ca_certificates:
        context.load_verify_locations(cafile=ca_certificates)
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def _set_tcp_nodelay(event: evt.Event) -> None:
    """TCP_NODELAY on the node's socket: no Nagle + delayed-ACK stall per C-STORE."""
    try:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError):  # pragma: no cover - socket already gone
        pass


def _log_accepted(event: evt.Event) -> None:
    rq = event.assoc.requestor
    log.info("association accepted from %s (%s:%s)", rq.ae_title.strip(), rq.address, rq.port)


def _log_rejected(event: evt.Event) -> None:
    rq = event.assoc.requestor
    log.warning("association rejected from %s (%s:%s)", rq.ae_title.strip(), rq.address, rq.port)


class DicomNode:
    """The node's Application Entity: a plain listener and, when configured, a TLS one."""

    def __init__(self, config: Config, archive: Archive, sessions: sessionmaker[Session]) -> None:
        self.config = config
        self.archive = archive
        self.sessions = sessions
        self.counters = StoreCounters()
        self.servers: list[ThreadedAssociationServer] = []
        self.ae = self._make_ae()

    def _make_ae(self) -> AE:
        node = self.config.node
        ae = AE(ae_title=node.ae_title)
        ae.maximum_associations = node.max_associations
        ae.maximum_pdu_size = node.maximum_pdu_size
        ae.network_timeout = node.network_timeout_seconds
        ae.acse_timeout = node.network_timeout_seconds
        ae.dimse_timeout = node.network_timeout_seconds
        ae.require_called_aet = node.require_called_aet
        ae.require_calling_aet = list(node.allowed_calling_aets)
        ae.add_supported_context(sop_class.Verification)
        for cls in STORAGE_SOP_CLASSES:
            ae.add_supported_context(cls, list(TRANSFER_SYNTAXES))
        return ae

    def _handlers(self) -> list[Any]:
        return [
            (evt.EVT_CONN_OPEN, _set_tcp_nodelay),
            (evt.EVT_ACCEPTED, _log_accepted),
            (evt.EVT_REJECTED, _log_rejected),
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_C_STORE, handle_store, [self.archive, self.sessions, self.counters]),
        ]

    def start(self) -> None:
        """Start listening (non-blocking): the plain port, and the TLS port when enabled."""
        self.archive.remove_stale_temporary_files()
        node, tls = self.config.node, self.config.tls
        self.servers.append(self.ae.start_server((node.host, node.port), block=False, evt_handlers=self._handlers()))
        log.info("listening as %s on %s:%d", node.ae_title, node.host, self.port)
        if tls.enabled:
            context = make_ssl_context(tls.certificate, tls.private_key, tls.ca_certificates)
            self.servers.append(
                self.ae.start_server((node.host, tls.port), block=False, ssl_context=context, evt_handlers=self._handlers())
            )
            log.info("listening with TLS on %s:%d", node.host, self.tls_port)

    @property
    def port(self) -> int:
        return self.servers[0].server_address[1]

    @property
    def tls_port(self) -> int | None:
        return self.servers[1].server_address[1] if len(self.servers) > 1 else None

    def stop(self, grace_seconds: float | None = None) -> None:
        """Stop listening, then let associations in progress finish (up to ``grace_seconds``,
        default the network timeout) so a PACS push is not cut at every restart."""
        for server in self.servers:
            server.shutdown()
        self.servers.clear()
        deadline = time.monotonic() + (self.config.node.network_timeout_seconds if grace_seconds is None else grace_seconds)
        while self.ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.ae.active_associations:
            log.warning("stopping with %d associations still open", len(self.ae.active_associations))
        self.ae.shutdown()
        log.info("stopped; %s", self.counters)
