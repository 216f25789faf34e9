"""``egfr-node check [--repair]``: do the archive and the database agree (``dicom_node.check``)?"""

from __future__ import annotations

import argparse
from typing import Any

from dicom_node.check import check_node
from dicom_node.commands._common import with_runtime

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    p = sub.add_parser("check", help="compare the archive with the database; --repair fixes what is safe")
    p.add_argument("--repair", action="store_true", help="re-register, quarantine, forget, requeue (see the report)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """``egfr-node check [--repair]``: 0 when clean (or everything repaired), 1 otherwise."""

    def do(runtime: Any) -> int:
        config = runtime.config
        report = check_node(runtime.archive, runtime.sessions, quarantine=config.storage.data_path / "quarantine",
                            repair=args.repair, max_attempts=config.worker.max_attempts,
                            max_instance_bytes=config.node.max_instance_size_mb * 2**20)
        print("\n".join(report.lines()))
        return 0 if report.clean or args.repair and not report.left else 1

    return with_runtime(args, do)
