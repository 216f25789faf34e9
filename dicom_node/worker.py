"""The worker: APScheduler jobs that move the queue along.

Today: the stable-study scan (waiting -> queued) and the lease sweep (crash recovery). The
pipeline stages (select, preprocess, infer, report, deliver) join here as they are built.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import datetime

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.orm import Session, sessionmaker

from db.queue import JobView, scan_waiting_jobs, sweep_expired_leases
from dicom_node.config import WorkerSection

__all__ = ["Worker", "default_worker_id"]

log = logging.getLogger(__name__)


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Worker:
    def __init__(self, settings: WorkerSection, sessions: sessionmaker[Session], worker_id: str | None = None) -> None:
        self.settings = settings
        self.sessions = sessions
        self.worker_id = worker_id or default_worker_id()
        self.scheduler: BackgroundScheduler | None = None

    def scan_once(self, now: datetime | None = None) -> list[JobView]:
        """One pass: expired leases back to the queue, stable complete studies queued."""
        with self.sessions.begin() as session:
            sweep_expired_leases(session, self.settings.max_attempts, now)
        with self.sessions.begin() as session:
            return scan_waiting_jobs(session, self.settings.study_stable_seconds, now)

    def _scan_job(self) -> None:
        try:
            self.scan_once()
        except Exception:
            log.exception("stable-study scan failed; retrying at the next interval")

    def start(self) -> None:
        self.scheduler = BackgroundScheduler(timezone="UTC")
        self.scheduler.add_job(
            self._scan_job,
            "interval",
            seconds=self.settings.scan_interval_seconds,
            id="stable-study-scan",
            max_instances=1,
            coalesce=True,
            next_run_time=datetime.now().astimezone(),
        )
        self.scheduler.start()
        log.info("worker %s started: stable-study scan every %g s (stable after %g s)", self.worker_id,
                 self.settings.scan_interval_seconds, self.settings.study_stable_seconds)

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=True)
            self.scheduler = None
            log.info("worker %s stopped", self.worker_id)
