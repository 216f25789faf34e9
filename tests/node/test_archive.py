"""The archive: files never replaced, linked only once durable; temporary files cleaned up after
a crash, never another live process's."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import pytest

from dicom_node.store.archive import Archive, ArchiveFull, StoredFile


def test_store_never_replaces_and_compares(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    assert archive.store("1.2/1.2.3/1.2.3.4.dcm", b"first") == StoredFile(
        "a7937b64b8caa58f03721bb6bacf5c78cb235febe0e70b1b84cd99541461a08e", written=True, identical=True)
    again = archive.store("1.2/1.2.3/1.2.3.4.dcm", b"first")
    other = archive.store("1.2/1.2.3/1.2.3.4.dcm", b"other")
    assert (again.written, again.identical) == (False, True)
    assert (other.written, other.identical) == (False, False)
    assert (tmp_path / "1.2/1.2.3/1.2.3.4.dcm").read_bytes() == b"first"
    assert list(archive.incoming.iterdir()) == []


def test_only_stale_temporary_files_are_removed(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    host = socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    mine = archive.incoming / f"{host}-{os.getpid()}-aaaa.tmp"  # a live writer: this process
    crashed = archive.incoming / f"{host}-{dead_pid}-bbbb.tmp"  # its process is gone
    elsewhere = archive.incoming / f"other-host-{dead_pid}-cccc.tmp"  # another SCP on shared storage
    ancient = archive.incoming / "other-host-1-dddd.tmp"
    for path in (mine, crashed, elsewhere, ancient):
        path.write_bytes(b"partial")
    day_ago = time.time() - 2 * 86400
    os.utime(ancient, (day_ago, day_ago))
    assert archive.remove_stale_temporary_files() == 2
    assert sorted(p.name for p in archive.incoming.iterdir()) == sorted([mine.name, elsewhere.name])


def test_a_study_folder_retention_removes_between_mkdir_and_link_is_made_again(tmp_path: Path) -> None:
    class RacedByRetention(Archive):
        """Retention empties and removes the study's folders right after the intake made them."""

        raced = False

        def _make_folders(self, folder: Path) -> None:
            super()._make_folders(folder)
            if not self.raced:
                self.raced = True
                folder.rmdir()
                folder.parent.rmdir()

    archive = RacedByRetention(tmp_path)
    spool = archive.incoming / "spool.tmp"
    spool.write_bytes(b"instance")
    # the link used to fail with ENOENT: 0xC211 "processing failure", which senders do not retry
    assert archive.store_file("1.3/1.3.3/1.3.3.4.dcm", spool, synced=True).written and archive.raced
    assert (tmp_path / "1.3/1.3.3/1.3.3.4.dcm").read_bytes() == b"instance"


def test_a_file_its_writer_is_still_fsyncing_is_linked_only_once_that_fsync_succeeded(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    spool = archive.incoming / "spool.tmp"
    spool.write_bytes(b"instance")
    synced: Future[None] = Future()
    threading.Timer(0.2, synced.set_result, [None]).start()  # the writer's fsync ends later
    assert archive.store_file("1.2/1.2.3/1.2.3.4.dcm", spool, synced=synced).written
    assert synced.done() and (tmp_path / "1.2/1.2.3/1.2.3.4.dcm").read_bytes() == b"instance"
    # a failed fsync (here: the disk is full) is the store's failure: nothing linked
    failed: Future[None] = Future()
    failed.set_exception(OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(ArchiveFull):
        archive.store_file("1.2/1.2.3/1.2.3.5.dcm", spool, synced=failed)
    assert not (tmp_path / "1.2/1.2.3/1.2.3.5.dcm").exists()
