"""Fetching a study from a configured source: query (C-FIND, or QIDO-RS for a ``wado``
source), then retrieve its MR series and its masks (C-MOVE to the node's own AE title,
C-GET, or WADO-RS). What arrives enters by the same door as a push (``store.accept``): the
same checks, the same durable write and record, and the study is queued by the same rules
(its mask and every image the mask names, or quiet). Which MR series is the post-contrast
T1 is decided later by the pipeline, as for a pushed study.

Queries ask for what finding a study needs (UIDs, accession, date, modalities, series
counts) and :class:`FoundStudy` keeps no patient name; log lines carry UIDs only.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

from pydicom import dcmwrite
from pydicom.dataset import Dataset
from sqlalchemy.orm import Session, sessionmaker

from db.ingest import RecordOutcome
from dicom_node.config import Config, Source
from dicom_node.scu import SendError, c_find, c_get, c_move
from dicom_node.store.accept import Acceptance, accept_bytes
from dicom_node.store.archive import Archive

__all__ = ["FetchError", "FoundSeries", "FoundStudy", "Fetched", "source_named", "find_studies", "fetch_study",
           "WANTED_MODALITIES", "MaskImageFetcher"]

log = logging.getLogger(__name__)

#: The series a fetch retrieves: the MR images and what may be a mask (SEG, RTSTRUCT, an SR
#: that may hold a viewer outline).
WANTED_MODALITIES = ("MR", "SEG", "RTSTRUCT", "SR")


class FetchError(RuntimeError):
    """A fetch that cannot go on; ``str()`` says why, naming the source."""


@dataclass(frozen=True)
class FoundSeries:
    series_uid: str
    modality: str
    description: str
    instances: int | None


@dataclass(frozen=True)
class FoundStudy:
    study_uid: str
    accession: str
    study_date: str
    series: tuple[FoundSeries, ...] = ()

    @property
    def wanted(self) -> list[FoundSeries]:
        """The series a fetch retrieves (WANTED_MODALITIES)."""
        return [s for s in self.series if s.modality in WANTED_MODALITIES]

    def to_json(self) -> dict[str, Any]:
        return {"study_uid": self.study_uid, "accession": self.accession, "study_date": self.study_date,
                "series": [s.__dict__ for s in self.series]}


@dataclass
class Fetched:
    """What one fetch of a study brought."""

    study_uid: str
    source: str
    method: str
    series: int = 0
    #: C-MOVE: what the source says it sent to the node's SCP (which archived each as a push)
    moved: int = 0
    stored: int = 0
    duplicates: int = 0
    failed: int = 0
    reasons: list[str] = field(default_factory=list)

    def count(self, accepted: Acceptance) -> int:
        """Count one instance; the status to answer its sender with."""
        if accepted.outcome in (RecordOutcome.NEW, RecordOutcome.CONFLICT):
            self.stored += 1
        elif accepted.outcome is RecordOutcome.DUPLICATE:
            self.duplicates += 1
        else:
            self.failed += 1
            if len(self.reasons) < 5:
                self.reasons.append(f"0x{accepted.status:04X} {accepted.comment}")
        return accepted.status

    def summary(self) -> str:
        done = (f"{self.moved} instances sent to the node" if self.method == "c-move"
                else f"{self.stored} instances stored, {self.duplicates} already archived")
        text = f"study {self.study_uid} from {self.source} by {self.method}: {self.series} series, {done}, {self.failed} failed"
        return text + (f" ({'; '.join(self.reasons)})" if self.reasons else "")


def source_named(config: Config, name: str | None) -> Source:
    """The source called ``name``; the only one when ``name`` is None."""
    if not config.sources:
        raise FetchError("no [[sources]] in the configuration: add the PACS to fetch from (README, Sources)")
    if name is None:
        if len(config.sources) > 1:
            raise FetchError(f"several sources configured: name one ({', '.join(s.name for s in config.sources)})")
        return config.sources[0]
    for source in config.sources:
        if source.name == name:
            return source
    raise FetchError(f"no source {name!r} in the configuration (configured: {', '.join(s.name for s in config.sources)})")


# --- query --------------------------------------------------------------------------------

_STUDY_KEYS = ("StudyInstanceUID", "AccessionNumber", "StudyDate", "ModalitiesInStudy")
_SERIES_KEYS = ("SeriesInstanceUID", "Modality", "SeriesDescription", "NumberOfSeriesRelatedInstances")


def _identifier(level: str, keys: Iterable[str], **match: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for key in keys:
        setattr(ds, key, "")
    for key, value in match.items():
        setattr(ds, key, value)
    return ds


def _int_or_none(value: object) -> int | None:
    try:
        return int(str(value)) if value not in (None, "") else None
    except ValueError:
        return None


def _qido_value(item: dict[str, Any], tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


def find_studies(config: Config, source: Source, *, accession: str = "", study_uid: str = "", patient_id: str = "",
                 study_date: str = "") -> list[FoundStudy]:
    """The studies on ``source`` matching every key given (at least one), each with its series."""
    match = {k: v for k, v in (("AccessionNumber", accession), ("StudyInstanceUID", study_uid),
                               ("PatientID", patient_id), ("StudyDate", study_date)) if v}
    if not match:
        raise FetchError("name the study: an accession number, a Study Instance UID, a patient ID or a date")
    timeout = config.delivery.timeout_seconds
    try:
        if source.retrieve == "wado":
            return _find_by_qido(source, match, timeout)
        studies = c_find(source, _identifier("STUDY", _STUDY_KEYS, **match), calling_aet=config.node.ae_title,
                         timeout=timeout)
        found = []
        for study in studies:
            uid = str(study.get("StudyInstanceUID", ""))
            series = c_find(source, _identifier("SERIES", _SERIES_KEYS, StudyInstanceUID=uid),
                            calling_aet=config.node.ae_title, timeout=timeout)
            found.append(FoundStudy(uid, str(study.get("AccessionNumber", "")), str(study.get("StudyDate", "")), tuple(
                FoundSeries(str(s.get("SeriesInstanceUID", "")), str(s.get("Modality", "")),
                            str(s.get("SeriesDescription", "")), _int_or_none(s.get("NumberOfSeriesRelatedInstances")))
                for s in series)))
        return found
    except SendError as exc:
        raise FetchError(str(exc)) from None


def _find_by_qido(source: Source, match: dict[str, str], timeout: float) -> list[FoundStudy]:
    import requests

    from dicom_node.dicomweb_peer import web_client

    client = web_client(source, timeout)
    try:
        studies = client.search_for_studies(search_filters=match, fields=list(_STUDY_KEYS))
        found = []
        for study in studies:
            uid = _qido_value(study, "0020000D")
            series = client.search_for_series(uid, fields=list(_SERIES_KEYS))
            found.append(FoundStudy(uid, _qido_value(study, "00080050"), _qido_value(study, "00080020"), tuple(
                FoundSeries(_qido_value(s, "0020000E"), _qido_value(s, "00080060"), _qido_value(s, "0008103E"),
                            _int_or_none(_qido_value(s, "00201209"))) for s in series)))
        return found
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        raise FetchError(f"{source.where()}: QIDO-RS answered HTTP {status}") from None
    except requests.RequestException as exc:
        raise FetchError(f"{source.where()}: QIDO-RS failed ({type(exc).__name__})") from None


# --- retrieve -----------------------------------------------------------------------------

def fetch_study(config: Config, archive: Archive, sessions: sessionmaker[Session], source: Source,
                study: FoundStudy, *, series_uids: Iterable[str] | None = None) -> Fetched:
    """Retrieve ``study``'s wanted series (or exactly ``series_uids``) from ``source`` into the
    archive. Raises FetchError when the source cannot be reached or refuses; the instances
    stored before stay (a retry finds them as duplicates)."""
    chosen = list(series_uids) if series_uids is not None else [s.series_uid for s in study.wanted]
    fetched = Fetched(study.study_uid, source.name, source.retrieve)
    if not chosen:
        raise FetchError(f"study {study.study_uid} on {source.name} has no MR, SEG, RTSTRUCT or SR series")
    timeout = config.delivery.timeout_seconds
    limit = config.node.max_instance_size_mb * 2**20
    for series_uid in chosen:
        identifier = _identifier("SERIES", (), StudyInstanceUID=study.study_uid, SeriesInstanceUID=series_uid)
        try:
            if source.retrieve == "c-move":
                # the source sends C-STOREs to the node's SCP, which archives them as any push
                counts = c_move(source, identifier, move_destination=config.node.ae_title,
                                calling_aet=config.node.ae_title, timeout=timeout)
                fetched.moved += counts.completed + counts.warning
                fetched.failed += counts.failed
            elif source.retrieve == "c-get":
                def store(data: bytes, syntax: str) -> int:
                    return fetched.count(accept_bytes(data, archive, sessions, max_instance_bytes=limit, door="C-GET",
                                                      calling_aet=source.ae_title, transfer_syntax_uid=syntax))

                refused_here = fetched.failed
                counts = c_get(source, identifier, store, calling_aet=config.node.ae_title, timeout=timeout)
                # what the source could not send (a class or syntax it cannot offer), besides what
                # the node refused (counted already, and counted by the source as failed too)
                fetched.failed += max(0, counts.failed - (fetched.failed - refused_here))
            else:
                _wado_series(source, study.study_uid, series_uid, archive, sessions, limit, timeout, fetched)
        except SendError as exc:
            raise FetchError(str(exc)) from None
        fetched.series += 1
        log.info("fetched series %s of study %s from %s by %s", series_uid, study.study_uid, source.name,
                 source.retrieve, extra={"study_uid": study.study_uid})
    return fetched


def _wado_series(source: Source, study_uid: str, series_uid: str, archive: Archive, sessions: sessionmaker[Session],
                 limit: int, timeout: float, fetched: Fetched) -> None:
    """WADO-RS one series, instance by instance (the response is read as it streams)."""
    import requests

    from dicom_node.dicomweb_peer import web_client

    client = web_client(source, timeout)
    try:
        for ds in client.iter_series(study_uid, series_uid):
            buffer = io.BytesIO()
            dcmwrite(buffer, ds, enforce_file_format=True)
            fetched.count(accept_bytes(buffer.getvalue(), archive, sessions, max_instance_bytes=limit, door="WADO-RS",
                                       calling_aet=source.name[:16]))
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        raise SendError(f"{source.where()}: WADO-RS of series {series_uid} answered HTTP {status}") from None
    except requests.RequestException as exc:
        raise SendError(f"{source.where()}: WADO-RS of series {series_uid} failed ({type(exc).__name__})") from None


# --- a mask brings its images -------------------------------------------------------------

@dataclass
class _Attempts:
    tries: int = 0
    running: bool = False
    done: str = ""
    error: str = ""
    next_at: float = 0.0


class MaskImageFetcher:
    """For the worker: a waiting study whose mask names images the archive lacks (a site that
    routes only masks) gets them from the first ``[[sources]]`` entry, in a thread of its own,
    once (up to ``MAX_TRIES`` tries, the delivery backoff between them). What it is doing is a
    note on the job's reason; each fetch is in the audit trail (user ``node``)."""

    MAX_TRIES = 3

    def __init__(self, config: Config, archive: Archive, sessions: sessionmaker[Session]) -> None:
        self.config, self.archive, self.sessions = config, archive, sessions
        self.source = config.sources[0]
        self._attempts: dict[str, _Attempts] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def consider(self, study_uid: str, series_uids: tuple[str, ...]) -> None:
        """Start a fetch of ``series_uids`` for the study unless one runs, succeeded, or is not due."""
        with self._lock:
            state = self._attempts.setdefault(study_uid, _Attempts())
            if state.running or state.done or state.tries >= self.MAX_TRIES or time.monotonic() < state.next_at:
                return
            state.running = True
            state.tries += 1
        thread = threading.Thread(target=self._fetch, args=(study_uid, series_uids), name=f"fetch-{study_uid[-8:]}",
                                  daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _fetch(self, study_uid: str, series_uids: tuple[str, ...]) -> None:
        from db import audit

        state = self._attempts[study_uid]
        log.info("study %s: its mask names images not archived; fetching %d series from %s by %s (try %d)",
                 study_uid, len(series_uids), self.source.name, self.source.retrieve, state.tries,
                 extra={"study_uid": study_uid})
        try:
            fetched = fetch_study(self.config, self.archive, self.sessions, self.source,
                                  FoundStudy(study_uid, "", ""), series_uids=series_uids)
            outcome = fetched.summary()
            # a retrieval that failed in part, or brought nothing, is tried again
            error = outcome if fetched.failed or not (fetched.stored + fetched.duplicates + fetched.moved) else ""
        except Exception as exc:  # FetchError, a database outage: the next try, or the reason on the job
            outcome = error = str(exc) if isinstance(exc, FetchError) else f"{type(exc).__name__}: {exc}"
        try:
            with self.sessions.begin() as session:
                audit.record(session, "node", "fetch", f"study {study_uid} from {self.source.name} (its mask's images)",
                             outcome)
        except Exception:
            log.warning("study %s: the fetch could not be written to the audit trail", study_uid)
        backoff = self.config.delivery.retry_policy().backoff(state.tries)
        with self._lock:
            state.running = False
            state.done, state.error = ("" if error else outcome), error
            state.next_at = time.monotonic() + backoff
        (log.warning if error else log.info)("study %s: %s", study_uid, outcome, extra={"study_uid": study_uid})

    def retain(self, study_uids: set[str]) -> None:
        """Forget the studies that no longer want images (complete, or gone), unless a fetch of
        theirs still runs: a study that wants images again later (a new mask) is fetched again."""
        with self._lock:
            for uid in [u for u, state in self._attempts.items() if u not in study_uids and not state.running]:
                del self._attempts[uid]

    def notes(self) -> dict[str, str]:
        """study UID -> what the node does about its missing images, for the job's reason."""
        out = {}
        with self._lock:
            for study_uid, state in self._attempts.items():
                if state.running:
                    out[study_uid] = f"fetching them from {self.source.name} (try {state.tries})"
                elif state.done:
                    out[study_uid] = f"fetched from {self.source.name}: {state.done}"
                elif state.error:
                    left = self.MAX_TRIES - state.tries
                    out[study_uid] = (f"could not fetch them from {self.source.name}: {state.error}"
                                      + (f" ({left} more tries)" if left else f" (gave up after {state.tries} tries)"))
        return out

    def join(self, timeout: float = 30.0) -> None:
        for thread in self._threads:
            thread.join(timeout)
