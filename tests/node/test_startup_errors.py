"""What an admin reads when the node cannot use its database or its archive: one line that
names the setting and the reason, exit status 2, no traceback; and a C-STORE into an archive
that cannot be written is refused as that, not as a full disk."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage

from dicom_node.store.archive import Archive, ArchiveNotWritable
from dicom_node.receive.server import DicomNode
from tests.conftest import _pg_reachable, mount_tmpfs, skip_or_fail
from tests.dicom_factory import mr_series
from tests.node.process import cli, free_port

DATABASE_CASES = {
    "server not listening": ("postgresql+psycopg://postgres@127.0.0.1:{port}/x", "Connection refused"),
    "unknown database": ("postgresql+psycopg://postgres@127.0.0.1:5432/egfr_no_such_db", 'database "egfr_no_such_db" does not exist'),
    "unknown role": ("postgresql+psycopg://egfr_no_such_role:secret@127.0.0.1:5432/postgres",
                     'role "egfr_no_such_role" does not exist'),
    "driver not installed": ("mysql://root:secret@127.0.0.1/test", "its database driver is not installed (no module 'MySQLdb')"),
    "unknown dialect": ("nosuchdb://x", "no SQLAlchemy dialect 'nosuchdb'"),
}


@pytest.mark.parametrize("case", list(DATABASE_CASES))
@pytest.mark.parametrize("command", [("queue", "list"), ("db", "upgrade")])
def test_a_database_url_the_node_cannot_use_is_one_line_naming_it(tmp_path: Path, case: str,
                                                                   command: tuple[str, str]) -> None:
    url, reason = DATABASE_CASES[case]
    if "5432" in url and _pg_reachable():
        skip_or_fail(_pg_reachable())
    url = url.format(port=free_port())
    config = tmp_path / "egfr-node.toml"
    config.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\n[database]\nurl = "{url}"\n')
    done = cli(config, *command)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("egfr-node: database.url ") and reason in line, line
    assert "secret" not in line and "Traceback" not in done.stderr


@pytest.fixture
def remountable(tmp_path: Path):
    """A small tmpfs that the test can remount read-only (needs root, as CI has)."""
    mount = tmp_path / "disk"
    mount_tmpfs(mount, "16m")

    def read_only(on: bool = True) -> None:
        subprocess.run(["mount", "-o", f"remount,{'ro' if on else 'rw'}", str(mount)], check=True)

    yield mount, read_only
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_an_unwritable_archive_stops_the_start_and_refuses_as_not_writable(config, runtime, remountable) -> None:
    mount, read_only = remountable
    archive = Archive(mount / "archive")
    read_only()
    node = DicomNode(config, archive, runtime.sessions)
    with pytest.raises(ArchiveNotWritable, match=r"archive .* cannot be written \(Read-only file system\)"):
        node.start()
    assert node.servers == []

    read_only(False)
    node.start()
    try:
        read_only()  # the mount goes read-only while the node runs
        ae = AE(ae_title="PACS")
        ae.add_requested_context(MRImageStorage)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="EGFR_NODE")
        assert assoc.is_established
        (image,) = mr_series(1)
        status = assoc.send_c_store(image)
        assoc.release()
        assert int(status.Status) == 0xA700
        assert status.ErrorComment == "archive cannot be written (Read-only file system)"
    finally:
        node.stop()
        read_only(False)


def test_serve_on_an_unwritable_archive_exits_with_one_line(tmp_path: Path, remountable) -> None:
    mount, read_only = remountable
    config = tmp_path / "egfr-node.toml"
    config.write_text(f'[node]\nport = {free_port()}\nhost = "127.0.0.1"\n[storage]\ndata_dir = "{mount / "data"}"\n'
                      f'[database]\nurl = "sqlite:///{tmp_path / "node.db"}"\n')
    assert cli(config, "init").returncode == 0
    read_only()
    done = cli(config, "serve", timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "cannot be written (Read-only file system)" in last and "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize(("table", "key"), [("epochs = 'forty'", "training.epochs"), ("epoks = 40", "training.epoks")])
def test_a_bad_training_table_stops_the_node_at_start_naming_the_key(tmp_path: Path, table: str, key: str) -> None:
    """[training] is checked when the node starts (serve, scp, worker), as the other sections
    are, not first when `train` runs: exit 2 and one line naming training.<key>."""
    config = tmp_path / "egfr-node.toml"
    config.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\n[training]\n{table}\n')
    done = cli(config, "serve")
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("egfr-node: configuration error: ") and key in line, line
