"""``egfr-node models list | activate PATH|ID | show [ID]``: the bundles the node can run.

Activation checks the bundle before the database changes: the manifest parses, this node
can run it (format, network, input shape against its preprocessing parameters,
aggregation), every fold file has the sha256 the manifest lists, and every fold loads as
this network's weights (``weights_only=True``: nothing is unpickled), so a bundle whose
file is a pickle or another network's weights is refused here, not by every job after.
"""

from __future__ import annotations

import argparse
from typing import Any

from dicom_node.commands._common import with_runtime

import json
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from db import bundles
from pipeline.model.bundle import MANIFEST_FILE, BundleError, Manifest, sha256_of

__all__ = ["register_bundle", "activate", "list_lines", "show_text"]


def register_bundle(sessions: sessionmaker[Session], folder: Path) -> tuple[bundles.BundleRecord, Manifest]:
    """Check ``folder`` (runnable, every sha256) and record it, not active. Raises BundleError."""
    folder = Path(folder).resolve()
    manifest = _load_checked(folder)
    with sessions.begin() as session:
        record, _ = bundles.register(
            session, name=manifest.name, version=manifest.version, device_uid=manifest.device_uid,
            bundle_path=str(folder), manifest_sha256=sha256_of(folder / MANIFEST_FILE),
        )
    return record, manifest


def _load_checked(folder: Path) -> Manifest:
    """The manifest checked (runnable, every sha256), then each fold loaded once, weights only,
    and let go (BundleError naming the fold file that is not this network's weights)."""
    from pipeline.model.infer import load_fold_weights  # torch: only when a bundle is checked

    manifest = Manifest.load_checked(folder)
    for fold in sorted(manifest.folds, key=lambda f: f.fold):
        try:
            load_fold_weights(folder / fold.file, manifest.normalization, manifest.architecture)
        except BundleError as exc:
            raise BundleError(f"fold {fold.fold}: {exc}") from None
    return manifest


def activate(sessions: sessionmaker[Session], key: str) -> bundles.BundleRecord:
    """Activate a bundle named by folder (registered first) or by its id; checked again either way."""
    if Path(key).is_dir():
        record, _ = register_bundle(sessions, Path(key))
    elif key.isdigit():
        with sessions() as session:
            record = bundles.get_bundle(session, int(key))
        folder = Path(record.bundle_path)
        _load_checked(folder)
        if sha256_of(folder / MANIFEST_FILE) != record.manifest_sha256:
            raise BundleError(f"bundle {record.id}: {folder / MANIFEST_FILE} changed since it was registered")
    else:
        raise BundleError(f"{key} is neither a bundle folder nor a registered bundle id")
    with sessions.begin() as session:
        return bundles.activate(session, record.id)


def list_lines(sessions: sessionmaker[Session]) -> list[str]:
    with sessions() as session:
        records = bundles.list_bundles(session)
    lines = [f"{'ID':>3}  {'ACTIVE':<6}  {'NAME':<24}  {'VERSION':<20}  {'REGISTERED (UTC)':<19}  PATH"]
    for r in records:
        lines.append(f"{r.id:>3}  {'yes' if r.active else '':<6}  {r.name[:24]:<24}  {r.version[:20]:<20}  "
                     f"{r.created_at:%Y-%m-%d %H:%M:%S}  {r.bundle_path}")
    if not records:
        lines.append("(no model bundle registered: `egfr-node models activate PATH`)")
    return lines


def show_text(sessions: sessionmaker[Session], model_id: int | None) -> str:
    """The bundle's record and manifest summary (the active bundle when no id is given)."""
    with sessions() as session:
        record = bundles.get_bundle(session, model_id) if model_id is not None else bundles.active(session)
    if record is None:
        raise bundles.BundleRegistryError(bundles.NO_ACTIVE_MODEL)
    manifest = Manifest.read(Path(record.bundle_path))
    summary = {
        "id": record.id, "active": record.active, "path": record.bundle_path, "name": manifest.name,
        "version": manifest.version, "device_uid": manifest.device_uid, "created": manifest.created,
        "folds": len(manifest.folds), "input_shape": list(manifest.input_shape),
        "normalization": manifest.normalization, "slice_aggregation": manifest.slice_aggregation,
        "fold_aggregation": manifest.fold_aggregation, "threshold": manifest.threshold,
        "preprocessing": manifest.preprocessing.to_dict(), "metrics": manifest.metrics,
        "training": {k: v for k, v in manifest.training.items() if k not in ("splits",)},
    }
    return json.dumps(summary, indent=2, default=str)


def register(sub: Any) -> None:
    p = sub.add_parser("models", help="model bundles: list, activate, show")
    models = p.add_subparsers(dest="models_command", required=True)
    models.add_parser("list", help="registered bundles").set_defaults(run=run)
    m = models.add_parser("activate", help="check, register and activate a bundle (folder or id)")
    m.add_argument("key", metavar="PATH|ID")
    m.set_defaults(run=run)
    m = models.add_parser("show", help="a bundle's manifest summary (default: the active one)")
    m.add_argument("model_id", nargs="?", type=int)
    m.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """``egfr-node models list | activate PATH|ID | show [ID]``."""

    def do(runtime: Any) -> int:
        if args.models_command == "list":
            print("\n".join(list_lines(runtime.sessions)))
        elif args.models_command == "activate":
            record = activate(runtime.sessions, args.key)
            print(f"model bundle {record.id} ({record.name} {record.version}) is active; new jobs use it")
        else:
            print(show_text(runtime.sessions, args.model_id))
        return 0

    return with_runtime(args, do)
