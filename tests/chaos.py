"""Chaos: the node under steady C-STORE traffic while everything around it fails in turn
(issue 29 item 8). ``tests/node/test_chaos.py`` runs it briefly in CI's default run; run it
long as a benchmark:

    python tests/chaos.py --minutes 15 --work /tmp/chaos

``egfr-node scp`` and ``egfr-node worker`` run as the admin runs them, each its own process, on
PostgreSQL (a fresh database on the local cluster) and an archive on a tmpfs, with a random
test bundle active and a pynetdicom PACS as the destination. A sender sends phantom studies
(fresh UIDs, MR + SEG, one association each) and, as a PACS does, sends again later what was
refused. In each cycle of ``--cycle`` seconds, one after another: PostgreSQL restarts; the
archive's disk fills to its reserve and drains; the destination goes away and comes back; the
worker is SIGKILLed and restarted. Then the faults stop, the sender finishes what was refused,
and the queue drains. The invariants (exit status 1 when one fails):

- every acknowledged instance is archived and recorded, or was deleted by retention after its
  study was answered;
- every study whose instances were all acknowledged was answered exactly once: the PACS holds
  one SR (one SOP Instance UID) for it;
- nothing deleted was unanswered: every study retention deleted has its SR at the PACS.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydicom import dcmread  # noqa: E402
from sqlalchemy import select  # noqa: E402

from db.engine import make_engine, make_sessionmaker  # noqa: E402
from db.models import Deletion, Instance, Job, JobState  # noqa: E402
from dicom_node.commands.demo import SR_CLASSES, LocalPacs  # noqa: E402
from pipeline.phantom.study import generate_study  # noqa: E402
from tests.conftest import mount_tmpfs  # noqa: E402
from tests.node.bundles import QUICK, write_random_bundle  # noqa: E402
from tests.node.process import cli, free_port, start, stop_processes, wait_until_listening  # noqa: E402
from tests.node.scu import store  # noqa: E402

PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


def _config(folder: Path, data_dir: Path, port: int, pacs_port: int, database_url: str) -> Path:
    path = folder / "egfr-node.toml"
    path.write_text(f"""
[node]
ae_title = "EGFR_NODE"
host = "127.0.0.1"
port = {port}
[storage]
data_dir = "{data_dir}"
free_space_reserve_mb = 4
[database]
url = "{database_url}"
[worker]
study_stable_seconds = 2.0
scan_interval_seconds = 0.5
claim_interval_seconds = 0.5
lease_seconds = 20
max_attempts = 10
[delivery]
max_attempts = 1000
initial_backoff_seconds = 0.5
max_backoff_seconds = 3
scan_interval_seconds = 0.5
timeout_seconds = 5
[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "127.0.0.1"
port = {pacs_port}
[retention]
high_watermark_percent = 60
low_watermark_percent = 40
min_age_hours = 0.0
interval_seconds = 3
""")
    return path


class FlappingPacs:
    """A Storage SCP on a fixed port that can go away and come back; what it received, kept."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.srs: dict[str, set[str]] = defaultdict(set)  # study UID: SR SOP Instance UIDs
        self.peer: LocalPacs | None = None
        self.up()

    def up(self) -> None:
        self.peer = LocalPacs(self.folder / uuid.uuid4().hex[:8], port=self.port)

    def down(self) -> None:
        if self.peer is not None:
            self.peer.stop()  # first: what arrived until it stopped is collected
            self._collect(self.peer)
            self.peer = None

    def _collect(self, peer: LocalPacs) -> None:
        for ds in list(peer.received):
            if str(ds.SOPClassUID) in SR_CLASSES:
                self.srs[str(ds.StudyInstanceUID)].add(str(ds.SOPInstanceUID))

    def answers(self) -> dict[str, set[str]]:
        if self.peer is not None:
            self._collect(self.peer)
        return self.srs


class Sender(threading.Thread):
    """Phantom studies, one association each; refused instances sent again later, as a PACS does."""

    def __init__(self, port: int, work: Path, interval: float) -> None:
        """One new study every ``interval`` seconds (what the worker can answer on this machine)."""
        super().__init__(daemon=True)
        self.port, self.work, self.interval = port, work, interval
        self.stop, self.finish = threading.Event(), threading.Event()
        self.acknowledged: dict[str, tuple[str, float]] = {}  # SOP Instance UID: (study, when)
        self.studies: dict[str, set[str]] = {}  # study UID: its instances
        self.pending: list[Path] = []  # refused, to send again
        self.retry_at = 0.0  # when the refused go again (backing off while they keep being refused)
        self.backoff = 1.0
        self.statuses: Counter = Counter()
        self.errors = 0

    def _send(self, paths: list[Path]) -> None:
        try:
            statuses = store(self.port, [str(p) for p in paths])
        except Exception:  # the association itself failed: all of them again later
            self.errors += 1
            self.pending.extend(paths)
            return
        now = time.time()
        refused_before = len(self.pending)
        for path, status in zip(paths, statuses):
            self.statuses[status] += 1
            if status in (0x0000, 0xB006):
                ds = dcmread(path, stop_before_pixels=True)
                self.acknowledged[str(ds.SOPInstanceUID)] = (str(ds.StudyInstanceUID), now)
            else:
                self.pending.append(path)
        # as a PACS's retry queue: refused again, wait longer (up to 30 s); accepted, retry soon
        self.backoff = min(30.0, self.backoff * 2) if len(self.pending) > refused_before else 1.0
        self.retry_at = time.monotonic() + self.backoff

    def run(self) -> None:
        seed = 5000
        while not self.stop.is_set():
            started = time.monotonic()
            if self.pending and time.monotonic() >= self.retry_at:
                again, self.pending = self.pending, []
                self._send(again)
            if not self.finish.is_set():
                seed += 1
                folder = self.work / "sent" / f"study-{seed}"
                study = generate_study(folder, seed=seed, geometry="axial2d", mask_kind="seg")
                paths = sorted(folder.rglob("*.dcm"))
                self.studies[study.study_uid] = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}
                self._send(paths)
            elif not self.pending:
                return
            self.stop.wait(max(0.2, self.interval - (time.monotonic() - started)))


