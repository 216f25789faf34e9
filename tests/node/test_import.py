"""``egfr-node import DIR``: the same intake as the SCP, idempotent, with a summary."""

from __future__ import annotations

import shutil
from pathlib import Path

from sqlalchemy import select

from db.models import Instance, Job
from tests.node.process import cli, free_port, write_config


def test_import_is_idempotent_refuses_with_reasons_and_records_like_the_scp(tmp_path: Path, phantom_study) -> None:
    config = write_config(tmp_path / "node", free_port())
    assert cli(config, "db", "upgrade").returncode == 0
    folder = tmp_path / "retrospective"
    shutil.copytree(phantom_study("axial2d", "rtstruct").folder, folder / "study")
    (folder / "notes.txt").write_text("not DICOM")
    count = len(list((folder / "study").rglob("*.dcm")))

    first = cli(config, "import", str(folder), "--quiet")
    assert first.returncode == 0, first.stderr
    assert f"{count} stored, 0 already archived, 0 conflicting (first copy kept), 1 refused; 1 studies" in first.stdout
    assert "refused notes.txt:" in first.stdout

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
