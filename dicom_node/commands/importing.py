"""``egfr-node import DIR [--queue] [--quiet]``: bulk-load a folder of DICOM files into the
archive (``dicom_node.store.import_files``: the SCP's checks and intake for every file)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dicom_node.commands._common import fail, with_runtime
from dicom_node.store.import_files import import_folder

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    p = sub.add_parser("import", help="bulk-load a folder of DICOM files into the archive")
    p.add_argument("folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--queue", action="store_true", help="also queue each study for prediction (default: archive only)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """``egfr-node import DIR [--queue] [--quiet]``."""
    folder = Path(args.folder)
    if not folder.is_dir():
        return fail(f"{folder} is not a folder")

    def do(runtime: Any) -> int:
        summary = import_folder(folder, runtime.archive, runtime.sessions, progress=not args.quiet, queue=args.queue,
                                max_instance_bytes=runtime.config.node.max_instance_size_mb * 2**20)
        print("\n".join(summary.lines()))
        stored = sum(summary.counts.values())
        if summary.stopped:
            return fail("the import stopped before the end of the folder (see above)")
        if summary.refused:
            return fail(f"{len(summary.refused)} files were refused (listed above): the import is not complete")
        if not stored:
            return fail(f"no DICOM instance found in {folder}")
        return 0

    return with_runtime(args, do)
