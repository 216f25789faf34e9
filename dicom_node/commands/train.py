"""``egfr-node train ...``: the training package's command line, on this node's archive and
database, with the ``[training]`` table of its config file (DESIGN.md: one of the front doors
from dicom_node into training)."""

from __future__ import annotations

import argparse
from typing import Any

from dicom_node.commands._common import load

__all__ = ["register", "train"]


def register(sub: Any) -> None:
    p = sub.add_parser("train", help="train and evaluate a fold ensemble (training package)", add_help=False)
    p.set_defaults(run=train, forwards=True)


def train(args: argparse.Namespace) -> int:
    from training.cli import main as train_main

    config = load(args)
    return train_main(list(args.rest), archive_root=config.storage.archive_path, database_url=config.database_url,
                      training_table=config.training)
