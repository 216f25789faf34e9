"""Benchmark: the node's receive path against DCMTK's storescp, Orthanc and a pynetdicom SCP
that stores nothing, on the same files with the same sender, in one run.

    .venv/bin/python tests/bench_ingest.py [--count 300] [--repeat 1]
    .venv/bin/python tests/bench_ingest.py --console [--repeat 3]   # serve with and without the console
    .venv/bin/python tests/bench_ingest.py --stow [--repeat 3]      # STOW-RS beside C-STORE, same instances

Sends the same MR slices (256x256, 16-bit, about 129 KiB each) with DCMTK storescu over 1 and
4 parallel associations to: (1) DCMTK storescp writing files (no fsync); (2) a private
Orthanc (Debian package, started here on loopback ports; it fsyncs every file by default, the
like-for-like durable anchor); (3) a pynetdicom SCP whose handler stores nothing (the ceiling
of any pynetdicom receiver); (4) egfr-node (archive fsynced and SQLite record committed
before the success status) with 1, 2 and 4 receive processes (``node.receive_processes``,
SO_REUSEPORT). storescu and the DCMTK-based receivers run with TCP_NODELAY=1
(../shared/NOTES.md: without it every C-STORE waits ~44 ms). Prints instances/s for each and
the node's ratio to the store-nothing ceiling. Not a test: figures only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.machine import describe  # noqa: E402

from tests.dicom_factory import mr_series, write_all  # noqa: E402
from tests.node.process import cli, free_port, start, wait_until_listening, write_config  # noqa: E402

ENV = {**os.environ, "TCP_NODELAY": "1"}


def _process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) of process ``pid`` and every process below it,
    from /proc (a process that ended since is not counted: measure while the receiver runs)."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended meanwhile
        child = int(stat.parent.name)
        parents[child] = int(fields[1])
        cpu[child] = (int(fields[11]) + int(fields[12])) / tick
    tree, frontier = {pid}, [pid]
    while frontier:
        below = [child for child, parent in parents.items() if parent in frontier and child not in tree]
        tree.update(below)
        frontier = below
    return sum(cpu.get(p, 0.0) for p in tree)


#: CPU seconds of the last :func:`send`: the receiver's (process and children, or this
#: process's for an in-process receiver) and the senders' (the storescu processes).
LAST_CPU: dict[str, float] = {"receiver": 0.0, "senders": 0.0}


def send(port: int, aet: str, files: list[Path], associations: int, receiver: int | None = None) -> float:
    """Seconds for storescu to send all files over ``associations`` parallel associations.
    ``receiver``: the receiving process's pid, for :data:`LAST_CPU` (None: this process)."""
    import resource

    chunks = [files[i::associations] for i in range(associations)]
    receiver_cpu = _process_cpu(receiver) if receiver else time.process_time()
    senders_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
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
    seconds = time.perf_counter() - begin
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    LAST_CPU["receiver"] = (_process_cpu(receiver) if receiver else time.process_time()) - receiver_cpu
    LAST_CPU["senders"] = after.ru_utime + after.ru_stime - senders_cpu.ru_utime - senders_cpu.ru_stime
    return seconds


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
        seconds = send(port, "STORESCP", files, associations, proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    assert len(list(out.iterdir())) == len(files)
    return seconds


def bench_pynetdicom_floor(files: list[Path], work: Path, associations: int, spool: bool = False) -> float:
    """pynetdicom with a C-STORE handler that stores nothing: the ceiling of any pynetdicom SCP.
    ``spool``: pynetdicom writes each dataset to a file as it arrives (its chunked receive, as
    the node does; the handler deletes it) instead of keeping it in memory."""
    import socket as _socket

    from pynetdicom import AE, _config, evt

    from dicom_node.receive.scp import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES

    _config.LOG_HANDLER_LEVEL = "none"
    chunked = _config.STORE_RECV_CHUNKED_DATASET
    _config.STORE_RECV_CHUNKED_DATASET = spool  # importing dicom_node.receive.scp turned it on
    ae = AE("FLOOR")
    ae.maximum_pdu_size = 262144
    for sop_class in STORAGE_SOP_CLASSES:
        ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))

    def nodelay(event: evt.Event) -> None:
        event.assoc.dul.socket.socket.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)

    def store_nothing(event: evt.Event) -> int:
        if spool:
            Path(event.dataset_path).unlink()
        return 0x0000

    server = ae.start_server(("127.0.0.1", 0), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, store_nothing), (evt.EVT_CONN_OPEN, nodelay)])
    # Spool into a folder of the work directory, as the node spools into its archive's
    # .incoming: creating a file directly in a sticky, world-writable /tmp measured 1.2 ms
    # against 0.05 ms in a folder below it on the machine this was built on.
    spool_dir = work / "floor-spool"
    spool_dir.mkdir(parents=True, exist_ok=True)
    tempdir, tempfile.tempdir = tempfile.tempdir, str(spool_dir)
    try:
        return send(server.server_address[1], "FLOOR", files, associations)
    finally:
        tempfile.tempdir = tempdir
        server.shutdown()
        _config.STORE_RECV_CHUNKED_DATASET = chunked


