"""From the shell: ``egfr-node web add-user`` writes a user, ``egfr-node serve`` with ``[web]
enabled`` serves the console beside the SCP (its own process), and stopping serve stops it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from dicom_node.web.server import GRACEFUL_STOP_SECONDS
from tests.node.process import cli, free_port, start, wait_until_listening, write_config
from tests.waiting import wait_for_http


def test_serve_starts_the_console_and_add_user_lets_a_user_in(tmp_path: Path) -> None:
    port, web_port = free_port(), free_port()
    config = write_config(tmp_path, port)
    config.write_text(config.read_text() + f"\n[web]\nenabled = true\nport = {web_port}\n")
    assert cli(config, "db", "upgrade").returncode == 0
    added = subprocess.run([sys.executable, "-m", "dicom_node.cli", "--config", str(config), "web", "add-user", "oncall",
                            "--password-stdin"], input="night shift 0300\n", capture_output=True, text=True, timeout=60)
    assert added.returncode == 0 and "added oncall" in added.stdout, added.stderr
    short = subprocess.run([sys.executable, "-m", "dicom_node.cli", "--config", str(config), "web", "add-user", "x",
                            "--password-stdin"], input="short\n", capture_output=True, text=True, timeout=60)
    assert short.returncode == 1 and "at least 8 characters" in short.stderr

    proc = start(config, "serve")
    url = f"http://127.0.0.1:{web_port}"
    try:
        wait_until_listening(port, proc)
        wait_for_http(url + "/login", 60, "the console of egfr-node serve", alive=lambda: proc.poll() is None)
        session = requests.Session()
        assert session.post(url + "/api/session", json={"user": "oncall", "password": "night shift 0300"},
                            timeout=30).status_code == 200
        health = session.get(url + "/api/health", timeout=30).json()
        assert health["listening"] and health["database"], health
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output[-2000:]
    try:
        requests.get(url + "/login", timeout=2)
        raise AssertionError("the console still answers after serve stopped")
    except requests.ConnectionError:
        pass


def test_web_alone_serves_https_with_secure_cookies_when_configured(tmp_path: Path) -> None:
    from tests.node.tls_certs import make_tls_files

    certs = make_tls_files(tmp_path / "tls")
    port, web_port = free_port(), free_port()
    config = write_config(tmp_path, port)
    config.write_text(config.read_text() + f'\n[web]\nport = {web_port}\ncertificate = "{certs.server_cert}"\n'
                                           f'private_key = "{certs.server_key}"\n')
    assert cli(config, "db", "upgrade").returncode == 0
    added = subprocess.run([sys.executable, "-m", "dicom_node.cli", "--config", str(config), "web", "add-user", "oncall",
                            "--password-stdin"], input="night shift 0300\n", capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    proc = start(config, "web")  # the console alone: no SCP in this process
    url = f"https://127.0.0.1:{web_port}"
    try:
        wait_for_http(url + "/login", 60, "egfr-node web", alive=lambda: proc.poll() is None, verify=str(certs.ca_cert))
        session = requests.Session()
        signed = session.post(url + "/api/session", json={"user": "oncall", "password": "night shift 0300"},
                              timeout=30, verify=str(certs.ca_cert))
        assert signed.status_code == 200
        cookie = signed.headers["set-cookie"].lower()
        assert "secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie, cookie
        health = session.get(url + "/api/health", timeout=30, verify=str(certs.ca_cert)).json()
        assert health["database"] and not health["listening"]  # no SCP runs here, and the strip says so
        try:
            requests.get(f"http://127.0.0.1:{web_port}/login", timeout=5)
            raise AssertionError("plain HTTP answered on the HTTPS port")
        except requests.ConnectionError:
            pass
    finally:
        # the session still holds its keep-alive TLS connection and never answers the server's
        # close: the stop must not wait for it (asyncio's TLS close waits 30 s)
        began = time.monotonic()
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
        stopped_in = time.monotonic() - began
    assert proc.returncode == 0, output[-2000:]
    assert stopped_in < GRACEFUL_STOP_SECONDS + 10, stopped_in
