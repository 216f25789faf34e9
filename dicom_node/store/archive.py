"""The archive: received instances as DICOM Part-10 files, written atomically and durably.

Layout ``<root>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``; UIDs are
checked against the UI value representation before they become path parts. A file is
written under ``<root>/.incoming/`` (same file system) as ``<host>-<pid>-<random>.tmp``,
fsynced, then linked to its final name (a link never replaces an existing file, so two
associations writing the same instance leave one whole file), and the folder is fsynced.
A file written by someone else (the SCP's spool) may already be being fsynced by its
writer while it is checked: :meth:`Archive.store_file` then waits for that fsync before
linking.
Temporary files are never registered. At start a node removes only the temporary files its
own host's dead processes left (or any older than a day): several SCPs may share the archive.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import socket
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from pipeline.uids import InvalidUID, check_uid, sha256_of

__all__ = ["Archive", "ArchiveFull", "ArchiveNotWritable", "StoredFile", "INCOMING", "process_alive"]

log = logging.getLogger(__name__)

INCOMING = ".incoming"
TMP_SUFFIX = ".tmp"
STALE_SECONDS = 24 * 3600


class ArchiveFull(OSError):
    """Not enough free space to store an instance (below the reserve, or ENOSPC)."""


class ArchiveNotWritable(OSError):
    """The archive folder cannot be written (permissions, a read-only mount): not a full disk."""


@dataclass(frozen=True)
class StoredFile:
    sha256: str
    #: False when a file with this name was already there (it is never overwritten).
    written: bool
    #: When not written: whether the file already there has the same bytes.
    identical: bool


class Archive:
    def __init__(self, root: Path, *, free_space_reserve_bytes: int = 0, fsync: bool = True) -> None:
        self.root = Path(root)
        self.free_space_reserve_bytes = free_space_reserve_bytes
        self.fsync = fsync
        self.incoming = self.root / INCOMING
        try:
            self.incoming.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._raise_if_full(exc, INCOMING)  # ArchiveFull or ArchiveNotWritable, as for any write
            raise
        self._tmp_prefix = f"{socket.gethostname()}-{os.getpid()}-"

    def relative_path(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> str:
        return "/".join(
            (
                check_uid("StudyInstanceUID", study_uid),
                check_uid("SeriesInstanceUID", series_uid),
                check_uid("SOPInstanceUID", sop_instance_uid) + ".dcm",
            )
        )

    def path(self, relative_path: str) -> Path:
        return self.root / relative_path

    def check_writable(self) -> None:
        """Create, write, fsync and remove a file under ``.incoming`` and a folder under the
        root, as receiving does; raise ArchiveNotWritable naming the folder and the reason (or
        ArchiveFull when the disk is full). The SCP calls this before it listens."""
        probe = self.incoming / f"{self._tmp_prefix}write-check{TMP_SUFFIX}"
        folder = self.root / f".write-check-{uuid.uuid4().hex}"
        try:
            self._write(probe, b"egfr-node write check")
            folder.mkdir()
        except OSError as exc:
            self._raise_if_full(exc, probe.name)
            where = folder.parent if probe.exists() else probe.parent
            raise ArchiveNotWritable(exc.errno, f"archive {where} cannot be written ({exc.strerror}): fix its "
                                                "permissions or mount, or set storage.data_dir") from exc
        finally:
            with contextlib.suppress(OSError):  # a read-only mount refuses even the unlink of nothing
                if probe.exists():
                    probe.unlink()
                if folder.is_dir():
                    folder.rmdir()

    def withdraw(self, relative_path: str) -> None:
        """Remove the file :meth:`store` or :meth:`store_file` just wrote at ``relative_path``
        (its record could not be made, so the sender is refused: nothing stays archived)."""
        final = self.root / relative_path
        final.unlink(missing_ok=True)
        if self.fsync:
            _fsync_path(final.parent)

    def check_free_space(self, incoming_bytes: int, *, results: bool = False) -> None:
        """ArchiveFull when writing ``incoming_bytes`` would leave less than the reserve. The
        node's own results (``results``) may use three quarters of it: a disk full of studies
        waiting for their answers must still take the answers (then retention can free it);
        the last quarter stays for the database."""
        free = shutil.disk_usage(self.root).free
        reserve = self.free_space_reserve_bytes // 4 if results else self.free_space_reserve_bytes
        if free - incoming_bytes < reserve:
            raise ArchiveFull(
                errno.ENOSPC,
                f"archive {self.root}: {free // 2**20} MiB free, reserve is {self.free_space_reserve_bytes // 2**20} MiB",
            )

    def store(self, relative_path: str, data: bytes, *, results: bool = False) -> StoredFile:
        """Write ``data`` at ``relative_path`` durably, never leaving a partial file there.

        An existing file is never replaced (``written=False``; ``identical`` says whether it
        holds the same bytes); it is fsynced before this returns, since the caller may
        acknowledge it. The bytes go to a temporary file under ``.incoming`` (fsynced), which
        :meth:`store_file` links into place. ``results``: the node's own results, which may
        use part of the free-space reserve (:meth:`check_free_space`).
        """
        final = self.root / relative_path
        if final.exists():
            return self._existing(final, hashlib.sha256(data).hexdigest())
        self.check_free_space(len(data), results=results)
        tmp = self.incoming / f"{self._tmp_prefix}{uuid.uuid4().hex}{TMP_SUFFIX}"
        try:
            try:
                self._write(tmp, data)
            except OSError as exc:
                self._raise_if_full(exc, relative_path)
                raise
            return self.store_file(relative_path, tmp, synced=True, sha256=hashlib.sha256(data).hexdigest(),
                                   results=results)
        finally:
            tmp.unlink(missing_ok=True)

    def incoming_file(self) -> Path:
        """A new temporary file's name under ``.incoming`` (same file system as the archive;
        removed at start by :meth:`remove_stale_temporary_files` if its writer died): where
        a STOW-RS part or a retrieved instance is written whole before :meth:`store_file`."""
        return self.incoming / f"{self._tmp_prefix}{uuid.uuid4().hex}{TMP_SUFFIX}"

    def store_file(self, relative_path: str, source: Path, *, synced: bool | Future[None] | None = False,
                   sha256: str | None = None, results: bool = False) -> StoredFile:
        """As :meth:`store`, for a whole file already written (the SCP's spool under
        ``.incoming``): fsynced and hard-linked into place, not copied, so memory does not
        grow with its size. ``synced``: True when the caller fsynced it, or the caller's fsync
        under way (its Future, waited for here). ``source`` stays where it is;
        the caller removes it. ``sha256``: its hash when the writer computed it (else it is read).
        """
        digest = sha256 or sha256_of(source)
        final = self.root / relative_path
        if final.exists():
            return self._existing(final, digest)
        self.check_free_space(0, results=results)  # its bytes are on the disk already
        try:
            self._make_folders(final.parent)
            if isinstance(synced, Future):
                synced.result()  # its OSError (EIO, ENOSPC) is raised here, as a direct fsync's would be
            elif self.fsync and not synced:
                _fsync_path(source)
            for attempt in range(3):
                try:
                    os.link(source, final)
                    break
                except FileExistsError:  # another association linked it a moment ago
                    return self._existing(final, digest)
                except FileNotFoundError:
                    # retention removed the emptied study folder between our mkdir and the link
                    # (the source is still there): made again, linked again
                    if attempt == 2 or not source.exists():
                        raise
                    self._make_folders(final.parent)
                except OSError as exc:
                    if exc.errno != errno.EXDEV:
                        raise
                    return self._copy_into_place(relative_path, source, digest)
            if self.fsync:
                _fsync_path(final.parent)
        except OSError as exc:
            self._raise_if_full(exc, relative_path)
            raise
        return StoredFile(digest, written=True, identical=True)

    def _raise_if_full(self, exc: OSError, relative_path: str) -> None:
        """ENOSPC/EDQUOT become ArchiveFull, EACCES/EPERM/EROFS ArchiveNotWritable (the SCP
        answers 0xA700 with the reason)."""
        if isinstance(exc, (ArchiveFull, ArchiveNotWritable)):
            return
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ArchiveFull(exc.errno, f"archive {self.root}: disk full while writing {relative_path}") from exc
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise ArchiveNotWritable(exc.errno, f"archive {self.root} cannot be written ({exc.strerror}) "
                                                f"while writing {relative_path}") from exc

    def _copy_into_place(self, relative_path: str, source: Path, digest: str) -> StoredFile:
        """``source`` on another file system: copied in chunks to ``.incoming``, then linked."""
        final = self.root / relative_path
        tmp = self.incoming / f"{self._tmp_prefix}{uuid.uuid4().hex}{TMP_SUFFIX}"
        try:
            with source.open("rb") as src, open(tmp, "xb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
                dst.flush()
                if self.fsync:
                    os.fsync(dst.fileno())
            try:
                os.link(tmp, final)
            except FileExistsError:
                return self._existing(final, digest)
            if self.fsync:
                _fsync_path(final.parent)
        finally:
            tmp.unlink(missing_ok=True)
        return StoredFile(digest, written=True, identical=True)

    def _existing(self, final: Path, digest: str) -> StoredFile:
        """A file already at ``final``: make it durable (its writer may not have yet) and compare."""
        if self.fsync:
            _fsync_path(final)
            _fsync_path(final.parent)
        return StoredFile(digest, written=False, identical=sha256_of(final) == digest)

    def _make_folders(self, folder: Path) -> None:
        """Create the study/series folders; a new folder's entry is made durable in its parent."""
        missing = []
        current = folder
        while not current.exists() and current != self.root:
            missing.append(current)
            current = current.parent
        for path in reversed(missing):
            try:
                path.mkdir()
            except FileExistsError:
                continue
            if self.fsync:
                _fsync_path(path.parent)

    def _write(self, tmp: Path, data: bytes) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def stale_temporary_files(self) -> list[Path]:
        """Temporary files left by this host's dead processes, or older than a day (a live
        writer's are not listed)."""
        host = socket.gethostname()
        now = time.time()
        stale = []
        for tmp in self.incoming.glob(f"*{TMP_SUFFIX}"):
            owner_host, _, rest = tmp.name.rpartition("-")[0].rpartition("-")
            pid = int(rest) if rest.isdigit() else -1
            dead = owner_host == host and pid > 0 and not process_alive(pid)
            try:
                old = now - tmp.stat().st_mtime > STALE_SECONDS
            except FileNotFoundError:
                continue
            if dead or old:
                stale.append(tmp)
        return stale

    def remove_stale_temporary_files(self) -> int:
        """Delete :meth:`stale_temporary_files`; how many."""
        stale = self.stale_temporary_files()
        for tmp in stale:
            tmp.unlink(missing_ok=True)
        if stale:
            log.warning("removed %d temporary files left by interrupted writes", len(stale))
        return len(stale)

    def remove(self, relative_paths: list[str] | tuple[str, ...]) -> int:
        """Delete these archived files (missing ones are fine: a deletion may be finished
        twice), make the removals durable, and remove series and study folders left empty.
        How many files were there."""
        removed = 0
        folders: set[Path] = set()
        root = self.root.resolve()
        for relative in relative_paths:
            path = self.root / relative
            if root not in path.resolve().parents:
                raise InvalidUID(f"{relative!r} is not under the archive")
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                pass
            folders.add(path.parent)
        for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
            for candidate in (folder, folder.parent):  # series, then study
                if candidate == self.root or not candidate.is_dir():
                    continue
                if self.fsync:
                    _fsync_path(candidate)  # the unlinks (or the series' rmdir) are durable
                with contextlib.suppress(OSError):
                    candidate.rmdir()  # only when empty
        if self.fsync:
            _fsync_path(self.root)
        return removed

    def disk_usage(self) -> tuple[int, int, int]:
        """(total, used, free) bytes of the archive's file system."""
        usage = shutil.disk_usage(self.root)
        return usage.total, usage.total - usage.free, usage.free

    def files(self) -> list[str]:
        """Every archived file's relative path (``<study>/<series>/<sop>.dcm``), hidden folders left out."""
        found = []
        for root, dirs, names in os.walk(self.root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            base = Path(root).relative_to(self.root)
            found += [(base / name).as_posix() for name in sorted(names) if not name.startswith(".")]
        return found


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_path(path: Path) -> None:
    """fsync a file or a folder (its entries) by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
