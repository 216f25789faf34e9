"""Monitoring an admin can plug in: ``/metrics`` (Prometheus text format) and ``/healthz``.

Served on ``[monitoring] host:port`` (loopback by default; another address only with
``allow_non_loopback = true``) by the SCP process. Each node has its own registry, so two
nodes in one process (the tests) do not mix their figures. With several receive processes
(``node.receive_processes``) the counters and the association gauges are shared through
prometheus_client's multiprocess mode (set up by ``egfr-node scp|serve`` before
prometheus_client is imported: ``dicom_node.shared_metrics.share_metrics_between_processes``): the
page sums every receive process. What is counted:

- associations open and negotiating (gauges), associations accepted / rejected, and every
  refusal by reason (from the node's refusal log);
- C-STORE outcomes by status code, bytes stored; STOW-RS outcomes by status code
  (`egfr_node_stow_instances`, from the console process with `egfr-node serve`);
- archive free space and its reserve;
- jobs by state and deliveries by state, and retention's deletions by reason (studies,
  instances, bytes) (read from the database at scrape time);
- the active and shadow bundles' running performance on the site's confirmed cases (cases
  per class, AUC, sensitivity, specificity) and the shadow's results by state;
- job stage durations (select/preprocess/infer/report, and the preprocessing steps) and
  the wait from queued to started, as histograms of the jobs finished since this process
  started: read from the finished jobs' records at scrape time, since the worker may run
  in another process or on another machine.

``/healthz`` answers 200 when the listeners are up and the database answers, else 503.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.shared_metrics import SHARED_METRICS_ENV as SHARED_DIR_ENV

__all__ = ["NodeMetrics", "MetricsServer", "JobTimes", "forget_process", "live_collector"]

log = logging.getLogger(__name__)


class NodeMetrics:
    """The node's figures; the SCP calls :meth:`stored` and :meth:`association`, the refusal
    log :meth:`refusal`; the rest is read at scrape time (or, in a receive process, every
    second by :meth:`refresh_gauges`)."""

    def __init__(self, node: Any) -> None:
        self.node = node
        shared = os.environ.get(SHARED_DIR_ENV)
        # In multiprocess mode each process's values go to its files, and the page is made
        # from all of them; the metric objects then live in a registry that is not served.
        own = CollectorRegistry(auto_describe=True)
        self.registry = CollectorRegistry(auto_describe=True) if shared else own
        if shared:
            multiprocess.MultiProcessCollector(self.registry, path=shared)
        self.instances = Counter("egfr_node_instances", "C-STORE requests answered, by status",
                                 ["status"], registry=own)
        self.bytes = Counter("egfr_node_received_bytes", "Bytes of instances archived (Part-10 files)",
                             registry=own)
        self.associations = Counter("egfr_node_associations", "Associations by outcome",
                                    ["outcome"], registry=own)
        self.refusals = Counter("egfr_node_refusals", "Refusals (connections, associations, PDUs, datasets) by reason",
                                ["reason"], registry=own)
        self.open = Gauge("egfr_node_associations_open", "Associations established now", registry=own,
                          multiprocess_mode="livesum")
        self.negotiating = Gauge("egfr_node_connections_negotiating", "Connections without an association yet",
                                 registry=own, multiprocess_mode="livesum")
        self.registry.register(live_collector(node.archive, node.sessions))
        self.job_times = JobTimes(node.sessions, own)

    def stored(self, status: int, size_bytes: int) -> None:
        self.instances.labels(status=f"0x{status:04X}").inc()
        if status in (0x0000, 0xB006):
            self.bytes.inc(size_bytes)

    def association(self, outcome: str) -> None:
        self.associations.labels(outcome=outcome).inc()

    def refusal(self, reason: str) -> None:
        self.refusals.labels(reason=reason).inc()

    def refresh_gauges(self) -> None:
        counts = self.node.connections.counts()
        self.open.set(counts["established"])
        self.negotiating.set(counts["negotiating"])

    def exposition(self) -> bytes:
        self.refresh_gauges()
        self.job_times.refresh()
        text: bytes = generate_latest(self.registry)
        return text


class JobTimes:
    """Histograms of job stage durations, fed from the records of jobs finished since this
    process started (``result["timings_s"]``, ``queued_at``/``started_at``), each job once.

    Workers write ``finished_at`` from their own clocks and commit a moment later, so each
    read looks back ``LOOKBACK`` before the latest finish it has seen and skips jobs it has
    already counted.
    """

    LOOKBACK = timedelta(minutes=10)
    BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)

    def __init__(self, sessions: sessionmaker[Session], registry: CollectorRegistry,
                 since: datetime | None = None) -> None:
        from db.models import utcnow

        self.sessions = sessions
        self.stage = Histogram("egfr_node_job_stage_seconds", "Job stage durations (jobs finished since start)",
                               ["stage"], buckets=self.BUCKETS, registry=registry)
        self.wait = Histogram("egfr_node_job_wait_seconds", "Seconds from queued to started (jobs finished since start)",
                              buckets=self.BUCKETS, registry=registry)
        self._since = since or utcnow()
        self._latest = self._since
        self._counted: dict[int, datetime] = {}
        self._lock = threading.Lock()

    def refresh(self) -> None:
        from db.stats import done_jobs_since

        with self._lock:
            low = max(self._since, self._latest - self.LOOKBACK)
            try:
                with self.sessions() as session:
                    rows = done_jobs_since(session, low)
            except Exception as exc:  # the database may be down: the scrape still answers
                log.debug("metrics: job times not read: %s", type(exc).__name__)
                return
            for job in rows:
                if job.id in self._counted:
                    continue
                self._counted[job.id] = job.finished_at
                self._latest = max(self._latest, job.finished_at)
                for stage, seconds in ((job.result or {}).get("timings_s") or {}).items():
                    if isinstance(seconds, (int, float)) and seconds >= 0:
                        self.stage.labels(stage=str(stage)[:64]).observe(float(seconds))
                if job.queued_at is not None and job.started_at is not None and job.started_at >= job.queued_at:
                    self.wait.observe((job.started_at - job.queued_at).total_seconds())
            low = max(self._since, self._latest - self.LOOKBACK)
            self._counted = {k: v for k, v in self._counted.items() if v >= low}


class _LiveCollector:
    """Gauges and counts read from the archive and the database when scraped."""

    def __init__(self, archive: Any, sessions: sessionmaker[Session]) -> None:
        self.archive = archive
        self.sessions = sessions

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        try:
            free = shutil.disk_usage(self.archive.root).free
            yield _gauge("egfr_node_archive_free_bytes", "Free space on the archive's file system", free)
        except OSError:
            pass
        yield _gauge("egfr_node_archive_reserve_bytes", "Free space kept (storage.free_space_reserve_mb)",
                     self.archive.free_space_reserve_bytes)
        yield from _deletions(self.sessions)
        yield from _by_state(self.sessions, "egfr_node_jobs", "Jobs by state", "job")
        yield from _by_state(self.sessions, "egfr_node_deliveries", "Result deliveries by state", "delivery")
        yield from _running_performance(self.sessions)


def live_collector(archive: Any, sessions: sessionmaker[Session]) -> _LiveCollector:
    """The figures read from the archive and the database at scrape time (the SCP's /metrics
    and the console's /api/metrics serve the same)."""
    return _LiveCollector(archive, sessions)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _by_state(sessions: sessionmaker[Session], name: str, documentation: str, table: str) -> Iterator[Any]:
    from db.stats import count_by_state

    family = GaugeMetricFamily(name, documentation, labels=["state"])
    try:
        with sessions() as session:
            for state, count in count_by_state(session, table).items():
                family.add_metric([state], count)
    except Exception as exc:  # the database may be down: the scrape still answers
        log.debug("metrics: %s not read: %s", table, type(exc).__name__)
        return
    yield family


def _running_performance(sessions: sessionmaker[Session]) -> Iterator[Any]:
    """The active and shadow bundles on the site's confirmed cases (``dicom_node.outcomes``,
    the statistics ``evaluate`` uses; no bootstrap at scrape time), and the shadow's results by
    state (skipped under a backlog counted)."""
    from db import bundles
    from db.shadow import shadow_counts
    from dicom_node.outcomes import performance_of

    try:
        with sessions() as session:
            served = [(role, record) for role, record in (("active", bundles.active(session)),
                                                          ("shadow", bundles.shadow(session))) if record is not None]
            shadows = shadow_counts(session)
        reports = [(role, record, performance_of(sessions, record.id, resamples=0)) for role, record in served]
    except Exception as exc:  # the database may be down: the scrape still answers
        log.debug("metrics: running performance not read: %s", type(exc).__name__)
        return
    confirmed = GaugeMetricFamily("egfr_node_outcomes_confirmed", "Confirmed cases a bundle answered, by pathology class",
                                  labels=["bundle", "role", "class"])
    figures = {name: GaugeMetricFamily(f"egfr_node_bundle_{name}", f"Running {text} on the confirmed cases",
                                       labels=["bundle", "role"])
               for name, text in (("auc", "ROC AUC"), ("sensitivity", "sensitivity at the bundle's threshold"),
                                  ("specificity", "specificity at the bundle's threshold"))}
    for role, record, report in reports:
        for label in ("positive", "negative"):
            confirmed.add_metric([str(record.id), role, label], report["confirmed"][label])
        f = report["figures"] or {}
        for name, family in figures.items():
            value = f.get(name)
            value = value.get("value") if isinstance(value, dict) else value
            if isinstance(value, (int, float)) and value == value:
                family.add_metric([str(record.id), role], value)
    shadow = GaugeMetricFamily("egfr_node_shadow_results", "Shadow bundle results by state (skipped: under a backlog)",
                               labels=["bundle", "state"])
    for (model_id, state), count in shadows.items():
        shadow.add_metric([str(model_id), state], count)
    yield confirmed
    yield from figures.values()
    yield shadow


def _deletions(sessions: sessionmaker[Session]) -> Iterator[Any]:
    """Retention's deletions by reason (age, watermark), from the deletion record."""
    from prometheus_client.core import CounterMetricFamily

    from db.retention import deletion_totals

    try:
        with sessions() as session:
            totals = deletion_totals(session)
    except Exception as exc:  # the database may be down: the scrape still answers
        log.debug("metrics: deletions not read: %s", type(exc).__name__)
        return
    families = [CounterMetricFamily(f"egfr_node_retention_deleted_{what}", f"{what.capitalize()} deleted by retention",
                                    labels=["reason"]) for what in ("studies", "instances", "bytes")]
    for reason in ("age", "watermark"):
        for family, value in zip(families, totals.get(reason, (0, 0, 0))):
            family.add_metric([reason], value)
    yield from families


class MetricsServer:
    """A small HTTP server for ``/metrics`` and ``/healthz`` in a daemon thread."""

    def __init__(self, host: str, port: int, metrics: NodeMetrics, healthy: Callable[[], tuple[bool, str]]) -> None:
        metrics_ref, healthy_ref = metrics, healthy

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path.split("?")[0] == "/metrics":
                    self._answer(200, metrics_ref.exposition(), CONTENT_TYPE_LATEST)
                elif self.path.split("?")[0] == "/healthz":
                    ok, why = healthy_ref()
                    self._answer(200 if ok else 503, (why + "\n").encode(), "text/plain; charset=utf-8")
                else:
                    self._answer(404, b"not found\n", "text/plain; charset=utf-8")

            def _answer(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - scrapes are not logged
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.5},
                                       name="MetricsServer", daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def database_answers(sessions: sessionmaker[Session]) -> bool:
    """True when the database runs a trivial query (a session that cannot even open: False)."""
    from db.stats import database_answers as answers

    try:
        with sessions() as session:
            return answers(session)
    except Exception:
        return False


def forget_process(pid: int) -> None:
    """A receive process ended: its gauges no longer count (its counters do)."""
    shared = os.environ.get(SHARED_DIR_ENV)
    if shared:
        multiprocess.mark_process_dead(pid, shared)
