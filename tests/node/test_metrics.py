"""/metrics and /healthz: what an admin's Prometheus reads from the node."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from dataclasses import replace

import pytest

from dicom_node.config import ConfigError, MonitoringSection, load_config
from dicom_node.scp import DicomNode, Status
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
