"""The node's DICOM transport: pynetdicom's association server with the limits a hospital
network needs. This is the one place the node overrides pynetdicom (3.0) internals, and
each override is the smallest that removes one behaviour:

1. ``socket.accept()`` returns a blocking socket without timeout, and
   ``DULServiceProvider._read_pdu_data`` then does a blocking ``recv`` of whatever length the
   PDU header declares: a peer that declares more than it sends holds the connection and its
   two threads for ever; the ARTIM timer is only looked at between PDUs; ``AE.shutdown``
   cannot abort it (the DUL thread is not a daemon, so the process cannot exit either).
   :meth:`NodeDUL._read_pdu_data` reads with deadlines: the whole A-ASSOCIATE-RQ within
   ``acse_timeout`` of the connection, afterwards each PDU within ``network_timeout`` of its
   first byte.
2. The declared PDU length is compared with nothing (a 4 GiB declaration is read into
   memory). Here: before association at most ``max_associate_request_bytes``; afterwards a
   P-DATA-TF at most the maximum PDU size the node announced; an unknown PDU type, or any
   PDU but an A-ASSOCIATE-RQ before association, drops the connection at once.
3. ``AE.maximum_associations`` counts every acceptor thread, including connections that never
   sent an A-ASSOCIATE-RQ: ten silent sockets refuse every PACS with "local limit exceeded".
   Here the AE's own count is disabled and a slot is taken only when a valid A-ASSOCIATE-RQ
   arrives (``EVT_REQUESTED``, :meth:`NodeAssociationServer._on_requested`), with a limit per
   calling AE title too; connections still negotiating have their own budget per source
   address and overall (when that is full the oldest negotiating connection is dropped).
4. ``AssociationServer.get_request`` runs the TLS handshake in the accept loop without a
   timeout: one silent TLS client stops every accept. Here the handshake runs in the
   connection's own thread under the ACSE timeout.
5. ``_config.STORE_RECV_CHUNKED_DATASET`` spools a C-STORE dataset to a ``NamedTemporaryFile``
   in the system temp folder, with no bound on its size, and leaves it (open, on disk) when
   the connection ends mid-dataset. Here it spools into the archive's ``.incoming`` folder
   (same file system: linked into place, not copied), the dataset bytes are counted as they
   arrive (past ``max_instance_bytes`` the rest is discarded and the C-STORE handler answers
   0xA700), and a partial spool file is removed when the connection ends.
6. ``DULServiceProvider.receive_pdu(wait=True, timeout=acse_timeout)`` keeps the association
   thread waiting after its DUL has ended; here the wait ends with the DUL.
7. The DUL reactor and the association reactor poll: each sleeps 1 ms whenever it finds
   nothing to do, so every C-STORE waits up to 1 ms for its dataset to be noticed, 1 ms for
   the message to reach the handler and 1 ms for the response to be sent (at one
   association that is most of a store-nothing SCP's time per instance). Here each waits
   for its work instead, still at most 1 ms so pynetdicom's timers are looked at as often:
   the DUL in ``select`` on its socket and a wake-up socket that a primitive queued for
   sending writes to (:attr:`NodeDUL._run_loop_delay`); the association on an event set when
   a message or primitive is queued for it (:class:`_ReactorClock`). The DUL reactor then
   sleeps the 0 s that delay returns, which only hands the GIL to a busy association thread
   and waits to get it back; :class:`_ReactorClock` skips it (7% more instances per second at
   one association, ``tests/bench_ingest.py``).
8. Not a pynetdicom fault, a use of its two threads: once a C-STORE's dataset is whole in
   its spool file and the message queued for the association thread, the DUL thread, which
   waits for the peer until the response goes back, fsyncs the spool (``sync_spool``,
   :class:`_MessageQueue`). The disk works while the association thread checks the dataset;
   the archive waits for that fsync (:func:`spool_synced`) before it links the file. A
   helper thread would not do: it must take the GIL to start, and the checking thread
   holds it until it waits.
9. pynetdicom encodes the spool's File Meta Information and every C-STORE-RSP with
   pydicom's generic writer (the response twice). Here both are the libraries' own
   encodings memoised (``dicom_node.encoding_cache``): ``dimse_messages.create_file_meta``
   and ``write_file_meta_info`` write the memoised bytes (:func:`_write_file_meta`), and
   :meth:`NodeDIMSE.send_msg` sends a plain C-STORE-RSP from them; anything else goes
   through pynetdicom unchanged.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import queue
import select
import socket
import ssl
import struct
import threading
import time
from concurrent.futures import Future
from copy import deepcopy
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from pynetdicom import _config as pynetdicom_config, association as pynetdicom_association, dimse_messages, evt
from pynetdicom import dul as pynetdicom_dul
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from dicom_node.encoding_cache import FileMetaValues, encoded_file_meta, encoded_store_response
from dicom_node.log_safety import RejectionLog, peer_text

__all__ = [
    "TransportLimits",
    "ConnectionTable",
    "NodeAssociationServer",
    "DatasetVerdict",
    "take_dataset_verdict",
    "start_server",
    "install_spooling",
    "spool_error",
    "spool_sha256",
    "spool_synced",
]

log = logging.getLogger(__name__)

#: The fixed-size PDUs (A-RELEASE-RQ/RP, A-ABORT) have a 4-byte body; allow a little more.
_SMALL_PDU_BYTES = 64
#: pynetdicom's reactor sleep; override 7 waits for work instead, at most ``_MAX_WAIT_SECONDS``
#: (the same 1 ms, so pynetdicom's timers are looked at as often as before).
_PYNETDICOM_POLL_SECONDS = 0.001
_MAX_WAIT_SECONDS = 0.001


class _SignallingQueue(queue.Queue):  # type: ignore[type-arg]
    """A queue that calls ``signal`` after every put (override 7)."""

    def __init__(self, signal: Callable[[], None]) -> None:
        super().__init__()
        self._signal = signal

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._signal()


class _MessageQueue(_SignallingQueue):
    """An association's queue of DIMSE messages, which its DUL thread puts whole messages
    on: a C-STORE's spool file is fsynced right after its message is queued (override 8)."""

    def __init__(self, signal: Callable[[], None], sync_spool: bool) -> None:
        super().__init__(signal)
        self._sync_spool = sync_spool

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        spool = getattr(item[1], "_dataset_file", None) if self._sync_spool and isinstance(item, tuple) else None
        if not isinstance(spool, SpoolFile):
            super().put(item, block, timeout)
            return
        spool.synced = Future()
        try:
            super().put(item, block, timeout)  # the association thread starts checking it
        finally:
            spool.sync()  # os.fsync lets go of the GIL: the check runs meanwhile


