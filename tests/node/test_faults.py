"""A broken or hostile peer on loopback (issue 8): what it cannot do to the node.

Network faults run against the node as the admin runs it (``egfr-node scp`` in its own
process: its threads, open files, memory and SIGTERM are measured there); dataset faults
against an in-process SCP. Raw sockets stand in for peers no DICOM library would be.
Attackers bind 127.0.x.y source addresses so the legitimate peer (127.0.0.1) is another
source, as it would be on a hospital network.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest

from dicom_node.receive.server import DicomNode
from tests.conftest import require_tool
from tests.dicom_factory import mr_series, write_all
from tests.node.process import cli, free_port, wait_until_listening, write_config
from tests.node.scu import association
from tests.waiting import settled, wait_for

ROOT = Path(__file__).resolve().parents[2]
ACSE_TIMEOUT = 2.0
NETWORK_TIMEOUT = 4.0
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


# --- the node in its own process --------------------------------------------------------


class NodeProcess:
    def __init__(self, folder: Path, extra: str = "", sections: str = "", processes: int | str = 1) -> None:
        self.port = free_port()
        self.config = write_config(folder, self.port, receive_processes=processes)
        text = self.config.read_text().replace(
            "[node]\n",
            f"[node]\nacse_timeout_seconds = {ACSE_TIMEOUT}\nnetwork_timeout_seconds = {NETWORK_TIMEOUT}\n{extra}", 1)
        self.config.write_text(text + sections)
        assert cli(self.config, "db", "upgrade").returncode == 0
        self.log_path = folder / "node.log"
        self.log_file = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dicom_node.cli", "--config", str(self.config), "scp"],
            stdout=self.log_file, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        wait_until_listening(self.port, self.process)
        self.archive = folder / "data" / "archive"

    @property
    def pid(self) -> int:
        return self.process.pid

    def threads(self) -> int:
        return int(re.search(r"^Threads:\s+(\d+)", Path(f"/proc/{self.pid}/status").read_text(), re.M).group(1))

    def open_files(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def memory_kib(self, field: str = "VmHWM") -> int:
        return int(re.search(rf"^{field}:\s+(\d+) kB", Path(f"/proc/{self.pid}/status").read_text(), re.M).group(1))

    def log(self) -> str:
        self.log_file.flush()
        return self.log_path.read_text(errors="replace")

    def archived(self) -> list[Path]:
        return sorted(p for p in self.archive.rglob("*.dcm") if ".incoming" not in p.parts)

    def stop(self) -> float:
        """SIGTERM; seconds until the process exited."""
        began = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(NETWORK_TIMEOUT + 30)
        return time.monotonic() - began

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.log_file.close()


@pytest.fixture
def node_process(tmp_path: Path) -> Iterator[NodeProcess]:
    node = NodeProcess(tmp_path / "node")
    yield node
    node.kill()


def connect_from(source: str, port: int) -> socket.socket:
    sock = socket.socket()
    sock.settimeout(5)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def closed_by_peer(sock: socket.socket, seconds: float = 3.0) -> bool:
    """True when the node closed (or aborted) the connection within ``seconds``."""
    sock.settimeout(seconds)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
            if data[:1] == b"\x07":  # A-ABORT, then the close
                continue
    except socket.timeout:
        return False
    except OSError:
        return True


def associate_rq(calling: bytes = b"PACS", called: bytes = b"EGFR_NODE") -> bytes:
    """An A-ASSOCIATE-RQ for Verification, built by hand (any AE title bytes)."""
    def item(kind: int, body: bytes) -> bytes:
        return struct.pack(">BBH", kind, 0, len(body)) + body
    context = item(0x20, bytes([1, 0, 0, 0]) + item(0x30, b"1.2.840.10008.1.1") + item(0x40, b"1.2.840.10008.1.2"))
    user = item(0x50, item(0x51, struct.pack(">L", 16384)))
    body = (struct.pack(">HH", 1, 0) + called.ljust(16)[:16] + calling.ljust(16)[:16] + bytes(32)
            + item(0x10, b"1.2.840.10008.3.1.1.1") + context + user)
    return struct.pack(">BBL", 1, 0, len(body)) + body


def storescu(port: int, files: list[Path]) -> subprocess.CompletedProcess:
    require_tool("storescu")
    return subprocess.run(["storescu", "-aec", "EGFR_NODE", "-aet", "PACS", "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=60, env=DCMTK_ENV)


def echoscu(port: int) -> int:
    return subprocess.run(["echoscu", "-aec", "EGFR_NODE", "127.0.0.1", str(port)], capture_output=True,
                          timeout=30, env=DCMTK_ENV).returncode


# --- no slot without an association -------------------------------------------------------


def test_half_sent_requests_and_silent_connections_do_not_lock_out_pacs(node_process: NodeProcess, tmp_path: Path) -> None:
    """10 half-sent A-ASSOCIATE-RQs and 200 silent connections held open while DCMTK keeps
    sending: every legitimate C-ECHO and C-STORE succeeds; the node drops the attackers by
    itself within the ACSE timeout; its threads and open files return to their baseline."""
    files = write_all(mr_series(30, rows=128, columns=128), tmp_path / "series")
    assert storescu(node_process.port, files[:2]).returncode == 0  # warm-up: pools and threads in place
    baseline = settled(lambda: (node_process.threads(), node_process.open_files()))

    attackers = []
    for i in range(10):  # the 6-byte header of an A-ASSOCIATE-RQ declaring 1000 bytes, then 10 of them
        sock = connect_from(f"127.0.2.{i + 1}", node_process.port)
        sock.sendall(struct.pack(">BBL", 1, 0, 1000) + bytes(10))
        attackers.append(sock)
    for i in range(200):  # silent: half from one address, half from 100 addresses
        source = "127.0.3.1" if i < 100 else f"127.0.4.{i - 99}"
        try:
            attackers.append(connect_from(source, node_process.port))
        except OSError:
            pass  # the listen backlog is full: the kernel refuses, the node does not notice
    began = time.monotonic()
    for round_files in (files[2:12], files[12:22], files[22:30]):
        assert echoscu(node_process.port) == 0
        done = storescu(node_process.port, round_files)
        assert done.returncode == 0 and "Failed" not in done.stderr, done.stderr[-500:]
    assert time.monotonic() - began < ACSE_TIMEOUT * 3, "legitimate peer was held up"
    assert len(node_process.archived()) == 30

    # the node drops every attacker itself (no A-ASSOCIATE-RQ within the ACSE timeout)
    wait_for(lambda: node_process.threads() <= baseline[0] and node_process.open_files() <= baseline[1],
             ACSE_TIMEOUT + 3, f"threads and open files back to {baseline}")
    assert all(closed_by_peer(sock, 0.5) for sock in attackers)
    for sock in attackers:
        sock.close()
    log = node_process.log()
    assert "Traceback" not in log
    assert log.count("\n") < 400  # 210 attackers: about one line per source


def test_a_peer_behind_the_attackers_address_still_gets_in(node_process: NodeProcess) -> None:
    """10 half-sent A-ASSOCIATE-RQs from 127.0.0.1 fill its negotiating budget (8): a C-ECHO
    and a C-STORE from 127.0.0.1 (DCMTK, sending the whole request at once) still succeed; the
    oldest stalled connections are the ones dropped."""
    before = settled(node_process.open_files)
    attackers = []
    for _ in range(10):
        sock = connect_from("127.0.0.1", node_process.port)
        sock.sendall(struct.pack(">BBL", 1, 0, 1000) + bytes(10))
        attackers.append(sock)
    began = time.monotonic()
    wait_for(lambda: node_process.open_files() >= before + 8, 5, "the node to hold the connections")
    assert echoscu(node_process.port) == 0
    # the three oldest were dropped (for the 9th, the 10th and the C-ECHO), long before the ACSE timeout
    assert all(closed_by_peer(sock, 0.2) for sock in attackers[:3])
    assert time.monotonic() - began < ACSE_TIMEOUT, "the peer waited for the attackers to time out"
    assert not closed_by_peer(attackers[-1], 0.05)  # the newest are still held (until their ACSE timeout)
    for sock in attackers:
        sock.close()
    assert "dropped: oldest of too many connections negotiating from this address" in node_process.log()


def test_declared_pdu_lengths_and_unknown_pdus_are_refused_at_once(node_process: NodeProcess) -> None:
    """A PDU header declaring 300 MB, a PDU of type 0x08, random bytes, a P-DATA before any
    association: each connection is closed at once, nothing is read into memory."""
    before = node_process.memory_kib("VmRSS")
    probes = [
        struct.pack(">BBL", 1, 0, 300_000_000) + bytes(65536),  # A-ASSOCIATE-RQ of 300 MB
        struct.pack(">BBL", 8, 0, 100) + bytes(100),  # no such PDU type
        bytes(range(256)) * 4,  # noise
        struct.pack(">BBL", 4, 0, 10) + bytes(10),  # P-DATA-TF before association
    ]
    for i, probe in enumerate(probes):
        sock = connect_from(f"127.0.5.{i + 1}", node_process.port)
        began = time.monotonic()
        try:
            sock.sendall(probe)
        except OSError:
            pass
        assert closed_by_peer(sock, 2.0), probe[:8]
        assert time.monotonic() - began < 1.0, probe[:8]
        sock.close()
    # after association: a P-DATA-TF longer than the maximum PDU size the node announced
    sock = connect_from("127.0.5.9", node_process.port)
    sock.sendall(associate_rq())
    assert sock.recv(6)[:1] == b"\x02"  # A-ASSOCIATE-AC
    sock.recv(65536)
    sock.sendall(struct.pack(">BBL", 4, 0, 262144 + 7) + bytes(1024))
    assert closed_by_peer(sock, 2.0)
    sock.close()
    assert node_process.memory_kib("VmRSS") - before < 20_000
    assert echoscu(node_process.port) == 0
    assert "Traceback" not in node_process.log()


def test_association_slots_are_given_at_association_and_capped_per_calling_ae(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "node", extra="max_associations = 3\nmax_associations_per_calling_ae = 2\n")
    try:
        held = []
        for _ in range(2):  # PACS holds its two
            sock = connect_from("127.0.0.1", node.port)
            sock.sendall(associate_rq(b"PACS"))
            assert sock.recv(6)[:1] == b"\x02"
            held.append(sock)
        sock = connect_from("127.0.0.1", node.port)
        sock.sendall(associate_rq(b"PACS"))
        reply = sock.recv(10)
        assert reply[:1] == b"\x03" and reply[7:10] == b"\x02\x03\x02"  # A-ASSOCIATE-RJ: transient, local limit
        sock.close()
        other = connect_from("127.0.0.1", node.port)  # another AE takes the last slot
        other.sendall(associate_rq(b"MODALITY"))
        assert other.recv(6)[:1] == b"\x02"
        held.append(other)
        sock = connect_from("127.0.0.1", node.port)
        sock.sendall(associate_rq(b"OTHER"))
        assert sock.recv(10)[:1] == b"\x03"  # all three slots in use
        sock.close()
        for s in held:
            s.close()
        wait_for(lambda: echoscu(node.port) == 0, 5, "a C-ECHO to succeed")
    finally:
        node.kill()


def test_sigterm_finishes_within_the_network_timeout_whatever_the_peers_do(node_process: NodeProcess) -> None:
    held = []
    for i in range(5):  # half-sent requests
        sock = connect_from(f"127.0.6.{i + 1}", node_process.port)
        sock.sendall(struct.pack(">BBL", 1, 0, 1000))
        held.append(sock)
    idle = connect_from("127.0.0.1", node_process.port)  # an association that never ends
    idle.sendall(associate_rq())
    assert idle.recv(6)[:1] == b"\x02"
    held.append(idle)
    # a P-DATA-TF declaring 200 kB of which 10 arrive
    stalled = connect_from("127.0.0.1", node_process.port)
    stalled.sendall(associate_rq())
    assert stalled.recv(6)[:1] == b"\x02"
    stalled.sendall(struct.pack(">BBL", 4, 0, 200_000) + bytes(10))
    held.append(stalled)
    seconds = node_process.stop()
    assert node_process.process.returncode == 0
    assert seconds < NETWORK_TIMEOUT + 5, seconds
    for sock in held:
        sock.close()


# --- bounded memory ------------------------------------------------------------------------


def _large_mr(path: Path, pixel_bytes: int) -> str:
    """An MR instance with ``pixel_bytes`` of Pixel Data, written without holding it in memory."""
    (image,) = mr_series(1)
    side = int((pixel_bytes // 2) ** 0.5)
    image.Rows = image.Columns = side
    del image.PixelData
    image.save_as(path, enforce_file_format=True)
    length = side * side * 2
    chunk = bytes(1 << 22)
    with path.open("ab") as f:
        f.write(b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<L", length))
        left = length
        while left:
            f.write(chunk[: min(left, len(chunk))])
            left -= min(left, len(chunk))
    return str(image.SOPInstanceUID)


def test_a_200_mb_instance_grows_the_node_by_less_than_100_mb(node_process: NodeProcess, tmp_path: Path,
                                                               send_files_raw) -> None:
    path = tmp_path / "large.dcm"
    uid = _large_mr(path, 200 * 10**6)
    assert storescu(node_process.port, write_all(mr_series(1), tmp_path / "warm")).returncode == 0
    before = node_process.memory_kib("VmHWM")
    with association(node_process.port) as assoc:
        assert assoc.send_c_store(path).Status == 0
    grown_mb = (node_process.memory_kib("VmHWM") - before) / 1024
    assert grown_mb < 100, f"node grew by {grown_mb:.0f} MiB for a 200 MB instance"
    (archived,) = [p for p in node_process.archived() if p.stem == uid]
    assert archived.stat().st_size > 200 * 10**6


# --- logs that cannot be forged -------------------------------------------------------------


def test_peer_strings_cannot_forge_log_lines_and_a_flood_is_summarised(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "node", extra='allowed_calling_aets = ["PACS", "PROBE"]\n')
    try:
        forged = b"X\n2030 FORGED"
        for calling in (b"EV\x1b[2JIL", b"BELL\x07\x7f\x00X"):  # a terminal escape, BEL, DEL, NUL
            sock = connect_from("127.0.7.2", node.port)
            sock.sendall(associate_rq(calling=calling))
            sock.recv(64)
            sock.close()
        for _ in range(100):  # a flood of rejected associations from one address
            sock = connect_from("127.0.7.1", node.port)
            sock.sendall(associate_rq(calling=forged[:16]))
            sock.recv(64)
            sock.close()
        assert echoscu(node.port) != 0  # not an allowed calling AE
        def logged() -> str:
            text = node.log()
            return text if "127.0.7.1" in text and "EV\\x1b" in text else ""

        log = wait_for(logged, 10, "the refusals in the log")
        assert not [ch for ch in log if ord(ch) < 0x20 and ch not in "\n\t" or ord(ch) == 0x7F], log
        assert "EV\\x1b[2JIL" in log, log  # escaped, still readable
        assert not [line for line in log.splitlines() if line.startswith("2030") or "FORGED" in line and "\\n" not in line]
        assert len([line for line in log.splitlines() if "127.0.7.1" in line]) <= 3
        assert len(log.splitlines()) < 24, log  # 100 refusals: a handful of lines
    finally:
        node.kill()


# --- several receive processes on one port --------------------------------------------------


def test_receive_processes_share_the_port_and_stop_together(tmp_path: Path) -> None:
    """The kernel spreads associations over the processes; /metrics sums them all."""
    metrics_port = free_port()
    node = NodeProcess(tmp_path / "node", processes=2,
                       sections=f"[monitoring]\nenabled = true\nport = {metrics_port}\n")
    try:
        children = lambda: [int(p) for p in Path(f"/proc/{node.pid}/task/{node.pid}/children").read_text().split()]  # noqa: E731
        wait_for(lambda: len(children()) >= 1, 10, "the receive process")
        wait_for(lambda: node.log().count("listening as EGFR_NODE") == 2, 30, "both processes to listen")
        files = write_all(mr_series(40, rows=64, columns=64), tmp_path / "series")
        procs = [subprocess.Popen(["storescu", "-aec", "EGFR_NODE", "127.0.0.1", str(node.port), *map(str, files[i::8])],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=DCMTK_ENV) for i in range(8)]
        assert all(p.wait(60) == 0 for p in procs)
        assert len(node.archived()) == 40
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as rsp:
            page = rsp.read().decode()
        assert 'egfr_node_instances_total{status="0x0000"} 40.0' in page, page  # 8 associations, both processes
        assert node.log().count("listening as EGFR_NODE") == 2 and "Error" not in node.log(), node.log()
        receivers = children()
        seconds = node.stop()
        assert node.process.returncode == 0 and seconds < NETWORK_TIMEOUT + 5
        wait_for(lambda: all(not Path(f"/proc/{pid}").exists() for pid in receivers), 5, "the receive processes to end")
    finally:
        node.kill()


def test_a_silent_tls_client_does_not_stop_other_tls_peers(config, runtime, tmp_path: Path) -> None:
    """pynetdicom runs the TLS handshake in the accept loop with no timeout; the node runs it in
    the connection's thread under the ACSE timeout."""
    from tests.node.tls_certs import make_tls_files

    certs = make_tls_files(tmp_path / "certs")
    cfg = replace(config, node=replace(config.node, acse_timeout_seconds=ACSE_TIMEOUT),
                  tls=replace(config.tls, enabled=True, port=0, certificate=str(certs.server_cert),
                              private_key=str(certs.server_key), ca_certificates=str(certs.ca_cert)))
    node = DicomNode(cfg, runtime.archive, runtime.sessions)
    node.start()
    try:
        silent = [connect_from(f"127.0.8.{i + 1}", node.tls_port) for i in range(3)]  # no ClientHello
        done = subprocess.run(
            ["echoscu", "+tls", str(certs.client_key), str(certs.client_cert), "+cf", str(certs.ca_cert),
             "-aec", "EGFR_NODE", "127.0.0.1", str(node.tls_port)],
            capture_output=True, text=True, timeout=20, env=DCMTK_ENV)
        assert done.returncode == 0, done.stderr
        assert all(closed_by_peer(sock, ACSE_TIMEOUT + 2) for sock in silent)
        for sock in silent:
            sock.close()
    finally:
        node.stop()
