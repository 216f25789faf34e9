"""The SCP against a pynetdicom SCU over loopback: what PACS sees and what the archive keeps."""

from __future__ import annotations

import os
from io import BytesIO
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid
from sqlalchemy import select, text

from db.models import Instance, Job
from dicom_node.receive.scp import Status
from dicom_node.receive.server import DicomNode
from tests.dicom_factory import mask_for, mr_series
from tests.node.scu import association, store


def instances(runtime) -> list[Instance]:
    with runtime.sessions.begin() as s:
        return list(s.scalars(select(Instance).order_by(Instance.id)))


def archive_files(runtime) -> list[Path]:
    return sorted(p for p in runtime.archive.root.rglob("*") if p.is_file())


def test_echo(node: DicomNode) -> None:
    with association(node.port) as assoc:
        assert assoc.is_established
        assert assoc.send_c_echo().Status == Status.SUCCESS


def test_store_writes_the_sent_bytes_and_records_before_success(node: DicomNode, runtime) -> None:
    images = mr_series(3)
    mask = mask_for(images, "SEG")
    assert store(node.port, [*images, mask]) == [0, 0, 0, 0]
    rows = instances(runtime)
    assert [r.sop_instance_uid for r in rows] == [d.SOPInstanceUID for d in [*images, mask]]
    for ds, row in zip([*images, mask], rows):
        path = runtime.archive.path(row.path)
        assert path == runtime.archive.root / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        back = dcmread(path)
        assert back.SOPInstanceUID == ds.SOPInstanceUID
        assert back.file_meta.TransferSyntaxUID == row.transfer_syntax_uid
    assert dcmread(runtime.archive.path(rows[0].path)).PixelData == images[0].PixelData
    assert rows[-1].referenced_series_uids == [images[0].SeriesInstanceUID]
    assert rows[-1].referenced_sop_uids == [d.SOPInstanceUID for d in images]
    assert rows[0].referenced_sop_uids == []
    with runtime.sessions.begin() as s:
        assert [j.state.value for j in s.scalars(select(Job))] == ["waiting"]


def test_duplicate_send_is_idempotent(node: DicomNode, runtime) -> None:
    images = mr_series(2)
    assert store(node.port, images) == [0, 0]
    assert store(node.port, images) == [0, 0]
    assert len(instances(runtime)) == 2
    assert len(archive_files(runtime)) == 2
    assert node.counters.duplicates == 2


def test_same_uid_with_other_content_keeps_the_first_copy(node: DicomNode, runtime) -> None:
    (image,) = mr_series(1)
    assert store(node.port, image) == [0]
    first = runtime.archive.path(instances(runtime)[0].path).read_bytes()
    changed = dcmread(runtime.archive.path(instances(runtime)[0].path))
    changed.SeriesDescription = "something else"
    # a warning (the sender logs it, does not retry): stored earlier, first copy kept
    assert store(node.port, changed) == [Status.CONFLICT_FIRST_COPY_KEPT]
    (row,) = instances(runtime)
    assert row.conflict_count == 1
    assert runtime.archive.path(row.path).read_bytes() == first
    assert len(archive_files(runtime)) == 1
    assert node.counters.conflicts == 1


def test_the_nodes_own_result_sent_back_re_encoded_is_not_a_conflict(node: DicomNode, runtime) -> None:
    """A routing rule that echoes the node's results back (Orthanc re-encodes them): success,
    nothing counted as a conflict, the node's own copy kept."""
    from dicom_node.store.intake import store_result

    (result,) = mr_series(1)
    store_result(runtime.archive, runtime.sessions, result)
    (row,) = instances(runtime)
    ours = runtime.archive.path(row.path).read_bytes()
    echoed = dcmread(BytesIO(ours))
    echoed.InstitutionName = "added by the PACS"  # other bytes, the same instance
    assert store(node.port, echoed) == [0]
    (row,) = instances(runtime)
    assert row.conflict_count == 0 and row.origin == "node"
    assert runtime.archive.path(row.path).read_bytes() == ours and len(archive_files(runtime)) == 1
    assert node.counters.conflicts == 0


def test_compressed_transfer_syntaxes_are_archived_as_sent(node: DicomNode, runtime) -> None:
    names = ["MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "SC_rgb_jpeg_dcmtk.dcm",
             "MR_small_deflated.dcm"]
    for name in names:
        ds = dcmread(get_testdata_file(name) if name != "MR_small_deflated.dcm" else _deflated())
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()  # the MR_small files share one
        with association(node.port, transfer_syntaxes=[ds.file_meta.TransferSyntaxUID]) as assoc:
            assert assoc.send_c_store(ds).Status == 0, name
    rows = instances(runtime)
    assert {r.transfer_syntax_uid for r in rows} == {
        "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.1.99"}
    for row in rows:  # decodable from the archive with the installed plugins
        assert dcmread(runtime.archive.path(row.path)).pixel_array.size > 0


def _deflated() -> BytesIO:
    """An MR slice in Deflated Explicit VR Little Endian."""
    (ds,) = mr_series(1)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return buffer