@dataclass(frozen=True)
class TransportLimits:
    """What one connection may cost (seconds, bytes, counts); see default-config.toml [node]."""

    acse_timeout: float = 10.0
    network_timeout: float = 60.0
    maximum_pdu_size: int = 262144
    max_associate_request_bytes: int = 1 << 20
    max_associations: int = 10
    max_associations_per_calling_ae: int = 0
    max_negotiating_per_source: int = 8
    max_negotiating: int = 64
    max_instance_bytes: int = 1 << 30
    spool_dir: Path | None = None
    #: fsync a C-STORE's spool file in the DUL thread once it is whole (override 8).
    sync_spool: bool = False
    reuse_port: bool = False

    @property
    def max_p_data_bytes(self) -> int:
        """Largest P-DATA-TF body accepted: the announced maximum (0 = unlimited: one instance)."""
        return self.maximum_pdu_size if self.maximum_pdu_size else self.max_instance_bytes + 65536

    @property
    def listen_backlog(self) -> int:
        return self.max_associations + self.max_negotiating


@dataclass(eq=False)
class Connection:
    """One accepted TCP connection, from accept until its DUL thread ends."""

    source: str
    since: float
    sock: Any
    established: bool = False
    calling_ae: str = ""

    def close(self) -> None:
        """Wake whatever thread reads this socket: the peer looks gone to it."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except (OSError, AttributeError, ValueError):
            pass


class ConnectionTable:
    """Connections by stage: negotiating (budget per source and overall) and established
    (``max_associations``, and per calling AE title)."""

    def __init__(self, limits: TransportLimits, rejections: RejectionLog) -> None:
        self.limits = limits
        self.rejections = rejections
        self._lock = threading.Lock()
        self._all: set[Connection] = set()
        self._ids: dict[int, Connection] = {}

    def admit(self, source: str, sock: socket.socket) -> Connection:
        """A new connection. When its source already has its budget of negotiating ones, the
        oldest of those is dropped (a peer behind the same address as a stalling one, a PACS
        behind the same NAT, still gets in); when all sources together have theirs, the oldest
        of all is."""
        evicted: tuple[Connection, str] | None = None
        with self._lock:
            negotiating = [c for c in self._all if not c.established]
            same_source = [c for c in negotiating if c.source == source]
            if len(same_source) >= self.limits.max_negotiating_per_source:
                evicted = (min(same_source, key=lambda c: c.since),
                           "dropped: oldest of too many connections negotiating from this address")
            elif len(negotiating) >= self.limits.max_negotiating:
                evicted = (min(negotiating, key=lambda c: c.since), "dropped: oldest of too many connections negotiating")
            if evicted is not None:
                self._discard(evicted[0])
            conn = Connection(source, time.monotonic(), sock)
            self._all.add(conn)
            self._ids[id(conn)] = conn
        if evicted is not None:
            evicted[0].close()
            self.rejections.note(evicted[0].source, evicted[1])
        return conn

    def establish(self, conn: Connection, calling_ae: str) -> str | None:
        """Take an association slot for ``conn``; the reason when none is left."""
        with self._lock:
            established = [c for c in self._all if c.established]
            if len(established) >= self.limits.max_associations:
                return "association limit reached (node.max_associations)"
            per_ae = self.limits.max_associations_per_calling_ae
            if per_ae and sum(1 for c in established if c.calling_ae == calling_ae) >= per_ae:
                return "association limit of this calling AE reached (node.max_associations_per_calling_ae)"
            conn.established = True
            conn.calling_ae = calling_ae
        return None

    def release(self, conn: Connection) -> None:
        with self._lock:
            self._discard(conn)

    def _discard(self, conn: Connection) -> None:
        self._all.discard(conn)
        self._ids.pop(id(conn), None)

    def counts(self) -> dict[str, int]:
        with self._lock:
            established = sum(1 for c in self._all if c.established)
            return {"established": established, "negotiating": len(self._all) - established}

    def close(self, *, negotiating_only: bool = False) -> None:
        with self._lock:
            chosen = [c for c in self._all if not (negotiating_only and c.established)]
        for conn in chosen:
            conn.close()


@dataclass(frozen=True)
class DatasetVerdict:
    """What arrived of one C-STORE dataset on the wire."""

    wire_bytes: int
    over_limit: bool


def take_dataset_verdict(assoc: Association) -> DatasetVerdict | None:
    """The verdict on the oldest dataset completed on ``assoc`` (None outside :class:`NodeDUL`)."""
    dul = assoc.dul
    if isinstance(dul, NodeDUL):
        try:
            return dul.verdicts.popleft()
        except IndexError:
            return None
    return None


# --- spooling: override 5 ------------------------------------------------------------------

_spool = threading.local()
_NamedTemporaryFile = dimse_messages.NamedTemporaryFile


class SpoolFile:
    """pynetdicom's spool file, wrapped so that a failed write (disk full) does not end the
    association: pynetdicom writes in the DUL thread, where an exception aborts it. The
    failure is kept (``error``) and the C-STORE handler answers 0xA700. Every byte is hashed
    as it is written (``sha256``), so the archive need not read the file again for it."""

    def __init__(self, file: Any) -> None:
        self._file = file
        self.file = self  # pynetdicom calls ``.file.flush()``
        self.name = file.name
        self.error: OSError | None = None
        self._hash = hashlib.sha256()
        #: The fsync of the whole file, once started (override 8).
        self.synced: Future[None] | None = None

    def sync(self) -> None:
        """fsync what was written; the outcome (or its OSError) goes to ``synced``, which
        must be set before the message that carries this file is queued."""
        synced = self.synced
        if synced is None:
            return
        try:
            if self.error is None:
                os.fsync(self._file.fileno())
        except Exception as exc:  # OSError, or ValueError for a file closed meanwhile: never left unset
            synced.set_exception(exc)
        else:
            synced.set_result(None)

    def write(self, data: bytes) -> int:
        if self.error is None:
            try:
                written = self._file.write(data)
                self._hash.update(data)
                return written
            except OSError as exc:
                self.error = exc
        return len(data)

    @property
    def sha256(self) -> str | None:
        """The hex sha256 of what was written (None after a write error)."""
        return self._hash.hexdigest() if self.error is None else None

    def flush(self) -> None:
        if self.error is None:
            try:
                self._file.flush()
            except OSError as exc:
                self.error = exc

    def close(self) -> None:
        try:
            self._file.close()
        except OSError as exc:
            self.error = self.error or exc


def _spool_file(*args: Any, **kwargs: Any) -> Any:
    """pynetdicom's spool file, in the archive's ``.incoming`` when the DUL thread set one,
    named as the archive's temporary files are (its start-up sweep removes orphans)."""
    folder = getattr(_spool, "folder", None)
    if folder is None:
        return _NamedTemporaryFile(*args, **kwargs)
    kwargs.update(dir=folder, prefix=f"{socket.gethostname()}-{os.getpid()}-", suffix=".tmp")
    try:
        return SpoolFile(_NamedTemporaryFile(*args, **kwargs))
    except OSError as exc:  # cannot even create it (disk full, no inodes)
        spool = SpoolFile(open(os.devnull, "wb"))
        spool.name = str(Path(folder) / f"unwritten-{id(spool)}.tmp")
        spool.error = exc
        return spool


