"""Override 7 (see ``dicom_node.receive._pynetdicom``): the association reactor waits for
its work instead of polling every millisecond. A speed-up only (about 7 % at one
association), behind ``node.receive_speedups``; nothing the network's safety needs."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable

from pynetdicom import association as pynetdicom_association
from pynetdicom import dul as pynetdicom_dul

from dicom_node.receive._pynetdicom.contract import written_for

__all__ = ["install", "uninstall"]

written_for(__name__, "3.0.4")

#: pynetdicom's reactor sleep; override 7 waits for work instead, at most ``MAX_WAIT_SECONDS``
#: (the same 1 ms, so pynetdicom's timers are looked at as often as before).
PYNETDICOM_POLL_SECONDS = 0.001
MAX_WAIT_SECONDS = 0.001
_LIBRARY_TIME = (pynetdicom_association.time, pynetdicom_dul.time)


class SignallingQueue(queue.Queue[Any]):
    """A queue that calls ``signal`` after every put (override 7)."""

    def __init__(self, signal: Callable[[], None]) -> None:
        super().__init__()
        self._signal = signal

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._signal()


class ReactorClock:
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
        if seconds == PYNETDICOM_POLL_SECONDS and isinstance(event, threading.Event):
            if event.wait(MAX_WAIT_SECONDS):
                event.clear()
            return
        time.sleep(seconds)


def install() -> None:
    """The association and DUL reactors of this process use :class:`ReactorClock`."""
    pynetdicom_association.time = ReactorClock()
    pynetdicom_dul.time = ReactorClock()


def uninstall() -> None:
    """pynetdicom's own ``time`` again (``node.receive_speedups = false``)."""
    pynetdicom_association.time, pynetdicom_dul.time = _LIBRARY_TIME


def active() -> bool:
    return isinstance(pynetdicom_association.time, ReactorClock)
