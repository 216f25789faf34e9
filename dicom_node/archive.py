"""The archive: received instances as DICOM Part-10 files, written atomically and durably.

Layout ``<root>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``; UIDs are
checked against the UI value representation before they become path parts. A file is
written to a temporary name in its folder, fsynced, then linked to its final name (a link
never replaces an existing file, so two associations writing the same instance leave one
whole file), and the folder is fsynced. Temporary files are never registered; a crash
leaves at most a ``.tmp`` file, removed at the next start.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Archive", "ArchiveFull", "StoredFile", "InvalidUID", "check_uid"]

log = logging.getLogger(__name__)

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
TMP_SUFFIX = ".tmp"


class ArchiveFull(OSError):
    """Not enough free space to store an instance (below the reserve, or ENOSPC)."""


class InvalidUID(ValueError):
    """A UID that cannot be a DICOM UID (and so cannot name a file)."""


def check_uid(name: str, value: object) -> str:
    """``value`` if it is a valid DICOM UID (digits and dots, at most 64 characters)."""
    if not isinstance(value, str) or not value:
        raise InvalidUID(f"{name} is missing")
    text = value.strip("\x00 ")
    if len(text) > 64 or not _UID.match(text):
        raise InvalidUID(f"{name} {text[:70]!r} is not a valid UID")
    return text


@dataclass(frozen=True)
class StoredFile:
    relative_path: str
    size_bytes: int
    sha256: str
    #: False when a file with this name was already there (not overwritten).
    written: bool
    #: When not written: whether the file already there has the same bytes.
    identical: bool


class Archive:
    def __init__(self, root: Path, *, free_space_reserve_bytes: int = 0, fsync: bool = True) -> None:
        self.root = Path(root)
        self.free_space_reserve_bytes = free_space_reserve_bytes
        self.fsync = fsync
        self.root.mkdir(parents=True, exist_ok=True)

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

    def study_folder(self, study_uid: str) -> Path:
        return self.root / check_uid("StudyInstanceUID", study_uid)

    def check_free_space(self, incoming_bytes: int) -> None:
        free = shutil.disk_usage(self.root).free
        if free - incoming_bytes < self.free_space_reserve_bytes:
            raise ArchiveFull(
                errno.ENOSPC,
                f"archive {self.root}: {free // 2**20} MiB free, reserve is {self.free_space_reserve_bytes // 2**20} MiB",
            )

    def store(self, relative_path: str, data: bytes) -> StoredFile:
        """Write ``data`` at ``relative_path`` durably, never leaving a partial file there.

        An existing file is never replaced (``written=False``; ``identical`` says whether it
        holds the same bytes).
        """
        digest = hashlib.sha256(data).hexdigest()
        final = self.root / relative_path
        if final.exists():
            return StoredFile(relative_path, len(data), digest, written=False, identical=_sha256(final) == digest)
        self.check_free_space(len(data))
        folder = final.parent
        self._make_folders(folder)
        tmp = folder / f".{final.name}.{uuid.uuid4().hex}{TMP_SUFFIX}"
        try:
            self._write(tmp, data)
            try:
                os.link(tmp, final)
            except FileExistsError:  # another association wrote it a moment ago
                return StoredFile(relative_path, len(data), digest, written=False, identical=_sha256(final) == digest)
            if self.fsync:
                _fsync_dir(folder)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise ArchiveFull(exc.errno, f"archive {self.root}: disk full while writing {relative_path}") from exc
            raise
        finally:
            tmp.unlink(missing_ok=True)
        return StoredFile(relative_path, len(data), digest, written=True, identical=True)

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
                _fsync_dir(path.parent)

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

    def remove_temporary_files(self) -> int:
        """Delete ``.tmp`` files a crash left behind; returns how many."""
        count = 0
        for tmp in self.root.rglob(f".*{TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)
            count += 1
        if count:
            log.warning("removed %d temporary files left by an interrupted write", count)
        return count


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
