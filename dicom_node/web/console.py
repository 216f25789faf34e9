"""What the console does, for the API and the pages alike: read the queue, the studies, the
bundles and the destinations, and act on them through the CLI's own functions (``db.queue``
replay and cancel, ``commands.models.activate``, ``scu.echo``), each action written to the
audit trail with who did it."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from db import audit, bundles, overview
from db.deliveries import deliveries_of_job
from db.outcomes import get_outcome
from db.outcomes import history as outcome_history
from db.shadow import shadow_results
from db.models import JobState, utcnow
from pipeline.model.bundle import Manifest
from pipeline.model.performance import calibration_words
from db.queue import QueueError, cancel, count_jobs_by_state, get_job, list_jobs, replay
from db.retention import deletion_totals
from dicom_node.store.archive import Archive
from dicom_node.config import Config, Destination
from dicom_node.retention import DiskUse

__all__ = ["Console", "ActionRefused", "Health"]

log = logging.getLogger(__name__)


class ActionRefused(ValueError):
    """An action that cannot be done (unknown job, wrong state, a bundle that does not load); one line."""


@dataclass(frozen=True)
class Health:
    listening: bool
    listening_detail: str
    database: bool
    free_bytes: int | None
    reserve_bytes: int
    queue: dict[str, int]
    last_error: str | None
    last_error_at: datetime | None
    #: the archive's file system in use, retention's high watermark, studies it deleted so far
    used_percent: float | None = None
    high_watermark_percent: float = 0.0
    deleted_studies: int = 0

    @property
    def ok(self) -> bool:
        return self.listening and self.database and (self.free_bytes is None or self.free_bytes > self.reserve_bytes)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "listening": self.listening, "listening_detail": self.listening_detail,
                "database": self.database, "free_bytes": self.free_bytes, "reserve_bytes": self.reserve_bytes,
                "queue": self.queue, "last_error": self.last_error, "used_percent": self.used_percent,
                "high_watermark_percent": self.high_watermark_percent, "deleted_studies": self.deleted_studies,
                "last_error_at": self.last_error_at.isoformat() + "Z" if self.last_error_at else None}


@dataclass
class _Cached:
    value: tuple[bool, str] = (False, "not checked yet")
    at: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


class SignInRefused(Exception):
    """A sign-in refused: ``status`` 401 (wrong user or password) or 429 (locked out)."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.retry_after = status, retry_after


