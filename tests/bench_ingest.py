"""Benchmark: the node's receive path against DCMTK's storescp, same files, same sender.

    .venv/bin/python tests/bench_ingest.py [--count 300] [--associations 1]

Sends the same MR slices (256x256, 16-bit, about 129 KiB each) with DCMTK storescu to
(1) DCMTK storescp writing files and (2) egfr-node's SCP (archive with fsync before the
success status, SQLite record), and, for reference, (3) egfr-node with fsync off and (4) a
pynetdicom SCP that stores nothing (the ceiling for any pynetdicom receiver). Both DCMTK
peers run with TCP_NODELAY=1 (../shared/NOTES.md: without it every C-STORE waits ~44 ms).
Prints instances/s for each, the ratio, and the machine it ran on. Not a test: figures only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.machine import describe  # noqa: E402

from tests.dicom_factory import mr_series, write_all  # noqa: E402
from tests.node.process import cli, free_port, start, wait_until_listening, write_config  # noqa: E402

ENV = {**os.environ, "TCP_NODELAY": "1"}


def send(port: int, aet: str, files: list[Path], associations: int) -> float:
    """Seconds for storescu to send all files over ``associations`` parallel associations."""
    chunks = [files[i::associations] for i in range(associations)]
    begin = time.perf_counter()
    procs = [
        subprocess.Popen(["storescu", "-aec", aet, "127.0.0.1", str(port), *map(str, chunk)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
        for chunk in chunks
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        if p.returncode != 0 or "Failed" in err:
            raise RuntimeError(f"storescu failed: {err[-500:]}")
    return time.perf_counter() - begin


def bench_storescp(files: list[Path], work: Path, associations: int) -> float:
    port = free_port()
    out = work / "storescp-out"
    out.mkdir()
    proc = subprocess.Popen(["storescp", "-aet", "STORESCP", "-od", str(out), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        for _ in range(100):
            if subprocess.run(["echoscu", "-aec", "STORESCP", "127.0.0.1", str(port)], capture_output=True, env=ENV).returncode == 0:
                break
            time.sleep(0.05)
        seconds = send(port, "STORESCP", files, associations)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    assert len(list(out.iterdir())) == len(files)
    return seconds


def bench_pynetdicom_floor(files: list[Path], work: Path, associations: int) -> float:
    """pynetdicom with a C-STORE handler that stores nothing: the ceiling of any pynetdicom SCP."""
    import socket as _socket

    from pynetdicom import AE, _config, evt

    from dicom_node.scp import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES

    _config.LOG_HANDLER_LEVEL = "none"
    ae = AE("FLOOR")
    ae.maximum_pdu_size = 262144
    for sop_class in STORAGE_SOP_CLASSES:
        ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))

    def nodelay(event: evt.Event) -> None:
        event.assoc.dul.socket.socket.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)

    server = ae.start_server(("127.0.0.1", 0), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000), (evt.EVT_CONN_OPEN, nodelay)])
    try:
        return send(server.server_address[1], "FLOOR", files, associations)
    finally:
        server.shutdown()


def bench_node(files: list[Path], work: Path, associations: int, fsync: bool) -> float:
    port = free_port()
    folder = work / f"node-fsync-{fsync}"
    config = write_config(folder, port, stable=3600)
    config.write_text(config.read_text() + f"\n[database]\nurl = \"sqlite:///{folder / 'node.sqlite3'}\"\n")
    text = config.read_text().replace("free_space_reserve_mb = 0", f"free_space_reserve_mb = 0\nfsync = {str(fsync).lower()}")
    config.write_text(text)
    assert cli(config, "db", "upgrade").returncode == 0
    proc = start(config, "scp")
    try:
        wait_until_listening(port, proc)
        seconds = send(port, "EGFR_NODE", files, associations)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert len(list((folder / "data" / "archive").rglob("*.dcm"))) == len(files)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300, help="MR slices to send (default 300)")
    parser.add_argument("--associations", type=int, default=1, help="parallel storescu associations (default 1)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per receiver; the best is reported")
    args = parser.parse_args(argv)
    for tool in ("storescu", "storescp", "echoscu"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install dcmtk")

    work = Path(tempfile.mkdtemp(prefix="egfr-bench-ingest-"))
    try:
        files = write_all(mr_series(args.count, rows=256, columns=256), work / "study")
        size = sum(f.stat().st_size for f in files) / len(files) / 1024
        print(f"machine: {describe()}, disk under {work}")
        print(f"sending {len(files)} MR slices of {size:.0f} KiB with storescu, {args.associations} association(s), TCP_NODELAY=1")
        results: dict[str, float] = {}
        runs = [("DCMTK storescp (files, no fsync)", lambda i: bench_storescp(files, work / f"r{i}", args.associations)),
                ("egfr-node (fsync + SQLite before ack)", lambda i: bench_node(files, work / f"n{i}", args.associations, True)),
                ("egfr-node (fsync off, reference only)", lambda i: bench_node(files, work / f"m{i}", args.associations, False)),
                ("pynetdicom, handler stores nothing", lambda i: bench_pynetdicom_floor(files, work, args.associations))]
        for name, run in runs:
            best = float("inf")
            for i in range(args.repeat):
                (work / f"r{i}").mkdir(exist_ok=True)
                best = min(best, run(i))
            results[name] = len(files) / best
            print(f"  {name:<40} {results[name]:8.1f} instances/s  ({best:.2f} s)")
        names = list(results)
        print(f"ratio egfr-node / storescp: {results[names[1]] / results[names[0]]:.2f} (fsync), "
              f"{results[names[2]] / results[names[0]]:.2f} (no fsync); target >= 0.50 with fsync")
        print(f"ratio pynetdicom storing nothing / storescp: {results[names[3]] / results[names[0]]:.2f} "
              f"(the ceiling for any pynetdicom receiver on this machine)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
