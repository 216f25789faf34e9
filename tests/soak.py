"""Soak: the node for a bounded time under continuous C-STORE traffic, studies completing,
retention deleting, and its worker killed (SIGKILL) and restarted half-way (not a test).

    python tests/soak.py --minutes 10 --work /tmp/soak

``egfr-node scp`` and ``egfr-node worker`` run as the admin runs them, each its own process,
on an archive on a tmpfs of ``--disk-mb`` (so the watermarks act), with a random test bundle
active and a pynetdicom PACS as the destination. A sender thread sends phantom studies (new
UIDs each, MR + SEG) one association each, one every ``--interval`` seconds. Every ``--sample-seconds`` the RSS
and open files of both processes and the jobs' queue latencies are read. At the end, after
the traffic stops and the queue drains: instances acknowledged vs archived vs deleted by
retention (lost must be 0: an instance not archived counts as deleted only when its
study's deletion was marked after the instance was acknowledged), RSS and open files at the start and the end of each quarter, and
the queue latency percentiles (queued -> started, received -> done).
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
from datetime import datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydicom import dcmread  # noqa: E402
from sqlalchemy import select  # noqa: E402

from db.engine import make_engine, make_sessionmaker  # noqa: E402
from db.models import Deletion, Instance, Job, JobState, utcnow  # noqa: E402
from pipeline.phantom.study import generate_study  # noqa: E402
from tests.conftest import mount_tmpfs  # noqa: E402
from tests.node.bundles import write_random_bundle  # noqa: E402
from tests.node.peers import PynetdicomPacs  # noqa: E402
from tests.node.process import cli, free_port, start, stop_processes, wait_until_listening  # noqa: E402
from tests.node.scu import store  # noqa: E402


def _config(folder: Path, data_dir: Path, port: int, pacs_port: int) -> Path:
    path = folder / "egfr-node.toml"
    path.write_text(f"""