def bench_orthanc(files: list[Path], work: Path, associations: int) -> float:
    """A private Orthanc on loopback ports (default SyncStorageArea: every file fsynced)."""
    import json

    orthanc = shutil.which("Orthanc")
    if orthanc is None:
        raise SystemExit("Orthanc not found: apt-get install orthanc")
    port, http_port = free_port(), free_port()
    folder = work / f"orthanc-{associations}"
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "orthanc.json"
    config.write_text(json.dumps({
        "Name": "bench", "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "index"),
        "DicomAet": "ORTHANC", "DicomPort": port, "HttpPort": http_port, "RemoteAccessAllowed": False,
        "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True, "DicomAlwaysAllowEcho": True,
        "Plugins": [], "DicomThreadsCount": 4, "HttpServerEnabled": True,
    }))
    proc = subprocess.Popen([orthanc, str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        for _ in range(200):
            if subprocess.run(["echoscu", "-aec", "ORTHANC", "127.0.0.1", str(port)], capture_output=True, env=ENV).returncode == 0:
                break
            time.sleep(0.05)
        return send(port, "ORTHANC", files, associations, proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def bench_node(files: list[Path], work: Path, associations: int, fsync: bool = True, processes: int = 1) -> float:
    port = free_port()
    folder = work / f"node-fsync-{fsync}-p{processes}-a{associations}"
    config = write_config(folder, port, stable=3600, receive_processes=processes)
    config.write_text(config.read_text() + f"\n[database]\nurl = \"sqlite:///{folder / 'node.sqlite3'}\"\n")
    text = config.read_text().replace("free_space_reserve_mb = 0", f"free_space_reserve_mb = 0\nfsync = {str(fsync).lower()}")
    config.write_text(text)
    assert cli(config, "db", "upgrade").returncode == 0
    proc = start(config, "scp")
    try:
        wait_until_listening(port, proc)
        if processes > 1:
            time.sleep(3 + processes)  # the receive processes start (spawned) and listen
        seconds = send(port, "EGFR_NODE", files, associations, proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert len(list((folder / "data" / "archive").rglob("*.dcm"))) == len(files)
    return seconds


def _poll_console(url: str, password: str, stop: threading.Event, every: float, served: list[int]) -> None:
    """What an open queue page does: its rows and health strip every ``every`` seconds."""
    import requests

    session = requests.Session()
    session.post(url + "/api/session", json={"user": "bench", "password": password}, timeout=30).raise_for_status()
    while not stop.wait(every):
        answer = session.get(url + "/queue/rows", timeout=30)
        served.append(answer.status_code)


def bench_serve(files: list[Path], work: Path, console: bool, refresh: float = 1.0) -> tuple[float, int]:
    """``egfr-node serve`` (SCP + worker) receiving over one association, with the console
    enabled and a queue page refreshing every ``refresh`` s, or without it. (seconds, pages served)."""
    port, web_port = free_port(), free_port()
    folder = work / f"serve-console-{console}"
    config = write_config(folder, port, stable=3600)
    config.write_text(config.read_text() + f"\n[web]\nenabled = {str(console).lower()}\nport = {web_port}\n")
    assert cli(config, "db", "upgrade").returncode == 0
    password = "bench password"
    if console:
        added = subprocess.run([sys.executable, "-m", "dicom_node.cli", "--config", str(config), "web", "add-user",
                                "bench", "--password-stdin"], input=password + "\n", capture_output=True, text=True)
        assert added.returncode == 0, added.stderr
    proc = start(config, "serve")
    stop, served = threading.Event(), []
    poller = None
    try:
        wait_until_listening(port, proc)
        if console:
            import requests

            deadline = time.monotonic() + 60
            while True:
                try:
                    requests.get(f"http://127.0.0.1:{web_port}/login", timeout=2)
                    break
                except requests.ConnectionError:
                    assert time.monotonic() < deadline, "the console did not start"
                    time.sleep(0.3)
            poller = threading.Thread(target=_poll_console, args=(f"http://127.0.0.1:{web_port}", password, stop,
                                                                   refresh, served), daemon=True)
            poller.start()
            time.sleep(2 * refresh)
        seconds = send(port, "EGFR_NODE", files, 1)
    finally:
        stop.set()
        if poller:
            poller.join(30)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert all(code == 200 for code in served), served
    shutil.rmtree(folder, ignore_errors=True)
    return seconds, len(served)


def console_ab(files: list[Path], work: Path, repeat: int) -> None:
    """``serve`` without and with the console, alternated ``repeat`` times; best of each."""
    best = {False: float("inf"), True: float("inf")}
    for i in range(repeat):
        for console in (False, True):
            seconds, pages = bench_serve(files, work / f"r{i}", console)
            best[console] = min(best[console], seconds)
            print(f"  run {i + 1}: serve {'with the console, queue page refreshing every 1 s' if console else 'without the console':<52}"
                  f" {len(files) / seconds:8.1f} instances/s  ({seconds:.2f} s{f', {pages} pages served' if console else ''})",
                  flush=True)
    without, with_console = len(files) / best[False], len(files) / best[True]
    print(f"1 association, best of {repeat}: without the console {without:.1f}, with it {with_console:.1f} instances/s: "
          f"{(with_console / without - 1) * 100:+.1f} %")


#: (module or module:class, function, stage, depth) for ``--stages``, in the order of the receive path.
#: The DUL thread reads, spools and fsyncs a C-STORE; the association thread checks, archives,
#: records and answers it. A stage inside another (depth 1) is shown indented under it.
_STAGES = [
    ("pynetdicom.dimse:DIMSEServiceProvider", "receive_primitive", "DUL: P-DATA to a DIMSE message, spooled, fsynced", 0),
    ("dicom_node.receive._pynetdicom.encodings", "encoded_file_meta", "spool: file meta (memoised encoding)", 1),
    ("dicom_node.receive._pynetdicom.spool:SpoolFile", "write", "spool: write and hash the fragments", 1),
    ("dicom_node.receive._pynetdicom.spool:SpoolFile", "sync", "spool: fsync (the handler checks meanwhile)", 1),
    ("dicom_node.receive.server:DicomNode", "_on_store", "C-STORE handler, whole", 0),
    ("dicom_node.store.accept", "check_part10_file", "dataset walk (whole? Pixel Data length?)", 1),
    ("dicom_node.store.accept", "dcmread", "header read by pydicom (masks only)", 1),
    ("dicom_node.store.accept", "read_header", "header fields: converted and checked", 1),
    ("dicom_node.store.archive:Archive", "store_file", "archive: wait for that fsync, link, fsync folder", 1),
    ("dicom_node.store.intake", "record_instance", "database: record + commit (SQLite, FULL)", 1),
    ("dicom_node.receive._pynetdicom.encodings:NodeDIMSE", "send_msg", "C-STORE-RSP: encode and queue", 0),
]


def stage_profile(files: list[Path], work: Path, associations: int = 1) -> dict[str, float]:
    """Where the node's time goes, stage by stage: each stage's function wrapped to add up its
    wall time and its thread's CPU time (``time.thread_time``) per instance, while storescu
    sends ``files`` to an in-process SCP (fsync on, SQLite). Wrapping costs a few
    microseconds a call, unlike a sampling thread, which takes the GIL from the node.
    Returns each stage's calls per instance (``tests/node/test_bench_stages.py`` checks the
    table still names what the node runs)."""
    import collections
    import functools
    import importlib
    import resource
    import threading

    from db.migrate import upgrade
    from dicom_node.store.open import open_runtime
    from dicom_node.receive.server import DicomNode
    from tests.conftest import make_config

    wall: collections.Counter[str] = collections.Counter()
    cpu: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()
    counting = threading.Lock()  # the DUL and association threads (of several associations) add up
    targets = []  # every function resolved before any is wrapped: a stale name wraps nothing
    for target, name, label, _ in _STAGES:
        module, _, cls = target.partition(":")
        owner = getattr(importlib.import_module(module), cls) if cls else importlib.import_module(module)
        targets.append((owner, name, label, owner.__dict__[name] if cls else getattr(owner, name)))

    def timed_stage(original, label):  # type: ignore[no-untyped-def]
        @functools.wraps(original)
        def timed(*args, **kwargs):  # type: ignore[no-untyped-def]
            w, c = time.perf_counter(), time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                w, c = time.perf_counter() - w, time.thread_time() - c
                with counting:
                    wall[label] += w
                    cpu[label] += c
                    calls[label] += 1
        return timed

    config = make_config(work / "stages")
    upgrade(config.database_url)
    runtime = open_runtime(config)
    try:
        for owner, name, label, original in targets:
            setattr(owner, name, timed_stage(original, label))
        node = DicomNode(config, runtime.archive, runtime.sessions)
        node.start()
        before, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        try:
            seconds = send(node.port, "EGFR_NODE", files, associations)
        finally:
            after, children_after = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
            node.stop()
    finally:
        runtime.close()
        for owner, name, _, original in targets:
            setattr(owner, name, original)
    n = len(files)
    print(f"stages, {associations} association(s), in-process node: {n / seconds:.1f} instances/s, "
          f"{seconds / n * 1e3:.2f} ms wall each")
    print(f"  node process CPU per instance: {(after.ru_utime - before.ru_utime) / n * 1e3:.2f} ms user, "
          f"{(after.ru_stime - before.ru_stime) / n * 1e3:.2f} ms system; storescu "
          f"{(children_after.ru_utime + children_after.ru_stime - children.ru_utime - children.ru_stime) / n * 1e3:.2f} ms")
    print(f"  {'stage (per instance)':<50} {'calls':>5} {'wall ms':>8} {'CPU ms':>7}")
    for _, _, label, depth in _STAGES:
        print(f"  {'  ' * depth + label:<50} {calls[label] / n:5.1f} {wall[label] / n * 1e3:8.3f} {cpu[label] / n * 1e3:7.3f}")
    return {label: calls[label] / n for _, _, label, _ in _STAGES}


def _cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bounds(files: list[Path], work: Path) -> None:
    """What bounds one association: wall and this process's CPU per instance for the
    store-nothing pynetdicom SCP (datasets in memory, and spooled to disk as the node receives
    them) and an in-process node (1) as configured, (2) without fsync,
    (3) without fsync and with the database record moved to a background thread (a what-if:
    not durable, never a configuration). When (3) is still far from the store-nothing SCP, the
    gap is CPU in one Python process (pynetdicom's per-instance work, spooling, the checks),
    not durability."""
    import dataclasses
    import queue
    import threading

    import dicom_node.store.intake as intake
    from db.ingest import RecordOutcome
    from db.migrate import upgrade
    from dicom_node.store.open import open_runtime
    from dicom_node.receive.server import DicomNode
    from tests.conftest import make_config

    def measure(label: str, run) -> None:  # type: ignore[no-untyped-def]
        cpu = _cpu_seconds()
        seconds = run()
        cpu = _cpu_seconds() - cpu
        print(f"  {label:<58} {len(files) / seconds:7.1f} instances/s  {seconds / len(files) * 1e3:5.2f} ms wall  "
              f"{cpu / len(files) * 1e3:5.2f} ms CPU per instance", flush=True)

    def node_run(name: str, fsync: bool, deferred: bool) -> float:
        config = make_config(work / name)
        config = dataclasses.replace(config, storage=dataclasses.replace(config.storage, fsync=fsync))
        upgrade(config.database_url)
        runtime = open_runtime(config)
        real = intake.record_instance
        pending: queue.Queue = queue.Queue()
        if deferred:
            def drain() -> None:
                while (item := pending.get()) is not None:
                    real(*item)
            drainer = threading.Thread(target=drain, daemon=True)
            drainer.start()
            intake.record_instance = lambda sessions, record: (pending.put((sessions, record)), RecordOutcome.NEW)[1]
        node = DicomNode(config, runtime.archive, runtime.sessions)
        node.start()
        try:
            return send(node.port, "EGFR_NODE", files, 1)
        finally:
            intake.record_instance = real
            if deferred:
                pending.put(None)
                drainer.join()
            node.stop()
            runtime.close()

    def durability_chain() -> float:
        """The node's durable steps alone, per instance and in order (no DICOM, no network):
        write the file, fsync it, link it into its series folder, fsync the folder, commit its
        record (SQLite, synchronous=FULL). Every one must finish before the success status."""
        from pydicom import dcmread

        from dicom_node.store.intake import record_of
        from dicom_node.store.header import read_header

        config = make_config(work / "chain")
        upgrade(config.database_url)
        runtime = open_runtime(config)
        headers = [read_header(dcmread(f, stop_before_pixels=True)) for f in files]
        payload = [f.read_bytes() for f in files]
        begin = time.perf_counter()
        try:
            for header, data in zip(headers, payload):
                relative = runtime.archive.relative_path(header.study_uid, header.series_uid, header.sop_instance_uid)
                spool = runtime.archive.incoming / f"{header.sop_instance_uid}.tmp"
                spool.write_bytes(data)
                stored = runtime.archive.store_file(relative, spool, sha256="0" * 64)
                spool.unlink()
                intake.record_instance(runtime.sessions, dataclasses.replace(
                    record_of(header, relative, "1.2.840.10008.1.2.1", len(data)), sha256=stored.sha256))
            return time.perf_counter() - begin
        finally:
            runtime.close()

    print("bounds, 1 association, in-process receivers (this process's CPU includes its idle polling):")
    measure("pynetdicom, handler stores nothing", lambda: bench_pynetdicom_floor(files, work, 1))
    measure("pynetdicom, stores nothing, datasets spooled to disk", lambda: bench_pynetdicom_floor(files, work, 1, True))
    measure("egfr-node (fsync, record committed before the status)", lambda: node_run("b1", True, False))
    measure("egfr-node without fsync (what-if)", lambda: node_run("b2", False, False))
    measure("egfr-node without fsync, record after the status (what-if)", lambda: node_run("b3", False, True))
    measure("durability alone: write, fsync, link, fsync folder, commit", durability_chain)


def _stow_body(files: list[Path], boundary: str) -> bytes:
    parts = [b"--%s\r\nContent-Type: application/dicom\r\n\r\n%s\r\n" % (boundary.encode(), f.read_bytes()) for f in files]
    return b"".join(parts) + b"--%s--\r\n" % boundary.encode()


def bench_stow(files: list[Path], work: Path, requests_at_once: int, orthanc: bool = False) -> float:
    """Seconds to STOW-RS all files in ``requests_at_once`` parallel requests (each one
    multipart body, built before the clock starts) to egfr-node (``egfr-node web`` with
    ``[web] stow_enabled``, fsync and the SQLite record before the response), or to Orthanc's
    DICOMweb plugin."""
    import requests

    boundary = "bench-boundary"
    bodies = [_stow_body(files[i::requests_at_once], boundary) for i in range(requests_at_once)]
    headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
               "Accept": "application/dicom+json"}
    folder = work / f"stow-{'orthanc' if orthanc else 'node'}-{requests_at_once}"
    folder.mkdir(parents=True, exist_ok=True)
    if orthanc:
        from tests.node.peers import Orthanc

        server = Orthanc(folder, dicomweb=True)
        url, stop = f"{server.dicomweb_url}/studies", server.stop
    else:
        port = free_port()
        config = write_config(folder, port, stable=3600)
        config.write_text(config.read_text() + f"\n[web]\nport = {port}\nstow_enabled = true\n")
        assert cli(config, "db", "upgrade").returncode == 0
        token = cli(config, "web", "add-sender", "bench").stdout.split()[0]
        headers["Authorization"] = f"Bearer {token}"
        log = open(folder / "web.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "dicom_node.cli", "--config", str(config), "web"],
                                stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[1])
        url = f"http://127.0.0.1:{port}/dicomweb/studies"
        for _ in range(300):
            try:
                requests.get(f"http://127.0.0.1:{port}/login", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)

        def stop() -> None:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
            log.close()
    answers: list[int] = []
    try:
        begin = time.perf_counter()
        threads = [threading.Thread(target=lambda b=b: answers.append(requests.post(url, data=b, headers=headers,
                                                                                  timeout=600).status_code))
                   for b in bodies]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - begin
    finally:
        stop()
    if answers != [200] * requests_at_once:
        raise RuntimeError(f"STOW-RS answered {answers}")
    if not orthanc:
        assert len(list((folder / "data" / "archive").rglob("*.dcm"))) == len(files)
    return seconds


def stow_beside_cstore(files: list[Path], work: Path, repeat: int) -> None:
    """STOW-RS into the node beside C-STORE into it, and Orthanc's STOW-RS, on the same files."""
    runs = [("egfr-node C-STORE (storescu), 1 association", lambda i: bench_node(files, work / f"c1-{i}", 1)),
            ("egfr-node C-STORE (storescu), 4 associations", lambda i: bench_node(files, work / f"c4-{i}", 4)),
            ("egfr-node STOW-RS, 1 request", lambda i: bench_stow(files, work / f"w1-{i}", 1)),
            ("egfr-node STOW-RS, 4 parallel requests", lambda i: bench_stow(files, work / f"w4-{i}", 4)),
            ("Orthanc STOW-RS (DICOMweb plugin), 1 request", lambda i: bench_stow(files, work / f"o1-{i}", 1, True)),
            ("Orthanc STOW-RS (DICOMweb plugin), 4 requests", lambda i: bench_stow(files, work / f"o4-{i}", 4, True))]
    for name, run in runs:
        best = min(run(i) for i in range(repeat))
        print(f"  {name:<48} {len(files) / best:8.1f} instances/s  ({best:.2f} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300, help="MR slices to send (default 300)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per receiver; the best is reported")
    parser.add_argument("--stages", action="store_true", help="only the node's stage-by-stage profile")
    parser.add_argument("--associations", type=int, default=1, help="with --stages: parallel associations (default 1)")
    parser.add_argument("--console", action="store_true",
                        help="only `egfr-node serve` at one association without and with the console open and refreshing")
    parser.add_argument("--stow", action="store_true",
                        help="only STOW-RS into the node beside C-STORE into it (and Orthanc's STOW-RS), same instances")
    parser.add_argument("--bounds", action="store_true",
                        help="only what bounds one association: wall and CPU per instance, with what-if variants")
    args = parser.parse_args(argv)
    for tool in ("storescu", "storescp", "echoscu"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install dcmtk")

    work = Path(tempfile.mkdtemp(prefix="egfr-bench-ingest-"))
    try:
        files = write_all(mr_series(args.count, rows=256, columns=256), work / "study")
        size = sum(f.stat().st_size for f in files) / len(files) / 1024
        print(f"machine: {describe()}, disk under {work}")
        print(f"sending {len(files)} MR slices of {size:.0f} KiB with storescu, TCP_NODELAY=1; best of {args.repeat}")
        if args.stages:
            stage_profile(files, work, args.associations)
            return 0
        if args.bounds:
            bounds(files, work)
            return 0
        if args.console:
            console_ab(files, work, args.repeat)
            return 0
        if args.stow:
            stow_beside_cstore(files, work, args.repeat)
            return 0
        runs: list[tuple[str, int, object]] = []
        for a in (1, 4):
            runs += [
                ("DCMTK storescp (files, no fsync)", a, lambda i, a=a: bench_storescp(files, work / f"s{a}-{i}", a)),
                ("Orthanc (fsync per file)", a, lambda i, a=a: bench_orthanc(files, work / f"o{i}", a)),
                ("pynetdicom, handler stores nothing", a, lambda i, a=a: bench_pynetdicom_floor(files, work, a)),
            ]
            for p in (1, 2, 4):
                runs.append((f"egfr-node, {p} receive process(es)", a,
                             lambda i, a=a, p=p: bench_node(files, work / f"n{i}", a, True, p)))
        results: dict[tuple[str, int], float] = {}
        cpu: dict[tuple[str, int], tuple[float, float]] = {}
        n = len(files)
        print(f"  {'':<49} {'':>8} {'':>12}  {'':>8}  CPU ms per instance: receiver, storescu")
        for name, a, run in runs:
            best = float("inf")
            for i in range(args.repeat):
                (work / f"s{a}-{i}").mkdir(parents=True, exist_ok=True)
                seconds = run(i)  # type: ignore[operator]
                if seconds < best:
                    best, cpu[(name, a)] = seconds, (LAST_CPU["receiver"], LAST_CPU["senders"])
            results[(name, a)] = n / best
            receiver, senders = (c / n * 1e3 for c in cpu[(name, a)])
            print(f"  {a} assoc  {name:<40} {results[(name, a)]:8.1f} instances/s  ({best:.2f} s)  "
                  f"{receiver:6.2f}  {senders:5.2f}", flush=True)
        cores = len(os.sched_getaffinity(0))
        for a in (1, 4):
            floor = results[("pynetdicom, handler stores nothing", a)]
            ratios = ", ".join(f"{p} proc {results[(f'egfr-node, {p} receive process(es)', a)] / floor:.2f}" for p in (1, 2, 4))
            print(f"{a} association(s): egfr-node / store-nothing pynetdicom: {ratios}")
        # What the CPU allows: the cores divided by the CPU one instance costs, receiver and sender together.
        bound = ", ".join(f"{label} {cores / (sum(cpu[(name, 4)]) / n):.0f}/s"
                          for label, name in (("Orthanc", "Orthanc (fsync per file)"),
                                              ("egfr-node 2 proc", "egfr-node, 2 receive process(es)"),
                                              ("egfr-node 4 proc", "egfr-node, 4 receive process(es)")))
        print(f"4 associations, what {cores} cores allow at the CPU each instance cost (receiver + storescu): {bound}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
