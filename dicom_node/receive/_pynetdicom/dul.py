"""Overrides 1, 2, 5 (counting) and 6 of ``dicom_node.receive._pynetdicom``: pynetdicom's DUL
with every PDU read under a deadline and a length cap, dataset bytes counted against the
instance limit as they arrive, a wait for a PDU that ends with the DUL, and (override 7,
behind ``node.receive_speedups``) a reactor that waits for its socket instead of polling."""

from __future__ import annotations

import collections
import select
import socket
import ssl
import struct
import threading
import time
from typing import TYPE_CHECKING, Any

from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ

from dicom_node.receive._pynetdicom import reactor
from dicom_node.receive._pynetdicom.contract import written_for
from dicom_node.receive._pynetdicom.reactor import SignallingQueue
from dicom_node.receive._pynetdicom.spool import DatasetVerdict, discard_partial_spool, spool_folder
from dicom_node.receive.limits import Connection, ConnectionTable, TransportLimits

if TYPE_CHECKING:
    from dicom_node.receive._pynetdicom.association import NodeAssociation

__all__ = ["NodeDUL"]

written_for(__name__, "3.0.4")

#: The fixed-size PDUs (A-RELEASE-RQ/RP, A-ABORT) have a 4-byte body; allow a little more.
_SMALL_PDU_BYTES = 64


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
        self.to_provider_queue = SignallingQueue(self._wake)
        self.to_user_queue = SignallingQueue(assoc.work_queued.set)  # a NodeAssociation's

    def _open_wake_up(self) -> tuple[socket.socket, socket.socket]:
        self._wake_r, self._wake_w = wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        return wake_r, wake_w

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
        if threading.current_thread() is not self or not self.limits.speedups:
            return reactor.PYNETDICOM_POLL_SECONDS
        self.wait_for_work(reactor.MAX_WAIT_SECONDS)
        return 0.0

    @_run_loop_delay.setter
    def _run_loop_delay(self, value: float) -> None:
        pass  # pynetdicom's __init__ sets its constant 1 ms

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

    def run_reactor(self) -> None:
        spool_folder.folder = self.limits.spool_dir
        wake_r, wake_w = self._open_wake_up()
        try:
            super().run_reactor()
        finally:
            discard_partial_spool(self.assoc)
            self.table.release(self.connection)
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

