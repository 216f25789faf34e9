"""``egfr-node queue list | show | replay | cancel``: watch and steer the job queue."""

from __future__ import annotations

import argparse
import json
from typing import Any

from dicom_node.commands._common import with_session

__all__ = ["register", "list_jobs", "show_job", "replay_study", "cancel_job", "job_lines"]


def register(sub: Any) -> None:
    p = sub.add_parser("queue", help="watch and steer the job queue")
    queue = p.add_subparsers(dest="queue_command", required=True)
    q = queue.add_parser("list", help="jobs, newest first")
    q.add_argument("--state", choices=["waiting", "queued", "running", "done", "failed", "cancelled"])
    q.add_argument("--json", action="store_true")
    q.add_argument("--limit", type=int, default=200)
    q.set_defaults(run=list_jobs)
    q = queue.add_parser("show", help="one job in full")
    q.add_argument("job_id", type=int)
    q.set_defaults(run=show_job)
    q = queue.add_parser("replay", help="queue a study again (by Study Instance UID or job id): re-sends stored results")
    q.add_argument("key", metavar="STUDY_UID|JOB_ID")
    q.add_argument("--rerun", action="store_true", help="predict again instead of re-sending the stored results")
    q.set_defaults(run=replay_study)
    q = queue.add_parser("cancel", help="cancel a waiting or queued job")
    q.add_argument("job_id", type=int)
    q.set_defaults(run=cancel_job)


def job_lines(jobs: list[Any]) -> list[str]:
    """The table ``queue list`` prints: one line a job, the result or the reason last."""
    lines = [f"{'ID':>5}  {'STATE':<9}  {'TRIGGER':<7}  {'ATT':>3}  {'UPDATED (UTC)':<19}  {'STUDY UID':<40}  RESULT / REASON"]
    for job in jobs:
        result = job.result or {}
        outcome = (f"EGFR {result['status']} {'p' if result.get('calibrated') else 'score'}={result['probability']:.3f}"
                   if "status" in result and result.get("probability") is not None else "")
        lines.append(f"{job.id:>5}  {job.state:<9}  {job.trigger:<7}  {job.attempts:>3}  "
                     f"{job.updated_at:%Y-%m-%d %H:%M:%S}  {job.study_uid:<40}  {outcome or job.reason or ''}")
    return lines


def list_jobs(args: argparse.Namespace) -> int:
    from db.models import JobState
    from db.queue import list_jobs as newest_jobs

    state = JobState(args.state) if args.state else None

    def show(session: Any) -> int:
        jobs = newest_jobs(session, state, args.limit)
        print(json.dumps([job.to_json() for job in jobs], indent=2) if args.json else "\n".join(job_lines(jobs)))
        return 0

    return with_session(args, show)


def show_job(args: argparse.Namespace) -> int:
    from db.deliveries import deliveries_of_job
    from db.queue import get_job

    def show(session: Any) -> int:
        job = get_job(session, args.job_id).to_json()
        job["deliveries"] = [d.to_json() for d in deliveries_of_job(session, args.job_id)]
        print(json.dumps(job, indent=2))
        return 0

    return with_session(args, show)


def replay_study(args: argparse.Namespace) -> int:
    from db.queue import replay

    def queue_again(session: Any) -> int:
        job, created = replay(session, args.key, rerun=args.rerun)
        if created and job.resend_only:
            assert job.result is not None  # replay records the job it re-sends
            print(f"job {job.id} queued for study {job.study_uid}: re-sends the results of job "
                  f"{job.result['resend_of_job']} (use --rerun to predict again)")
        elif created:
            print(f"job {job.id} queued for study {job.study_uid} (replay of job {job.replay_of_id})")
        else:
            print(f"study {job.study_uid} already has job {job.id} {job.state}; nothing new queued")
        return 0

    return with_session(args, queue_again)


def cancel_job(args: argparse.Namespace) -> int:
    from db.queue import cancel

    def do(session: Any) -> int:
        print(f"job {cancel(session, args.job_id).id} cancelled")
        return 0

    return with_session(args, do)
