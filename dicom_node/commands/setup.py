"""``egfr-node init`` and ``egfr-node db upgrade``: a commented config, the data folder and
the database at this version's schema."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dicom_node.commands._common import load
from dicom_node.config import DEFAULT_CONFIG_PATH, DEFAULT_CONFIG_TEXT, config_path_from_env, load_config

__all__ = ["register", "init", "db_upgrade"]


def register(sub: Any) -> None:
    p = sub.add_parser("init", help="write a default config, create the data folder and database")
    p.add_argument("--data-dir", default="./egfr-data", help="data folder (default ./egfr-data)")
    p.add_argument("--force", action="store_true", help="rewrite an existing config file")
    p.set_defaults(run=init)
    p = sub.add_parser("db", help="database maintenance")
    db = p.add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="migrate to this version's schema").set_defaults(run=db_upgrade)


def _upgrade(database_url: str) -> str:
    from db.engine import database_errors
    from db.migrate import upgrade

    with database_errors(database_url):
        return upgrade(database_url)


def init(args: argparse.Namespace) -> int:
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
    revision = _upgrade(config.database_url)
    print(f"data folder {config.storage.data_path}")
    print(f"database at schema {revision}")
    return 0


def db_upgrade(args: argparse.Namespace) -> int:
    print(f"database at schema {_upgrade(load(args).database_url)}")
    return 0
