"""The job queue: every queue operation in one place (the worker and CLI hold no SQL).

waiting -> queued      the stable-study scan (quiet for ``study_stable_seconds``, MR + mask)
queued  -> running     ``claim_next`` (lease with expiry; row lock ``FOR UPDATE SKIP LOCKED``
                       on PostgreSQL, a conditional update everywhere, so N workers are safe)
running -> done|failed ``finish_job``
running -> queued      ``sweep_expired_leases`` (crash recovery; failed after max attempts)
replay                 a new job for the study, history kept (``replay_of_id``)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Iterator, Mapping

from sqlalchemy import Select, exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from db.engine import rowcount
from db.models import ACTIVE_JOB_STATES, Instance, Job, JobState, Series, Study, utcnow
from db.sop_classes import IMAGE_SOP_CLASSES
from db.stats import count_by_state

__all__ = [
    "JobView",
    "QueueError",
    "StudyReadiness",
    "study_readiness",
    "WantingImages",
    "studies_wanting_images",
    "AwaitingMask",
    "studies_awaiting_mask",
    "CompleteByContent",
    "studies_complete_by_content",
    "NO_MASK_YET",
    "scan_waiting_jobs",
    "claim_next",
    "renew_lease",
    "finish_job",
    "hand_back",
    "count_jobs_by_state",
    "sweep_expired_leases",
    "replay",
    "cancel",
    "list_jobs",
    "get_job",
]

log = logging.getLogger(__name__)


class QueueError(ValueError):
    """A queue operation that cannot be done (unknown job, wrong state); one clear line."""


@dataclass(frozen=True)
class JobView:
    """A job as the admin sees it (no patient data: UIDs, states, times)."""

    id: int
    study_uid: str
    state: str
    reason: str | None
    trigger: str
    replay_of_id: int | None
    attempts: int
    created_at: datetime
    updated_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    result: dict[str, Any] | None
    model_id: int | None = None
    resend_only: bool = False
    queued_because: str | None = None

    @classmethod
    def of(cls, job: Job) -> JobView:
        return cls(
            id=job.id,
            study_uid=job.study.study_uid,
            state=job.state.value,
            reason=job.reason,
            trigger=job.trigger,
            replay_of_id=job.replay_of_id,
            attempts=job.attempts,
            created_at=job.created_at,
            updated_at=job.updated_at,
            queued_at=job.queued_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            lease_owner=job.lease_owner,
            lease_expires_at=job.lease_expires_at,
            result=job.result,
            model_id=job.model_id,
            resend_only=bool(job.resend_only),
            queued_because=job.queued_because,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            out[key] = value.isoformat() + "Z" if isinstance(value, datetime) else value
        return out


@dataclass(frozen=True)
class StudyReadiness:
    """Whether a study holds what the pipeline needs: an MR series and a mask referencing it.
    ``by_content``: the mask names the images it was drawn on and every one is archived, so the
    study is complete by its content (no need to wait for the quiet timer); ``images``: how
    many images that mask names."""

    ready: bool
    reason: str | None
    by_content: bool = False
    images: int = 0
    #: not ready for want of images: the series the study's masks reference (a node with a
    #: source may fetch them, ``dicom_node.fetch``)
    wanting: tuple[str, ...] = ()
    #: ready by content: the archived series holding the images the mask names (their quiet,
    #: not the whole study's, is the settle of the content rule)
    named_series_ids: tuple[int, ...] = ()


#: The reason a study waits before any mask arrived (the worker fits its bias field meanwhile).
NO_MASK_YET = "no lesion mask (SEG, RTSTRUCT or an outline SR) in the study yet"


def _received(study: Study, sop_classes: frozenset[str] | None = None) -> Select[int]:
    """Instances of the study received from peers (never the node's own): of these classes, or
    (``sop_classes`` None) the lesion masks (``Instance.mask_kind``: by class and content)."""
    kind = Instance.mask_kind.is_not(None) if sop_classes is None else Instance.sop_class_uid.in_(sop_classes)
    return (
        select(Instance.id)
        .join(Series, Instance.series_id == Series.id)
        .where(Series.study_id == study.id, Instance.origin == "received", kind)
    )


def study_readiness(session: Session, study: Study) -> StudyReadiness:
    images = _received(study, IMAGE_SOP_CLASSES)
    mr_series = set(session.scalars(images.with_only_columns(Series.series_uid).distinct()))
    mr_frames = set(session.scalars(images.with_only_columns(Series.frame_of_reference_uid).distinct())) - {None}
    rows = session.execute(
        _received(study).with_only_columns(Instance.referenced_series_uids, Instance.referenced_sop_uids,
                                           Series.frame_of_reference_uid)
    ).all()
    # an outline in patient mm names no image: it is on a series of its frame of reference
    masks = [(list(series or ()) + ([f"frame:{frame}"] if not series and not sops and frame in mr_frames else []),
              sops) for series, sops, frame in rows]
    mr_series |= {f"frame:{frame}" for frame in mr_frames}
    wanting = tuple(sorted({uid for series, _ in masks for uid in (series or ()) if not uid.startswith("frame:")}))
    if not mr_series:
        return StudyReadiness(False, "no MR series in the study yet", wanting=wanting)
    if not masks:
        return StudyReadiness(False, NO_MASK_YET)
    referenced = {uid for _, sops in masks for uid in (sops or ())}
    present = set(session.scalars(images.with_only_columns(Instance.sop_instance_uid)
                                  .where(Instance.sop_instance_uid.in_(referenced)))) if referenced else set()
    # a mask on an MR series of the study (by series, or by the images it names), with every
    # image it names archived: a study of which only part arrived (the rest refused, or still
    # to come) waits, saying what is missing (issue 29)
    usable = [(series, sops) for series, sops in masks
              if mr_series.intersection(series or ()) or present.intersection(sops or ())]
    if not usable:
        return StudyReadiness(False, "no mask references an MR series of the study", wanting=wanting)
    missing = min((len(set(sops or ()) - present), len(set(sops or ()))) for _, sops in usable)
    if missing[0] == 0:
        named = set(session.scalars(images.with_only_columns(Instance.series_id).where(
            Instance.sop_instance_uid.in_(referenced)).distinct())) if missing[1] else set()
        return StudyReadiness(True, None, by_content=missing[1] > 0, images=missing[1],
                              named_series_ids=tuple(sorted(named)))
    return StudyReadiness(False, f"incomplete: {missing[0]} of the {missing[1]} images the mask references are not in "
                                 "the archive (not sent yet, or refused: the PACS may send them again)", wanting=wanting)


@dataclass(frozen=True)
class WantingImages:
    """A waiting study whose masks reference series not (wholly) archived, quiet for the settle time."""

    study_uid: str
    job_id: int
    series_uids: tuple[str, ...]
    reason: str


def studies_wanting_images(session: Session, settle_seconds: float, now: datetime | None = None) -> list[WantingImages]:
    """The waiting studies whose masks name images that are not archived and for which nothing
    arrived for ``settle_seconds``: what a node with a source fetches (issue 32)."""
    return [WantingImages(job.study.study_uid, job.id, readiness.wanting, readiness.reason or "")
            for job, readiness in _quiet_waiting(session, settle_seconds, now)
            if not readiness.ready and readiness.wanting]


def _quiet_waiting(session: Session, quiet_seconds: float, now: datetime | None) -> Iterator[tuple[Job, StudyReadiness]]:
    """Each waiting job whose study received nothing for ``quiet_seconds``, with what the study holds."""
    now = now or utcnow()
    for job in session.scalars(select(Job).where(Job.state == JobState.WAITING).order_by(Job.id)).all():
        if now - job.study.last_received_at >= timedelta(seconds=quiet_seconds):
            yield job, study_readiness(session, job.study)


def _images_last_received(session: Session, study_id: int) -> datetime:
    """When the last instance of the study's image series arrived (the mask's series aside)."""
    images = select(Instance.id).where(Instance.series_id == Series.id, Instance.sop_class_uid.in_(IMAGE_SOP_CLASSES),
                                       Instance.origin == "received")
    last = session.scalar(select(func.max(Series.last_received_at)).where(Series.study_id == study_id, images.exists()))
    return last if last is not None else datetime.min


@dataclass(frozen=True)
class AwaitingMask:
    """A waiting study with MR images and no mask yet, quiet since ``last_received_at``."""

    study_uid: str
    job_id: int
    last_received_at: datetime


def studies_awaiting_mask(session: Session, quiet_seconds: float, now: datetime | None = None) -> list[AwaitingMask]:
    """The waiting studies whose MR images are in, no mask yet, and nothing arrived for
    ``quiet_seconds``: what an idle worker fits the bias field of (``pipeline.prefit``)."""
    return [AwaitingMask(job.study.study_uid, job.id, job.study.last_received_at)
            for job, readiness in _quiet_waiting(session, quiet_seconds, now) if readiness.reason == NO_MASK_YET]


@dataclass(frozen=True)
class CompleteByContent:
    """A waiting study whose mask and every image it names are in, with the series holding
    those images: complete by content, queued when their settle has passed."""

    study_uid: str
    job_id: int
    series_uids: tuple[str, ...]
    last_received_at: datetime


def studies_complete_by_content(session: Session, within_seconds: float,
                                now: datetime | None = None) -> list[CompleteByContent]:
    """The waiting studies complete by content (:func:`study_readiness`) that received an
    instance in the last ``within_seconds`` (their settle over or not): what the worker fits
    the bias field of when a mask arrives, while the settle runs. Studies quiet for longer are
    not read (a node may hold hundreds waiting for their masks)."""
    recent = (now or utcnow()) - timedelta(seconds=within_seconds)
    found = []
    for job in session.scalars(select(Job).join(Study, Job.study_id == Study.id).where(
            Job.state == JobState.WAITING, Study.last_received_at >= recent).order_by(Job.id)).all():
        readiness = study_readiness(session, job.study)
        if readiness.ready and readiness.by_content and readiness.named_series_ids:
            series = tuple(sorted(session.scalars(select(Series.series_uid)
                                                  .where(Series.id.in_(readiness.named_series_ids)))))
            found.append(CompleteByContent(job.study.study_uid, job.id, series, job.study.last_received_at))
    return found


def scan_waiting_jobs(session: Session, study_stable_seconds: float, now: datetime | None = None,
                      content_settle_seconds: float | None = None, notes: Mapping[str, str] | None = None) -> list[JobView]:
    """Queue every waiting job whose study is complete: by its content (the mask and every
    image it names are in, and nothing arrived for ``content_settle_seconds``, DESIGN.md
    "completion"), or, for a mask that names no images, after ``study_stable_seconds`` of
    quiet. The timer's quiet time restarts with every instance of any series of the study (the
    study's ``last_received_at``); the settle of the content rule with every instance of the
    series holding the images the mask names (a mask that arrives long after its images is
    queued at the next scan). The rule that queued a job is kept on it
    (``queued_because``); jobs left waiting get a reason saying why, with ``notes[study_uid]``
    after it (what the worker does about it: fetching the images). Returns the jobs queued.
    """
    now = now or utcnow()
    stable = timedelta(seconds=study_stable_seconds)
    settle = timedelta(seconds=min(study_stable_seconds, study_stable_seconds if content_settle_seconds is None
                                   else content_settle_seconds))
    queued: list[JobView] = []
    jobs = session.scalars(select(Job).where(Job.state == JobState.WAITING).order_by(Job.id)).all()
    for job in jobs:
        quiet = study_quiet = now - job.study.last_received_at
        # what the study holds is read once its MR images are quiet for the settle (not at every
        # scan while they stream in: the scan holds SQLite's write lock the receive path needs)
        images_quiet = study_quiet >= settle or now - _images_last_received(session, job.study_id) >= settle
        readiness = study_readiness(session, job.study) if images_quiet else StudyReadiness(False, None)
        quiet_since, quiet_where = Study.last_received_at, Study.id == job.study_id
        if readiness.ready and readiness.by_content and readiness.named_series_ids:
            named = "the image" if readiness.images == 1 else f"the {readiness.images} images"
            wait, because = settle, (f"complete by content: the mask and {named} it names are "
                                     f"in, their series quiet {settle.total_seconds():g} s")
            last = session.scalar(select(func.max(Series.last_received_at))
                                  .where(Series.id.in_(readiness.named_series_ids)))
            quiet = now - last if last is not None else quiet
            quiet_since, quiet_where = Series.last_received_at, Series.id.in_(readiness.named_series_ids)
        else:
            wait, because = stable, f"quiet for {study_stable_seconds:g} s (the mask names no images)"
        if quiet < wait:
            reason: str | None = readiness.reason if readiness.reason and study_quiet >= settle else (
                f"study still arriving: last instance {quiet.total_seconds():.0f} s ago, "
                f"ready after {wait.total_seconds():g} s quiet"
            )
        else:
            if readiness.ready:
                # Quiet time checked again in the UPDATE: on PostgreSQL an instance committed
                # since the read above must keep the study waiting.
                arriving = select(Study.id).join(Series, Series.study_id == Study.id).where(
                    quiet_where, quiet_since > now - wait)
                moved = rowcount(
                    session,
                    update(Job)
                    .where(Job.id == job.id, Job.state == JobState.WAITING, Job.study_id.not_in(arriving))
                    .values(state=JobState.QUEUED, reason=None, queued_at=now, updated_at=now, queued_because=because)
                    .execution_options(synchronize_session="fetch"),
                )
                if moved:
                    log.info("study %s complete: job %d queued (%s)", job.study.study_uid, job.id, because,
                             extra={"study_uid": job.study.study_uid, "job_id": job.id})
                    queued.append(JobView.of(job))
                continue
            reason = readiness.reason
        note = (notes or {}).get(job.study.study_uid)
        if note and reason:
            reason = f"{reason}; {note}"
        if job.reason != reason:
            job.reason = reason
            job.updated_at = now
    return queued


def claim_next(
    session: Session, worker_id: str, lease_seconds: float, now: datetime | None = None, *, model_id: int | None = None,
    any_job: bool = True,
) -> JobView | None:
    """Move the oldest queued job to running under a lease held by ``worker_id``.

    ``model_id``: the bundle the job will run with, fixed on the job now (a bundle activated
    while it runs is for the next jobs). With ``any_job=False`` (no active bundle) only
    replays that re-send stored results are claimed. The caller commits. Safe with several
    workers: PostgreSQL skips rows another worker has locked; on every backend the update
    only succeeds while the job is still queued.
    """
    now = now or utcnow()
    running = aliased(Job)
    # one job of a study at a time: a newer job (a mask that came while the study's job ran)
    # waits for it, so the older result never reaches PACS after the newer one
    eligible = (Job.state == JobState.QUEUED) & ~exists().where(running.study_id == Job.study_id,
                                                                running.state == JobState.RUNNING)
    if not any_job:
        eligible = eligible & Job.resend_only.is_(True)
    for _ in range(5):
        candidate = session.scalars(
            select(Job)
            .where(eligible)
            .order_by(Job.queued_at, Job.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        ).first()
        if candidate is None:
            return None
        moved = rowcount(
            session,
            update(Job)
            .where(Job.id == candidate.id, Job.state == JobState.QUEUED)
            .values(
                state=JobState.RUNNING,
                started_at=now,
                updated_at=now,
                attempts=Job.attempts + 1,
                lease_owner=worker_id,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                model_id=None if candidate.resend_only else model_id,
                reason=None,
            )
            .execution_options(synchronize_session="fetch"),
        )
        if moved:
            session.refresh(candidate)
            return JobView.of(candidate)
    return None


def note_waiting_for(session: Session, reason: str, now: datetime | None = None) -> int:
    """Say on every queued job that needs a model why it is not claimed (e.g. "no active model")."""
    now = now or utcnow()
    return rowcount(
        session,
        update(Job)
        .where(Job.state == JobState.QUEUED, Job.resend_only.is_(False), or_(Job.reason.is_(None), Job.reason != reason))
        .values(reason=reason, updated_at=now),
    )


def renew_lease(session: Session, job_id: int, worker_id: str, lease_seconds: float, now: datetime | None = None) -> bool:
    """Extend the lease (heartbeat); False when the job is no longer this worker's."""
    now = now or utcnow()
    return bool(
        rowcount(
            session,
            update(Job)
            .where(Job.id == job_id, Job.state == JobState.RUNNING, Job.lease_owner == worker_id)
            .values(lease_expires_at=now + timedelta(seconds=lease_seconds), updated_at=now),
        )
    )


