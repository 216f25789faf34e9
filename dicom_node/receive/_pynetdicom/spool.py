"""Overrides 5 and 8 (see ``dicom_node.receive._pynetdicom``): a C-STORE dataset is spooled
into the archive's ``.incoming`` as it arrives, hashed as it is written, a failed write kept
for the handler's answer instead of aborting the association, and fsynced by the DUL thread
while the association thread checks it. The C-STORE handler reads all of that as one
:class:`SpooledDataset`."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pynetdicom import _config as pynetdicom_config, dimse_messages
from pynetdicom.association import Association

from dicom_node.receive._pynetdicom.contract import written_for
from dicom_node.receive._pynetdicom.reactor import SignallingQueue

__all__ = ["DatasetVerdict", "SpooledDataset", "spooled_dataset", "SpoolFile", "MessageQueue", "install"]

written_for(__name__, "3.0.4")

_NamedTemporaryFile = dimse_messages.NamedTemporaryFile


@dataclass(frozen=True)
class DatasetVerdict:
    """What arrived of one C-STORE dataset on the wire (counted by the DUL, override 5)."""

    wire_bytes: int
    over_limit: bool


@dataclass(frozen=True)
class SpooledDataset:
    """One C-STORE dataset as the receive path holds it when the handler runs."""

    #: the spool file (File Meta Information and the dataset as received)
    path: Path
    #: the peer sent more than ``node.max_instance_size_mb`` (the rest was discarded)
    over_limit: bool
    #: a write of the spool failed (disk full ...): answer 0xA700
    write_error: OSError | None
    #: hex sha256 of what was written (None when not known)
    sha256: str | None
    #: the DUL thread's fsync of the spool (override 8); None when it runs none
    synced: Future[None] | None


def spooled_dataset(event: Any) -> SpooledDataset:
    """The spooled dataset of a C-STORE event (``evt.EVT_C_STORE``)."""
    spool = getattr(event.request, "_dataset_file", None)
    verdicts = getattr(getattr(event.assoc, "dul", None), "verdicts", None) if event.assoc else None
    verdict = None
    if verdicts:
        try:
            verdict = verdicts.popleft()
        except IndexError:
            verdict = None
    return SpooledDataset(
        path=Path(event.dataset_path),
        over_limit=bool(verdict and verdict.over_limit),
        write_error=getattr(spool, "error", None),
        sha256=getattr(spool, "sha256", None),
        synced=getattr(spool, "synced", None),
    )


#: the DUL thread's spool folder (set by ``NodeDUL.run_reactor``)
spool_folder = threading.local()


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
                written: int = self._file.write(data)
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
    folder = getattr(spool_folder, "folder", None)
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


def discard_partial_spool(assoc: Association) -> None:
    message = getattr(assoc.dimse, "message", None)
    spool = getattr(message, "_data_set_file", None)
    if spool is None:
        return
    try:
        spool.close()
        os.unlink(spool.name)
    except OSError:
        pass


class MessageQueue(SignallingQueue):
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


def install() -> None:
    """C-STORE datasets go to disk as they arrive (pynetdicom's chunked receive), into the
    folder the DUL thread names."""
    pynetdicom_config.STORE_RECV_CHUNKED_DATASET = True
    dimse_messages.NamedTemporaryFile = _spool_file