[node]
ae_title = "EGFR_NODE"
host = "127.0.0.1"
port = {port}
[storage]
data_dir = "{data_dir}"
free_space_reserve_mb = 1
[database]
url = "sqlite:///{folder / 'egfr-node.sqlite3'}"
[worker]
study_stable_seconds = 2.0
scan_interval_seconds = 0.5
lease_seconds = 60
[retention]
high_watermark_percent = 60
low_watermark_percent = 40
min_age_hours = 0.01
interval_seconds = 5
[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "127.0.0.1"
port = {pacs_port}
""")
    return path


def _proc_figures(pid: int) -> tuple[float, int]:
    """(RSS MiB, open files) of a process."""
    rss = 0.0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


class Sender(threading.Thread):
    """Phantom studies, fresh UIDs each (the generator's seed), one every ``interval`` seconds."""

    def __init__(self, port: int, work: Path, stop: threading.Event, interval: float) -> None:
        super().__init__(daemon=True)
        self.port, self.work, self.stop, self.interval = port, work, stop, interval
        self.acknowledged: dict[str, tuple[str, datetime]] = {}  # SOP Instance UID: (study, when acknowledged)
        self.refused: dict[int, int] = {}
        self.studies = 0

    def run(self) -> None:
        seed = 1000
        while not self.stop.is_set():
            started = time.monotonic()
            seed += 1
            folder = self.work / f"send-{seed}"
            generate_study(folder, seed=seed, geometry="axial2d", mask_kind="seg")
            datasets = [dcmread(p) for p in sorted(folder.rglob("*.dcm"))]
            statuses = store(self.port, datasets)
            when = utcnow()
            for ds, status in zip(datasets, statuses):
                if status == 0:
                    self.acknowledged[str(ds.SOPInstanceUID)] = (str(ds.StudyInstanceUID), when)
                else:
                    self.refused[status] = self.refused.get(status, 0) + 1
            self.studies += 1
            shutil.rmtree(folder)
            self.stop.wait(max(0.0, self.interval - (time.monotonic() - started)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--disk-mb", type=int, default=64, help="the archive's tmpfs")
    p.add_argument("--interval", type=float, default=8.0, help="seconds from one study's start to the next's")
    p.add_argument("--sample-seconds", type=float, default=10.0)
    p.add_argument("--work", type=Path)
    args = p.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="soak-"))
    work.mkdir(parents=True, exist_ok=True)
    disk = work / "disk"
    mount_tmpfs(disk, f"{args.disk_mb}m")
    pacs = PynetdicomPacs(work / "pacs")
    port = free_port()
    config = _config(work, disk / "data", port, pacs.port)
    processes: dict[str, subprocess.Popen] = {}
    stop = threading.Event()
    try:
        upgraded = cli(config, "db", "upgrade")
        assert upgraded.returncode == 0, upgraded.stderr
        bundle = write_random_bundle(work / "bundle")
        activated = cli(config, "models", "activate", str(bundle), "--force")  # random weights: forced
        assert activated.returncode == 0, activated.stderr
        processes["scp"], processes["worker"] = start(config, "scp"), start(config, "worker")
        wait_until_listening(port, processes["scp"])
        for name, proc in processes.items():
            threading.Thread(target=lambda s=proc.stdout: [None for _ in s], daemon=True).start()  # drain its log
        sender = Sender(port, work, stop, args.interval)
        sender.start()
        engine = make_engine(f"sqlite:///{work / 'egfr-node.sqlite3'}")
        sessions = make_sessionmaker(engine)
        samples: list[dict] = []
        latencies: dict[int, tuple[float, float]] = {}
        began = time.monotonic()
        end = began + args.minutes * 60
        killed = False
        while time.monotonic() < end:
            time.sleep(args.sample_seconds)
            elapsed = time.monotonic() - began
            if not killed and elapsed > args.minutes * 30:
                processes["worker"].send_signal(signal.SIGKILL)
                processes["worker"].wait(30)
                processes["worker"] = start(config, "worker")
                threading.Thread(target=lambda s=processes["worker"].stdout: [None for _ in s], daemon=True).start()
                killed = True
                print(f"{elapsed:6.0f} s: worker SIGKILLed and restarted", flush=True)
            row = {"t": round(elapsed)}
            for name, proc in processes.items():
                row[f"{name}_rss_mib"], row[f"{name}_files"] = (round(v, 1) for v in _proc_figures(proc.pid))
            with sessions() as session:
                for job in session.scalars(select(Job).where(Job.state == JobState.DONE)):
                    if job.id not in latencies and job.started_at and job.queued_at:
                        latencies[job.id] = ((job.started_at - job.queued_at).total_seconds(),
                                             (job.finished_at - job.created_at).total_seconds())
                row["jobs_done"] = len(latencies)
            row["sent_studies"] = sender.studies
            row["disk_used_pct"] = round(100 * (1 - shutil.disk_usage(disk).free / shutil.disk_usage(disk).total), 1)
            samples.append(row)
            print(json.dumps(row), flush=True)
        stop.set()
        sender.join(120)
        drain_until = time.monotonic() + 180
        while time.monotonic() < drain_until:
            with sessions() as session:
                busy = session.scalar(select(Job.id).where(Job.state.in_([JobState.WAITING, JobState.QUEUED,
                                                                          JobState.RUNNING])).limit(1))
            if busy is None:
                break
            time.sleep(2)
        archive_root = disk / "data" / "archive"
        with sessions() as session:  # archived: a row and its file
            archived = {uid for uid, path in session.execute(select(Instance.sop_instance_uid, Instance.path)
                                                              .where(Instance.origin == "received"))
                        if (archive_root / path).is_file()}
            deleted_at = dict(session.execute(select(Deletion.study_uid, Deletion.marked_at)
                                              .where(Deletion.state == "done")).tuples().all())
            failed = session.scalars(select(Job.reason).where(Job.state == JobState.FAILED)).all()
        ack = set(sender.acknowledged)
        # deleted by retention: its study's deletion was marked after the instance was acknowledged
        deleted = {uid for uid, (study, when) in sender.acknowledged.items()
                   if uid not in archived and study in deleted_at and deleted_at[study] >= when}
        lost = ack - archived - deleted
        wait = np.array([v[0] for v in latencies.values()]) if latencies else np.zeros(1)
        total = np.array([v[1] for v in latencies.values()]) if latencies else np.zeros(1)
        quarter = max(1, len(samples) // 4)
        summary = {
            "minutes": args.minutes, "studies_sent": sender.studies, "acknowledged": len(ack),
            "refused_by_status": {hex(k): v for k, v in sender.refused.items()},
            "archived_now": len(ack & archived), "deleted_by_retention": len(ack & deleted), "lost": len(lost),
            "jobs_done": len(latencies), "jobs_failed": len(failed), "failure_reasons": sorted(set(failed))[:5],
            "queued_to_started_s": {f"p{q}": round(float(np.percentile(wait, q)), 2) for q in (50, 95, 99)},
            "received_to_done_s": {f"p{q}": round(float(np.percentile(total, q)), 2) for q in (50, 95, 99)},
            "rss_and_files_by_quarter": [samples[i] for i in range(0, len(samples), quarter)] + samples[-1:],
            "device": f"CPU, {os.cpu_count()} cores",
        }
        print(json.dumps(summary, indent=1))
        print(f"soak {args.minutes:g} min: {len(ack)} instances acknowledged, {len(ack & archived)} archived now, "
              f"{len(ack & deleted)} deleted by retention, {len(lost)} lost; {len(latencies)} jobs done, {len(failed)} "
              f"failed; queued->started p50/p95 {summary['queued_to_started_s']['p50']}/"
              f"{summary['queued_to_started_s']['p95']} s; received->done p50/p95 {summary['received_to_done_s']['p50']}/"
              f"{summary['received_to_done_s']['p95']} s")
        engine.dispose()
        return 0 if not lost and deleted else 1  # retention must have acted, and nothing be lost
    finally:
        stop.set()
        stop_processes(processes.values())
        pacs.stop()
        subprocess.run(["umount", "-l", str(disk)], check=False)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