def test_unknown_calling_ae_is_rejected(config, runtime) -> None:
    cfg = replace(config, node=replace(config.node, allowed_calling_aets=("PACS",)))
    node = DicomNode(cfg, runtime.archive, runtime.sessions)
    node.start()
    try:
        with association(node.port, calling="INTRUDER") as assoc:
            assert assoc.is_rejected
        with association(node.port, calling="PACS") as assoc:
            assert assoc.is_established
        with association(node.port, calling="PACS", called="WRONG_AET") as assoc:
            assert assoc.is_rejected
    finally:
        node.stop()


def test_missing_uid_answers_non_conformant_and_nothing_is_kept(node: DicomNode, runtime) -> None:
    (image,) = mr_series(1)
    del image.StudyInstanceUID
    (ok,) = mr_series(1)
    assert store(node.port, [image, ok]) == [Status.NON_CONFORMANT, 0]
    assert [r.sop_instance_uid for r in instances(runtime)] == [ok.SOPInstanceUID]


def test_path_traversal_uid_is_refused(node: DicomNode, runtime) -> None:
    (image,) = mr_series(1)
    image.SeriesInstanceUID = "../../etc"
    assert store(node.port, image) == [Status.NON_CONFORMANT]
    assert archive_files(runtime) == []


def test_a_series_uid_already_used_by_another_study_is_refused_and_nothing_is_kept(node: DicomNode, runtime) -> None:
    first = mr_series(2)
    (other,) = mr_series(1)
    other.SeriesInstanceUID = first[0].SeriesInstanceUID  # a sender that reused a series UID in another study
    assert store(node.port, [*first, other]) == [0, 0, Status.NON_CONFORMANT]
    assert [r.sop_instance_uid for r in instances(runtime)] == [ds.SOPInstanceUID for ds in first]
    assert len(archive_files(runtime)) == 2 and not any(other.StudyInstanceUID in str(p) for p in archive_files(runtime))


def test_dataset_that_does_not_match_the_request(node: DicomNode, runtime, tmp_path: Path, send_files_raw) -> None:
    (image,) = mr_series(1)
    path = tmp_path / "mismatch.dcm"
    image.save_as(path, enforce_file_format=True)
    ds = dcmread(path)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"  # the dataset says SEG; the file meta (request) says MR
    ds.save_as(path)
    with association(node.port) as assoc:
        assert assoc.send_c_store(path).Status == Status.DATASET_DOES_NOT_MATCH
    assert instances(runtime) == []


def test_corrupt_dataset_answers_cannot_understand_and_the_scp_keeps_serving(
    node: DicomNode, runtime, tmp_path: Path, send_files_raw
) -> None:
    (image,) = mr_series(1)
    good = tmp_path / "good.dcm"
    image.save_as(good, enforce_file_format=True)
    raw = good.read_bytes()
    # keep the preamble and file meta, garble the dataset: an element claims 0x7FFFFFF0 bytes
    meta_end = 132 + 12 + int.from_bytes(raw[140:144], "little")
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(raw[:meta_end] + b"\x08\x00\x16\x00UI\xf0\xff" + b"1.2.3" * 4)
    with association(node.port) as assoc:
        status = assoc.send_c_store(bad)
        assert 0xC000 <= status.Status <= 0xCFFF
        assert assoc.send_c_store(good).Status == 0  # same association still served
    assert [r.sop_instance_uid for r in instances(runtime)] == [image.SOPInstanceUID]
    assert node.counters.failures == 1


