"""The admin's view: `egfr-node serve` receiving a study and `egfr-node queue` showing it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from sqlalchemy import select

from tests.conftest import require_tool
from tests.dicom_factory import mask_for, mr_series, write_all
from tests.node.process import cli, free_port, start, wait_until_listening, write_config
from tests.waiting import wait_for


def queue_json(config: Path) -> list[dict]:
    done = cli(config, "queue", "list", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def last_received_at(config: Path, series_uid: str) -> datetime:
    from db.engine import make_engine
    from db.models import Series
    from dicom_node.config import load_config

    engine = make_engine(load_config(config).database_url)
    try:
        with engine.connect() as conn:
            return conn.execute(select(Series.last_received_at).where(Series.series_uid == series_uid)).scalar_one()
    finally:
        engine.dispose()


def test_study_goes_waiting_then_queued_and_can_be_replayed(tmp_path: Path) -> None:
    port = free_port()
    # a settle longer than a CLI start (about 2 s here), so `queue list` sees the study still arriving
    config = write_config(tmp_path, port, stable=12.0, scan=0.3, settle=4.0)
    assert cli(config, "init", "--data-dir", str(tmp_path / "data")).returncode == 0
    node = start(config, "serve")
    try:
        wait_until_listening(port, node)
        images = mr_series(4)
        files = write_all([*images, mask_for(images, "SEG")], tmp_path / "study")
        done = subprocess.run(
            [require_tool("storescu"), "-R", "-aec", "EGFR_NODE", "127.0.0.1", str(port), *map(str, files)],
            capture_output=True, text=True, env={**os.environ, "TCP_NODELAY": "1"}, timeout=60,
        )
        assert done.returncode == 0, done.stderr
        jobs = queue_json(config)
        assert [(j["state"], j["study_uid"]) for j in jobs] == [("waiting", images[0].StudyInstanceUID)]
        assert jobs[0]["reason"].startswith("study still arriving")
        queued = wait_for(lambda: [j for j in queue_json(config) if j["state"] == "queued"], 30, "a queued job")
        job_id = queued[0]["id"]
        # the mask names its four images and they are all in: complete by content after the 4 s
        # settle of their series, not the 12 s quiet timer (both times are the node's own)
        queued_at = datetime.fromisoformat(queued[0]["queued_at"].rstrip("Z"))
        assert 4.0 <= (queued_at - last_received_at(config, images[0].SeriesInstanceUID)).total_seconds() < 12.0
        assert queued[0]["queued_because"].startswith("complete by content: the mask and the 4 images it names are in")

        listing = cli(config, "queue", "list", "--state", "queued")
        assert images[0].StudyInstanceUID in listing.stdout and "queued" in listing.stdout
        shown = json.loads(cli(config, "queue", "show", str(job_id)).stdout)
        assert shown["id"] == job_id and shown["trigger"] == "arrival"

        # replay while queued: nothing new; cancel; replay makes a new job and keeps history
        assert "already has job" in cli(config, "queue", "replay", images[0].StudyInstanceUID).stdout
        assert cli(config, "queue", "cancel", str(job_id)).returncode == 0
        replayed = cli(config, "queue", "replay", str(job_id))
        assert replayed.returncode == 0 and "queued" in replayed.stdout
        states = [(j["state"], j["trigger"], j["replay_of_id"]) for j in queue_json(config)]
        assert states == [("queued", "replay", job_id), ("cancelled", "arrival", None)]
        bad = cli(config, "queue", "cancel", "999")
        assert bad.returncode == 1 and "no job 999" in bad.stderr
    finally:
        node.send_signal(signal.SIGINT)
        out, _ = node.communicate(timeout=30)
    assert node.returncode == 0, out
    assert "worker" in out and "stopped" in out


def test_a_study_without_mask_stays_waiting_and_says_so(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port, stable=0.5, scan=0.2)
    assert cli(config, "db", "upgrade").returncode == 0
    node = start(config, "serve")
    try:
        wait_until_listening(port, node)
        files = write_all(mr_series(2), tmp_path / "study")
        done = subprocess.run([require_tool("storescu"), "-R", "-aec", "EGFR_NODE", "127.0.0.1", str(port), *map(str, files)],
                              capture_output=True, text=True, env={**os.environ, "TCP_NODELAY": "1"}, timeout=60)
        assert done.returncode == 0, done.stderr
        job = wait_for(lambda: [j for j in queue_json(config) if j["reason"] and "mask" in j["reason"]], 30, "a job waiting for its mask")[0]
        assert job["state"] == "waiting"
        assert job["reason"] == "no lesion mask (SEG, RTSTRUCT or an outline SR) in the study yet"
    finally:
        node.send_signal(signal.SIGTERM)
        node.communicate(timeout=30)
    assert node.returncode == 0


def test_echo_command(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port)
    assert cli(config, "db", "upgrade").returncode == 0
    node = start(config, "scp")
    try:
        wait_until_listening(port, node)
        ok = cli(config, "echo", "127.0.0.1", str(port), "--aet", "EGFR_NODE")
        assert ok.returncode == 0 and "success" in ok.stdout
    finally:
        node.send_signal(signal.SIGINT)
        node.communicate(timeout=30)
    refused = cli(config, "echo", "127.0.0.1", str(port), "--aet", "EGFR_NODE", "--timeout", "2")
    assert refused.returncode == 1 and "not established" in refused.stderr


def test_serve_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    config = write_config(tmp_path, free_port())
    done = cli(config, "serve", timeout=30)
    assert done.returncode == 2
    assert "egfr-node db upgrade" in done.stderr


def test_a_restart_inside_the_quiet_window_loses_nothing(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port, stable=4.0, scan=0.2)
    assert cli(config, "db", "upgrade").returncode == 0
    node = start(config, "serve")
    images = mr_series(3)
    try:
        wait_until_listening(port, node)
        files = write_all([*images, mask_for(images, "RTSTRUCT")], tmp_path / "study")
        done = subprocess.run([require_tool("storescu"), "-aec", "EGFR_NODE", "127.0.0.1", str(port), *map(str, files)],
                              capture_output=True, text=True, env={**os.environ, "TCP_NODELAY": "1"}, timeout=60)
        assert done.returncode == 0, done.stderr
    finally:
        node.send_signal(signal.SIGTERM)
        node.communicate(timeout=30)
    assert [j["state"] for j in queue_json(config)] == ["waiting"]
    node = start(config, "worker")
    try:
        queued = wait_for(lambda: [j for j in queue_json(config) if j["state"] == "queued"], 30, "a queued job")
        assert queued[0]["study_uid"] == images[0].StudyInstanceUID
    finally:
        node.send_signal(signal.SIGINT)
        node.communicate(timeout=30)


def test_readme_running_the_node_init_then_serve_in_a_fresh_folder(tmp_path: Path) -> None:
    """README "Running the node": `egfr-node init && egfr-node serve` with the defaults (./egfr-node.toml, ./egfr-data)."""
    command = Path(sys.executable).parent / "egfr-node"
    assert command.exists(), "the egfr-node console script is installed with the package"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EGFR_NODE_")}
    env.update(EGFR_NODE_NODE_PORT=str(port), EGFR_NODE_NODE_HOST="127.0.0.1", PYTHONUNBUFFERED="1")
    init = subprocess.run([str(command), "init"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stderr
    assert (tmp_path / "egfr-node.toml").is_file() and (tmp_path / "egfr-data" / "egfr-node.sqlite3").is_file()
    node = subprocess.Popen([str(command), "serve"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_until_listening(port, node)
        echo = subprocess.run([str(command), "echo", "127.0.0.1", str(port), "--aet", "EGFR_NODE"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert echo.returncode == 0, echo.stderr
    finally:
        node.send_signal(signal.SIGINT)
        out, _ = node.communicate(timeout=60)
    assert node.returncode == 0, out
    # init's receive_processes = "auto": one process per core on the port
    cores = min(os.cpu_count() or 1, 64)
    assert (f"{cores - 1} more receive processes on port {port}" in out) == (cores > 1), out[-3000:]


def test_queue_commands_on_a_missing_database_say_what_to_run(tmp_path: Path) -> None:
    config = write_config(tmp_path, free_port())
    done = cli(config, "queue", "list")
    assert done.returncode == 2 and "egfr-node init" in done.stderr
    assert not (tmp_path / "data").exists()  # nothing created by a read
