"""Sending the node's results: one destination's send (C-STORE, or STOW-RS for a DICOMweb
destination), and a running job's early send (issue 30).

A job archives its results one after another (the SEG it derives, the SR, the result card);
:class:`EarlySend` sends each to every destination as soon as it is archived, in a thread of
its own, and the job waits for that send up to ``wait_seconds`` (1 s) before it builds the
next: the SR is at the PACS before the card is drawn, and a slow PACS delays the job by that
second once (the card is then drawn while the SR is in flight, and nothing after waits). The job waits rather than
drawing at once because both are Python: measured on this 2-core host, a C-STORE that takes
0.035 s alone took 0.22 s beside a busy Python thread (the interpreter's lock), as long as
drawing the card, so sending "while" drawing would gain nothing. It is a shortcut
taken before the job's deliveries exist, never a replacement for them: the worker records
what it sent as sent deliveries in the transaction that marks the job done
(``db.deliveries.create_deliveries(sent=...)``), and everything else (a destination that
refused or timed out, a send not finished when the job was) stays pending for the delivery
queue and its retries. A destination that fails once gets no further early send for that
job, so a PACS that is down costs one timeout, not one per result. A worker killed between an
early send and the job's end leaves the job to be retried; the retry reuses the archived
results (same SOP Instance UIDs) and sends them again, so the PACS keeps one copy.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from dicom_node.config import Destination

__all__ = ["EarlySend", "send_to"]

log = logging.getLogger(__name__)


def send_to(destination: Destination, paths: Sequence[Path], *, calling_aet: str, timeout: float) -> None:
    """Every file in ``paths`` to ``destination`` in one association (or one STOW-RS request);
    raises ``dicom_node.scu.SendError`` naming the destination and the instance on failure."""
    if destination.stow:
        from dicom_node.dicomweb_peer import stow_files

        stow_files(destination, paths, timeout=timeout)
    else:
        from dicom_node.scu import send_files

        send_files(destination, paths, calling_aet=calling_aet, timeout=timeout)


class EarlySend:
    """The results of job ``job_id`` sent to ``destinations`` as each is archived.

    ``send(destination, path)`` sends one file (raises on failure); ``path_of(sop_uid)`` finds
    an archived result's file. :meth:`archived` is called by the job (``run_job``'s
    ``on_archived``), :meth:`finish` by the worker when the job has returned.
    """

    def __init__(self, job_id: int, destinations: Sequence[Destination], send: Callable[[Destination, Path], None],
                 path_of: Callable[[str], Path], wait_seconds: float = 1.0) -> None:
        self.job_id = job_id
        self.wait_seconds = wait_seconds
        self._done: dict[str, threading.Event] = {}
        self._slow = False
        self._destinations = list(destinations)
        self._send = send
        self._path_of = path_of
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._sent: set[tuple[str, str]] = set()
        self._given_up: set[str] = set()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def archived(self, sop_uid: str) -> None:
        """Send ``sop_uid`` (archived just now) to every destination; return when that is done,
        or after ``wait_seconds`` with the send going on in the background (and at once for
        every later result of the job, once one send has outlasted the wait)."""
        if not self._destinations or self._closed.is_set():
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"early-send-{self.job_id}", daemon=True)
            self._thread.start()
        done = self._done[sop_uid] = threading.Event()
        self._queue.put(sop_uid)
        if not self._slow and not done.wait(self.wait_seconds):
            self._slow = True  # the next results queue behind this send: the job no longer waits

    def _run(self) -> None:
        while (sop_uid := self._queue.get()) is not None:
            if self._closed.is_set():
                return
            try:
                self._send_everywhere(sop_uid)
            finally:
                self._done[sop_uid].set()

    def _send_everywhere(self, sop_uid: str) -> None:
        try:
            path = self._path_of(sop_uid)
        except Exception as exc:  # the delivery queue sends it (and says why it cannot)
            log.warning("job %d: %s not sent early: %s", self.job_id, sop_uid, " ".join(str(exc).split()))
            return
        for destination in self._destinations:
            if destination.name in self._given_up or self._closed.is_set():
                continue
            try:
                self._send(destination, path)
            except Exception as exc:
                self._given_up.add(destination.name)
                log.info("job %d: %s not sent to %s while the job ran (%s); left to the delivery queue",
                         self.job_id, sop_uid, destination.name, " ".join(str(exc).split())[:300])
                continue
            with self._lock:
                self._sent.add((sop_uid, destination.name))
            log.info("job %d: %s sent to %s as soon as it was archived", self.job_id, sop_uid, destination.name)

    def finish(self, timeout: float) -> frozenset[tuple[str, str]]:
        """Wait up to ``timeout`` seconds for the sends under way; the (SOP Instance UID,
        destination name) pairs sent. Nothing is sent early after this returns (a send still in
        flight may complete; its delivery then sends the same instance again)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("job %d: an early send still running after %.0f s; the delivery queue sends the rest",
                            self.job_id, timeout)
        self._closed.set()
        with self._lock:
            return frozenset(self._sent)
