"""The node's listener: the Application Entity on the plain port and, when configured, the
TLS one, the receive processes that share them (SO_REUSEPORT), the start-up checks, and the
orderly stop that lets associations in progress finish. What one C-STORE does is
``dicom_node.receive.scp``; the network edge is ``dicom_node.receive._pynetdicom``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import ssl
import threading
import time
from dataclasses import replace
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, evt, sop_class
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from db.ingest import prepare_recording
from db.sop_classes import MASK_SOP_CLASSES, OUTLINE_SR_CLASSES
from dicom_node.config import Config
from dicom_node.metrics import MetricsServer, NodeMetrics, database_answers, forget_process
from dicom_node.receive import _pynetdicom
from dicom_node.receive._pynetdicom import NodeAssociationServer, UnsupportedPynetdicom, check_pynetdicom, start_server
from dicom_node.store.archive import Archive
from dicom_node.receive.limits import ConnectionTable, TransportLimits
from dicom_node.log_safety import OutageLog, RejectionLog, peer_text
from dicom_node.receive.scp import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES, Status, StoreCounters, handle_echo, handle_store

__all__ = ["DicomNode", "make_ssl_context", "UnsupportedPynetdicom"]

log = logging.getLogger(__name__)

#: the receive processes' start method (and so the context of the Events they share)
_SPAWN = multiprocessing.get_context("spawn")
#: the classes whose arrival can complete a study: SEG, RTSTRUCT, and the SRs a viewer outlines in
_MAYBE_MASK = MASK_SOP_CLASSES | OUTLINE_SR_CLASSES


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


def _log_accepted(event: evt.Event, metrics: NodeMetrics) -> None:
    metrics.association("accepted")
    rq = event.assoc.requestor
    log.info("association accepted from %s (%s:%s)", peer_text(rq.ae_title.strip(), 16), rq.address, rq.port)


def _log_rejected(event: evt.Event, refusals: RejectionLog, metrics: NodeMetrics) -> None:
    metrics.association("rejected")
    rq = event.assoc.requestor
    refusals.note(str(rq.address), "association rejected", f"calling AE {rq.ae_title.strip()}")


class DicomNode:
    """The node's Application Entity: a plain listener and, when configured, a TLS one."""

    def __init__(self, config: Config, archive: Archive, sessions: sessionmaker[Session], *,
                 receiver: bool = False, mask_arrivals: Any = None) -> None:
        self.config = config
        #: A receive process started by another node process: it shares that one's port.
        self.receiver = receiver
        #: set (in whichever receive process took it) when a mask, or an SR that may outline one,
        #: was archived: the worker of this node scans at once (``Worker.wake_on_masks``)
        #: instead of at its next interval. Shared with the receive processes when there are some.
        self.mask_arrivals = mask_arrivals if mask_arrivals is not None else (
            _SPAWN.Event() if config.receive_process_count() > 1 else threading.Event())
        self.archive = archive
        self.sessions = sessions
        self.counters = StoreCounters()
        self.refusals = RejectionLog(logging.getLogger("dicom_node.refused"))
        #: the database's outages on the receive path: one line when one starts, one when it ends
        self.outage = OutageLog(logging.getLogger("dicom_node.receive.scp"), "database",
                                "C-STOREs are answered 0xA701 (out of resources, retry later) until it answers")
        self.limits = self._limits()
        _pynetdicom.install(speedups=self.limits.speedups)  # spooling: memory does not grow with a dataset
        self.connections = ConnectionTable(self.limits, self.refusals)
        self.servers: list[NodeAssociationServer] = []
        self.metrics = NodeMetrics(self)
        self.refusals.on_refusal = self.metrics.refusal
        self.metrics_server: MetricsServer | None = None
        self.receivers: list[Any] = []
        self._receivers_stop: Any = None
        self.ae = self._make_ae()

    def _limits(self) -> TransportLimits:
        node = self.config.node
        return TransportLimits(
            acse_timeout=node.acse_timeout_seconds,
            network_timeout=node.network_timeout_seconds,
            maximum_pdu_size=node.maximum_pdu_size,
            max_associate_request_bytes=node.max_associate_request_bytes,
            max_associations=node.max_associations,
            max_associations_per_calling_ae=node.max_associations_per_calling_ae,
            max_negotiating_per_source=node.max_negotiating_per_source,
            max_negotiating=node.max_negotiating,
            max_instance_bytes=node.max_instance_size_mb * 2**20,
            spool_dir=self.archive.incoming,
            sync_spool=self.archive.fsync,
            reuse_port=self.config.receive_process_count() > 1 or self.receiver,
            speedups=node.receive_speedups,
        )

    def _make_ae(self) -> AE:
        node = self.config.node
        ae = AE(ae_title=node.ae_title)
        # Slots are counted by dicom_node.receive._pynetdicom (only associations that sent a valid
        # A-ASSOCIATE-RQ); pynetdicom's own count includes connections still negotiating.
        ae.maximum_associations = 1_000_000
        ae.maximum_pdu_size = node.maximum_pdu_size
        ae.network_timeout = node.network_timeout_seconds
        ae.acse_timeout = node.acse_timeout_seconds
        ae.dimse_timeout = node.network_timeout_seconds
        ae.require_called_aet = node.require_called_aet
        ae.require_calling_aet = list(node.allowed_calling_aets)
        ae.add_supported_context(sop_class.Verification)
        for cls in STORAGE_SOP_CLASSES:
            ae.add_supported_context(cls, list(TRANSFER_SYNTAXES))
        return ae

    def _handlers(self) -> list[Any]:
        return [
            (evt.EVT_ACCEPTED, _log_accepted, [self.metrics]),
            (evt.EVT_REJECTED, _log_rejected, [self.refusals, self.metrics]),
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_C_STORE, self._on_store),
        ]

    def _on_store(self, event: evt.Event) -> int | Dataset:
        result = handle_store(event, self.archive, self.sessions, self.counters, self.limits.max_instance_bytes,
                              self.refusals, self.outage)
        status = int(result.Status) if isinstance(result, Dataset) else int(result)
        try:
            size = event.dataset_path.stat().st_size if status in (Status.SUCCESS, Status.CONFLICT_FIRST_COPY_KEPT) else 0
        except OSError:
            size = 0
        self.metrics.stored(status, size)
        if status == Status.SUCCESS and str(event.request.AffectedSOPClassUID or "") in _MAYBE_MASK:
            self.mask_arrivals.set()
        return result

    def health(self) -> tuple[bool, str]:
        """(healthy, why) for /healthz: listening, and the database answers."""
        if not self.servers:
            return False, "not listening"
        if not database_answers(self.sessions):
            return False, "database does not answer"
        return True, "ok"

    def start(self) -> None:
        """Start listening (non-blocking): the plain port, and the TLS port when enabled."""
        check_pynetdicom()  # UnsupportedPynetdicom: another release would silently drop protections
        self.archive.check_writable()  # ArchiveNotWritable / ArchiveFull: the node does not start
        self.archive.remove_stale_temporary_files()
        try:
            prepare_recording(self.sessions.kw["bind"])
        except SQLAlchemyError as exc:  # C-STOREs answer 0xA701 until it answers; /healthz says so
            log.warning("database does not answer at start: %s", type(exc).__name__)
        node, tls = self.config.node, self.config.tls
        self.servers.append(self._listen((node.host, node.port)))
        log.info("listening as %s on %s:%d", node.ae_title, node.host, self.port)
        if tls.enabled:
            context = make_ssl_context(tls.certificate, tls.private_key, tls.ca_certificates)
            self.servers.append(self._listen((node.host, tls.port), context))
            log.info("listening with TLS on %s:%d", node.host, self.tls_port)
        self._housekeeping_stop = threading.Event()
        threading.Thread(target=self._housekeeping, name="RefusalSummaries", daemon=True).start()
        if not self.receiver:  # one check per node, not one per receive process
            threading.Thread(target=self._check_archive, name="ArchiveCheck", daemon=True).start()
        processes = self.config.receive_process_count()
        if processes > 1 and not self.receiver:
            self._start_receivers(processes - 1)
        monitoring = self.config.monitoring
        if monitoring.enabled:
            self.metrics_server = MetricsServer(monitoring.host, monitoring.port, self.metrics, self.health)
            log.info("metrics on http://%s:%d/metrics", monitoring.host, self.metrics_server.port)

    def _listen(self, address: tuple[str, int], ssl_context: ssl.SSLContext | None = None) -> NodeAssociationServer:
        return start_server(self.ae, address, limits=self.limits, connections=self.connections,
                            ssl_context=ssl_context, evt_handlers=self._handlers())

    def _check_archive(self) -> None:
        """The quick part of ``egfr-node check`` (no hashing), while the node already listens:
        files without rows, rows without files, stale leases; a warning says what to run."""
        from dicom_node.check import check_node

        try:
            report = check_node(self.archive, self.sessions, quarantine=self.config.storage.data_path / "quarantine",
                                hash_files=False)
        except Exception as exc:  # the database may not answer yet: the check is advice, not a gate
            log.warning("archive check at start not done: %s", type(exc).__name__)
            return
        lines = report.lines()
        if report.clean:
            log.info("archive check at start: %s", "; ".join(lines))
        else:
            log.warning("archive check at start: %s; run `egfr-node check` (hashes every file) and "
                        "`egfr-node check --repair`", "; ".join(lines))

    def _housekeeping(self) -> None:
        while not self._housekeeping_stop.wait(1.0):
            self.refusals.flush_expired()
            self.metrics.refresh_gauges()  # a receive process's gauges reach the shared page
            for process in list(self.receivers):
                if not process.is_alive() and not self._receivers_stop.is_set():
                    log.error("receive process %s ended with exit code %s; this process still listens",
                              process.name, process.exitcode)
                    self.receivers.remove(process)
                    forget_process(process.pid)

    def _start_receivers(self, count: int) -> None:
        """More processes on the same port(s) (SO_REUSEPORT): the kernel spreads connections
        over them, so parallel associations use several cores. They share the archive and
        the database; each has its own limits; their metrics are summed on this process's
        page (``dicom_node.shared_metrics.share_metrics_between_processes``)."""
        self._receivers_stop = _SPAWN.Event()
        node = replace(self.config.node, port=self.port, receive_processes=1)
        tls = replace(self.config.tls, port=self.tls_port) if self.tls_port else self.config.tls
        config = replace(self.config, node=node, tls=tls, monitoring=replace(self.config.monitoring, enabled=False))
        for index in range(count):
            process = _SPAWN.Process(target=_receiver_main,
                                     args=(config, self._receivers_stop, os.getpid(), self.mask_arrivals),
                                     name=f"egfr-node-receiver-{index + 1}", daemon=False)
            process.start()
            self.receivers.append(process)
        log.info("%d more receive processes on port %d", count, self.port)

    def _stop_receivers(self, grace: float) -> None:
        if not self.receivers:
            return
        self._receivers_stop.set()
        deadline = time.monotonic() + grace + 5
        for process in self.receivers:
            process.join(max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(2)
            if process.pid is not None:
                forget_process(process.pid)
        self.receivers.clear()

    @property
    def port(self) -> int:
        return int(self.servers[0].server_address[1])

    @property
    def tls_port(self) -> int | None:
        return self.servers[1].server_address[1] if len(self.servers) > 1 else None

    def stop(self, grace_seconds: float | None = None) -> None:
        """Stop listening, drop connections still negotiating, let associations in progress
        finish (up to ``grace_seconds``, default the network timeout) so a PACS push is not
        cut at every restart, then close whatever is left: this returns within the grace
        plus a few seconds whatever the peers do."""
        grace = self.config.node.network_timeout_seconds if grace_seconds is None else grace_seconds
        if self._receivers_stop is not None:
            self._receivers_stop.set()  # they stop in parallel with this one
        for server in self.servers:
            server.shutdown()
        self.servers.clear()
        self.connections.close(negotiating_only=True)
        deadline = time.monotonic() + grace
        while self.connections.counts()["established"] and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.connections.counts()["established"]:
            log.warning("stopping with %d associations still open", self.connections.counts()["established"])
        self.connections.close()
        deadline = time.monotonic() + 3.0
        while (any(self.connections.counts().values()) or self.ae.active_associations) and time.monotonic() < deadline:
            time.sleep(0.02)
        for assoc in self.ae.active_associations:
            assoc.kill()  # stuck after its socket closed: end its threads without a network exchange
        self.ae.shutdown()
        if self.metrics_server is not None:
            self.metrics_server.stop()
            self.metrics_server = None
        self._stop_receivers(grace)
        if getattr(self, "_housekeeping_stop", None) is not None:
            self._housekeeping_stop.set()
        self.refusals.flush()
        log.info("stopped; %s", self.counters)


def _receiver_main(config: Config, stop: Any, parent_pid: int, mask_arrivals: Any = None) -> None:
    """A receive process: the same SCP on the same port until told to stop (or the parent dies)."""
    import signal

    from dicom_node.log_safety import configure_logging

    from dicom_node.store.open import open_runtime

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    configure_logging(config.logging.level)
    runtime = open_runtime(config, check_schema=False)
    node = DicomNode(config, runtime.archive, runtime.sessions, receiver=True, mask_arrivals=mask_arrivals)
    node.start()
    try:
        while not stop.wait(0.5):
            if os.getppid() != parent_pid:  # the parent was killed: do not linger on the port
                break
    finally:
        node.stop()
        runtime.close()
