"""The pure parts of the fault handling, without sockets: the dataset walk and log safety."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from dicom_node.dataset_check import DatasetTooLarge, IncompleteDataset, check_part10_file
from dicom_node.log_safety import RejectionLog, SafeFormatter, peer_text

WHOLE = ["MR_small.dcm", "CT_small.dcm", "MR_small_implicit.dcm", "JPEG2000.dcm", "MR_small_jpeg_ls_lossless.dcm",
         "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm", "rtplan.dcm", "image_dfl.dcm", "liver_1frame.dcm"]


@pytest.mark.parametrize("name", WHOLE)
def test_whole_datasets_pass(name: str) -> None:
    path = Path(get_testdata_file(name))
    summary = check_part10_file(path, 1 << 30)
    assert summary.transfer_syntax_uid == str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


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


def test_peer_text_is_one_printable_line() -> None:
    assert peer_text("AE\r\n2030 ERROR forged\x1b[31m\\") == "AE\\x0d\\x0a2030 ERROR forged\\x1b[31m\\\\"
    assert peer_text("x" * 500).endswith("...") and len(peer_text("x" * 500)) == 83
    assert peer_text(b"\xff\x00") == "\\xff\\x00"


def test_formatter_escapes_messages_and_fences_tracebacks() -> None:
    formatter = SafeFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "peer said %s", ("a\nERROR forged",), None)
    assert formatter.format(record) == "ERROR peer said a\\nERROR forged"
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
