"""Is a received dataset whole? A streaming walk of its encoding; no pixel is decoded.

A success status tells PACS the node holds the instance, so before it goes back the spooled
Part-10 file is walked element by element in its transfer syntax (PS3.5 7.1, 7.5, A.4):
every value lies inside the file, sequences and items close where their lengths or
delimiters say, native Pixel Data is as long as Rows x Columns x Samples per Pixel x Bits
Allocated / 8 x Number of Frames (padded to even), and encapsulated Pixel Data is a Basic
Offset Table item plus at least one fragment per frame, closed by a Sequence Delimitation
Item. Values are skipped, never loaded, except the few short top-level elements the caller
asks to ``keep`` (the header the node records: pydicom need not read the file again for
them); a deflated dataset is inflated as a stream and counted against the size limit while
it inflates (a deflate bomb stops at the limit).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.tag import BaseTag
from pydicom.uid import UID

__all__ = ["IncompleteDataset", "DatasetTooLarge", "DatasetSummary", "check_part10_file"]

UNDEFINED = 0xFFFFFFFF
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
#: Top-level attributes the Pixel Data length follows from.
_IMAGE_PIXEL = {0x00280002: "SamplesPerPixel", 0x00280004: "PhotometricInterpretation", 0x00280008: "NumberOfFrames",
                0x00280010: "Rows", 0x00280011: "Columns", 0x00280100: "BitsAllocated"}
_MAX_DEPTH = 16
_CHUNK = 1 << 16
#: A kept element longer than this is not kept (``DatasetSummary.kept_all`` is then False).
_MAX_KEPT_BYTES = 1024


class IncompleteDataset(ValueError):
    """The dataset is cut short or malformed; the message (<= 64 characters) says where."""


class DatasetTooLarge(ValueError):
    """The dataset is larger than the limit (after inflating, for the deflated syntax)."""


@dataclass(frozen=True)
class DatasetSummary:
    transfer_syntax_uid: str
    dataset_bytes: int
    pixel_data: str  # "none", "native" or "encapsulated"
    #: The top-level elements asked for with ``keep`` that the dataset has, undecoded (as
    #: pydicom's reader yields them: a ``Dataset`` built of them converts them on access).
    kept: dict[BaseTag, DataElement | RawDataElement] = field(default_factory=dict)
    #: False when a kept tag was there but too long, a sequence or of undefined length.
    kept_all: bool = True
    #: Every top-level tag of the dataset.
    top_level_tags: frozenset[int] = frozenset()


class _FileSource:
    def __init__(self, f: BinaryIO, start: int, size: int) -> None:
        self.f, self.pos, self.size = f, start, size
        f.seek(start)

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) < n:
            raise IncompleteDataset("dataset ends inside an element")
        self.pos += n
        return data

    def skip(self, n: int, what: str = "an element") -> None:
        if self.pos + n > self.size:
            raise IncompleteDataset(f"dataset ends inside {what}")
        self.f.seek(n, 1)
        self.pos += n

    def at_end(self) -> bool:
        return self.pos >= self.size


class _InflateSource:
    """The raw-deflate dataset of the Deflated Explicit VR Little Endian syntax, inflated in chunks."""

    def __init__(self, f: BinaryIO, start: int, limit: int) -> None:
        f.seek(start)
        self.f, self.pos, self.limit = f, 0, limit
        self.z = zlib.decompressobj(-zlib.MAX_WBITS)
        self.buffer = bytearray()
        self.eof = False

    def _more(self) -> None:
        if self.z.eof:  # the deflate stream has ended (anything after it is ignored)
            self.eof = True
            return
        try:
            if self.z.unconsumed_tail:
                data = self.z.decompress(self.z.unconsumed_tail, _CHUNK)
            else:
                raw = self.f.read(_CHUNK)
                if raw:
                    data = self.z.decompress(raw, _CHUNK)
                else:
                    data, self.eof = self.z.flush(), True
        except zlib.error:
            raise IncompleteDataset("deflated dataset is not a valid deflate stream") from None
        if self.pos + len(self.buffer) + len(data) > self.limit:
            raise DatasetTooLarge(f"inflated dataset over {self.limit // 2**20} MiB")
        self.buffer += data

    def read(self, n: int) -> bytes:
        while len(self.buffer) < n and not self.eof:
            self._more()
        if len(self.buffer) < n:
            raise IncompleteDataset("dataset ends inside an element")
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        self.pos += n
        return out

    def skip(self, n: int, what: str = "an element") -> None:
        while n:
            if not self.buffer:
                if self.eof:
                    raise IncompleteDataset(f"dataset ends inside {what}")
                self._more()
                continue
            k = min(n, len(self.buffer))
            del self.buffer[:k]
            n -= k
            self.pos += k

    def at_end(self) -> bool:
        while not self.buffer and not self.eof:
            self._more()
        return not self.buffer


class _Walker:
    def __init__(self, source: _FileSource | _InflateSource, keep: frozenset[int] = frozenset()) -> None:
        self.src = source
        self.image: dict[str, bytes] = {}
        self.pixel: tuple[str, int, int] | None = None  # (kind, length or fragments, offset-table bytes)
        self.keep = keep
        self.kept: dict[BaseTag, DataElement | RawDataElement] = {}
        self.kept_all = True
        self.top_level_tags: set[int] = set()

    def dataset(self, end: int | None, depth: int, implicit: bool, delimited: bool) -> None:
        """Elements up to ``end`` (defined-length item), an Item Delimitation (``delimited``) or
        the end of the stream (the top level)."""
        src = self.src
        while True:
            if end is not None:
                if src.pos == end:
                    return
                if src.pos > end:
                    raise IncompleteDataset("an element overruns its item")
            elif not delimited and src.at_end():
                return
            # tag and, implicit: length; explicit: VR and length (short VRs) or VR and 2 reserved bytes
            head = src.read(8)
            group, element = struct.unpack_from("<HH", head)
            tag = group << 16 | element
            if group == 0xFFFE:
                (length,) = struct.unpack_from("<L", head, 4)
                if tag == _ITEM_END and delimited and length == 0:
                    return
                raise IncompleteDataset(f"unexpected ({group:04X},{element:04X}) in a dataset")
            vr, length = self._vr_and_length(head, implicit)
            if depth == 0:
                self.top_level_tags.add(tag)
                if tag in self.keep:
                    if length <= _MAX_KEPT_BYTES and vr != b"SQ" and not (implicit and _is_sequence(tag)):
                        position = src.pos
                        key = BaseTag(tag)
                        self.kept[key] = RawDataElement(key, vr.decode("ascii") if vr else None, length,
                                                        src.read(length), position, implicit, True)
                        continue
                    self.kept_all = False
            if depth == 0 and tag in _IMAGE_PIXEL and length <= 16:
                self.image[_IMAGE_PIXEL[tag]] = src.read(length)
            elif tag == _PIXEL_DATA and length == UNDEFINED:
                if implicit:
                    raise IncompleteDataset("encapsulated Pixel Data in an implicit VR syntax")
                fragments, table = self.fragments()
                if depth == 0:
                    self.pixel = ("encapsulated", fragments, table)
            elif vr == b"SQ" or length == UNDEFINED or (implicit and _is_sequence(tag)):
                if length == UNDEFINED and vr not in (None, b"SQ", b"UN"):
                    raise IncompleteDataset(f"undefined length on a {vr.decode('ascii', 'replace')} element")
                # an undefined-length UN holds an implicit VR sequence (PS3.5 6.2.2)
                self.sequence(length, depth + 1, implicit or vr == b"UN")
            else:
                src.skip(length, "Pixel Data" if tag == _PIXEL_DATA else "an element")
                if tag == _PIXEL_DATA and depth == 0:
                    self.pixel = ("native", length, 0)

    def _vr_and_length(self, head: bytes, implicit: bool) -> tuple[bytes | None, int]:
        if implicit:
            return None, struct.unpack_from("<L", head, 4)[0]
        vr = head[4:6]
        if not (vr.isalpha() and vr.isupper()):
            raise IncompleteDataset("invalid value representation")
        if vr in _LONG_VRS:
            return vr, struct.unpack("<L", self.src.read(4))[0]
        return vr, struct.unpack_from("<H", head, 6)[0]

    def sequence(self, length: int, depth: int, implicit: bool) -> None:
        if depth > _MAX_DEPTH:
            raise IncompleteDataset("sequences nested too deep")
        src = self.src
        end = None if length == UNDEFINED else src.pos + length
        while True:
            if end is not None:
                if src.pos == end:
                    return
                if src.pos > end:
                    raise IncompleteDataset("an item overruns its sequence")
            group, element, item_length = struct.unpack("<HHL", src.read(8))
            tag = group << 16 | element
            if tag == _SEQUENCE_END and end is None and item_length == 0:
                return
            if tag != _ITEM:
                raise IncompleteDataset(f"({group:04X},{element:04X}) where a sequence item belongs")
            if item_length == UNDEFINED:
                self.dataset(None, depth, implicit, delimited=True)
            else:
                item_end = src.pos + item_length
                if end is not None and item_end > end:
                    raise IncompleteDataset("an item overruns its sequence")
                self.dataset(item_end, depth, implicit, delimited=False)

    def fragments(self) -> tuple[int, int]:
        """Encapsulated Pixel Data (PS3.5 A.4): (number of fragments, Basic Offset Table bytes)."""
        count, table = 0, 0
        while True:
            group, element, length = struct.unpack("<HHL", self.src.read(8))
            tag = group << 16 | element
            if tag == _SEQUENCE_END and length == 0:
                break
            if tag != _ITEM or length == UNDEFINED:
                raise IncompleteDataset("encapsulated Pixel Data: malformed item")
            if count == 0:
                table = length
            self.src.skip(length, "Pixel Data")
            count += 1
        if count < 2:
            raise IncompleteDataset("encapsulated Pixel Data has no fragment")
        return count - 1, table


def _is_sequence(tag: int) -> bool:
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return False


def _meta(f: BinaryIO) -> tuple[str, int]:
    """(transfer syntax UID, offset of the dataset) from a Part-10 file's meta information."""
    f.seek(128)
    if f.read(4) != b"DICM":
        raise IncompleteDataset("not a DICOM file")
    syntax = ""
    while True:
        start = f.tell()
        head = f.read(6)
        if len(head) < 6 or struct.unpack("<H", head[:2])[0] != 0x0002:
            return syntax, start
        element = struct.unpack("<H", head[2:4])[0]
        vr = head[4:6]
        length = struct.unpack("<2xL", f.read(6))[0] if vr in _LONG_VRS else struct.unpack("<H", f.read(2))[0]
        value = f.read(length)
        if element == 0x0010:
            syntax = value.rstrip(b"\x00 ").decode("ascii", "replace")


