"""The worker: APScheduler jobs that move the queue along and run the pipeline.

- stable-study scan: expired leases back to the queue; stable, complete studies queued.
- claim: one queued job -> running under a lease (renewed by a heartbeat thread while the
  job runs, so a slow study on a loaded machine is not taken twice); ``worker.parallel_jobs``
  job runners (one per core by default) claim and run jobs at once when studies queue, so one
  study's reading, inference, report and delivery overlap another's bias correction, each on
  its share of the cores (a study alone gets them all); run with the bundle
  active at claim time (``dicom_node.process``), finished with its result and its
  deliveries in one transaction. With no active bundle, queued jobs wait with the reason
  "no active model".
- fit ahead: a study whose images are in and whose mask is not, quiet for
  ``worker.prefit_after_seconds``, gets the brain mask and N4 field of its post-contrast
  series fitted by an idle job runner (``pipeline.prefit``), kept in memory for its job
  (``worker.prefit_cache_mb``): N4 is most of a job on a CPU, and a radiologist's mask
  usually comes minutes after the images. A study sent whole (images and mask together) has
  the fit of the series its mask names started at the mask's arrival, while its settle runs.
- delivery: a running job's results are sent as each is archived (the SR before the card is
  drawn; ``dicom_node.sending``) and recorded sent with its result; due deliveries (what
  was not sent so, and every retry) are sent (``dicom_node.scu``), retried with backoff,
  failed after ``delivery.max_attempts``.
- retention: finished studies deleted by age and above the disk's high watermark
  (``dicom_node.retention``); it first completes any deletion a killed node left marked.

The pipeline (torch, SimpleITK, highdicom) is imported when the first job runs, never on the
receive path.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.orm import Session, sessionmaker

from db import bundles, deliveries
from db.instances import instance_path, received_study_paths
from db.queue import (
    JobView,
    claim_next,
    finish_job,
    hand_back,
    get_job,
    note_waiting_for,
    release_for_retry,
    renew_lease,
    scan_waiting_jobs,
    studies_awaiting_mask,
    studies_complete_by_content,
    studies_wanting_images,
    sweep_expired_leases,
)
from dicom_node.store.archive import Archive
from dicom_node.log_safety import OutageLog
from dicom_node.config import Config, Destination
from dicom_node.job_result import JobResult, ResendResult, ResultInstances, ShadowResult, result_sop_uids
from dicom_node.retention import Retention
from dicom_node.sending import EarlySend, send_to

if TYPE_CHECKING:
    from dicom_node.fetch import MaskImageFetcher
    from dicom_node.process import JobContext
    from pipeline.model.infer import FoldEnsemble
    from pipeline.prep.bias_cache import BiasFieldCache

__all__ = ["Worker", "default_worker_id"]

log = logging.getLogger(__name__)


class _SkipBusyRuns(logging.Filter):
    """APScheduler warns each time an interval job is due while its previous run goes on; for
    the claim loop (a job can run for minutes) that is the normal case, not news."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances reached" not in record.getMessage()


logging.getLogger("apscheduler.scheduler").addFilter(_SkipBusyRuns())


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Heartbeat:
    """Renews a running job's lease every third of the lease time until stopped."""

    def __init__(self, worker: Worker, job_id: int) -> None:
        self.worker, self.job_id = worker, job_id
        self.stopped = threading.Event()
        self.lost = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def _run(self) -> None:
        interval = self.worker.config.worker.lease_seconds / 3
        while not self.stopped.wait(interval):
            try:
                with self.worker.sessions.begin() as session:
                    if not renew_lease(session, self.job_id, self.worker.worker_id, self.worker.config.worker.lease_seconds):
                        self.lost.set()
                        log.warning("job %d: lease lost", self.job_id, extra={"job_id": self.job_id})
                        return
            except Exception:
                log.exception("job %d: lease renewal failed; retrying", self.job_id)

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join()


