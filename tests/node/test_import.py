"""``egfr-node import DIR``: the same intake as the SCP, idempotent, with a summary."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
from sqlalchemy import select

from db.models import Instance, Job
from tests.node.process import cli, free_port, start, wait_until_listening, write_config
from tests.node.scu import store


def test_import_is_idempotent_refuses_with_reasons_and_records_like_the_scp(tmp_path: Path, phantom_study) -> None:
    config = write_config(tmp_path / "node", free_port())
    assert cli(config, "db", "upgrade").returncode == 0
    folder = tmp_path / "retrospective"
    shutil.copytree(phantom_study("axial2d", "rtstruct").folder, folder / "study")
    (folder / "notes.txt").write_text("not DICOM")
    count = len(list((folder / "study").rglob("*.dcm")))

    first = cli(config, "import", str(folder), "--quiet")
    assert first.returncode == 0, first.stderr
    assert (f"{count} stored, 0 already archived, 0 conflicting (first copy kept), 0 refused, "
            "1 skipped (not DICOM Part-10); 1 studies") in first.stdout
    assert "skipped 1 files that are not DICOM Part-10, for example notes.txt" in first.stdout

    second = cli(config, "import", str(folder), "--quiet", "--queue")
    assert f"0 stored, {count} already archived" in second.stdout
    (folder / "study" / "late").mkdir()
    shutil.copy(phantom_study("axial2d", "seg").folder.rglob("*.dcm").__next__(), folder / "study" / "late" / "x.dcm")

    from db.engine import make_engine, make_sessionmaker
    from dicom_node.config import load_config

    loaded = load_config(config)
    engine = make_engine(loaded.database_url)
    try:
        with make_sessionmaker(engine)() as s:
            rows = s.scalars(select(Instance)).all()
            assert len(rows) == count and {r.calling_aet for r in rows} == {"IMPORT"}
            assert all((loaded.storage.archive_path / r.path).is_file() for r in rows)
            # a retrospective cohort is archived for training: no job
            assert s.scalars(select(Job)).all() == []
    finally:
        engine.dispose()
    # with --queue a new instance makes the study wait to be predicted, as after a C-STORE
    third = cli(config, "import", str(folder), "--quiet", "--queue")
    assert "1 stored" in third.stdout, third.stdout
    engine = make_engine(loaded.database_url)
    try:
        with make_sessionmaker(engine)() as s:
            assert [j.state.value for j in s.scalars(select(Job))] == ["waiting"]
    finally:
        engine.dispose()


def test_import_refuses_a_truncated_file_so_the_whole_instance_can_arrive_later(tmp_path: Path, phantom_study) -> None:
    """A file cut short is refused with the SCP's reason, not archived; the correct C-STORE of
    the same instance is then stored (0x0000), not answered as a conflict."""
    port = free_port()
    config = write_config(tmp_path / "node", port)
    assert cli(config, "db", "upgrade").returncode == 0
    source = sorted(phantom_study("axial2d", "seg").folder.rglob("*.dcm"))
    image = next(p for p in source if pydicom.dcmread(p, stop_before_pixels=True).Modality == "MR")
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "cut.dcm").write_bytes(image.read_bytes()[:5000])
    for name in ("preview.png", "truth.json", "DICOMDIR.txt", "README"):
        (folder / name).write_bytes(b"\x89PNG not DICOM")

    done = cli(config, "import", str(folder), "--quiet")
    assert done.returncode == 1 and "1 files were refused" in done.stderr, done.stderr  # issue 29: not 0
    assert "refused by reason: 1 incomplete dataset" in done.stdout
    assert "0 stored" in done.stdout and "1 refused, 4 skipped (not DICOM Part-10); 0 studies" in done.stdout, done.stdout
    assert "refused cut.dcm: incomplete dataset:" in done.stdout
    assert "skipped 4 files that are not DICOM Part-10, for example DICOMDIR.txt, README, preview.png and 1 more" \
        in done.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no DICOM here")
    nothing = cli(config, "import", str(empty), "--quiet")
    assert nothing.returncode == 1 and "no DICOM instance found" in nothing.stderr
    node = start(config)
    try:
        wait_until_listening(port, node)
        assert store(port, pydicom.dcmread(image)) == [0x0000]
    finally:
        node.terminate()
        node.wait(timeout=30)


def test_an_import_into_a_full_archive_stops_saying_so_and_keeps_what_it_archived(tmp_path: Path, phantom_study,
                                                                                   tmpfs) -> None:
    """A 2 MiB disk for the archive (a real tmpfs; the database beside it, elsewhere): the
    import stops at the first file the disk cannot take, says why and what to do, and exits 1;
    no file is reported "cannot be read"; what it archived is recorded (``check`` is clean),
    and a second run on a bigger disk counts it as already archived."""
    disk = tmpfs("disk", "2m")
    config = write_config(tmp_path / "node", free_port())
    text = config.read_text().replace(f'data_dir = "{tmp_path / "node" / "data"}"', f'data_dir = "{disk / "data"}"')
    config.write_text(text + f'[database]\nurl = "sqlite:///{tmp_path / "node.sqlite3"}"\n')
    assert cli(config, "db", "upgrade").returncode == 0
    folder = tmp_path / "retrospective"
    shutil.copytree(phantom_study("axial2d", "seg").folder, folder / "study")  # 256x256x29: about 3.8 MB
    total = len(list(folder.rglob("*.dcm")))

    full = cli(config, "import", str(folder), "--quiet")
    assert full.returncode == 1, full.stdout + full.stderr
    assert "the import stopped before the end of the folder" in full.stderr
    (line,) = [x for x in full.stdout.splitlines() if x.startswith("stopped: the archive cannot take")]
    assert f"of {total} files were seen, nothing of this one was kept" in line and "run the import again" in line
    assert "cannot be read" not in full.stdout
    stored = int(full.stdout.split(" stored,")[0])
    assert 0 < stored < total
    assert cli(config, "check").returncode == 0, "what the import archived is recorded, and nothing else"

    bigger = tmpfs("bigger", "64m")
    shutil.copytree(disk / "data", bigger / "data")
    config.write_text(config.read_text().replace(f'data_dir = "{disk / "data"}"', f'data_dir = "{bigger / "data"}"'))
    again = cli(config, "import", str(folder), "--quiet")
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{total - stored} stored, {stored} already archived" in again.stdout
