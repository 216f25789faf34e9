"""/metrics and /healthz: what an admin's Prometheus reads from the node."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from dataclasses import replace

import pytest

from dicom_node.config import ConfigError, MonitoringSection, load_config
from dicom_node.receive.scp import Status
from dicom_node.receive.server import DicomNode
from tests.dicom_factory import mr_series
from tests.node.scu import association, store


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as rsp:
            return rsp.status, rsp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def monitored(config, runtime):
    cfg = replace(config, monitoring=MonitoringSection(enabled=True, host="127.0.0.1", port=0))
    node = DicomNode(cfg, runtime.archive, runtime.sessions)
    node.start()
    yield node
    node.stop()


def value(text: str, line_start: str) -> float:
    (line,) = [line for line in text.splitlines() if line.startswith(line_start + " ")]
    return float(line.rsplit(" ", 1)[1])


def test_metrics_count_what_the_node_did(monitored: DicomNode) -> None:
    port = monitored.metrics_server.port
    images = mr_series(3)
    broken = mr_series(1)[0]
    broken.PixelData = broken.PixelData[:100]
    assert store(monitored.port, [*images, broken]) == [0, 0, 0, Status.CANNOT_UNDERSTAND]
    with association(monitored.port, called="NOT_US") as assoc:
        assert assoc.is_rejected
    with socket.create_connection(("127.0.0.1", monitored.port)) as sock:  # a PDU type that does not exist
        sock.sendall(b"\x08\x00\x00\x00\x00\x00")
        sock.recv(16)
    status, text = get(port, "/metrics")
    assert status == 200
    assert value(text, 'egfr_node_instances_total{status="0x0000"}') == 3
    assert value(text, 'egfr_node_instances_total{status="0xC210"}') == 1
    assert value(text, "egfr_node_received_bytes_total") > 3 * 64 * 64 * 2
    assert value(text, 'egfr_node_associations_total{outcome="accepted"}') == 1
    assert value(text, 'egfr_node_associations_total{outcome="rejected"}') == 1
    assert value(text, 'egfr_node_refusals_total{reason="unknown PDU type 0x08"}') == 1
    assert value(text, 'egfr_node_refusals_total{reason="incomplete dataset"}') == 1
    assert value(text, 'egfr_node_jobs{state="waiting"}') == 1
    assert value(text, "egfr_node_archive_free_bytes") > 0
    assert "egfr_node_associations_open" in text and "egfr_node_connections_negotiating" in text
    assert get(port, "/healthz") == (200, "ok\n")


def test_healthz_fails_when_the_node_stops_listening(monitored: DicomNode) -> None:
    port = monitored.metrics_server.port
    for server in monitored.servers:
        server.shutdown()
    servers, monitored.servers = monitored.servers, []
    assert get(port, "/healthz")[0] == 503


def test_metrics_off_loopback_only_when_configured(tmp_path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[monitoring]\nenabled = true\nhost = "0.0.0.0"\n')
    with pytest.raises(ConfigError, match="monitoring.host"):
        load_config(path)
    path.write_text('[monitoring]\nenabled = true\nhost = "0.0.0.0"\nallow_non_loopback = true\n')
    assert load_config(path).monitoring.host == "0.0.0.0"


def test_metrics_show_job_stage_durations_of_jobs_finished_since_start(monitored: DicomNode) -> None:
    """The worker's per-stage times reach /metrics from the job records, each job counted once;
    jobs finished before the node started are not counted."""
    from datetime import timedelta

    from db.models import utcnow
    from db.queue import claim_next, finish_job, scan_waiting_jobs
    from tests.dicom_factory import mask_for

    port = monitored.metrics_server.port
    images = mr_series(3)
    assert store(monitored.port, [*images, mask_for(images)]) == [0, 0, 0, 0]
    start = utcnow()
    with monitored.sessions.begin() as session:
        assert len(scan_waiting_jobs(session, 0.0, start + timedelta(seconds=1))) == 1
        job = claim_next(session, "w1", 60, start + timedelta(seconds=3))
        assert finish_job(session, job.id, "w1", ok=True, now=start + timedelta(seconds=10),
                          result={"timings_s": {"preprocess": 4.2, "infer": 0.3, "preprocess.n4": 3.9}})
    _, text = get(port, "/metrics")
    assert value(text, 'egfr_node_job_stage_seconds_count{stage="preprocess"}') == 1
    assert value(text, 'egfr_node_job_stage_seconds_sum{stage="preprocess"}') == pytest.approx(4.2)
    assert value(text, 'egfr_node_job_stage_seconds_bucket{le="5.0",stage="preprocess"}') == 1
    assert value(text, 'egfr_node_job_stage_seconds_bucket{le="2.0",stage="preprocess"}') == 0
    assert value(text, 'egfr_node_job_stage_seconds_sum{stage="preprocess.n4"}') == pytest.approx(3.9)
    assert value(text, "egfr_node_job_wait_seconds_count") == 1
    assert value(text, "egfr_node_job_wait_seconds_sum") == pytest.approx(2.0)
    _, text = get(port, "/metrics")  # a second scrape does not count the job again
    assert value(text, 'egfr_node_job_stage_seconds_count{stage="infer"}') == 1

    # a node started after that job finished does not count it
    from prometheus_client import CollectorRegistry, generate_latest

    from dicom_node.metrics import JobTimes

    registry = CollectorRegistry()
    later = JobTimes(monitored.sessions, registry, since=start + timedelta(seconds=11))
    later.refresh()
    assert 'egfr_node_job_stage_seconds_count{stage="infer"}' not in generate_latest(registry).decode()
