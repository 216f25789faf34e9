"""``egfr-node evaluate ...``: a frozen bundle scored as the node serves it, on a labelled
cohort of this node's archive (the training package's :mod:`training.evaluate`; one of the
front doors from dicom_node into training, DESIGN.md)."""

from __future__ import annotations

import argparse
from typing import Any

from dicom_node.commands._common import load

__all__ = ["register", "evaluate"]


def register(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="score a bundle as served on a labelled cohort (report, figures)", add_help=False)
    p.set_defaults(run=evaluate, forwards=True)


def evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import main as evaluate_main

    config = load(args)
    return evaluate_main(list(args.rest), archive_root=config.storage.archive_path, database_url=config.database_url)