class Worker:
    def __init__(self, config: Config, sessions: sessionmaker[Session], archive: Archive, worker_id: str | None = None) -> None:
        self.config = config
        self.settings = config.worker
        self.sessions = sessions
        self.archive = archive
        self.worker_id = worker_id or default_worker_id()
        self.retention = Retention(config.retention, sessions, archive)
        self.fetcher: MaskImageFetcher | None = None
        if config.sources and config.worker.fetch_after_seconds > 0:
            from dicom_node import fetch

            self.fetcher = fetch.MaskImageFetcher(config, archive, sessions)
        self.scheduler: BackgroundScheduler | None = None
        self._ensembles: dict[int, FoldEnsemble] = {}
        self._preload_failed: set[int] = set()
        self._idle_model: bundles.BundleRecord | None = None
        self._deliver_lock = threading.Lock()
        self._outage = OutageLog(log, "database", "the worker retries at each interval")
        self._stopping = threading.Event()
        self._wake = threading.Event()  # set by a scan that queued a job: the runners claim it now
        self._runners: list[threading.Thread] = []
        self._outlived: list[threading.Thread] = []  # runners still in a job the last stop handed back
        self._running: dict[int, JobView] = {}  # the jobs claim_once is running, for a stop to hand back
        self._running_lock = threading.Lock()
        self._ensemble_lock = threading.Lock()
        self.retry_policy = config.delivery.retry_policy()
        self._bias_fits: BiasFieldCache | None = None
        self._prefit_lock = threading.Lock()
        self._prefitted: dict[str, datetime] = {}  # study UID -> the last arrival its fit was tried at
        self._scan_lock = threading.Lock()  # one scan at a time: the interval's, or a mask arrival's
        self._mask_arrivals: Any = None
        self._arrival_watcher: threading.Thread | None = None
        self._settle_fits: list[threading.Thread] = []  # N4 fits started at a mask's arrival
        self._settle_fitted: set[tuple[str, datetime]] = set()  # (study UID, its last arrival) started

    # --- stable-study scan --------------------------------------------------------------

    def scan_once(self, now: datetime | None = None) -> list[JobView]:
        """One pass: expired leases back to the queue, the images a waiting mask names fetched
        (with a source), stable complete studies queued."""
        with self._scan_lock:
            return self._scan(now)

    def _scan(self, now: datetime | None) -> list[JobView]:
        with self.sessions.begin() as session:
            sweep_expired_leases(session, self.settings.max_attempts, now)
        notes = None
        if self.fetcher is not None:
            with self.sessions.begin() as session:
                wanting = studies_wanting_images(session, self.settings.fetch_after_seconds, now)
            self.fetcher.retain({study.study_uid for study in wanting})
            for study in wanting:
                self.fetcher.consider(study.study_uid, study.series_uids)
            notes = self.fetcher.notes()
        with self.sessions.begin() as session:
            queued = scan_waiting_jobs(session, self.settings.study_stable_seconds, now, self.settings.content_settle_seconds,
                                       notes=notes)
        if queued:
            self._wake.set()
        return queued

    def wake_on_masks(self, arrivals: Any) -> None:
        """Scan when ``arrivals`` (an Event the SCP of this node sets when a mask is archived,
        ``DicomNode.mask_arrivals``) is set, not only every ``worker.scan_interval_seconds``: a
        mask whose images are already in queues its job at once, and a study sent whole is
        scanned again when its series' settle has passed. Call before :meth:`start`; a worker
        apart from the SCP (``egfr-node worker``) keeps the interval alone."""
        self._mask_arrivals = arrivals

    def _watch_mask_arrivals(self) -> None:
        settle = self.settings.content_settle_seconds
        while not self._stopping.is_set():
            if not self._mask_arrivals.wait(0.5):
                continue
            self._mask_arrivals.clear()
            self._guard("stable-study-scan", self.scan_once)  # the images were in before the mask
            self._guard("fit-while-settling", self._fit_while_settling)
            if not self._stopping.wait(settle + 0.05):  # they came just before it: their settle ends now
                self._guard("stable-study-scan", self.scan_once)

    def _fit_while_settling(self) -> None:
        """Start fitting, each in a thread of its own, the brain mask and N4 field of the series
        a mask names in every study it made complete by content, while their settle runs: a
        study sent whole (images and mask in one association) is queued only when the settle has
        passed, and its job then waits for this fit (``BiasFieldCache``) instead of starting
        N4 a settle later. Off with ``worker.prefit_after_seconds = 0``, as the fit ahead."""
        if self.settings.prefit_after_seconds <= 0:
            return
        with self.sessions() as session:
            model = bundles.active(session)
            if model is None:
                return
            complete = studies_complete_by_content(session, self.settings.content_settle_seconds + 1.0)
        tried = {(study.study_uid, study.last_received_at) for study in complete}
        self._settle_fitted &= tried
        self._settle_fits = [thread for thread in self._settle_fits if thread.is_alive()]
        for study in complete:
            if self._stopping.is_set() or (study.study_uid, study.last_received_at) in self._settle_fitted:
                continue
            self._settle_fitted.add((study.study_uid, study.last_received_at))
            ensemble = self._ensemble(model)
            fit = functools.partial(self._prefit, study.study_uid, ensemble, study.series_uids)
            thread = threading.Thread(target=self._guard, args=("fit-while-settling", fit),
                                      name=f"settle-fit-{study.job_id}", daemon=True)
            thread.start()
            self._settle_fits.append(thread)

    # --- claim and run ------------------------------------------------------------------

    def claim_once(self) -> JobView | None:
        """Claim one queued job and run it to done or failed; None when nothing was claimed."""
        with self.sessions.begin() as session:
            model = bundles.active(session)
            if model is None:
                note_waiting_for(session, bundles.NO_ACTIVE_MODEL)
            job = claim_next(session, self.worker_id, self.settings.lease_seconds,
                             model_id=model.id if model else None, any_job=model is not None)
        if job is None:
            self._idle_model = model  # the runner loads it while idle (_claim_loop)
            return None
        log.info("job %d claimed for study %s (attempt %d)", job.id, job.study_uid, job.attempts,
                 extra={"job_id": job.id, "study_uid": job.study_uid})
        self._wake.set()  # another idle runner of this worker may claim the next queued job
        with self._running_lock:
            self._running[job.id] = job
            self._share_cores(len(self._running))
        keep: dict[str, Any] = {}
        early = self._early_send(job.id)
        try:
            with _Heartbeat(self, job.id) as heartbeat:
                try:
                    ok, reason, result, transient = self._run(job, keep, early.archived)
                finally:  # under the lease: a slow destination does not let the job be taken twice
                    sent = early.finish(self.config.delivery.timeout_seconds + 5)
        finally:
            with self._running_lock:
                self._running.pop(job.id, None)
                if self._running:
                    self._share_cores(len(self._running))  # the jobs still running get the cores back
        if heartbeat.lost.is_set():
            log.warning("job %d: lease lost while running; its result is discarded", job.id)
            return job
        destinations = [d.name for d in self.config.destinations]
        with self.sessions.begin() as session:
            if transient:
                kept = release_for_retry(session, job.id, self.worker_id, reason or "",
                                         self.settings.max_attempts) is not None
            else:
                kept = finish_job(session, job.id, self.worker_id, ok=ok, reason=reason,
                                  result=result.to_json() if result else None)
                if kept and ok and result:
                    deliveries.create_deliveries(session, job.id, result.instances.sop_uids(), destinations, sent=sent)
        if not kept:  # the lease ran out between the last heartbeat and now: the job is someone else's
            log.warning("job %d: lease lost after it ran; its result is discarded", job.id,
                        extra={"study_uid": job.study_uid, "job_id": job.id})
            return job
        if ok:
            self.deliver_due()
            if not job.resend_only and job.trigger == "arrival":
                self._guard("shadow", lambda: self.shadow_once(job, keep.get("prepared")))
        with self.sessions() as session:
            return get_job(session, job.id)

    @property
    def bias_fits(self) -> BiasFieldCache:
        """The brain masks and N4 fields this worker fitted, kept for the jobs that need them."""
        if self._bias_fits is None:
            from pipeline.prep.bias_cache import BiasFieldCache

            self._bias_fits = BiasFieldCache(self.settings.prefit_cache_mb * 2**20)
        return self._bias_fits

    def _context(self) -> JobContext:
        from dicom_node.process import JobContext

        return JobContext(self.config, self.archive, self.sessions, self.bias_fits)

    def prefit_once(self, now: datetime | None = None) -> list[str]:
        """Fit the bias field of every study waiting for its mask, quiet for
        ``worker.prefit_after_seconds`` and not tried since its last arrival, with the active
        bundle's preprocessing; the study UIDs fitted. One runner at a time; nothing without an
        active bundle or with the setting at 0. A study that cannot be fitted is said once (its
        job says why when the mask comes)."""
        if self.settings.prefit_after_seconds <= 0 or not self._prefit_lock.acquire(blocking=False):
            return []
        try:
            with self.sessions() as session:
                model = bundles.active(session)
                awaiting = studies_awaiting_mask(session, self.settings.prefit_after_seconds, now)
            self._prefitted = {s.study_uid: self._prefitted[s.study_uid] for s in awaiting if s.study_uid in self._prefitted}
            fitted = []
            for study in awaiting:
                if model is None or self._stopping.is_set() or self._prefitted.get(study.study_uid) == study.last_received_at:
                    continue
                self._prefitted[study.study_uid] = study.last_received_at
                if self._prefit(study.study_uid, self._ensemble(model)):
                    fitted.append(study.study_uid)
            return fitted
        finally:
            self._prefit_lock.release()

    def _prefit(self, study_uid: str, ensemble: FoldEnsemble, series_uids: tuple[str, ...] | None = None) -> bool:
        from pipeline.contrast import ContrastRule
        from pipeline.errors import PipelineError
        from pipeline.prefit import prefit_bias_fields

        with self.sessions() as session:
            paths = [self.archive.path(p) for p in received_study_paths(session, study_uid)]
        rule = ContrastRule(self.config.contrast.require_evidence, self.config.contrast.series_description_pattern)
        try:
            return bool(prefit_bias_fields(paths, ensemble.manifest.preprocessing, self.bias_fits, contrast=rule,
                                           series_uids=series_uids))
        except Exception as exc:  # noqa: BLE001 - only a head start: the job fits for itself and says why it fails
            level = logging.INFO if isinstance(exc, (PipelineError, OSError)) else logging.WARNING
            log.log(level, "study %s: no bias field fitted ahead of %s: %s", study_uid,
                    "the mask" if series_uids is None else "its job", one_line(exc),
                    extra={"study_uid": study_uid})
            return False

    def _share_cores(self, running: int) -> None:
        """The cores a job starting now preprocesses and infers with: all of them alone, its
        share when ``running`` jobs run at once, so two studies do not each ask for every core
        (N4 uses both cores of this machine: 4.4 s on two, 7.9 s on one; the five folds 0.43 s
        on two, 0.92 s on one). ``inference.torch_threads`` set: that many for torch."""
        import torch

        cores = os.cpu_count() or 1
        torch.set_num_threads(self.config.inference.threads(cores, running))
        if self.settings.job_runners(cores) <= 1:
            return
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, cores // max(1, running)))

    def _early_send(self, job_id: int) -> EarlySend:
        """What sends job ``job_id``'s results while it runs (``dicom_node.sending``)."""
        timeout = self.config.delivery.timeout_seconds

        def send(destination: Destination, path: Path) -> None:
            send_to(destination, [path], calling_aet=self.config.node.ae_title, timeout=timeout)

        def path_of(sop_uid: str) -> Path:
            with self.sessions() as session:
                relative = instance_path(session, sop_uid)
            if relative is None:
                raise LookupError(f"{sop_uid} is not in the archive")
            return self.archive.path(relative)

        return EarlySend(job_id, self.config.destinations, send, path_of)

    def _run(self, job: JobView, keep: dict[str, Any] | None = None, on_archived: Callable[[str], None] | None = None
             ) -> tuple[bool, str | None, JobResult | ResendResult | None, bool]:
        """(ok, reason, result, transient): a study the pipeline cannot use fails at once; any
        other error (database, disk, a bundle file) is retried up to ``worker.max_attempts``.
        ``on_archived``: told each result's UID as the job archives it (the early send)."""
        if job.resend_only:
            return (*self._resend(job), False)
        try:
            from dicom_node.process import run_job

            if job.model_id is None:
                raise RuntimeError("job has no model bundle")
            with self.sessions() as session:
                record = bundles.get_bundle(session, job.model_id)
            ensemble = self._ensemble(record)
            result = run_job(self._context(), job.study_uid, ensemble,
                             f"{job.id}@{job.created_at.isoformat()}", activated_despite=record.activated_despite or "",
                             keep=keep, on_archived=on_archived)
            return True, None, result.answered_by(job.model_id), False
        except Exception as exc:
            from pipeline.errors import PipelineError

            study_fault = isinstance(exc, PipelineError)
            if not study_fault:
                log.exception("job %d failed", job.id, extra={"job_id": job.id, "study_uid": job.study_uid})
            reason = " ".join(str(exc).split()) if study_fault else one_line(exc)
            log.error("job %d for study %s failed: %s", job.id, job.study_uid, reason,
                      extra={"job_id": job.id, "study_uid": job.study_uid})
            return False, reason[:1000], None, not study_fault

    def shadow_once(self, job: JobView, prepared: Any = None) -> None:
        """The shadow bundle, if one is set, on the study of ``job`` (just done, its results
        handed to delivery): stored as the job's shadow result, never sent. Under a backlog
        (jobs queued) it is skipped, and the skip recorded: the active answers come first."""
        from db.shadow import backlog, record_shadow

        with self.sessions() as session:
            candidate = bundles.shadow(session)
            waiting = backlog(session)
        if candidate is None or candidate.id == job.model_id:
            return
        if waiting:
            with self.sessions.begin() as session:
                record_shadow(session, job.id, candidate.id, "skipped",
                              reason=f"backlog: {waiting} jobs queued; the active bundle's answers come first")
            log.info("job %d: shadow bundle %d skipped (%d jobs queued)", job.id, candidate.id, waiting,
                     extra={"job_id": job.id})
            return
        try:
            from dicom_node.process import run_shadow

            result = run_shadow(self._context(), job.study_uid,
                                self._ensemble(candidate), prepared)
            shadow_result: ShadowResult | None = result.answered_by(candidate.id)
            state, reason = "done", None
        except Exception as exc:
            shadow_result, state, reason = None, "failed", one_line(exc)[:1000]
            log.warning("job %d: shadow bundle %d failed: %s", job.id, candidate.id, reason, extra={"job_id": job.id})
        with self.sessions.begin() as session:
            record_shadow(session, job.id, candidate.id, state, reason=reason,
                          result=shadow_result.to_json() if shadow_result else None)

    def _resend(self, job: JobView) -> tuple[bool, str | None, ResendResult | None]:
        source_id = (job.result or {}).get("resend_of_job")
        with self.sessions() as session:
            source = get_job(session, source_id) if source_id else None
        if source is None or not result_sop_uids(source.result):
            return False, f"job {source_id} has no stored results to re-send", None
        stored = source.result or {}
        return True, None, ResendResult(resend_of_job=source.id, instances=ResultInstances.from_json(stored["instances"]),
                                        probability=stored.get("probability"), status=stored.get("status"))

    def _preload(self, record: bundles.BundleRecord | None) -> None:
        """Load the active bundle while idle, so the next study does not wait for its folds; a
        bundle that cannot be loaded is said once here and fails the jobs that need it."""
        if record is None or record.id in self._ensembles or record.id in self._preload_failed or self._stopping.is_set():
            return
        try:
            self._ensemble(record)
        except Exception as exc:  # noqa: BLE001 - the job that needs it records the reason
            self._preload_failed.add(record.id)
            log.warning("model bundle %d could not be loaded ahead of its jobs: %s", record.id, one_line(exc))

    def _ensemble(self, record: bundles.BundleRecord) -> FoldEnsemble:
        """The FoldEnsemble of the bundle ``record``, loaded once (sha256 checked on load; one
        load at a time, the job runners share it)."""
        with self._ensemble_lock:
            return self._load_ensemble(record)

    def _load_ensemble(self, record: bundles.BundleRecord) -> FoldEnsemble:
        model_id = record.id
        if model_id not in self._ensembles:
            import torch

            from pipeline.model.infer import FoldEnsemble

            from pipeline.model.device import resolve_device

            device = str(resolve_device(self.config.inference.device))
            torch.set_num_threads(self.config.inference.threads(os.cpu_count() or 1))
            # keep the active bundle and the shadow: two at most, the newest loaded replacing the oldest
            self._ensembles = {**dict(list(self._ensembles.items())[-1:]),
                               model_id: FoldEnsemble.load(Path(record.bundle_path), device=device)}
            log.info("model bundle %d (%s %s) loaded on %s", model_id, record.name, record.version, device)
        return self._ensembles[model_id]

    # --- delivery -----------------------------------------------------------------------

    def deliver_due(self) -> int:
        """Send every due delivery once; returns how many were sent."""
        from dicom_node.scu import SendError

        by_name = {d.name: d for d in self.config.destinations}
        sent = 0
        with self._deliver_lock:
            with self.sessions.begin() as session:
                due = deliveries.claim_due(session, lease_seconds=4 * self.config.delivery.timeout_seconds)
            for delivery in due:
                destination = by_name.get(delivery.destination)
                try:
                    if destination is None:
                        raise SendError(f"destination {delivery.destination!r} is no longer configured")
                    send_to(destination, [self.archive.path(delivery.path)], calling_aet=self.config.node.ae_title,
                            timeout=self.config.delivery.timeout_seconds)
                except Exception as exc:
                    reason = str(exc) if isinstance(exc, SendError) else one_line(exc)
                    with self.sessions.begin() as session:
                        view = deliveries.mark_failed_try(session, delivery.id, reason, self.retry_policy)
                    log.warning("delivery %d of %s to %s: try %d failed (%s); %s", delivery.id, delivery.sop_instance_uid,
                                delivery.destination, view.attempts, reason,
                                f"next try at {view.next_attempt_at:%H:%M:%S}" if view.state == "retrying" else "failed")
                    continue
                with self.sessions.begin() as session:
                    deliveries.mark_sent(session, delivery.id)
                sent += 1
                log.info("delivery %d: %s sent to %s", delivery.id, delivery.sop_instance_uid, delivery.destination)
        return sent

    # --- scheduling ---------------------------------------------------------------------

    def _guard(self, name: str, action: Any) -> None:
        """One pass of a scheduled task; a database outage is one line when it starts and one when
        it ends (not a traceback per pass), anything else logged with its traceback."""
        from sqlalchemy.exc import SQLAlchemyError

        try:
            action()
            self._outage.answered()
        except SQLAlchemyError as exc:
            self._outage.failed(f"{type(getattr(exc, 'orig', None) or exc).__name__} in {name}")
        except Exception:
            log.exception("%s failed; retrying at the next interval", name)

    def _claim_loop(self) -> None:
        while not self._stopping.is_set() and self.claim_once() is not None:
            pass
        self._preload(self._idle_model)
        if self._idle_model is not None and not self._stopping.is_set():
            self.prefit_once()

    def _run_claims(self) -> None:
        """A job runner: a daemon thread of its own (not the scheduler's pool, which the
        interpreter waits for at exit), so a stop is bounded by ``worker.stop_grace_seconds``.
        It claims every ``worker.claim_interval_seconds`` and at once when this worker's scan
        queued a job, or another runner of this worker just claimed one (another worker's jobs
        wait for the interval)."""
        while not self._stopping.is_set():
            self._wake.wait(self.settings.claim_interval_seconds)
            self._wake.clear()
            if self._stopping.is_set():
                break
            self._guard("claim", self._claim_loop)

    def start(self) -> None:
        self.scheduler = BackgroundScheduler(timezone="UTC")
        now = datetime.now().astimezone()
        for name, action, seconds in (
            ("stable-study-scan", self.scan_once, self.settings.scan_interval_seconds),
            ("delivery", self.deliver_due, self.config.delivery.scan_interval_seconds),
            ("retention", self.retention.sweep_once, self.config.retention.interval_seconds),
        ):
            self.scheduler.add_job(self._guard, "interval", args=(name, action), seconds=seconds, id=name,
                                   max_instances=1, coalesce=True, next_run_time=now)
        self.scheduler.start()
        self._stopping.clear()
        self._wake.set()  # jobs queued before the start (a restart, a backlog) are claimed at once
        runners = self.settings.job_runners(os.cpu_count() or 1)
        self._runners = [threading.Thread(target=self._run_claims, name=f"jobs-{self.worker_id}-{n}", daemon=True)
                         for n in range(runners)]
        for runner in self._runners:
            runner.start()
        if self._mask_arrivals is not None:
            self._arrival_watcher = threading.Thread(target=self._watch_mask_arrivals, name=f"masks-{self.worker_id}",
                                                     daemon=True)
            self._arrival_watcher.start()
        if not self.config.destinations:
            log.warning("no [[destinations]] configured: results are archived but sent nowhere")
        log.info("worker %s started: stable-study scan every %g s (stable after %g s), claim every %g s, %d job%s at once",
                 self.worker_id, self.settings.scan_interval_seconds, self.settings.study_stable_seconds,
                 self.settings.claim_interval_seconds, runners, "s" if runners != 1 else "")

    def stop(self) -> None:
        """Stop scanning, claiming and delivering. A job still running after
        ``worker.stop_grace_seconds`` is handed back to the queue (its lease released, the
        attempt not counted), so another worker, or this one restarted, runs it at once."""
        self._stopping.set()
        self._wake.set()
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=True)
            self.scheduler = None
        if self._runners:
            deadline = time.monotonic() + self.settings.stop_grace_seconds
            for runner in self._runners:
                runner.join(max(0.0, deadline - time.monotonic()))
            with self._running_lock:
                still = list(self._running.values()) if any(r.is_alive() for r in self._runners) else []
            self._outlived = [r for r in self._runners if r.is_alive()]
            for job in still:
                with self.sessions.begin() as session:
                    handed = hand_back(session, job.id, self.worker_id,
                                       f"worker {self.worker_id} stopped during the job")
                if handed:
                    log.warning("job %d handed back to the queue: still running %g s after the stop",
                                job.id, self.settings.stop_grace_seconds, extra={"job_id": job.id})
            self._runners = []
        if self._arrival_watcher is not None:
            self._arrival_watcher.join(timeout=self.settings.content_settle_seconds + 1.0)
            self._arrival_watcher = None
        deadline = time.monotonic() + self.settings.stop_grace_seconds
        for fit in self._settle_fits:  # a fit is seconds of N4; a daemon thread if it outlives the grace
            fit.join(max(0.0, deadline - time.monotonic()))
        self._settle_fits = []
        log.info("worker %s stopped", self.worker_id)

    def join_outlived(self, timeout: float) -> bool:
        """Wait for the job runners that were still in a job when the last stop handed it back
        (their late result is discarded: the lease is gone); True when all have ended."""
        deadline = time.monotonic() + timeout
        for runner in self._outlived:
            runner.join(max(0.0, deadline - time.monotonic()))
        return not any(r.is_alive() for r in self._outlived)