def _image_int(image: dict[str, bytes], name: str, default: int | None = None) -> int:
    raw = image.get(name)
    if raw is None or not raw:
        if default is None:
            raise IncompleteDataset(f"Pixel Data without {name}")
        return default
    if name == "NumberOfFrames":
        try:
            return int(raw.decode("ascii").strip(" \x00"))
        except ValueError:
            raise IncompleteDataset("NumberOfFrames is not an integer") from None
    return int(struct.unpack("<H", raw[:2])[0])


def _check_pixel_data(walker: _Walker, syntax: UID) -> str:
    if walker.pixel is None:
        return "none"
    kind, amount, table = walker.pixel
    image = walker.image
    frames = _image_int(image, "NumberOfFrames", 1)
    if frames < 1:
        raise IncompleteDataset("NumberOfFrames is less than 1")
    encapsulated = syntax.is_encapsulated
    if kind == "encapsulated":
        if not encapsulated:
            raise IncompleteDataset("encapsulated Pixel Data in a native syntax")
        if amount < frames:
            raise IncompleteDataset(f"{amount} fragments for {frames} frames")
        if table and table != 4 * frames:
            raise IncompleteDataset("Basic Offset Table does not fit the frames")
        return kind
    if encapsulated:
        raise IncompleteDataset("native Pixel Data in an encapsulated syntax")
    rows, columns = _image_int(image, "Rows"), _image_int(image, "Columns")
    samples, bits = _image_int(image, "SamplesPerPixel", 1), _image_int(image, "BitsAllocated")
    photometric = image.get("PhotometricInterpretation", b"").strip(b" \x00")
    per_frame_samples = 2 if photometric == b"YBR_FULL_422" and samples == 3 else samples
    expected = (rows * columns * per_frame_samples * bits * frames + 7) // 8
    if amount not in (expected, expected + expected % 2):
        raise IncompleteDataset(f"Pixel Data has {amount} bytes, not {expected}")
    return kind


