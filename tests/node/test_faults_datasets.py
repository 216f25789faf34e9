"""A broken or hostile peer's dataset (issue 8): only whole, well-formed datasets are
acknowledged; a cut stream, short or malformed pixel data, a missing Pixel Data, a deflate
bomb or an instance over the size limit is refused with the status that says so, and
nothing of it is archived. Against an in-process SCP; pynetdicom sends the files' bytes as
they are."""

from __future__ import annotations

import copy
import re
import struct
import time
import zlib
from dataclasses import replace
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid
from sqlalchemy import select

from db.models import Instance
from dicom_node.receive.scp import Status
from dicom_node.receive.server import DicomNode
from tests.dicom_factory import mask_for, mr_series
from tests.node.scu import association

# --- only whole datasets are acknowledged ---------------------------------------------------


def stored(runtime) -> list[str]:
    with runtime.sessions.begin() as s:
        return [r.sop_instance_uid for r in s.scalars(select(Instance))]


def archive_files(runtime) -> list[Path]:
    return sorted(p for p in runtime.archive.root.rglob("*") if p.is_file())


def _status_and_comment(port: int, path: Path, syntaxes: list[str] | None = None) -> tuple[int, str]:
    with association(port, transfer_syntaxes=syntaxes) as assoc:
        rsp = assoc.send_c_store(path)
        return int(rsp.Status), str(rsp.get("ErrorComment", ""))


def test_stream_cut_inside_pixel_data_is_refused_and_nothing_archived(node: DicomNode, runtime, tmp_path: Path,
                                                                      send_files_raw) -> None:
    (image,) = mr_series(1, rows=256, columns=256)
    whole = tmp_path / "whole.dcm"
    image.save_as(whole, enforce_file_format=True)
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(whole.read_bytes()[:-1000])
    status, comment = _status_and_comment(node.port, cut)
    assert status == Status.CANNOT_UNDERSTAND and "Pixel Data" in comment
    assert stored(runtime) == [] and archive_files(runtime) == []
    assert _status_and_comment(node.port, whole)[0] == 0  # the whole one, same UID, is taken


def test_native_pixel_data_shorter_than_its_attributes_say_is_refused(node: DicomNode, runtime) -> None:
    (image,) = mr_series(1, rows=64, columns=64)
    image.PixelData = image.PixelData[: 64 * 32 * 2]  # half the rows
    with association(node.port) as assoc:
        rsp = assoc.send_c_store(image)
    assert rsp.Status == Status.CANNOT_UNDERSTAND and "4096" in rsp.ErrorComment and "8192" in rsp.ErrorComment
    assert stored(runtime) == [] and archive_files(runtime) == []


def test_an_image_or_segmentation_without_pixel_data_is_refused(node: DicomNode, runtime) -> None:
    """Pixel Data is Type 1 in the MR and SEG IODs: a dataset that ends before it is incomplete
    (an RTSTRUCT has none and is taken)."""
    images = mr_series(2, rows=64, columns=64)
    seg, rtstruct = mask_for(images, "SEG"), mask_for(images, "RTSTRUCT")
    image, bare_seg = copy.deepcopy(images[0]), copy.deepcopy(seg)
    del image.PixelData, bare_seg.PixelData
    with association(node.port) as assoc:
        for ds in (image, bare_seg):
            rsp = assoc.send_c_store(ds)
            assert rsp.Status == Status.CANNOT_UNDERSTAND and "no Pixel Data" in rsp.ErrorComment, ds.Modality
        assert stored(runtime) == [] and archive_files(runtime) == []
        assert [(assoc.send_c_store(ds).Status, ds.Modality) for ds in (images[1], seg, rtstruct)] == [(0, "MR"), (0, "SEG"), (0, "RTSTRUCT")]


