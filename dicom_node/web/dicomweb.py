"""STOW-RS into the node (PS3.18 10.5): ``POST /dicomweb/studies`` and
``POST /dicomweb/studies/{uid}``, with the promises of C-STORE.

- Closed by default (``[web] stow_enabled``); a sending system authenticates with its own
  token (``Authorization: Bearer``, ``egfr-node web add-sender NAME``) or comes through the
  console's trusted proxy header (``dicom_node.web.app`` checks both before this runs).
- The body is ``multipart/related; type="application/dicom"``, parsed as it streams
  (``python-multipart``): each part is written to the archive's ``.incoming`` as it arrives,
  so memory does not grow with its size; a part over ``node.max_instance_size_mb`` stops
  being written and is refused (0xA700).
- Each whole part goes through ``store.accept.accept_file``, the C-STORE handler's own
  acceptance: whole dataset, header against its file meta (and the addressed study), durable
  archive and record before the response; the same duplicate and conflict rules. A part cut
  short (the body ends before its closing boundary) is never stored.
- The response (``application/dicom+json``) lists every instance: Referenced SOP Sequence
  (stored; Warning Reason 0xB006 when an earlier copy with other content was kept) and
  Failed SOP Sequence with the C-STORE status as Failure Reason. HTTP 200 all stored, 202
  some not (or warnings), 409 none stored, 400 a malformed or cut body, 415 not
  ``application/dicom`` parts. Each request is one line in the audit trail.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info

from pipeline.uids import is_uid
from dicom_node.store.accept import Acceptance, Status, accept_file
from dicom_node.store.archive import Archive

__all__ = ["router", "STOW_PREFIX", "MEDIA_TYPE"]

log = logging.getLogger(__name__)

router = APIRouter()
STOW_PREFIX = "/dicomweb/"
MEDIA_TYPE = "application/dicom+json"


@dataclass
class _Part:
    path: Path
    file: BinaryIO | None
    headers: dict[str, str] = field(default_factory=dict)
    size: int = 0
    over_limit: bool = False


class _Body:
    """The multipart body as it streams: parts written to ``.incoming``, whole ones handed out."""

    def __init__(self, archive: Archive, boundary: str, max_part_bytes: int) -> None:
        from python_multipart.multipart import MultipartParser

        self.archive, self.max_part_bytes = archive, max_part_bytes
        self.current: _Part | None = None
        self.whole: list[_Part] = []
        self.ended = False
        self._field = b""
        self._value = b""
        self.parser = MultipartParser(boundary, {
            "on_part_begin": self._begin, "on_part_data": self._data, "on_part_end": self._end,
            "on_header_field": self._header_field, "on_header_value": self._header_value,
            "on_header_end": self._header_end, "on_end": self._finished})

    def _begin(self) -> None:
        path = self.archive.incoming_file()
        self.current = _Part(path, open(path, "xb"))

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        if self.current is not None:
            self.current.headers[self._field.decode("latin-1").strip().lower()] = self._value.decode("latin-1").strip()
        self._field = self._value = b""

    def _data(self, data: bytes, start: int, end: int) -> None:
        part = self.current
        if part is None or part.file is None:
            return
        part.size += end - start
        if part.size > self.max_part_bytes:  # the rest is counted, not written (its start names it)
            part.over_limit = True
            return
        part.file.write(data[start:end])

    def _end(self) -> None:
        part, self.current = self.current, None
        if part is not None and part.file is not None:
            part.file.close()
            part.file = None
            self.whole.append(part)

    def _finished(self) -> None:
        self.ended = True

    def feed(self, chunk: bytes) -> list[_Part]:
        """Parse ``chunk``; the parts it completed."""
        self.parser.write(chunk)
        done, self.whole = self.whole, []
        return done

    def discard(self) -> None:
        """The part the body was cut inside (never stored), and any not yet accepted."""
        for part in [self.current, *self.whole]:
            if part is not None:
                if part.file is not None:
                    part.file.close()
                part.path.unlink(missing_ok=True)
        self.current, self.whole = None, []


def _claimed(path: Path) -> tuple[str, str]:
    """The SOP class and instance a part's file meta names ("" when it has none)."""
    try:
        meta = read_file_meta_info(path)
    except Exception:  # not a Part-10 file: the acceptance says so
        return "", ""
    cls, uid = (str(meta.get(k, "") or "").strip("\x00 ") for k in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID"))
    return (cls if is_uid(cls) else ""), (uid if is_uid(uid) else "")


@dataclass(frozen=True)
class _Outcome:
    sop_class_uid: str
    sop_instance_uid: str
    acceptance: Acceptance


def _accept_part(part: _Part, archive: Archive, sessions: Any, max_bytes: int, study_uid: str, sender: str) -> _Outcome:
    """One whole part through the node's acceptance; its file removed after (linked if stored)."""
    try:
        sop_class, sop_uid = _claimed(part.path)
        media = part.headers.get("content-type", "application/dicom").split(";")[0].strip().lower()
        if media != "application/dicom":
            accepted = Acceptance(Status.CANNOT_UNDERSTAND, f"part is {media[:40]}, not application/dicom", "not application/dicom")
        elif part.over_limit:
            accepted = Acceptance(Status.OUT_OF_RESOURCES, f"instance over the limit of {max_bytes // 2**20} MiB",
                                  "instance over node.max_instance_size_mb")
        else:
            accepted = accept_file(part.path, archive, sessions, max_instance_bytes=max_bytes, door="STOW-RS",
                                   claimed_sop_class_uid=sop_class, claimed_sop_instance_uid=sop_uid,
                                   calling_aet=sender[:16], study_uid=study_uid)
        if accepted.header is not None:
            sop_class, sop_uid = accepted.header.sop_class_uid, accepted.header.sop_instance_uid
        if not accepted.stored:
            log.warning("STOW-RS %s from %s refused: 0x%04X %s", sop_uid or "(no UID)", sender, accepted.status,
                        accepted.comment, extra={"sop_instance_uid": sop_uid})
        return _Outcome(sop_class, sop_uid, accepted)
    finally:
        part.path.unlink(missing_ok=True)


_COUNTED: Any = None


def _count(outcomes: list[_Outcome]) -> None:
    """``egfr_node_stow_instances{status}``: with ``egfr-node serve`` and monitoring on, summed
    into the SCP's /metrics beside C-STORE's ``egfr_node_instances`` (multiprocess mode)."""
    global _COUNTED
    if _COUNTED is None:
        from prometheus_client import CollectorRegistry, Counter

        _COUNTED = Counter("egfr_node_stow_instances", "STOW-RS instances answered, by status", ["status"],
                           registry=CollectorRegistry(auto_describe=True))
    for o in outcomes:
        _COUNTED.labels(status=f"0x{o.acceptance.status:04X}").inc()


def _answer(outcomes: list[_Outcome], status: int, detail: str = "") -> Response:
    """The STOW-RS response body (PS3.18 Table 10.5.3-1) with ``status``."""
    ds = Dataset()
    referenced, failed = [], []
    for o in outcomes:
        item = Dataset()
        if o.sop_class_uid:
            item.ReferencedSOPClassUID = o.sop_class_uid
        if o.sop_instance_uid:
            item.ReferencedSOPInstanceUID = o.sop_instance_uid
        if o.acceptance.stored:
            if o.acceptance.status:
                item.WarningReason = o.acceptance.status
            referenced.append(item)
        else:
            item.FailureReason = o.acceptance.status
            failed.append(item)
    if referenced:
        ds.ReferencedSOPSequence = referenced
    if failed:
        ds.FailedSOPSequence = failed
    body = ds.to_json_dict()
    shown = "".join(c if " " <= c <= "~" and c != '"' else "'" if c == '"' else " " for c in detail[:200])
    headers = {"Warning": f'299 egfr-node "{shown}"'} if detail else {}
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def _boundary(content_type: str) -> tuple[str | None, str]:
    """(boundary, why not) of a ``multipart/related; type="application/dicom"`` request."""
    from python_multipart.multipart import parse_options_header

    media, options = parse_options_header(content_type)
    if media.lower() != b"multipart/related":
        return None, f"the body must be multipart/related, not {media.decode('latin-1')[:60] or 'missing'}"
    kind = options.get(b"type", b"application/dicom").decode("latin-1").lower()
    if kind != "application/dicom":
        return None, f"parts must be application/dicom (type={kind[:60]}); DICOM JSON and XML are not accepted"
    boundary = options.get(b"boundary", b"").decode("latin-1")
    if not boundary:
        return "", "no boundary in Content-Type"
    return boundary, ""


async def _stow(request: Request, study_uid: str = "") -> Response:
    from starlette.requests import ClientDisconnect

    from db import audit

    console = request.app.state.console
    config, archive, sessions = console.config, console.archive, console.sessions
    sender = request.state.sender
    boundary, why = _boundary(request.headers.get("content-type", ""))
    if boundary is None:
        return JSONResponse({"detail": why}, status_code=415)
    if not boundary:
        return JSONResponse({"detail": why}, status_code=400)
    max_bytes = config.node.max_instance_size_mb * 2**20
    body = _Body(archive, boundary, max_bytes)
    outcomes: list[_Outcome] = []
    malformed = ""
    try:
        async for chunk in request.stream():
            try:
                parts = body.feed(chunk)
            except OSError as exc:  # a part's file in .incoming (disk full, not writable): nothing of it kept
                log.error("STOW-RS from %s: a part could not be written to the archive: %s", sender, exc.strerror)
                return JSONResponse({"detail": f"the archive cannot be written ({exc.strerror}); send it again later"},
                                    status_code=503)
            except Exception as exc:  # python-multipart's MultipartParseError and kin
                malformed = f"malformed multipart body: {str(exc)[:120]}"
                break
            for part in parts:
                outcomes.append(await asyncio.to_thread(_accept_part, part, archive, sessions, max_bytes, study_uid, sender))
        if not malformed and not body.ended:
            malformed = "the body ended inside a part (no closing boundary): that part was not stored"
    except ClientDisconnect:
        log.warning("STOW-RS from %s: the sender went away mid-body; %d instances stored before, the cut part not",
                    sender, sum(o.acceptance.stored for o in outcomes))
        return Response(status_code=400)
    finally:
        body.discard()
    stored = sum(o.acceptance.stored for o in outcomes)
    if malformed or not outcomes:
        code, detail = 400, malformed or "no part in the body"
    elif stored == 0:
        code, detail = 409, ""
    elif stored < len(outcomes) or any(o.acceptance.status for o in outcomes):
        code, detail = 202, ""
    else:
        code, detail = 200, ""
    summary = f"HTTP {code}: {stored} stored, {len(outcomes) - stored} refused" + (f"; {detail}" if detail else "")
    target = f"STOW-RS {len(outcomes)} instances" + (f" of study {study_uid}" if study_uid else "")

    def note() -> None:
        try:
            with sessions.begin() as session:
                audit.record(session, f"stow:{sender}", "stow", target, summary,
                             request.client.host if request.client else "")
        except Exception as exc:  # the answer stands (what was stored is stored); the log says it
            log.error("STOW-RS from %s: %s; not in the audit trail (%s)", sender, summary, type(exc).__name__)

    await asyncio.to_thread(note)
    _count(outcomes)
    log.info("STOW-RS from %s: %s", sender, summary)
    return _answer(outcomes, code, detail)


@router.post("/dicomweb/studies", include_in_schema=False)
async def stow_studies(request: Request) -> Response:
    return await _stow(request)


@router.post("/dicomweb/studies/{study_uid}", include_in_schema=False)
async def stow_study(request: Request, study_uid: str) -> Response:
    if not is_uid(study_uid):
        return JSONResponse({"detail": "not a Study Instance UID"}, status_code=404)
    return await _stow(request, study_uid)
