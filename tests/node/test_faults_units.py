"""The pure parts of the fault handling, without sockets: the dataset walk (and the header it
keeps) and log safety."""

from __future__ import annotations

import logging
import sys
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicom_node.store.dataset_check import DatasetTooLarge, IncompleteDataset, check_part10_file
from dicom_node.log_safety import RejectionLog, SafeFormatter, peer_text
from dicom_node.store.header import HEADER_TAGS, MASK_SOP_CLASSES, header_dataset, read_header
from dicom_node.receive._pynetdicom import spool
from dicom_node.receive._pynetdicom.spool import MessageQueue, spooled_dataset
from pynetdicom import AE, build_context
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

from tests.dicom_factory import mask_for, mr_series

WHOLE = ["MR_small.dcm", "CT_small.dcm", "MR_small_implicit.dcm", "JPEG2000.dcm", "MR_small_jpeg_ls_lossless.dcm",
         "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm", "rtplan.dcm", "image_dfl.dcm", "liver_1frame.dcm"]


@pytest.mark.parametrize("name", WHOLE)
def test_whole_datasets_pass(name: str) -> None:
    path = Path(get_testdata_file(name))
    summary = check_part10_file(path, 1 << 30)
    assert summary.transfer_syntax_uid == str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


def _header_two_ways(path: Path) -> tuple[object, object]:
    """(header from the walk's kept elements or None, header from pydicom reading the file)."""
    full = dcmread(path, stop_before_pixels=True)
    summary = check_part10_file(path, 1 << 30, keep=HEADER_TAGS)
    walked = header_dataset(summary, str(full.SOPClassUID))
    return (read_header(walked) if walked is not None else None), read_header(full)


@pytest.mark.parametrize("name", WHOLE)
def test_the_header_kept_by_the_walk_is_the_one_pydicom_reads(name: str) -> None:
    walked, full = _header_two_ways(Path(get_testdata_file(name)))
    assert walked is None if full.sop_class_uid in MASK_SOP_CLASSES else walked == full


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian])
@pytest.mark.parametrize("charset, description", [
    (None, "T1 post"), ("ISO_IR 100", "Tête T1 gadolinium"), ("ISO_IR 192", "T1 造影 Überblick"),
    (["", "ISO 2022 IR 87"], "T1 造影 やまだ"), (None, ""),
])
def test_the_header_kept_by_the_walk_decodes_as_pydicom_does(tmp_path: Path, syntax: str, charset, description: str) -> None:
    (ds,) = mr_series(1)
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.SeriesDescription = description
    if not description:
        del ds.SeriesNumber, ds.FrameOfReferenceUID
    ds.file_meta.TransferSyntaxUID = syntax
    path = tmp_path / "one.dcm"
    ds.save_as(path, enforce_file_format=True)
    walked, full = _header_two_ways(path)
    assert walked is not None and walked == full
    assert full.series_description == description[:64]


def test_masks_and_long_header_elements_are_read_whole(tmp_path: Path) -> None:
    images = mr_series(2)
    for mask in (mask_for(images, "SEG"), mask_for(images, "RTSTRUCT")):
        mask.save_as(tmp_path / "mask.dcm", enforce_file_format=True)
        summary = check_part10_file(tmp_path / "mask.dcm", 1 << 30, keep=HEADER_TAGS)
        assert header_dataset(summary, str(mask.SOPClassUID)) is None
    image = images[0]
    image.SeriesDescription = "x" * 2000  # over what the walk keeps: pydicom reads it
    image.save_as(tmp_path / "long.dcm", enforce_file_format=True)
    summary = check_part10_file(tmp_path / "long.dcm", 1 << 30, keep=HEADER_TAGS)
    assert not summary.kept_all and header_dataset(summary, str(image.SOPClassUID)) is None
    image.SeriesDescription = "T1"
    image.ReferencedSeriesSequence = [Dataset()]
    image.ReferencedSeriesSequence[0].SeriesInstanceUID = "1.2.3.4"
    image.save_as(tmp_path / "refs.dcm", enforce_file_format=True)
    summary = check_part10_file(tmp_path / "refs.dcm", 1 << 30, keep=HEADER_TAGS)
    assert header_dataset(summary, str(image.SOPClassUID)) is None
    assert read_header(dcmread(tmp_path / "refs.dcm")).referenced_series_uids == ("1.2.3.4",)


@pytest.mark.parametrize("name, reason", [("MR_truncated.dcm", "Pixel Data"), ("rtplan_truncated.dcm", "ends inside")])
def test_truncated_datasets_are_named(name: str, reason: str) -> None:
    with pytest.raises(IncompleteDataset, match=reason) as err:
        check_part10_file(Path(get_testdata_file(name)), 1 << 30)
    assert len(str(err.value)) <= 64  # fits an Error Comment