def spool_error(request: Any) -> OSError | None:
    """The write error of a C-STORE request's spool file, if writing it failed."""
    return getattr(getattr(request, "_dataset_file", None), "error", None)


def spool_sha256(request: Any) -> str | None:
    """The sha256 of a C-STORE request's spool file as written (None when not known)."""
    return getattr(getattr(request, "_dataset_file", None), "sha256", None)


def spool_synced(request: Any) -> Future[None] | None:
    """The fsync of a C-STORE request's spool file that its DUL thread runs (override 8);
    None when it does not (the archive fsyncs the file itself)."""
    return getattr(getattr(request, "_dataset_file", None), "synced", None)


def install_spooling() -> None:
    """C-STORE datasets go to disk as they arrive (pynetdicom's chunked receive), headed by
    the memoised file meta (override 9); the node's reactors wait for work instead of
    polling (override 7)."""
    pynetdicom_config.STORE_RECV_CHUNKED_DATASET = True
    dimse_messages.NamedTemporaryFile = _spool_file
    dimse_messages.create_file_meta = FileMetaValues  # called with the three values by keyword
    dimse_messages.write_file_meta_info = _write_file_meta
    pynetdicom_association.time = _ReactorClock()
    pynetdicom_dul.time = _ReactorClock()


_pydicom_write_file_meta_info = dimse_messages.write_file_meta_info