def test_two_associations_sending_the_same_instance_leave_one_whole_file(node: DicomNode, runtime) -> None:
    images = mr_series(20, rows=128, columns=128)
    results: list[list[int]] = []

    def send() -> None:
        results.append(store(node.port, images))

    threads = [threading.Thread(target=send) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [[0] * 20] * 3
    rows = instances(runtime)
    assert len(rows) == 20
    files = archive_files(runtime)
    assert len(files) == 20 and not [f for f in files if f.name.endswith(".tmp")]
    for row in rows:
        assert dcmread(runtime.archive.path(row.path)).PixelData  # whole, parseable


@pytest.fixture
def tiny_disk(tmpfs) -> Path:
    """A 3 MiB tmpfs: a real full disk (needs root, as CI and these machines have)."""
    return tmpfs("tiny", "3m")


def test_full_disk_answers_out_of_resources_writes_nothing_partial_and_keeps_serving(config, runtime, tiny_disk: Path) -> None:
    from dicom_node.store.archive import Archive

    archive = Archive(tiny_disk / "archive", free_space_reserve_bytes=0)
    node = DicomNode(config, archive, runtime.sessions)
    node.start()
    try:
        images = mr_series(60, rows=256, columns=256)  # 128 KiB each: about 7.5 MiB in all
        statuses = store(node.port, images)
        assert 0 in statuses and Status.OUT_OF_RESOURCES in statuses
        first_refusal = statuses.index(Status.OUT_OF_RESOURCES)
        assert set(statuses[first_refusal:]) == {Status.OUT_OF_RESOURCES}
        accepted = [d.SOPInstanceUID for d, s in zip(images, statuses) if s == 0]
        assert [r.sop_instance_uid for r in instances(runtime)] == accepted
        files = sorted(p for p in archive.root.rglob("*") if p.is_file())
        assert sorted(f.stem for f in files) == sorted(accepted)  # no partial, no temporary file
        for f in files:
            assert dcmread(f).PixelData
        # space comes back: the node takes instances again without a restart
        for f in files[:5]:
            f.unlink()
        assert store(node.port, images[first_refusal]) == [0]
    finally:
        node.stop()


def test_below_the_free_space_reserve_answers_out_of_resources(config, runtime) -> None:
    from dicom_node.store.archive import Archive

    free = os.statvfs(runtime.archive.root)
    archive = Archive(runtime.archive.root, free_space_reserve_bytes=free.f_bavail * free.f_frsize + 2**30)
    node = DicomNode(config, archive, runtime.sessions)
    node.start()
    try:
        assert store(node.port, mr_series(1)) == [Status.OUT_OF_RESOURCES]
        assert archive_files(runtime) == [] and instances(runtime) == []
        with association(node.port) as assoc:
            assert assoc.send_c_echo().Status == 0
    finally:
        node.stop()


def test_a_failing_database_answers_database_unavailable_and_keeps_serving(node: DicomNode, runtime) -> None:
    first, second = mr_series(2)
    engine = runtime.sessions.kw["bind"]
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE instance RENAME TO instance_elsewhere"))
    try:
        assert store(node.port, first) == [Status.DATABASE_UNAVAILABLE]
        assert archive_files(runtime) == []  # refused: nothing of it stays archived
    finally:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE instance_elsewhere RENAME TO instance"))
    # PACS resends what was refused: stored and recorded then
    assert store(node.port, [first, second]) == [0, 0]
    assert [r.sop_instance_uid for r in instances(runtime)] == [first.SOPInstanceUID, second.SOPInstanceUID]


def test_a_deleted_sqlite_file_refuses_instead_of_acknowledging_into_it(node: DicomNode, runtime,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """An admin deletes (or replaces) the SQLite file while the node runs: the next C-STOREs
    are refused 0xA701 with nothing archived, and /healthz says the database does not answer,
    instead of rows going into a file nobody will open again."""
    first, second, third = mr_series(3)
    assert store(node.port, first) == [0]
    database = Path(runtime.sessions.kw["bind"].url.database)
    database.unlink()
    with caplog.at_level("ERROR", logger="dicom_node.receive.scp"):
        assert store(node.port, [second, third]) == [Status.DATABASE_UNAVAILABLE] * 2
    assert [p.stem for p in archive_files(runtime) if p.suffix == ".dcm"] == [first.SOPInstanceUID]
    assert any("was deleted or replaced while the node ran" in r.getMessage() for r in caplog.records)
    assert node.health() == (False, "database does not answer")


def test_scale_out_database_two_scps_share_postgresql(pg_url: str, tmp_path: Path) -> None:
    """Two SCP processes' worth of nodes on one PostgreSQL and one archive, same instances at once."""
    from db.migrate import upgrade
    from dicom_node.store.open import open_runtime
    from tests.conftest import make_config

    config = make_config(tmp_path / "data", database_url=pg_url)
    upgrade(pg_url)
    runtimes = [open_runtime(config), open_runtime(config)]
    nodes = [DicomNode(config, rt.archive, rt.sessions) for rt in runtimes]
    for n in nodes:
        n.start()
    try:
        images = mr_series(15)
        mask = mask_for(images, "RTSTRUCT")
        results: list[list[int]] = []
        threads = [threading.Thread(target=lambda p=n.port: results.append(store(p, [*images, mask]))) for n in nodes * 2]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert results == [[0] * 16] * 4
        with runtimes[0].sessions.begin() as s:
            assert len(s.scalars(select(Instance)).all()) == 16
            assert [j.state.value for j in s.scalars(select(Job))] == ["waiting"]
        assert len(list((tmp_path / "data" / "archive").rglob("*.dcm"))) == 16
    finally:
        for n in nodes:
            n.stop()
        for rt in runtimes:
            rt.close()


def test_the_node_answers_when_the_data_is_there_not_at_its_polling_interval(node: DicomNode, monkeypatch) -> None:
    """pynetdicom's reactors poll (sleep 1 ms whenever idle); the node's wait for their work
    instead (dicom_node.receive._pynetdicom, override 7). With their longest wait raised to 0.5 s, 20
    C-STOREs still take well under a second: polling at 0.5 s would take over 10 s."""
    import time

    from dicom_node.receive._pynetdicom import reactor

    monkeypatch.setattr(reactor, "MAX_WAIT_SECONDS", 0.5)
    images = mr_series(20)
    with association(node.port) as assoc:
        begin = time.monotonic()
        statuses = [assoc.send_c_store(ds).Status for ds in images]
        elapsed = time.monotonic() - begin
    assert statuses == [Status.SUCCESS] * 20
    assert elapsed < 5.0, f"20 C-STOREs took {elapsed:.1f} s: the reactors slept their full wait"