def test_every_cut_of_an_image_is_refused(tmp_path: Path) -> None:
    """Cut anywhere after the file meta: inside an element, or between elements (then the
    image has no Pixel Data, which an image SOP class requires)."""
    raw = Path(get_testdata_file("MR_small.dcm")).read_bytes()
    meta_end = 132 + 12 + int.from_bytes(raw[140:144], "little")
    for cut in range(meta_end + 1, len(raw), 97):
        path = tmp_path / "cut.dcm"
        path.write_bytes(raw[:cut])
        with pytest.raises(IncompleteDataset):
            check_part10_file(path, 1 << 30, pixel_data_required=True)


def test_size_limit_applies_to_the_dataset() -> None:
    with pytest.raises(DatasetTooLarge):
        check_part10_file(Path(get_testdata_file("MR_small.dcm")), 1000)
    with pytest.raises(DatasetTooLarge):
        check_part10_file(Path(get_testdata_file("image_dfl.dcm")), 1000)  # counted while inflating


def _received_c_store(tmp_path: Path) -> tuple[int, C_STORE]:
    """A C-STORE request as the DUL thread queues it for the association: pynetdicom's own
    decode of the P-DATA fragments, spooled by the node into ``tmp_path``."""
    dataset = dcmread(get_testdata_file("MR_small.dcm"))
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = dataset.SOPClassUID
    request.AffectedSOPInstanceUID = dataset.SOPInstanceUID
    request.Priority = 2
    request.DataSet = BytesIO(encode(dataset, False, True))
    sent = C_STORE_RQ()
    sent.primitive_to_message(request)
    context = build_context(dataset.SOPClassUID, ExplicitVRLittleEndian)
    context.context_id = 1
    assoc = Association(AE(), "acceptor")
    assoc._accepted_cx = {1: context}  # what pynetdicom's negotiation leaves there
    spool.install()
    spool.spool_folder.folder = str(tmp_path)
    try:
        received = DIMSEMessage()
        complete = [received.decode_msg(fragment, assoc) for fragment in sent.encode_msg(1, 16382)]
    finally:
        spool.spool_folder.folder = None
    assert complete[-1]
    primitive = received.message_to_primitive()
    assert isinstance(primitive, C_STORE)
    return 1, primitive


def test_the_dul_fsyncs_a_spool_once_its_message_is_queued_and_passes_on_a_failure(tmp_path: Path) -> None:
    woken: list[int] = []
    messages = MessageQueue(lambda: woken.append(messages.qsize()), sync_spool=True)
    whole = _received_c_store(tmp_path)
    messages.put(whole)
    assert woken == [1]  # the association thread was told first; the fsync was done by the put's end
    synced = spooled_dataset(_Event(whole[1])).synced
    assert synced is not None and synced.done() and synced.exception() is None
    broken = _received_c_store(tmp_path)
    broken[1]._dataset_file.close()
    messages.put(broken)  # the fsync fails: the DUL goes on, the archive sees the error
    synced = spooled_dataset(_Event(broken[1])).synced
    assert synced is not None and isinstance(synced.exception(), ValueError)
    unsynced = _received_c_store(tmp_path)
    MessageQueue(lambda: None, sync_spool=False).put(unsynced)  # storage.fsync off
    assert spooled_dataset(_Event(unsynced[1])).synced is None


class _Event:
    """The two attributes of pynetdicom's ``Event`` that :func:`spooled_dataset` reads."""

    def __init__(self, request: C_STORE) -> None:
        self.request = request
        self.assoc = None
        self.dataset_path = request._dataset_path


def test_peer_text_is_one_printable_line() -> None:
    assert peer_text("AE\r\n2030 ERROR forged\x1b[31m\\") == "AE\\x0d\\x0a2030 ERROR forged\\x1b[31m\\\\"
    assert peer_text("x" * 500).endswith("...") and len(peer_text("x" * 500)) == 83
    assert peer_text(b"\xff\x00") == "\\xff\\x00"


def test_formatter_escapes_messages_and_fences_tracebacks() -> None:
    formatter = SafeFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "peer said %s", ("a\nERROR forged",), None)
    assert formatter.format(record) == "ERROR peer said a\\nERROR forged"
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "value %s", ("E\x1b[2J\x00\x07\x7f\tT",), None)
    assert formatter.format(record) == "ERROR value E\\x1b[2J\\x00\\x07\\x7f\tT"
    try:
        raise ValueError("bad\nERROR forged")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom", (), sys.exc_info())
    lines = formatter.format(record).splitlines()
    assert lines[0] == "ERROR boom" and all(line.startswith("  | ") for line in lines[1:])


def test_rejections_are_summarised_per_source_and_interval(caplog: pytest.LogCaptureFixture) -> None:
    refusals = RejectionLog(logging.getLogger("test.refused"), interval_seconds=3600)
    with caplog.at_level(logging.WARNING, logger="test.refused"):
        for _ in range(1000):
            refusals.note("10.0.0.9", "association rejected", "calling AE X\nY")
        refusals.note("10.0.0.10", "association rejected")
        refusals.flush()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["refused 10.0.0.9: association rejected (calling AE X\\x0aY)",
                     "refused 10.0.0.10: association rejected",
                     "refused 10.0.0.9: association rejected, 999 more times in the last 0 s"]
    assert refusals.totals == {"association rejected": 1001}