def _write_file_meta(fp: Any, file_meta: Any, *args: Any, **kwargs: Any) -> None:
    """``write_file_meta_info`` in ``pynetdicom.dimse_messages``: the memoised encoding of
    the values ``create_file_meta`` was given (override 9)."""
    if isinstance(file_meta, FileMetaValues):
        fp.write(encoded_file_meta(file_meta))
    else:
        _pydicom_write_file_meta_info(fp, file_meta, *args, **kwargs)


def _discard_partial_spool(assoc: Association) -> None:
    message = getattr(assoc.dimse, "message", None)
    spool = getattr(message, "_data_set_file", None)
    if spool is None:
        return
    try:
        spool.close()
        os.unlink(spool.name)
    except OSError:
        pass


# --- the DUL: overrides 1, 2, 5, 6 ---------------------------------------------------------


class _PeerClosed(Exception):
    pass


class NodeDUL(DULServiceProvider):
    """pynetdicom's DUL with bounded reads (see the module docstring)."""

    def __init__(self, assoc: "NodeAssociation", limits: TransportLimits, connection: Connection,
                 table: ConnectionTable) -> None:
        super().__init__(assoc)
        self.limits = limits
        self.connection = connection
        self.table = table
        self.verdicts: collections.deque[DatasetVerdict] = collections.deque(maxlen=64)
        self._dataset_bytes = 0
        self._dataset_over = False
        self._finished = threading.Event()
        self._request_read = False
        self._wake_r: socket.socket | None = None  # made when the reactor runs, closed when it ends
        self._wake_w: socket.socket | None = None
        self.to_provider_queue = _SignallingQueue(self._wake)
        self.to_user_queue = _SignallingQueue(assoc.work_queued.set)  # a NodeAssociation's

    def _open_wake_up(self) -> None:
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    def _wake(self) -> None:
        wake = self._wake_w
        if wake is not None:
            try:
                wake.send(b"\0")
            except OSError:  # full (a wake-up is pending anyway) or closed (the reactor ended)
                pass

    @property
    def _run_loop_delay(self) -> float:
        """pynetdicom's reactor reads this just before it sleeps because it found nothing to
        do: on the reactor's own thread, wait here (at most its 1 ms) until the socket has
        data or a primitive is queued, then let it sleep 0 (override 7)."""
        if threading.current_thread() is not self:
            return _PYNETDICOM_POLL_SECONDS
        self.wait_for_work(_MAX_WAIT_SECONDS)
        return 0.0

    def wait_for_work(self, timeout: float) -> None:
        """Return when the socket has data, a primitive is queued to send or an event to
        handle, or ``timeout`` has passed (override 7)."""
        if self._wake_r is None:
            return
        watched: list[Any] = [self._wake_r]
        sock = self.socket.socket if self.socket is not None else None
        if sock is not None:
            if isinstance(sock, ssl.SSLSocket) and sock.pending():
                return
            watched.append(sock)
        if not self.to_provider_queue.empty() or not self.event_queue.empty():
            return
        try:
            ready, _, _ = select.select(watched, [], [], timeout)
        except (OSError, ValueError):  # the socket closed meanwhile: pynetdicom notices next
            time.sleep(timeout)
            return
        if self._wake_r in ready:
            try:
                self._wake_r.recv(4096)
            except OSError:
                pass

    @_run_loop_delay.setter
    def _run_loop_delay(self, value: float) -> None:
        pass  # pynetdicom's __init__ sets its constant 1 ms

    def run_reactor(self) -> None:
        _spool.folder = self.limits.spool_dir
        self._open_wake_up()
        try:
            super().run_reactor()
        finally:
            _discard_partial_spool(self.assoc)
            self.table.release(self.connection)
            wake_r, wake_w = self._wake_r, self._wake_w
            self._wake_w = None
            wake_r.close()
            wake_w.close()
            self._finished.set()

    def receive_pdu(self, wait: bool = False, timeout: float | None = None) -> Any:
        """As pynetdicom's, but a wait ends when this DUL has ended (override 6)."""
        if not wait:
            return super().receive_pdu(wait=False)
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            step = 0.1 if end is None else min(0.1, end - time.monotonic())
            if step <= 0:
                return None
            primitive = super().receive_pdu(wait=True, timeout=step)
            if primitive is not None:
                return primitive
            if self._finished.is_set() and self.to_user_queue.empty():
                return None

    def _read_pdu_data(self) -> None:
        """Read one PDU with a deadline and a length cap (overrides 1 and 2)."""
        sock = self.socket.socket if self.socket is not None else None
        if sock is None:
            self.event_queue.put("Evt17")
            return
        negotiating = not self._request_read  # no A-ASSOCIATE-RQ yet on this connection
        acse_deadline = self.connection.since + self.limits.acse_timeout
        try:
            deadline = acse_deadline if negotiating else time.monotonic() + self.limits.network_timeout
            header = self._recv_exact(sock, 6, deadline)
            pdu_type, _, length = struct.unpack(">BBL", header)
            problem = self._check_header(negotiating, pdu_type, length)
            if problem:
                self._drop(problem)
                return
            if not negotiating:
                deadline = time.monotonic() + self.limits.network_timeout
            body = self._recv_exact(sock, length, deadline)
        except _PeerClosed:
            self.event_queue.put("Evt17")
            return
        except TimeoutError:
            self._drop("no A-ASSOCIATE-RQ within node.acse_timeout_seconds" if negotiating
                       else "PDU not complete within node.network_timeout_seconds", abort=not negotiating)
            return
        except OSError:
            self.event_queue.put("Evt17")
            return
        if pdu_type == 0x04:
            body = self._account_p_data(body)
            header = struct.pack(">BBL", 0x04, 0, len(body))
        try:
            pdu, event = self._decode_pdu(bytearray(header) + body)
        except Exception as exc:
            self._drop(f"undecodable PDU type 0x{pdu_type:02X}: {type(exc).__name__}")
            return
        self._request_read = True
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)

    def _check_header(self, negotiating: bool, pdu_type: int, length: int) -> str | None:
        if pdu_type not in (1, 2, 3, 4, 5, 6, 7):
            return f"unknown PDU type 0x{pdu_type:02X}"
        if negotiating and pdu_type != 0x01:
            return f"PDU type 0x{pdu_type:02X} before an A-ASSOCIATE-RQ"
        if pdu_type in (1, 2, 3):
            limit = self.limits.max_associate_request_bytes
        elif pdu_type == 4:
            limit = self.limits.max_p_data_bytes
        else:
            limit = _SMALL_PDU_BYTES
        if length > limit:
            return f"PDU type 0x{pdu_type:02X} declares {length} bytes, over the limit of {limit}"
        return None

    def _recv_exact(self, sock: socket.socket, n: int, deadline: float) -> bytes:
        buffer = bytearray(n)
        view = memoryview(buffer)
        got = 0
        while got < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
            try:
                count = sock.recv_into(view[got:], min(n - got, 1 << 20))
            except socket.timeout:
                raise TimeoutError from None
            if count == 0:
                raise _PeerClosed
            got += count
        return bytes(buffer)

    def _account_p_data(self, body: bytes) -> bytes:
        """Count dataset bytes per message; past the instance limit drop the payload (override 5)."""
        offset = 0
        stripped = []
        end = len(body)
        while offset + 6 <= end:
            (item_length,) = struct.unpack_from(">L", body, offset)
            if item_length < 2 or offset + 4 + item_length > end:
                break  # malformed: pynetdicom's decoder refuses it
            control = body[offset + 5]
            if not control & 1:  # a dataset fragment
                self._dataset_bytes += item_length - 2
                if self._dataset_bytes > self.limits.max_instance_bytes:
                    self._dataset_over = True
                if self._dataset_over:
                    stripped.append((offset, item_length))
                if control & 2:  # its last fragment
                    self.verdicts.append(DatasetVerdict(self._dataset_bytes, self._dataset_over))
                    self._dataset_bytes, self._dataset_over = 0, False
            offset += 4 + item_length
        if not stripped:
            return body
        parts, cursor = [], 0
        for start, item_length in stripped:
            parts.append(body[cursor:start])
            parts.append(struct.pack(">L", 2) + body[start + 4:start + 6])
            cursor = start + 4 + item_length
        parts.append(body[cursor:])
        return b"".join(parts)

    def _drop(self, reason: str, *, abort: bool = True) -> None:
        """Refuse the peer: an A-ABORT (best effort, one second), then close the connection."""
        self.table.rejections.note(self.connection.source, reason)
        sock = self.socket.socket if self.socket is not None else None
        if abort and sock is not None:
            pdu = A_ABORT_RQ()
            pdu.source = 0x02
            pdu.reason_diagnostic = 0x00
            try:
                sock.settimeout(1.0)
                sock.sendall(pdu.encode())
            except OSError:
                pass
        if self.socket is not None:
            self.socket.close()  # Evt17: the state machine ends the association
        else:
            self.event_queue.put("Evt17")