def finish_job(
    session: Session,
    job_id: int,
    worker_id: str,
    *,
    ok: bool,
    reason: str | None = None,
    result: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> bool:
    """running -> done (ok) or failed (with ``reason``); False if the lease was lost meanwhile."""
    now = now or utcnow()
    return bool(
        rowcount(
            session,
            update(Job)
            .where(Job.id == job_id, Job.state == JobState.RUNNING, Job.lease_owner == worker_id)
            .values(
                state=JobState.DONE if ok else JobState.FAILED,
                reason=reason,
                result=result,
                finished_at=now,
                updated_at=now,
                lease_owner=None,
                lease_expires_at=None,
            ),
        )
    )


def release_for_retry(
    session: Session, job_id: int, worker_id: str, reason: str, max_attempts: int, now: datetime | None = None
) -> JobState | None:
    """A transient failure: back to queued while attempts remain, else failed. None if the lease was lost."""
    now = now or utcnow()
    job = session.get(Job, job_id, with_for_update=True)  # a claim in flight commits first
    if job is None or job.state is not JobState.RUNNING or job.lease_owner != worker_id:
        return None
    job.lease_owner = None
    job.lease_expires_at = None
    job.updated_at = now
    if job.attempts >= max_attempts:
        job.state, job.finished_at = JobState.FAILED, now
        job.reason = f"attempt {job.attempts} of {max_attempts} failed: {reason}"
    else:
        job.state, job.queued_at = JobState.QUEUED, now
        job.reason = f"requeued after attempt {job.attempts} failed: {reason}"
    return job.state


def hand_back(session: Session, job_id: int, worker_id: str, reason: str, now: datetime | None = None) -> bool:
    """A running job this worker gives up without a failure (it is stopping): back to queued,
    the lease released, the attempt not counted. False if the job is no longer this worker's."""
    now = now or utcnow()
    job = session.get(Job, job_id, with_for_update=True)  # a claim in flight commits first
    if job is None or job.state is not JobState.RUNNING or job.lease_owner != worker_id:
        return False
    job.state, job.queued_at, job.updated_at = JobState.QUEUED, now, now
    job.lease_owner = job.lease_expires_at = None
    job.attempts = max(0, job.attempts - 1)
    job.reason = f"handed back: {reason}"
    return True


def sweep_expired_leases(session: Session, max_attempts: int, now: datetime | None = None) -> list[JobView]:
    """Jobs whose worker stopped renewing go back to queued, or fail after ``max_attempts``."""
    now = now or utcnow()
    expired = session.scalars(
        select(Job).where(Job.state == JobState.RUNNING, Job.lease_expires_at < now).with_for_update(skip_locked=True)
    ).all()
    swept = []
    for job in expired:
        owner = job.lease_owner
        job.lease_owner = None
        job.lease_expires_at = None
        job.updated_at = now
        if job.attempts >= max_attempts:
            job.state = JobState.FAILED
            job.finished_at = now
            job.reason = f"worker {owner} stopped during attempt {job.attempts} of {max_attempts} (lease expired)"
        else:
            job.state = JobState.QUEUED
            job.queued_at = now
            job.reason = f"requeued: worker {owner} stopped during attempt {job.attempts} (lease expired)"
        log.warning("job %d lease expired (worker %s): %s", job.id, owner, job.state.value,
                    extra={"study_uid": job.study.study_uid, "job_id": job.id})
        swept.append(JobView.of(job))
    return swept


def replay(session: Session, study_uid_or_job_id: str, now: datetime | None = None, *, rerun: bool = False) -> tuple[JobView, bool]:
    """A new queued job for the study (named by Study Instance UID or by a job id).

    When the study's latest finished job built results (``result["instances"]``) and
    ``rerun`` is False, the new job only re-sends those stored results (same SOP Instance
    UIDs, so PACS keeps one copy); otherwise it predicts again. Returns (job, created). A
    study that already has a waiting or queued job keeps it: (that job, False). History is
    kept: the new job's ``replay_of_id`` is the job replayed (the named job, else the
    study's latest). A rerun asked for while the study's active job is a re-send turns that
    job into the rerun: (that job, True).
    """
    now = now or utcnow()
    study = _resolve_study(session, study_uid_or_job_id)
    active = session.scalars(select(Job).where(Job.study_id == study.id, Job.state.in_(ACTIVE_JOB_STATES))
                             .with_for_update()).one_or_none()
    if active is not None:
        if rerun and active.resend_only:
            # asked to predict again: the queued re-send of the old result predicts instead
            active.resend_only, active.result, active.trigger = False, None, "replay"
            active.queued_because, active.updated_at = "a rerun, asked for", now
            session.flush()
            return JobView.of(active), True
        return JobView.of(active), False
    key = study_uid_or_job_id.strip()
    if key.isdigit():
        latest = session.get(Job, int(key))
    else:
        latest = session.scalars(select(Job).where(Job.study_id == study.id).order_by(Job.id.desc()).limit(1)).first()
    source = None if rerun else _with_results(session, latest)
    resend = source is not None
    job = Job(
        study_id=study.id,
        state=JobState.QUEUED,
        trigger="resend" if resend else "replay",
        resend_only=resend,
        result={"resend_of_job": source.id} if source is not None else None,
        replay_of_id=latest.id if latest else None,
        created_at=now,
        updated_at=now,
        queued_at=now,
        queued_because="a re-send of the stored results, asked for" if resend else "a rerun, asked for",
    )
    try:
        with session.begin_nested():
            session.add(job)
            session.flush()
    except IntegrityError:
        active = session.scalars(select(Job).where(Job.study_id == study.id, Job.state.in_(ACTIVE_JOB_STATES))).one()
        return JobView.of(active), False
    log.info("study %s replayed: job %d queued", study.study_uid, job.id, extra={"study_uid": study.study_uid, "job_id": job.id})
    return JobView.of(job), True


def _with_results(session: Session, job: Job | None) -> Job | None:
    """``job`` if it built results, else the job it re-sent (following resend chains)."""
    seen = 0
    while job is not None and seen < 100:
        if job.result and job.result.get("instances"):
            return job
        source_id = (job.result or {}).get("resend_of_job") if job.resend_only else None
        job = session.get(Job, source_id) if source_id else None
        seen += 1
    return None


def cancel(session: Session, job_id: int, now: datetime | None = None) -> JobView:
    """waiting/queued -> cancelled. A running job cannot be cancelled (its worker owns it)."""
    now = now or utcnow()
    job = session.get(Job, job_id, with_for_update=True)  # a claim in flight commits first
    if job is None:
        raise QueueError(f"no job {job_id}")
    if job.state not in ACTIVE_JOB_STATES:
        raise QueueError(f"job {job_id} is {job.state.value}; only waiting or queued jobs can be cancelled")
    job.state = JobState.CANCELLED
    job.reason = "cancelled by an administrator"
    job.finished_at = now
    job.updated_at = now
    return JobView.of(job)


def list_jobs(session: Session, state: JobState | None = None, limit: int = 200, *, offset: int = 0,
              study_uid: str | None = None, since: datetime | None = None,
              until: datetime | None = None) -> list[JobView]:
    """Jobs, newest first: of one state, of one study, created in [since, until); a page of
    ``limit`` after skipping ``offset``."""
    query = select(Job).order_by(Job.id.desc()).limit(limit).offset(offset)
    if state is not None:
        query = query.where(Job.state == state)
    if study_uid:
        query = query.join(Study, Job.study_id == Study.id).where(Study.study_uid == study_uid.strip())
    if since is not None:
        query = query.where(Job.created_at >= since)
    if until is not None:
        query = query.where(Job.created_at < until)
    return [JobView.of(job) for job in session.scalars(query)]


def count_jobs_by_state(session: Session) -> dict[str, int]:
    """Every job state with its count (0 for a state no job is in)."""
    return {state.value: 0 for state in JobState} | count_by_state(session, "job")


def get_job(session: Session, job_id: int) -> JobView:
    job = session.get(Job, job_id)
    if job is None:
        raise QueueError(f"no job {job_id}")
    return JobView.of(job)


def _resolve_study(session: Session, study_uid_or_job_id: str) -> Study:
    key = study_uid_or_job_id.strip()
    if key.isdigit():
        job = session.get(Job, int(key))
        if job is None:
            raise QueueError(f"no job {key}")
        return job.study
    study = session.scalars(select(Study).where(Study.study_uid == key)).one_or_none()
    if study is None:
        raise QueueError(f"no study {key} in the archive")
    return study
