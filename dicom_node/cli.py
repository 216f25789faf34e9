"""``egfr-node``: the one command line of the node.

    egfr-node init [--data-dir DIR]      write a commented config, create data folder and database
    egfr-node serve                      SCP + worker in one process (Ctrl-C stops cleanly)
    egfr-node scp | worker               the two halves apart
    egfr-node db upgrade                 migrate the database to this version's schema
    egfr-node web                        the admin console alone ([web] host:port)
    egfr-node web add-user NAME          add or change a console user (password asked, or --password-stdin)
    egfr-node echo HOST PORT [--aet AET] C-ECHO a peer
    egfr-node queue list [--state S] [--json] | show ID | replay STUDY_UID|JOB_ID [--rerun] | cancel ID
    egfr-node models list | activate PATH|ID | show [ID]
    egfr-node import DIR                 bulk-load DICOM files through the SCP's intake
    egfr-node check [--repair]           do the archive and the database agree? (fix what is safe)
    egfr-node backup DIR | restore DIR   a consistent copy of a running node; back into an empty data folder
    egfr-node archive pin|unpin STUDY_UID... | pin --cohort CSV | usage | prune [--dry-run]   retention
    egfr-node train --cohort CSV --out DIR [...]   (training package)
    egfr-node demo                       the main job end to end on a phantom cohort
    egfr-node preprocess PATH [--out DIR]
    egfr-node phantom OUT --patients N --positive-fraction F --seed S [--mask seg|rtstruct]

Every command is ``main(argv)``, so it is testable in-process.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Callable, Sequence

from dicom_node.config import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_CONFIG_TEXT,
    Config,
    ConfigError,
    config_path_from_env,
    load_config,
)

__all__ = ["main"]


def _load(args: argparse.Namespace) -> Config:
    return load_config(config_path_from_env(args.config))


def _fail(message: str, code: int = 1) -> int:
    print(f"egfr-node: {message}", file=sys.stderr)
    return code


# --- init / db --------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    from db.engine import database_errors
    from db.migrate import upgrade

    path = Path(args.config or config_path_from_env(None) or DEFAULT_CONFIG_PATH)
    data_dir = Path(args.data_dir).expanduser().resolve()
    if path.exists() and not args.force:
        print(f"config {path} exists; keeping it (use --force to rewrite)")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(DEFAULT_CONFIG_TEXT.replace("{data_dir}", str(data_dir)), encoding="utf-8")
        print(f"wrote {path}")
    config = load_config(path)
    config.storage.archive_path.mkdir(parents=True, exist_ok=True)
    with database_errors(config.database_url):
        revision = upgrade(config.database_url)
    print(f"data folder {config.storage.data_path}")
    print(f"database at schema {revision}")
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from db.engine import database_errors
    from db.migrate import upgrade

    config = _load(args)
    with database_errors(config.database_url):
        revision = upgrade(config.database_url)
    print(f"database at schema {revision}")
    return 0


# --- serve / scp / worker ---------------------------------------------------------------


def _run_until_stopped(start: Callable[[], None], stop: Callable[[], None]) -> int:
    stopped = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stopped.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        start()
        print("running; Ctrl-C stops", flush=True)
        while not stopped.wait(1.0):
            pass
    finally:
        stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0


def _serve(args: argparse.Namespace, with_scp: bool, with_worker: bool) -> int:
    from dicom_node.runtime import configure_logging, open_runtime, share_metrics_between_processes

    config = _load(args)
    if with_scp:
        share_metrics_between_processes(config)  # before prometheus_client is imported
    from dicom_node.receive.server import DicomNode
    from dicom_node.worker import Worker

    configure_logging(config.logging.level)
    runtime = open_runtime(config)
    node = DicomNode(config, runtime.archive, runtime.sessions) if with_scp else None
    worker = Worker(config, runtime.sessions, runtime.archive) if with_worker else None
    console = None
    if with_scp and with_worker and config.web.enabled:
        from dicom_node.web.server import ConsoleProcess

        console = ConsoleProcess(config)

    def start() -> None:
        if node:
            node.start()
        if worker:
            worker.start()
        if console:
            console.start()

    def stop() -> None:
        if console:
            console.stop()
        if node:
            node.stop()
        if worker:
            worker.stop()
        runtime.close()

    return _run_until_stopped(start, stop)


# --- web --------------------------------------------------------------------------------


def cmd_web(args: argparse.Namespace) -> int:
    from dicom_node.runtime import configure_logging
    from dicom_node.web.auth import UsersFileError
    from dicom_node.web.server import run_console

    config = _load(args)
    configure_logging(config.logging.level)
    if not config.web_users_path.is_file() and not config.web.trusted_user_header:
        print(f"egfr-node: no console user yet ({config.web_users_path}): add one with `egfr-node web add-user NAME`",
              file=sys.stderr)
    print(f"console on http{'s' if config.web.certificate else ''}://{config.web.host}:{config.web.port}/", flush=True)
    try:
        run_console(config)
    except UsersFileError as exc:
        return _fail(str(exc), 2)
    except KeyboardInterrupt:  # uvicorn stops on SIGINT/SIGTERM, then raises it again
        pass
    return 0


def cmd_web_add_user(args: argparse.Namespace) -> int:
    import getpass

    from dicom_node.web.auth import UsersFileError, add_user

    config = _load(args)
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            return _fail("the two passwords differ")
    try:
        new = add_user(config.web_users_path, args.name, password)
    except UsersFileError as exc:
        return _fail(str(exc))
    print(f"{'added' if new else 'changed the password of'} {args.name} in {config.web_users_path}")
    return 0


# --- echo -------------------------------------------------------------------------------


def cmd_echo(args: argparse.Namespace) -> int:
    from dicom_node.config import Destination
    from dicom_node.scu import SendError, echo

    peer = Destination(name="peer", ae_title=args.aet, host=args.host, port=args.port)
    try:
        status = echo(peer, calling_aet=args.calling_aet, timeout=args.timeout)
    except SendError as exc:
        return _fail(str(exc))
    if status != 0:
        return _fail(f"C-ECHO failed: status {status}")
    print(f"C-ECHO {args.aet} at {args.host}:{args.port}: success")
    return 0


# --- queue ------------------------------------------------------------------------------


def _with_session(args: argparse.Namespace, action: Callable) -> int:
    from db.queue import QueueError
    from dicom_node.runtime import open_runtime

    runtime = open_runtime(_load(args))
    try:
        with runtime.sessions.begin() as session:
            return action(session)
    except QueueError as exc:
        return _fail(str(exc))
    finally:
        runtime.close()


def _print_jobs(jobs: list, as_json: bool) -> None:
    if as_json:
        print(json.dumps([job.to_json() for job in jobs], indent=2))
        return
    print(f"{'ID':>5}  {'STATE':<9}  {'TRIGGER':<7}  {'ATT':>3}  {'UPDATED (UTC)':<19}  {'STUDY UID':<40}  RESULT / REASON")
    for job in jobs:
        result = job.result or {}
        outcome = f"EGFR {result['status']} p={result['probability']:.3f}" if "status" in result and result.get("probability") is not None else ""
        print(
            f"{job.id:>5}  {job.state:<9}  {job.trigger:<7}  {job.attempts:>3}  "
            f"{job.updated_at:%Y-%m-%d %H:%M:%S}  {job.study_uid:<40}  {outcome or job.reason or ''}"
        )


def cmd_queue_list(args: argparse.Namespace) -> int:
    from db.models import JobState
    from db.queue import list_jobs

    state = JobState(args.state) if args.state else None

    def show(session) -> int:  # type: ignore[no-untyped-def]
        _print_jobs(list_jobs(session, state, args.limit), args.json)
        return 0

    return _with_session(args, show)


def cmd_queue_show(args: argparse.Namespace) -> int:
    from db.deliveries import deliveries_of_job
    from db.queue import get_job

    def show(session) -> int:  # type: ignore[no-untyped-def]
        job = get_job(session, args.job_id).to_json()
        job["deliveries"] = [d.to_json() for d in deliveries_of_job(session, args.job_id)]
        print(json.dumps(job, indent=2))
        return 0

    return _with_session(args, show)


def cmd_queue_replay(args: argparse.Namespace) -> int:
    from db.queue import replay

    def do(session) -> int:  # type: ignore[no-untyped-def]
        job, created = replay(session, args.key, rerun=args.rerun)
        if created and job.resend_only:
            print(f"job {job.id} queued for study {job.study_uid}: re-sends the results of job "
                  f"{job.result['resend_of_job']} (use --rerun to predict again)")
        elif created:
            print(f"job {job.id} queued for study {job.study_uid} (replay of job {job.replay_of_id})")
        else:
            print(f"study {job.study_uid} already has job {job.id} {job.state}; nothing new queued")
        return 0

    return _with_session(args, do)


def cmd_queue_cancel(args: argparse.Namespace) -> int:
    from db.queue import cancel

    def do(session) -> int:  # type: ignore[no-untyped-def]
        job = cancel(session, args.job_id)
        print(f"job {job.id} cancelled")
        return 0

    return _with_session(args, do)


# --- models / import / train / demo ----------------------------------------------------


def _with_runtime(args: argparse.Namespace, action: Callable) -> int:
    from db.bundles import BundleRegistryError
    from dicom_node.runtime import open_runtime
    from pipeline.bundle import BundleError

    runtime = open_runtime(_load(args))
    try:
        return action(runtime)
    except (BundleError, BundleRegistryError) as exc:
        return _fail(str(exc))
    finally:
        runtime.close()


def cmd_models(args: argparse.Namespace) -> int:
    from dicom_node.commands import models

    def do(runtime) -> int:  # type: ignore[no-untyped-def]
        if args.models_command == "list":
            print("\n".join(models.list_lines(runtime.sessions)))
        elif args.models_command == "activate":
            record = models.activate(runtime.sessions, args.key)
            print(f"model bundle {record.id} ({record.name} {record.version}) is active; new jobs use it")
        else:
            print(models.show_text(runtime.sessions, args.model_id))
        return 0

    return _with_runtime(args, do)


def cmd_import(args: argparse.Namespace) -> int:
    from dicom_node.commands.importing import import_folder

    folder = Path(args.folder)
    if not folder.is_dir():
        return _fail(f"{folder} is not a folder")

    def do(runtime) -> int:  # type: ignore[no-untyped-def]
        summary = import_folder(folder, runtime.archive, runtime.sessions, progress=not args.quiet, queue=args.queue,
                                max_instance_bytes=runtime.config.node.max_instance_size_mb * 2**20)
        print("\n".join(summary.lines()))
        return 0

    return _with_runtime(args, do)


def cmd_check(args: argparse.Namespace) -> int:
    from dicom_node.commands.check import check_node

    def do(runtime) -> int:  # type: ignore[no-untyped-def]
        config = runtime.config
        report = check_node(runtime.archive, runtime.sessions, quarantine=config.storage.data_path / "quarantine",
                            repair=args.repair, max_attempts=config.worker.max_attempts,
                            max_instance_bytes=config.node.max_instance_size_mb * 2**20)
        print("\n".join(report.lines()))
        return 0 if report.clean or args.repair and not report.left else 1

    return _with_runtime(args, do)


def cmd_backup(args: argparse.Namespace) -> int:
    from dicom_node.commands.backup import BackupError, backup_node

    try:
        summary = backup_node(_load(args), Path(args.folder))
    except BackupError as exc:
        return _fail(str(exc))
    print(f"backup in {summary.folder}: {summary.files} files ({summary.bytes / 2**20:.1f} MiB); database: {summary.database}")
    for line in summary.problems:
        print(f"problem: {line}")
    return 1 if summary.problems else 0


def cmd_restore(args: argparse.Namespace) -> int:
    from dicom_node.commands.backup import BackupError, restore_node

    try:
        print("\n".join(restore_node(_load(args), Path(args.folder))))
    except BackupError as exc:
        return _fail(str(exc))
    return 0


def cmd_archive(args: argparse.Namespace) -> int:
    from dicom_node.commands import archive

    def do(runtime) -> int:  # type: ignore[no-untyped-def]
        try:
            return run(runtime)
        except ValueError as exc:  # a bad UID, a cohort CSV that cannot be read: named in the message
            return _fail(str(exc))

    def run(runtime) -> int:  # type: ignore[no-untyped-def]
        if args.action == "usage":
            lines = archive.usage_lines(_retention(runtime))
        elif args.action == "prune":
            lines = archive.prune_lines(_retention(runtime), args.dry_run)
        else:
            uids = list(args.study_uids)
            if args.action == "pin" and args.cohort:
                uids += cohort_study_uids(Path(args.cohort), runtime.archive.root)
            if not uids:
                return _fail(f"archive {args.action}: name a STUDY_UID" + (" or --cohort CSV" if args.action == "pin" else ""))
            if args.action == "pin":
                reason = args.reason or (f"cohort {Path(args.cohort).name}" if args.cohort else "pinned by an admin")
                lines = archive.pin_studies(runtime.sessions, uids, reason)
            else:
                lines = archive.unpin_studies(runtime.sessions, uids)
        print("\n".join(lines))
        return 0

    return _with_runtime(args, do)


def _retention(runtime):  # type: ignore[no-untyped-def]
    from dicom_node.retention import Retention

    return Retention(runtime.config.retention, runtime.sessions, runtime.archive)


def cohort_study_uids(csv_path: Path, archive_root: Path) -> list[str]:
    """The Study Instance UIDs of a training cohort CSV (read by the training package)."""
    from training.cohort import read_cohort

    return [entry.study_uid for entry in read_cohort(csv_path, archive_root).entries]


def cmd_train(args: argparse.Namespace, rest: Sequence[str]) -> int:
    from training.cli import main as train_main

    config = _load(args)
    return train_main(list(rest), archive_root=config.storage.archive_path, database_url=config.database_url)


def cmd_demo(args: argparse.Namespace, rest: Sequence[str]) -> int:
    from dicom_node.commands.demo import main as demo_main

    return demo_main(list(rest))


# --- pipeline front doors ---------------------------------------------------------------


def cmd_preprocess(args: argparse.Namespace) -> int:
    from pipeline.preprocess_command import run

    path = Path(args.path)
    out = Path(args.out) if args.out else Path("preprocess-out")
    if not path.exists():
        # Not a folder: a Study Instance UID in the archive.
        from dicom_node.receive.archive import InvalidUID, check_uid

        try:
            study_uid = check_uid("study", args.path)
        except InvalidUID:
            return _fail(f"{args.path} is neither a folder nor a Study Instance UID")
        path = _load(args).storage.archive_path / study_uid
        if not path.is_dir():
            return _fail(f"study {study_uid} is not in the archive ({path})")
        out = Path(args.out) if args.out else Path("preprocess-out") / study_uid
    return run(path, out)


def cmd_phantom(args: argparse.Namespace, rest: Sequence[str]) -> int:
    from pipeline.phantom.cli import main as phantom_main

    return phantom_main(list(rest))


# --- parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="egfr-node", description="EGFR prediction DICOM node")
    parser.add_argument("--config", help="config file (default: $EGFR_NODE_CONFIG, else ./egfr-node.toml)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="write a default config, create the data folder and database")
    p.add_argument("--data-dir", default="./egfr-data", help="data folder (default ./egfr-data)")
    p.add_argument("--force", action="store_true", help="rewrite an existing config file")
    p.set_defaults(func=cmd_init)

    sub.add_parser("serve", help="run the SCP and the worker").set_defaults(func=lambda a: _serve(a, True, True))
    sub.add_parser("scp", help="run the SCP only").set_defaults(func=lambda a: _serve(a, True, False))
    sub.add_parser("worker", help="run the worker only").set_defaults(func=lambda a: _serve(a, False, True))

    p = sub.add_parser("db", help="database maintenance")
    dbsub = p.add_subparsers(dest="db_command", required=True)
    dbsub.add_parser("upgrade", help="migrate to this version's schema").set_defaults(func=cmd_db_upgrade)

    p = sub.add_parser("web", help="the admin console and HTTP API alone (serve starts it when [web] enabled)")
    p.set_defaults(func=cmd_web)
    wsub = p.add_subparsers(dest="web_command")
    w = wsub.add_parser("add-user", help="add a console user, or change a user's password")
    w.add_argument("name")
    w.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    w.set_defaults(func=cmd_web_add_user)

    p = sub.add_parser("echo", help="C-ECHO a DICOM peer")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--aet", default="ANY-SCP", help="called AE title")
    p.add_argument("--calling-aet", default="EGFR_NODE", help="our AE title")
    p.add_argument("--timeout", type=float, default=10.0)
    p.set_defaults(func=cmd_echo)

    p = sub.add_parser("queue", help="watch and steer the job queue")
    qsub = p.add_subparsers(dest="queue_command", required=True)
    q = qsub.add_parser("list", help="jobs, newest first")
    q.add_argument("--state", choices=["waiting", "queued", "running", "done", "failed", "cancelled"])
    q.add_argument("--json", action="store_true")
    q.add_argument("--limit", type=int, default=200)
    q.set_defaults(func=cmd_queue_list)
    q = qsub.add_parser("show", help="one job in full")
    q.add_argument("job_id", type=int)
    q.set_defaults(func=cmd_queue_show)
    q = qsub.add_parser("replay", help="queue a study again (by Study Instance UID or job id): re-sends stored results")
    q.add_argument("key", metavar="STUDY_UID|JOB_ID")
    q.add_argument("--rerun", action="store_true", help="predict again instead of re-sending the stored results")
    q.set_defaults(func=cmd_queue_replay)
    q = qsub.add_parser("cancel", help="cancel a waiting or queued job")
    q.add_argument("job_id", type=int)
    q.set_defaults(func=cmd_queue_cancel)

    p = sub.add_parser("models", help="model bundles: list, activate, show")
    msub = p.add_subparsers(dest="models_command", required=True)
    msub.add_parser("list", help="registered bundles").set_defaults(func=cmd_models)
    m = msub.add_parser("activate", help="check, register and activate a bundle (folder or id)")
    m.add_argument("key", metavar="PATH|ID")
    m.set_defaults(func=cmd_models)
    m = msub.add_parser("show", help="a bundle's manifest summary (default: the active one)")
    m.add_argument("model_id", nargs="?", type=int)
    m.set_defaults(func=cmd_models)

    p = sub.add_parser("import", help="bulk-load a folder of DICOM files into the archive")
    p.add_argument("folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--queue", action="store_true", help="also queue each study for prediction (default: archive only)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("check", help="compare the archive with the database; --repair fixes what is safe")
    p.add_argument("--repair", action="store_true", help="re-register, quarantine, forget, requeue (see the report)")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("backup", help="a consistent copy of the database and the archive, while the node runs")
    p.add_argument("folder")
    p.set_defaults(func=cmd_backup)
    p = sub.add_parser("restore", help="a backup back into an empty data folder, then check")
    p.add_argument("folder")
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("archive", help="retention: pin or unpin studies, disk usage, prune now")
    asub = p.add_subparsers(dest="action", required=True)
    a = asub.add_parser("pin", help="keep studies from retention (STUDY_UID..., or every study of --cohort CSV)")
    a.add_argument("study_uids", nargs="*")
    a.add_argument("--cohort", help="a training cohort CSV: pin each of its studies")
    a.add_argument("--reason", help="why (shown by archive usage); default: the cohort, or 'pinned by an admin'")
    a.set_defaults(func=cmd_archive)
    a = asub.add_parser("unpin", help="let retention consider studies again")
    a.add_argument("study_uids", nargs="+")
    a.set_defaults(func=cmd_archive)
    asub.add_parser("usage", help="the disk against the watermarks, studies by retention state, last deletions"
                    ).set_defaults(func=cmd_archive)
    a = asub.add_parser("prune", help="run one retention sweep now")
    a.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    a.set_defaults(func=cmd_archive)

    p = sub.add_parser("train", help="train and evaluate a fold ensemble (training package)", add_help=False)
    p.set_defaults(func=None, forward=cmd_train)
    p = sub.add_parser("demo", help="the main job end to end on a phantom cohort, on loopback", add_help=False)
    p.set_defaults(func=None, forward=cmd_demo)

    p = sub.add_parser("preprocess", help="model inputs, provenance and a contact sheet for one study")
    p.add_argument("path", help="a folder of one study's DICOM files, or a Study Instance UID in the archive")
    p.add_argument("--out", help="output folder (default ./preprocess-out, or ./preprocess-out/<study UID>)")
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("phantom", help="write a phantom cohort of DICOM studies", add_help=False)
    p.set_defaults(func=None, forward=cmd_phantom)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if getattr(args, "forward", None):
        return args.forward(args, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return args.func(args)
    except ConfigError as exc:
        return _fail(f"configuration error: {exc}", 2)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from db.engine import DatabaseUnreachable
        from dicom_node.receive.archive import ArchiveFull, ArchiveNotWritable
        from dicom_node.receive._pynetdicom.contract import UnsupportedPynetdicom
        from dicom_node.runtime import SchemaOutOfDate

        if isinstance(exc, (SchemaOutOfDate, DatabaseUnreachable, UnsupportedPynetdicom)):
            return _fail(str(exc), 2)
        if isinstance(exc, (ArchiveNotWritable, ArchiveFull)):
            return _fail(exc.strerror or str(exc), 2)
        raise


if __name__ == "__main__":
    sys.exit(main())