def check_part10_file(path: Path, max_bytes: int, *, pixel_data_required: bool = False,
                      keep: frozenset[int] = frozenset()) -> DatasetSummary:
    """Walk the Part-10 file at ``path``; raise IncompleteDataset or DatasetTooLarge.

    ``pixel_data_required`` (image SOP classes, where Pixel Data is Type 1): a dataset that
    ends before its Pixel Data, even at an element boundary, is incomplete. ``keep``:
    top-level tags whose values to return, undecoded (``DatasetSummary.kept``).
    """
    with open(path, "rb") as f:
        syntax_text, start = _meta(f)
        if not syntax_text:
            raise IncompleteDataset("no transfer syntax in the file meta")
        syntax = UID(syntax_text)
        size = path.stat().st_size
        if syntax.is_deflated:
            source: _FileSource | _InflateSource = _InflateSource(f, start, max_bytes)
        else:
            if size - start > max_bytes:
                raise DatasetTooLarge(f"dataset over {max_bytes // 2**20} MiB")
            source = _FileSource(f, start, size)
        walker = _Walker(source, keep)
        try:
            walker.dataset(None, 0, syntax.is_implicit_VR, delimited=False)
        except struct.error:
            raise IncompleteDataset("dataset ends inside an element") from None
        pixel = _check_pixel_data(walker, syntax)
        if pixel_data_required and pixel == "none":
            raise IncompleteDataset("no Pixel Data (Type 1 in this IOD)")
        return DatasetSummary(syntax_text, source.pos - (0 if syntax.is_deflated else start), pixel,
                              walker.kept, walker.kept_all, frozenset(walker.top_level_tags))
