"""``egfr-node``: the one command line of the node.

    egfr-node init [--data-dir DIR]      write a commented config, create data folder and database
    egfr-node serve                      SCP + worker in one process (Ctrl-C stops cleanly)
    egfr-node scp | worker               the two halves apart
    egfr-node db upgrade                 migrate the database to this version's schema
    egfr-node web                        the admin console alone ([web] host:port)
    egfr-node web add-user NAME          add or change a console user (password asked, or --password-stdin)
    egfr-node echo HOST PORT [--aet AET] C-ECHO a peer
    egfr-node fetch --accession N | --study UID | --patient-id ID [--source NAME] [--list]   query and retrieve a study
    egfr-node queue list [--state S] [--json] | show ID | replay STUDY_UID|JOB_ID [--rerun] | cancel ID
    egfr-node models list | activate PATH|ID [--force] | shadow PATH|ID|--clear | promote | show [ID]
    egfr-node outcomes import CSV | export CSV | report [--bundle ID] [--json] | export-cohort --deidentify OUT
    egfr-node import DIR                 bulk-load DICOM files through the SCP's intake
    egfr-node check [--repair]           do the archive and the database agree? (fix what is safe)
    egfr-node backup DIR | restore DIR   a consistent copy of a running node; back into an empty data folder
    egfr-node archive pin|unpin STUDY_UID... | pin --cohort CSV | usage | prune [--dry-run]   retention
    egfr-node train --cohort CSV --out DIR [...]   (training package)
    egfr-node evaluate --bundle DIR|ID --cohort CSV --out DIR   a bundle scored as served on labelled patients
    egfr-node demo                       the main job end to end on a phantom cohort
    egfr-node preprocess PATH [--out DIR]
    egfr-node phantom OUT --patients N --positive-fraction F --seed S [--mask seg|rtstruct]

This module parses and dispatches only. Each command's module in ``dicom_node.commands``
registers its parser (``register(sub)``) with the body to run (``run``: ``args -> exit
status``); a command that hands its arguments on to another command line (train,
evaluate, demo, phantom) says ``forwards`` and finds them in ``args.rest``. Every command is ``main(argv)``,
so it is testable in-process.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from dicom_node.commands import (archive, backup, check, demo, echo, evaluate, fetch, importing, jobs, models,
                                  outcomes, preprocess, serve, setup, train, web)
from dicom_node.commands._common import fail
from dicom_node.config import ConfigError

__all__ = ["main", "build_parser"]

#: in the order ``egfr-node --help`` lists them
COMMANDS = (setup, serve, web, echo, fetch, jobs, models, outcomes, importing, check, backup, archive, train, evaluate,
            demo, preprocess)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="egfr-node", description="EGFR prediction DICOM node")
    parser.add_argument("--config", help="the node's config file (default: $EGFR_NODE_CONFIG, else ./egfr-node.toml)")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def _refusal(exc: Exception) -> int | None:
    """The exit status and one line for what stops a command before it does anything (the
    database or schema, the archive, the pynetdicom release); None for anything else."""
    from db.engine import DatabaseUnreachable
    from dicom_node.receive.server import UnsupportedPynetdicom
    from dicom_node.store.archive import ArchiveFull, ArchiveNotWritable
    from dicom_node.store.open import SchemaOutOfDate

    if isinstance(exc, (SchemaOutOfDate, DatabaseUnreachable, UnsupportedPynetdicom)):
        return fail(str(exc), 2)
    if isinstance(exc, (ArchiveNotWritable, ArchiveFull)):
        return fail(exc.strerror or str(exc), 2)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "forwards", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    try:
        run: Callable[[argparse.Namespace], int] = args.run
        return run(args)
    except ConfigError as exc:
        return fail(f"configuration error: {exc}", 2)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        refused = _refusal(exc)
        if refused is None:
            raise
        return refused


if __name__ == "__main__":
    sys.exit(main())