def test_malformed_encapsulated_pixel_data_is_refused(node: DicomNode, runtime, tmp_path: Path, send_files_raw) -> None:
    source = dcmread(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))
    source.SOPInstanceUID = source.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    good = tmp_path / "good.dcm"
    source.save_as(good, enforce_file_format=True)
    raw = good.read_bytes()
    delimiter = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    start = re.search(rb"\xe0\x7f\x10\x00O[BW]\x00\x00\xff\xff\xff\xff", raw).end()
    end = raw.index(delimiter, start)
    no_fragment = raw[:start] + b"\xfe\xff\x00\xe0\x00\x00\x00\x00" + raw[end:]  # offset table only
    garbled = raw[:start + 8] + b"\xfe\xff\x00\xe1" + raw[start + 12:]  # a fragment's item tag damaged
    syntax = [str(source.file_meta.TransferSyntaxUID)]
    for name, data in (("unterminated", raw[:end]), ("no-fragment", no_fragment), ("garbled", garbled)):
        path = tmp_path / f"{name}.dcm"
        path.write_bytes(data)
        status, comment = _status_and_comment(node.port, path, syntax)
        assert status == Status.CANNOT_UNDERSTAND, (name, hex(status), comment)
    assert stored(runtime) == [] and archive_files(runtime) == []
    assert _status_and_comment(node.port, good, syntax)[0] == 0


def _deflate_bomb(path: Path, inflated_bytes: int) -> None:
    """A Deflated Explicit VR Little Endian MR whose Pixel Data inflates to ``inflated_bytes`` of zeros."""
    (image,) = mr_series(1, rows=64, columns=64)
    del image.PixelData
    image.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    plain = path.with_suffix(".plain")
    image.save_as(plain, enforce_file_format=True)
    data = plain.read_bytes()
    plain.unlink()
    meta_end = 132 + 12 + int.from_bytes(data[140:144], "little")
    image.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buffer = DicomBytesIO()
    write_file_meta_info(buffer, image.file_meta)
    meta = bytes(128) + b"DICM" + buffer.getvalue()
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [z.compress(data[meta_end:] + b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<L", inflated_bytes))]
    zeros = bytes(1 << 20)
    for _ in range(inflated_bytes >> 20):
        parts.append(z.compress(zeros))
    parts.append(z.flush())
    path.write_bytes(meta + b"".join(parts))


def test_deflate_bomb_is_refused_out_of_resources_while_inflating(config, runtime, tmp_path: Path, send_files_raw) -> None:
    node = DicomNode(replace(config, node=replace(config.node, max_instance_size_mb=16)), runtime.archive, runtime.sessions)
    node.start()
    try:
        bomb = tmp_path / "bomb.dcm"
        _deflate_bomb(bomb, 1 << 30)  # 1 GiB of zeros in about 1 MB
        assert bomb.stat().st_size < 2 << 20
        began = time.monotonic()
        status, comment = _status_and_comment(node.port, bomb, [DeflatedExplicitVRLittleEndian])
        assert status == Status.OUT_OF_RESOURCES and "16 MiB" in comment, comment
        assert time.monotonic() - began < 5
        assert stored(runtime) == [] and archive_files(runtime) == []
    finally:
        node.stop()


def test_instance_over_the_size_limit_on_the_wire_is_refused_and_not_spooled(config, runtime, tmp_path: Path) -> None:
    node = DicomNode(replace(config, node=replace(config.node, max_instance_size_mb=1)), runtime.archive, runtime.sessions)
    node.start()
    try:
        (large,) = mr_series(1, rows=1024, columns=1024)  # 2 MiB
        (small,) = mr_series(1)
        with association(node.port) as assoc:
            rsp = assoc.send_c_store(large)
            assert rsp.Status == Status.OUT_OF_RESOURCES and "1 MiB" in rsp.ErrorComment
            assert assoc.send_c_store(small).Status == 0  # the association goes on
        assert stored(runtime) == [small.SOPInstanceUID]
        assert list(runtime.archive.incoming.iterdir()) == []
    finally:
        node.stop()
