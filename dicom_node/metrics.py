"""Monitoring an admin can plug in: ``/metrics`` (Prometheus text format) and ``/healthz``.

Served on ``[monitoring] host:port`` (loopback by default; another address only with
``allow_non_loopback = true``) by the SCP process. Each node has its own registry, so two
nodes in one process (the tests) do not mix their figures. What is counted:

- associations open and negotiating (gauges), associations accepted / rejected, and every
  refusal by reason (from the node's refusal log);
- C-STORE outcomes by status code, bytes stored;
- archive free space and its reserve;
- jobs by state and deliveries by state (read from the database at scrape time).

``/healthz`` answers 200 when the listeners are up and the database answers, else 503.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

__all__ = ["NodeMetrics", "MetricsServer"]

log = logging.getLogger(__name__)


class NodeMetrics:
    """The node's figures; the SCP calls :meth:`stored`, the rest is read at scrape time."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.registry = CollectorRegistry(auto_describe=True)
        self.instances = Counter("egfr_node_instances", "C-STORE requests answered, by status",
                                 ["status"], registry=self.registry)
        self.bytes = Counter("egfr_node_received_bytes", "Bytes of instances archived (Part-10 files)",
                             registry=self.registry)
        self.associations = Counter("egfr_node_associations", "Associations by outcome",
                                    ["outcome"], registry=self.registry)
        self.registry.register(_LiveCollector(node))

    def stored(self, status: int, size_bytes: int) -> None:
        self.instances.labels(status=f"0x{status:04X}").inc()
        if status in (0x0000, 0xB006):
            self.bytes.inc(size_bytes)

    def association(self, outcome: str) -> None:
        self.associations.labels(outcome=outcome).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _LiveCollector:
    """Gauges and counts read from the node and the database when scraped."""

    def __init__(self, node: Any) -> None:
        self.node = node

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        node = self.node
        counts = node.connections.counts()
        yield _gauge("egfr_node_associations_open", "Associations established now", counts["established"])
        yield _gauge("egfr_node_connections_negotiating", "Connections without an association yet", counts["negotiating"])
        refused = CounterMetricFamily("egfr_node_refusals", "Refusals (connections, associations, PDUs, datasets) by reason",
                                      labels=["reason"])
        for reason, count in sorted(node.refusals.totals.items()):
            refused.add_metric([reason], count)
        yield refused
        try:
            import shutil

            free = shutil.disk_usage(node.archive.root).free
            yield _gauge("egfr_node_archive_free_bytes", "Free space on the archive's file system", free)
        except OSError:
            pass
        yield _gauge("egfr_node_archive_reserve_bytes", "Free space kept (storage.free_space_reserve_mb)",
                     node.archive.free_space_reserve_bytes)
        yield from _by_state(node.sessions, "egfr_node_jobs", "Jobs by state", "job")
        yield from _by_state(node.sessions, "egfr_node_deliveries", "Result deliveries by state", "delivery")


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _by_state(sessions: sessionmaker[Session], name: str, documentation: str, table: str) -> Iterator[Any]:
    from db.models import Delivery, Job

    model = {"job": Job, "delivery": Delivery}[table]
    family = GaugeMetricFamily(name, documentation, labels=["state"])
    try:
        with sessions() as session:
            for state, count in session.execute(select(model.state, func.count()).group_by(model.state)):
                family.add_metric([getattr(state, "value", str(state))], count)
    except Exception as exc:  # the database may be down: the scrape still answers
        log.debug("metrics: %s not read: %s", table, type(exc).__name__)
        return
    yield family


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
    try:
        with sessions() as session:
            session.execute(text("SELECT 1"))
        return True
    except Exception:
        return False