class _ReactorClock:
    """The ``time`` module of ``pynetdicom.association`` and ``pynetdicom.dul`` (override 7):
    the association reactor's 1 ms sleep, on the thread of a :class:`NodeAssociation`, ends as
    soon as a message or primitive is queued for it; the DUL reactor's 0 s sleep (after
    :attr:`NodeDUL._run_loop_delay` waited) is skipped. Every other use is the real ``time``."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        if seconds <= 0:
            return
        event = getattr(threading.current_thread(), "work_queued", None)
        if seconds == _PYNETDICOM_POLL_SECONDS and isinstance(event, threading.Event):
            if event.wait(_MAX_WAIT_SECONDS):
                event.clear()
            return
        time.sleep(seconds)


class NodeDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider; a plain C-STORE-RSP is sent from its memoised encoding (override 9)."""

    def send_msg(self, primitive: Any, context_id: int) -> None:
        if (
            type(primitive) is C_STORE
            and primitive.MessageIDBeingRespondedTo is not None
            and primitive.ErrorComment is None
            and primitive.OffendingElement is None
            and not self.assoc.get_handlers(evt.EVT_DIMSE_SENT)
        ):
            command = encoded_store_response(primitive.MessageIDBeingRespondedTo, primitive.AffectedSOPClassUID,
                                             primitive.AffectedSOPInstanceUID, primitive.Status)
            if command is not None and (not self.maximum_pdu_size or len(command) + 6 <= self.maximum_pdu_size):
                pdata = P_DATA()
                pdata.presentation_data_value_list.append((context_id, b"\x03" + command))  # last command fragment
                self.dul.send_pdu(pdata)
                return
        super().send_msg(primitive, context_id)