def _pg_ctl(action: str) -> None:
    version = sorted(Path("/etc/postgresql").iterdir())[0].name
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action], check=True, timeout=120,
                   capture_output=True)


def _drain(proc: subprocess.Popen, log_file: Path) -> None:
    """The process's log into ``log_file`` (a pipe nobody reads would stop it when full)."""
    def copy() -> None:
        with open(log_file, "a") as out:
            for line in proc.stdout:  # type: ignore[union-attr]
                out.write(line)
                out.flush()

    threading.Thread(target=copy, daemon=True).start()


def run(minutes: float, work: Path, *, cycle: float = 60.0, interval: float = 8.0, disk_mb: int = 64,
        log: Any = print) -> dict[str, Any]:
    """Run the chaos for ``minutes`` (faults) and return the summary with its invariants."""
    import psycopg

    work.mkdir(parents=True, exist_ok=True)
    disk = work / "disk"
    mount_tmpfs(disk, f"{disk_mb}m")
    name = f"egfr_chaos_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    pacs = FlappingPacs(work / "pacs")
    port = free_port()
    config = _config(work, disk / "data", port, pacs.port, url)
    processes: dict[str, subprocess.Popen] = {}
    sender: Sender | None = None
    faults: Counter = Counter()
    try:
        assert cli(config, "db", "upgrade").returncode == 0
        activated = cli(config, "models", "activate", str(write_random_bundle(work / "bundle", params=QUICK)), "--force", timeout=120)
        assert activated.returncode == 0, activated.stderr
        processes["scp"], processes["worker"] = start(config, "scp"), start(config, "worker")
        wait_until_listening(port, processes["scp"])
        for role, proc in processes.items():
            _drain(proc, work / f"{role}.log")
        sender = Sender(port, work, interval)
        sender.start()
        began = time.monotonic()
        step = cycle / 4
        while time.monotonic() - began < minutes * 60:
            time.sleep(step / 2)
            _pg_ctl("restart")
            faults["database restarted"] += 1
            log(f"{time.monotonic() - began:6.0f} s: PostgreSQL restarted")
            time.sleep(step / 2)
            filler = disk / "filler"
            free = shutil.disk_usage(disk).free
            with open(filler, "wb") as handle:  # the disk to its reserve: C-STOREs answered 0xA700
                handle.write(b"\0" * max(0, free - 3 * 2**20))
            faults["disk filled"] += 1
            log(f"{time.monotonic() - began:6.0f} s: disk filled")
            time.sleep(step / 2)
            filler.unlink()
            time.sleep(step / 2)
            pacs.down()
            faults["destination away"] += 1
            log(f"{time.monotonic() - began:6.0f} s: destination away")
            time.sleep(step / 2)
            pacs.up()
            time.sleep(step / 4)
            processes["worker"].send_signal(signal.SIGKILL)
            processes["worker"].wait(30)
            processes["worker"] = start(config, "worker")
            _drain(processes["worker"], work / "worker.log")
            faults["worker SIGKILLed"] += 1
            log(f"{time.monotonic() - began:6.0f} s: worker SIGKILLed and restarted")
            time.sleep(step / 4)
        sender.finish.set()  # no new studies; what was refused is sent again until accepted
        sender.join(300)
        engine = make_engine(url)
        sessions = make_sessionmaker(engine)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # the queue drains and every answer reaches the PACS
            with sessions() as session:
                busy = session.scalar(select(Job.id).where(Job.state.in_([JobState.WAITING, JobState.QUEUED,
                                                                          JobState.RUNNING])).limit(1))
            answered = pacs.answers()
            complete = [uid for uid, sops in sender.studies.items() if sops <= set(sender.acknowledged)]
            if busy is None and all(uid in answered for uid in complete):
                break
            time.sleep(2)
        archive_root = disk / "data" / "archive"
        with sessions() as session:
            archived = {uid for uid, path in session.execute(select(Instance.sop_instance_uid, Instance.path)
                                                              .where(Instance.origin == "received"))
                        if (archive_root / path).is_file()}
            deleted = {uid: at for uid, at in session.execute(select(Deletion.study_uid, Deletion.marked_at)
                                                              .where(Deletion.state == "done"))}
            jobs = Counter(state.value for state in session.scalars(select(Job.state)))
        engine.dispose()
        answered = pacs.answers()
        acknowledged = set(sender.acknowledged)
        gone = {uid for uid, (study, _) in sender.acknowledged.items() if uid not in archived and study in deleted}
        lost = acknowledged - archived - gone
        complete = [uid for uid, sops in sender.studies.items() if sops <= acknowledged]
        unanswered = [uid for uid in complete if uid not in answered]
        twice = [uid for uid in complete if len(answered.get(uid, ())) > 1]
        deleted_unanswered = [uid for uid in deleted if uid not in answered]
        summary = {
            "minutes": minutes, "faults": dict(faults), "studies_sent": len(sender.studies),
            "instances_acknowledged": len(acknowledged), "statuses": {hex(k): v for k, v in sender.statuses.items()},
            "associations_failed": sender.errors, "archived": len(acknowledged & archived),
            "deleted_after_answer": len(gone), "lost": len(lost), "complete_studies": len(complete),
            "answered_once": len(complete) - len(unanswered) - len(twice), "unanswered": len(unanswered),
            "answered_twice": len(twice), "deleted_unanswered": len(deleted_unanswered), "jobs": dict(jobs),
            "device": f"CPU, {os.cpu_count()} cores",
        }
        summary["ok"] = not lost and not unanswered and not twice and not deleted_unanswered \
            and len(acknowledged) == summary["archived"] + summary["deleted_after_answer"]
        return summary
    finally:
        if sender is not None:
            sender.stop.set()
        stop_processes(processes.values())
        pacs.down()
        subprocess.run(["umount", "-l", str(disk)], check=False)
        try:
            _pg_ctl("start")  # in case it was left stopped
        except subprocess.CalledProcessError:
            pass
        with psycopg.connect(PG_ADMIN, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=15.0)
    p.add_argument("--cycle", type=float, default=60.0, help="seconds for one round of the four faults")
    p.add_argument("--interval", type=float, default=8.0, help="seconds from one new study to the next")
    p.add_argument("--work", type=Path)
    args = p.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="chaos-"))
    summary = run(args.minutes, work, cycle=args.cycle, interval=args.interval,
                  log=lambda line: print(line, flush=True))
    print(json.dumps(summary, indent=1))
    print(f"chaos {args.minutes:g} min: {summary['instances_acknowledged']} acknowledged = {summary['archived']} archived "
          f"+ {summary['deleted_after_answer']} deleted after their answer; {summary['lost']} lost; "
          f"{summary['complete_studies']} complete studies, {summary['answered_once']} answered once, "
          f"{summary['unanswered']} unanswered, {summary['answered_twice']} twice; {summary['deleted_unanswered']} "
          f"deleted unanswered; faults {summary['faults']}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
