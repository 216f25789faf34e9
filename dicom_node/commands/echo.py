"""``egfr-node echo HOST PORT``: C-ECHO a DICOM peer, as the node would call it."""

from __future__ import annotations

import argparse
from typing import Any

from dicom_node.commands._common import fail

__all__ = ["register", "echo"]


def register(sub: Any) -> None:
    p = sub.add_parser("echo", help="C-ECHO a DICOM peer")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--aet", default="ANY-SCP", help="called AE title")
    p.add_argument("--calling-aet", default="EGFR_NODE", help="our AE title")
    p.add_argument("--timeout", type=float, default=10.0)
    p.set_defaults(run=echo)


def echo(args: argparse.Namespace) -> int:
    from dicom_node.config import Destination
    from dicom_node.scu import SendError, echo as c_echo

    peer = Destination(name="peer", ae_title=args.aet, host=args.host, port=args.port)
    try:
        status = c_echo(peer, calling_aet=args.calling_aet, timeout=args.timeout)
    except SendError as exc:
        return fail(str(exc))
    if status != 0:
        return fail(f"C-ECHO failed: status {status}")
    print(f"C-ECHO {args.aet} at {args.host}:{args.port}: success")
    return 0