class Console:
    """The console's view of one node: its configuration, database and archive."""

    ECHO_EVERY_SECONDS = 15.0

    def __init__(self, config: Config, sessions: sessionmaker[Session], archive: Archive) -> None:
        self.config = config
        self.sessions = sessions
        self.archive = archive
        self._listening = _Cached()

    # --- reading -------------------------------------------------------------------------

    def jobs(self, state: str | None = None, study_uid: str | None = None, since: datetime | None = None,
             until: datetime | None = None, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        try:
            wanted = JobState(state) if state else None
        except ValueError:
            raise ActionRefused(f"state {state!r}: one of {', '.join(s.value for s in JobState)}") from None
        with self.sessions() as session:
            return [job.to_json() for job in list_jobs(session, wanted, limit, offset=offset, study_uid=study_uid,
                                                       since=since, until=until)]

    def job(self, job_id: int) -> dict[str, Any]:
        """One job as ``egfr-node queue show`` prints it: the record and its deliveries."""
        with self.sessions() as session:
            try:
                job = get_job(session, job_id).to_json()
            except QueueError as exc:
                raise ActionRefused(str(exc)) from None
            job["deliveries"] = [d.to_json() for d in deliveries_of_job(session, job_id)]
            job["shadow"] = [r.to_json() for r in shadow_results(session, job_id)]
        return job

    # --- outcomes and running performance (issue 28) ------------------------------------------

    def study(self, study_uid: str) -> dict[str, Any]:
        """A study's jobs, newest first, and its pathology outcome with its history."""
        with self.sessions() as session:
            jobs = [j.to_json() for j in list_jobs(session, study_uid=study_uid, limit=100)]
        if not jobs:
            raise ActionRefused(f"no study {study_uid} in this node's queue")
        return {"study_uid": study_uid, "jobs": jobs, **self.outcome(study_uid)}

    def outcome(self, study_uid: str) -> dict[str, Any]:
        with self.sessions() as session:
            view = get_outcome(session, study_uid)
            changes = outcome_history(session, study_uid)
        return {"outcome": view.to_json() if view else None, "history": [c.to_json() for c in changes]}

    def record_outcome(self, user: str, study_uid: str, values: dict[str, Any], via: str, remote: str = "") -> dict[str, Any]:
        """Record a study's pathology outcome (``dicom_node.outcomes.record``: history, pin, audit)."""
        from datetime import date

        from db.outcomes import OutcomeError, OutcomeValue
        from dicom_node import outcomes

        try:
            when = values.get("date") or None
            value = OutcomeValue(values.get("status") or "", values.get("source") or "",
                                 date.fromisoformat(when) if isinstance(when, str) else when, values.get("subtype") or None,
                                 values.get("reference") or None)
            return outcomes.record(self.sessions, study_uid, value, user=user, via=via, remote=remote)
        except ValueError as exc:  # OutcomeError, or a date that is not YYYY-MM-DD
            raise ActionRefused(f"outcome refused: {exc}" if isinstance(exc, OutcomeError) else
                                f"outcome refused: date {values.get('date')!r} is not YYYY-MM-DD") from None

    def performance(self, model_id: int | None, include_primary: bool = False, compare: int | None = None,
                    resamples: int = 2000) -> dict[str, Any]:
        """The running performance of a bundle (default: the active one) on the confirmed cases,
        and its comparison with ``compare`` (default: the shadow, when the bundle is the active one)."""
        from dicom_node import outcomes

        with self.sessions() as session:
            record = bundles.get_bundle(session, model_id) if model_id else bundles.active(session)
            shadow = bundles.shadow(session)
        if record is None:
            raise ActionRefused("no model bundle is active: choose one")
        if compare is None and record.active and shadow is not None:
            compare = shadow.id
        report = outcomes.performance_of(self.sessions, record.id, include_primary=include_primary, resamples=resamples)
        report["comparison"] = outcomes.comparison(self.sessions, record.id, compare, include_primary=include_primary,
                                                   resamples=resamples) if compare else None
        return report

    def reliability_png(self, report: dict[str, Any]) -> bytes | None:
        from pipeline.model.plots import png_bytes, reliability_figure

        f = report.get("figures") or {}
        if not f.get("reliability", {}).get("predicted"):
            return None
        cal = f["calibration"]
        return png_bytes(reliability_figure({"this site's confirmed cases": f["reliability"]},
                                            calibration_words(cal)))

    def shadow(self, user: str, key: str | None, remote: str = "") -> dict[str, Any]:
        from dicom_node.bundles import set_shadow
        from pipeline.model.bundle import BundleError

        try:
            record = set_shadow(self.sessions, key, user=user, remote=remote)
        except (BundleError, bundles.BundleRegistryError) as exc:
            raise ActionRefused(str(exc)) from None
        outcome = (f"bundle {record.id} ({record.name} {record.version}) is the shadow: it runs on each new study after the "
                   "active one; its answers are stored, never sent") if record else "no shadow bundle"
        return {"bundle": _bundle_json(record) if record else None, "outcome": outcome}

    def promote(self, user: str, force: bool = False, remote: str = "") -> dict[str, Any]:
        from dicom_node.bundles import promote
        from pipeline.model.bundle import BundleError

        try:
            record = promote(self.sessions, user=user, force=force, remote=remote)
        except (BundleError, bundles.BundleRegistryError) as exc:
            raise ActionRefused(str(exc)) from None
        return {"bundle": _bundle_json(record), "outcome": f"bundle {record.id} ({record.name} {record.version}) promoted: "
                                                          "active" + (f"; FORCED despite: {record.activated_despite}"
                                                                      if record.activated_despite else "")}

    def studies(self, limit: int = 50, offset: int = 0) -> tuple[int, list[dict[str, Any]]]:
        with self.sessions() as session:
            return overview.count_studies(session), [s.to_json() for s in overview.list_studies(session, limit, offset)]

    def kept_unanswered(self, limit: int = 100) -> list[dict[str, str]]:
        """Studies retention keeps because they were never answered, and why."""
        from db.retention import kept_unanswered

        with self.sessions() as session:
            return [{"study_uid": uid, "why": why} for uid, why in kept_unanswered(session, limit)]

    def bundles(self) -> list[dict[str, Any]]:
        with self.sessions() as session:
            return [_bundle_json(b) for b in bundles.list_bundles(session)]

    def bundle(self, model_id: int) -> dict[str, Any]:
        """The bundle's record, its manifest and its cross-validation report (report.md)."""
        with self.sessions() as session:
            try:
                record = bundles.get_bundle(session, model_id)
            except bundles.BundleRegistryError as exc:
                raise ActionRefused(str(exc)) from None
        folder = Path(record.bundle_path)
        out = _bundle_json(record)
        try:
            out["manifest"] = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
            manifest = Manifest.from_json(out["manifest"])
            out["calibration_text"] = manifest.calibration_map.describe()
            out["concerns"] = manifest.activation_concerns()
            # the fold assignment names every training patient by the cohort's ID (a CSV's may be
            # a record number): counted here, as `egfr-node models show` leaves it out too
            training = out["manifest"].get("training")
            if isinstance(training, dict) and "splits" in training:
                training["splits"] = f"{len(training['splits'])} patients (the fold assignment: splits.csv in the bundle)"
        except (OSError, ValueError) as exc:
            out["manifest"] = None
            out["manifest_error"] = f"{folder / 'manifest.json'}: {type(exc).__name__}"
        report = folder / "report.md"
        out["report"] = report.read_text(encoding="utf-8") if report.is_file() else None
        return out

    def destinations(self) -> list[dict[str, Any]]:
        configured = {d.name: d for d in self.config.destinations}
        with self.sessions() as session:
            views = overview.destination_views(session, list(configured))
        out = []
        for view in views:
            item = view.to_json()
            dest = configured.get(view.name)
            item["configured"] = dest is not None
            item["address"] = (None if dest is None else f"STOW-RS {dest.dicomweb_url}" if dest.stow
                               else f"{dest.ae_title}@{dest.host}:{dest.port}{' (TLS)' if dest.tls else ''}")
            out.append(item)
        return out

    def audit(self, limit: int = 200, offset: int = 0) -> list[dict[str, Any]]:
        with self.sessions() as session:
            return [entry.to_json() for entry in audit.list_audit(session, limit, offset)]

    def health(self) -> Health:
        listening, detail = self._node_listening()
        database, queue, error, deleted = True, {}, None, 0
        try:
            with self.sessions() as session:
                queue = count_jobs_by_state(session)
                error = overview.latest_error(session)
                deleted = sum(n for n, _, _ in deletion_totals(session).values())
        except Exception as exc:  # the database may be down: the page still answers and says so
            database, detail_db = False, type(exc).__name__
            log.warning("console: database does not answer: %s", detail_db)
        try:
            disk = DiskUse(*self.archive.disk_usage())
            free: int | None = disk.free
            used_percent: float | None = disk.percent if disk.total else None
        except OSError:
            free = used_percent = None
        return Health(listening, detail, database, free, self.archive.free_space_reserve_bytes, queue,
                      error[1] if error else None, error[0] if error else None, used_percent,
                      self.config.retention.high_watermark_percent, deleted)

    def metrics_text(self) -> bytes:
        """The database-derived figures of ``/metrics`` (jobs and deliveries by state, archive
        space, job stage times), in Prometheus text format."""
        from prometheus_client import CollectorRegistry, generate_latest

        from dicom_node.metrics import live_collector

        registry = CollectorRegistry(auto_describe=True)
        registry.register(live_collector(self.archive, self.sessions))
        text: bytes = generate_latest(registry)
        return text

    def result_card_png(self, job_id: int) -> bytes | None:
        """The job's result card (the five crops with the lesion outline and the slice scores)
        as PNG, or None when the job built none."""
        import pydicom
        from PIL import Image

        job = self.job(job_id)
        uid = ((job.get("result") or {}).get("instances") or {}).get("card")
        if not uid:
            return None
        with self.sessions() as session:
            path = overview.instance_path(session, uid)
        if not path:
            return None
        ds = pydicom.dcmread(self.archive.path(path))
        buffer = io.BytesIO()
        Image.fromarray(ds.pixel_array).save(buffer, format="PNG")
        return buffer.getvalue()

    def patient_of(self, job_id: int) -> dict[str, str]:
        """Patient name and ID from the job's archived SR (for a signed-in user's page only)."""
        import pydicom

        job = self.job(job_id)
        uid = ((job.get("result") or {}).get("instances") or {}).get("sr")
        with self.sessions() as session:
            path = overview.instance_path(session, uid) if uid else None
        if not path:
            return {}
        ds = pydicom.dcmread(self.archive.path(path), stop_before_pixels=True, specific_tags=["PatientName", "PatientID"])
        return {"name": str(ds.get("PatientName", "")), "id": str(ds.get("PatientID", ""))}

    # --- acting --------------------------------------------------------------------------

    def replay(self, user: str, key: str, *, rerun: bool, remote: str = "") -> dict[str, Any]:
        """``egfr-node queue replay KEY [--rerun]``, audited."""
        action = "rerun" if rerun else "replay"
        with self.sessions.begin() as session:
            try:
                job, created = replay(session, key, rerun=rerun)
            except QueueError as exc:
                outcome = f"refused: {exc}"
            else:
                if created and job.resend_only:
                    assert job.result is not None  # replay records the job it re-sends
                    outcome = f"job {job.id} queued: re-sends the results of job {job.result['resend_of_job']}"
                elif created:
                    outcome = f"job {job.id} queued (replay of job {job.replay_of_id})"
                else:
                    outcome = f"nothing new: study already has job {job.id} {job.state}"
            audit.record(session, user, action, _target(key), outcome, remote)
        if outcome.startswith("refused: "):
            raise ActionRefused(outcome.removeprefix("refused: "))
        return {"job": job.to_json(), "created": created, "outcome": outcome}

    def cancel(self, user: str, job_id: int, remote: str = "") -> dict[str, Any]:
        with self.sessions.begin() as session:
            try:
                job = cancel(session, job_id)
                outcome = f"job {job.id} cancelled"
            except QueueError as exc:
                job, outcome = None, f"refused: {exc}"
            audit.record(session, user, "cancel", f"job {job_id}", outcome, remote)
        if job is None:
            raise ActionRefused(outcome.removeprefix("refused: "))
        return {"job": job.to_json(), "outcome": outcome}

    def activate(self, user: str, key: str, remote: str = "", force: bool = False) -> dict[str, Any]:
        """``egfr-node models activate PATH|ID [--force]`` (:mod:`dicom_node.bundles`): checked,
        registered, its guards applied unless forced; audited there."""
        from dicom_node.bundles import activate
        from pipeline.model.bundle import BundleError

        try:
            record = activate(self.sessions, key, user=user, force=force, remote=remote)
        except (BundleError, bundles.BundleRegistryError) as exc:
            raise ActionRefused(str(exc)) from None
        outcome = f"bundle {record.id} ({record.name} {record.version}) active" + (
            f"; FORCED despite: {record.activated_despite}" if record.activated_despite else "")
        return {"bundle": _bundle_json(record), "outcome": outcome}

    def echo(self, user: str, name: str, remote: str = "") -> dict[str, Any]:
        """C-ECHO a configured destination, as ``egfr-node echo`` does; audited."""
        from dicom_node.scu import SendError, echo

        dest = next((d for d in self.config.destinations if d.name == name), None)
        if dest is None:
            raise ActionRefused(f"no destination {name!r} in the configuration")
        started = time.monotonic()
        try:
            if dest.stow:
                from dicom_node.dicomweb_peer import check_web_peer

                status = check_web_peer(dest, timeout=self.config.delivery.timeout_seconds)
                ok = status in (200, 204)
                outcome = f"QIDO-RS answered HTTP {status}" + ("" if ok else " (not reachable as a DICOMweb server)")
            else:
                status = echo(dest, calling_aet=self.config.node.ae_title, timeout=self.config.delivery.timeout_seconds)
                ok = status == 0
                outcome = "C-ECHO success" if ok else f"C-ECHO failed: status 0x{status:04X}"
        except SendError as exc:
            ok, outcome = False, f"{'QIDO-RS' if dest.stow else 'C-ECHO'} failed: {exc}"
        seconds = time.monotonic() - started
        with self.sessions.begin() as session:
            audit.record(session, user, "echo", f"destination {name}", outcome, remote)
        return {"destination": name, "ok": ok, "outcome": outcome, "seconds": round(seconds, 3)}

    # --- fetch from a source ------------------------------------------------------------

    def sources(self) -> list[str]:
        return [s.name for s in self.config.sources]

    def find_studies(self, user: str, source: str | None, *, accession: str = "", patient_id: str = "",
                     study_date: str = "", remote: str = "") -> list[dict[str, Any]]:
        """The studies on a source matching exactly what the admin gave (at most 20), each with
        its series; no patient name is asked for. Audited (the keys are not written: the
        trail says who searched which source, and how many studies matched)."""
        from dicom_node.fetch import FetchError, find_studies, source_named

        accession, patient_id, study_date = accession.strip(), patient_id.strip(), study_date.strip()
        try:
            peer = source_named(self.config, source or None)
            found = find_studies(self.config, peer, accession=accession, patient_id=patient_id, study_date=study_date)
        except FetchError as exc:
            raise ActionRefused(str(exc)) from None
        # a PACS may match loosely (wildcards, case): keep exactly what was asked for
        found = [f for f in found if (not accession or f.accession == accession)][:20]
        keys = ", ".join(k for k, v in (("accession", accession), ("patient ID", patient_id), ("date", study_date)) if v)
        with self.sessions.begin() as session:
            audit.record(session, user, "fetch-query", f"source {peer.name} by {keys}", f"{len(found)} studies", remote)
        return [f.to_json() for f in found]

    def fetch(self, user: str, source: str | None, study_uid: str, remote: str = "") -> dict[str, Any]:
        """Retrieve a study from a source in the background (a retrieval can take minutes); the
        outcome goes to the audit trail, the study to the queue as if pushed."""
        from dicom_node.fetch import FetchError, fetch_study, find_studies, source_named
        from pipeline.uids import check_uid

        try:
            peer = source_named(self.config, source or None)
            check_uid("Study Instance UID", study_uid)
        except (FetchError, ValueError) as exc:
            raise ActionRefused(str(exc)) from None

        def run() -> None:
            try:
                found = find_studies(self.config, peer, study_uid=study_uid)
                if not found:
                    raise FetchError(f"no study {study_uid} on {peer.name}")
                [study] = found
                outcome = fetch_study(self.config, self.archive, self.sessions, peer, study).summary()
            except (FetchError, ValueError) as exc:
                outcome = f"fetch failed: {exc}"
            except Exception as exc:  # a database outage: said in the log and, if it can be, the audit
                outcome = f"fetch failed: {type(exc).__name__}"
                log.exception("fetch of %s from %s failed", study_uid, peer.name)
            try:
                with self.sessions.begin() as session:
                    audit.record(session, user, "fetch", f"study {study_uid} from {peer.name}", outcome, remote)
            except Exception:
                log.warning("fetch of %s from %s: %s (not in the audit trail: database unavailable)",
                            study_uid, peer.name, outcome)

        threading.Thread(target=run, name=f"fetch-{study_uid[-8:]}", daemon=True).start()
        return {"study_uid": study_uid, "source": peer.name, "outcome": f"fetch of {study_uid} from {peer.name} started; "
                "its outcome goes to the audit trail, the study to the queue"}

    def sign_in(self, user: str, password: str, remote: str, users: Any) -> str:
        """Check a sign-in, throttled per user and per source address (``db.console_sessions``);
        the new session's id for the cookie, or SignInRefused (401 wrong, 429 locked out). Audited."""
        from db.console_sessions import forgive, reserve_attempt, start_session

        web = self.config.web
        user_key, address_key = f"user:{user[:64]}", f"address:{remote}"
        keys = [user_key, address_key]
        with self.sessions.begin() as session:
            # an address (a ward's shared workstation, a NAT) may fail four times as often as one user
            attempt = reserve_attempt(session, [user_key], web.login_max_failures, web.login_lockout_seconds)
            if attempt.allowed:
                attempt = reserve_attempt(session, [address_key], 4 * web.login_max_failures, web.login_lockout_seconds)
            for key in attempt.newly_locked:
                audit.record(session, "-", "lockout", key, f"locked out until {attempt.locked_until:%H:%M:%S} UTC after "
                             f"{web.login_max_failures} failed sign-ins", remote)
        if not attempt.allowed:
            wait = max(1, int((attempt.locked_until - utcnow()).total_seconds())) if attempt.locked_until else 60
            with self.sessions.begin() as session:
                audit.record(session, user, "sign-in", "console", "refused: locked out", remote)
            raise SignInRefused(429, f"too many failed sign-ins for this user or address: try again in {wait} s",
                                retry_after=wait)
        if not users.check(user, password):
            with self.sessions.begin() as session:
                audit.record(session, user, "sign-in", "console", "refused: wrong user or password", remote)
            raise SignInRefused(401, "wrong user or password")
        with self.sessions.begin() as session:
            forgive(session, keys)
            token = start_session(session, user, users.stamp(user) or "")
            audit.record(session, user, "sign-in", "console", "signed in", remote)
        return token

    def session_ended(self, token: str | None, user: str, users: Any) -> str | None:
        """None while the session is alive, else why it is not (signed out, password changed,
        user removed, idle, expired)."""
        from datetime import timedelta

        from db.console_sessions import check_session

        web = self.config.web
        with self.sessions.begin() as session:
            return check_session(session, token, user, users.stamp(user), idle=timedelta(seconds=web.session_idle_seconds),
                                 max_age=timedelta(seconds=web.session_max_age_seconds))

    def sign_out(self, token: str | None, user: str | None, remote: str = "") -> None:
        from db.console_sessions import end_session

        with self.sessions.begin() as session:
            if end_session(session, token) and user:
                audit.record(session, user, "sign-out", "console", "signed out", remote)

    # --- health parts --------------------------------------------------------------------

    def _node_listening(self) -> tuple[bool, str]:
        """Whether the node's SCP answers a C-ECHO on its configured port (checked at most every
        ``ECHO_EVERY_SECONDS``, so a refreshing page adds one association per interval)."""
        from dicom_node.scu import SendError, echo

        cached = self._listening
        with cached.lock:
            if time.monotonic() - cached.at < self.ECHO_EVERY_SECONDS:
                return cached.value
            node = self.config.node
            host = "127.0.0.1" if node.host in ("0.0.0.0", "", "::") else node.host
            me = Destination(name="self", ae_title=node.ae_title, host=host, port=node.port)
            calling = node.allowed_calling_aets[0] if node.allowed_calling_aets else node.ae_title
            try:
                status = echo(me, calling_aet=calling, timeout=5.0)
                cached.value = (status == 0, f"{node.ae_title} at {host}:{node.port} answers C-ECHO"
                                if status == 0 else f"C-ECHO status 0x{status:04X}")
            except SendError as exc:
                cached.value = (False, f"{node.ae_title} at {host}:{node.port}: {exc}")
            cached.at = time.monotonic()
            return cached.value


def _target(key: str) -> str:
    key = key.strip()
    return f"job {key}" if key.isdigit() else f"study {key}"[:128]


def _bundle_json(record: bundles.BundleRecord) -> dict[str, Any]:
    return {"id": record.id, "name": record.name, "version": record.version, "device_uid": record.device_uid,
            "path": record.bundle_path, "active": record.active, "registered_at": record.created_at.isoformat() + "Z",
            "activated_at": record.activated_at.isoformat() + "Z" if record.activated_at else None,
            "activated_by": record.activated_by, "activated_despite": record.activated_despite, "shadow": record.shadow}
