"""``egfr-node web`` (the admin console alone), its users (``add-user``, ``remove-user``,
``unlock``) and the STOW-RS senders (``add-sender``, ``remove-sender``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dicom_node.commands._common import fail, load

__all__ = ["register", "console", "add_user", "unlock", "remove_user", "add_sender", "remove_sender"]


def register(sub: Any) -> None:
    p = sub.add_parser("web", help="the admin console and HTTP API alone (serve starts it when [web] enabled)")
    p.set_defaults(run=console)
    users = p.add_subparsers(dest="web_command")
    u = users.add_parser("add-user", help="add a console user, or change a user's password or role")
    u.add_argument("name")
    u.add_argument("--role", choices=("viewer", "clinician", "admin"),
                   help="viewer: reads; clinician: also records outcomes; admin: also acts (a new user's default)")
    u.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    u.add_argument("--keep-password", action="store_true", help="change the role only")
    u.set_defaults(run=add_user)
    u = users.add_parser("unlock", help="lift the sign-in lock-out of a user or a source address")
    u.add_argument("name", metavar="USER|ADDRESS")
    u.set_defaults(run=unlock)
    u = users.add_parser("remove-user", help="remove a console user (their sessions end at once)")
    u.add_argument("name")
    u.set_defaults(run=remove_user)
    u = users.add_parser("add-sender", help="a STOW-RS token for a sending system (printed once; replaces its old one)")
    u.add_argument("name")
    u.set_defaults(run=add_sender)
    u = users.add_parser("remove-sender", help="revoke a sending system's STOW-RS token")
    u.add_argument("name")
    u.set_defaults(run=remove_sender)


def console(args: argparse.Namespace) -> int:
    from dicom_node.log_safety import configure_logging
    from dicom_node.web.auth import UsersFileError
    from dicom_node.web.server import run_console

    config = load(args)
    configure_logging(config.logging.level)
    if not config.web_users_path.is_file() and not config.web.trusted_user_header:
        print(f"egfr-node: no console user yet ({config.web_users_path}): add one with `egfr-node web add-user NAME`",
              file=sys.stderr)
    print(f"console on http{'s' if config.web.certificate else ''}://{config.web.host}:{config.web.port}/", flush=True)
    try:
        run_console(config)
    except UsersFileError as exc:
        return fail(str(exc), 2)
    except KeyboardInterrupt:  # uvicorn stops on SIGINT/SIGTERM, then raises it again
        pass
    return 0


def add_user(args: argparse.Namespace) -> int:
    import getpass

    from dicom_node.web.auth import UsersFileError, add_user as add_to_users_file

    config = load(args)
    if args.keep_password:
        password = None
    elif args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            return fail("the two passwords differ")
    try:
        new = add_to_users_file(config.web_users_path, args.name, password, args.role)
    except UsersFileError as exc:
        return fail(str(exc))
    print(f"{'added' if new else 'changed'} {args.name} ({args.role or ('admin' if new else 'role kept')}) in "
          f"{config.web_users_path}")
    return 0


def unlock(args: argparse.Namespace) -> int:
    """``egfr-node web unlock USER|ADDRESS``: the lock-out lifted, audited."""
    from dicom_node.commands._common import with_runtime
    from dicom_node.commands.models import shell_user

    def do(runtime: Any) -> int:
        from db import audit
        from db.console_sessions import unlock as lift

        with runtime.sessions.begin() as session:
            lifted = lift(session, args.name)
            audit.record(session, shell_user(), "unlock", args.name[:128], f"{lifted} lock-outs lifted")
        print(f"{args.name}: {'lock-out lifted' if lifted else 'not locked out'}")
        return 0

    return with_runtime(args, do)


def remove_user(args: argparse.Namespace) -> int:
    """``egfr-node web remove-user NAME``: out of the users file; the console refuses their
    session at its next request."""
    from dicom_node.web.auth import UsersFileError, remove_user as remove_from_users_file

    config = load(args)
    try:
        removed = remove_from_users_file(config.web_users_path, args.name)
    except UsersFileError as exc:
        return fail(str(exc))
    print(f"{args.name}: {'removed' if removed else 'not a user'} ({config.web_users_path})")
    return 0 if removed else 1


def add_sender(args: argparse.Namespace) -> int:
    """``egfr-node web add-sender NAME``: a new token, printed once on stdout (only its digest is kept)."""
    from dicom_node.web.auth import UsersFileError, add_sender as add_to_senders

    config = load(args)
    try:
        token = add_to_senders(config.stow_senders_path, args.name)
    except UsersFileError as exc:
        return fail(str(exc))
    print(token)
    print(f"STOW-RS token for {args.name} (kept as a digest in {config.stow_senders_path}); the sender sends "
          f"\"Authorization: Bearer <token>\"" + ("" if config.web.stow_enabled else "; [web] stow_enabled is false"),
          file=sys.stderr)
    return 0


def remove_sender(args: argparse.Namespace) -> int:
    from dicom_node.web.auth import UsersFileError, remove_sender as remove_from_senders

    config = load(args)
    try:
        removed = remove_from_senders(config.stow_senders_path, args.name)
    except UsersFileError as exc:
        return fail(str(exc))
    print(f"{args.name}: {'token revoked' if removed else 'not a sender'} ({config.stow_senders_path})")
    return 0 if removed else 1