class NodeAssociation(Association):
    """An acceptor Association whose DUL is a :class:`NodeDUL`."""

    def __init__(self, ae: Any, mode: str, limits: TransportLimits, connection: Connection,
                 table: ConnectionTable) -> None:
        super().__init__(ae, mode)
        #: Set when a DIMSE message or a DUL primitive is queued for this association (override 7).
        self.work_queued = threading.Event()
        self.dimse = NodeDIMSE(self)
        self.dimse.msg_queue = _MessageQueue(self.work_queued.set, limits.sync_spool)
        self.dul = NodeDUL(self, limits, connection, table)
        # the timeout setters configure the DUL's timers: apply them to the new DUL
        self.acse_timeout = limits.acse_timeout
        self.network_timeout = limits.network_timeout


class NodeRequestHandler(RequestHandler):
    """pynetdicom's request handler, creating a :class:`NodeAssociation`."""

    server: "NodeAssociationServer"

    def __init__(self, request: Any, client_address: Any, server: Any, connection: Connection) -> None:
        self.connection = connection
        super().__init__(request, client_address, server)

    def _create_association(self) -> Association:
        # pynetdicom.transport.RequestHandler._create_association, with NodeAssociation
        assoc = NodeAssociation(self.ae, "acceptor", self.server.limits, self.connection, self.server.connections)
        assoc._server = self.server
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        assoc.set_socket(AssociationSocket(assoc, client_socket=self.request))
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = deepcopy(self.server.contexts)
        assoc.requestor.address_info = self.remote
        for event in self.server._handlers:
            if event.is_intervention and self.server._handlers[event]:
                assoc.bind(event, *self.server._handlers[event])
            elif isinstance(event, evt.NotificationEvent):
                for handler in self.server._handlers[event]:
                    assoc.bind(event, handler[0], handler[1])
        return assoc


