"""What one connection may cost, and the table of connections by stage (negotiating,
established) that the association server admits, counts and drops them by. Plain Python:
no pynetdicom in here; the overrides in ``_pynetdicom`` enforce it."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicom_node.log_safety import RejectionLog

__all__ = ["TransportLimits", "Connection", "ConnectionTable"]


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
    #: overrides 7 and 9 (``node.receive_speedups``): the reactors wait for work, encodings memoised
    speedups: bool = True

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


