"""Running the node as the admin does: the ``egfr-node`` command in its own process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.waiting import wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(folder: Path, port: int, *, stable: float = 2.0, scan: float = 0.5,
                 receive_processes: int | str = 1, settle: float | None = None) -> Path:
    """A node's configuration file; one receive process unless asked (tests that kill the node
    and start it again on the same port must not meet a receive process of the one killed)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "egfr-node.toml"
    path.write_text(
        f"""
[node]
ae_title = "EGFR_NODE"
host = "127.0.0.1"
port = {port}
receive_processes = {receive_processes!r}
[storage]
data_dir = "{folder / 'data'}"
free_space_reserve_mb = 0
[worker]
study_stable_seconds = {stable}
scan_interval_seconds = {scan}
""" + (f"content_settle_seconds = {settle}\n" if settle is not None else "")
    )
    return path


def cli(config: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", "--config", str(config), *args],
        capture_output=True, text=True, timeout=timeout, cwd=Path(__file__).parents[2],
    )


def start(config: Path, command: str = "serve") -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "dicom_node.cli", "--config", str(config), command],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=Path(__file__).parents[2],
    )


def wait_until_listening(port: int, process: subprocess.Popen, deadline_s: float = 30) -> None:
    ae = AE(ae_title="PROBE")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 2

    def answers_echo() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"node exited with {process.returncode}: {process.stdout.read() if process.stdout else ''}")
        assoc = ae.associate("127.0.0.1", port, ae_title="EGFR_NODE")
        established = bool(assoc.is_established)
        if established:
            assoc.release()
        return established

    wait_for(answers_echo, deadline_s, f"the node to listen on {port}")


def stop_processes(processes: Iterable[subprocess.Popen], grace_s: float = 30) -> None:
    """SIGTERM each, as the service manager does, then wait for each; one still running after
    ``grace_s`` is killed."""
    processes = list(processes)
    for proc in processes:
        if proc.poll() is None:
            proc.terminate()
    for proc in processes:
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