class NodeAssociationServer(ThreadedAssociationServer):
    """The listener: admission per source, TLS handshakes off the accept loop, slots at
    A-ASSOCIATE-RQ (overrides 3 and 4)."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, ae: Any, address: tuple[str, int], *, limits: TransportLimits, connections: ConnectionTable,
                 ssl_context: Any = None, evt_handlers: list[Any] | None = None) -> None:
        self.limits = limits
        self.connections = connections
        self.request_queue_size = limits.listen_backlog
        super().__init__(ae, address, ae.ae_title, ae.supported_contexts, ssl_context, evt_handlers)
        self.bind(evt.EVT_REQUESTED, self._on_requested)

    def server_bind(self) -> None:
        if self.limits.reuse_port:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, Any]:
        # pynetdicom wraps TLS here, in the accept loop; the handshake moves to the connection's thread
        return self.socket.accept()

    def process_request(self, request: Any, client_address: Any) -> None:
        source = str(client_address[0])
        conn = self.connections.admit(source, request)
        try:
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            request.settimeout(self.limits.acse_timeout)
            thread = threading.Thread(target=self._serve_connection, args=(request, client_address, conn),
                                      name=f"Connection@{source}", daemon=True)
            thread.start()
        except (OSError, RuntimeError) as exc:  # no thread left
            self.connections.release(conn)
            self.connections.rejections.note(source, f"connection not served: {type(exc).__name__}")
            self.shutdown_request(request)

    def _serve_connection(self, request: Any, client_address: Any, conn: Connection) -> None:
        try:
            if self.ssl_context:
                request = self.ssl_context.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
                conn.sock = request
                request.settimeout(max(0.1, conn.since + self.limits.acse_timeout - time.monotonic()))
                request.do_handshake()
            NodeRequestHandler(request, client_address, self, conn)
        except Exception as exc:
            self.connections.release(conn)
            self.connections.rejections.note(conn.source, f"connection failed before association: {type(exc).__name__}",
                                             str(exc))
            self.shutdown_request(request)

    def _on_requested(self, event: evt.Event) -> None:
        """A valid A-ASSOCIATE-RQ arrived: take a slot, or reject 'local limit exceeded'."""
        assoc = event.assoc
        dul = assoc.dul
        if not isinstance(dul, NodeDUL):
            return
        rq = assoc.requestor.primitive
        calling = str(rq.calling_ae_title or "").strip()
        called = str(rq.called_ae_title or "").strip()
        ae = assoc.ae
        if ae.require_calling_aet and calling not in [s.strip() for s in ae.require_calling_aet]:
            return  # pynetdicom rejects it (calling AE not recognised); it keeps no slot
        if ae.require_called_aet and called != assoc.acceptor.ae_title.strip():
            return
        reason = self.connections.establish(dul.connection, calling)
        if reason is None:
            return
        self.connections.rejections.note(dul.connection.source, reason, f"calling AE {calling}")
        assoc.acse.send_reject(0x02, 0x03, 0x02)  # rejected-transient, presentation related, local limit exceeded
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()


def start_server(ae: Any, address: tuple[str, int], *, limits: TransportLimits, connections: ConnectionTable,
                 ssl_context: Any = None, evt_handlers: list[Any] | None = None) -> NodeAssociationServer:
    """Listen (non-blocking) as ``AE.start_server(block=False)`` does, with :class:`NodeAssociationServer`."""
    server = NodeAssociationServer(ae, address, limits=limits, connections=connections, ssl_context=ssl_context,
                                   evt_handlers=evt_handlers)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name=f"AcceptorServer@{datetime.now():%Y%m%d%H%M%S}", daemon=True)
    thread.start()
    ae._servers.append(server)
    return server


def describe_peer(assoc: Association) -> str:
    """``AE@address:port`` of the requestor, escaped for a log line."""
    rq = assoc.requestor
    return f"{peer_text(str(rq.ae_title).strip(), 16)}@{rq.address}:{rq.port}"
