"""``egfr-node models list | activate PATH|ID [--force] | shadow PATH|ID|--clear | promote | show [ID]``:
the bundles the node can run.

Activation (:mod:`dicom_node.bundles`, shared with the console) checks the bundle before the
database changes: the manifest parses, this node can run it (format, network, input shape
against its preprocessing parameters, aggregation), every fold file has the sha256 the
manifest lists, and every fold loads as this network's weights (``weights_only=True``:
nothing is unpickled), so a bundle whose file is a pickle or another network's weights is
refused here, not by every job after. Then its guards: a shuffled-label control, a frozen
random body, a threshold outside [0.05, 0.95] or a cross-validated AUC not shown to beat
chance is refused with each reason; ``--force`` activates it anyway, audited.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dicom_node.commands._common import with_runtime

import json
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from db import bundles
from pipeline.model.bundle import Manifest

__all__ = ["list_lines", "show_text", "shell_user"]


def shell_user() -> str:
    """Who acts from the shell, for the audit trail: ``shell:<login name>``."""
    import getpass

    try:
        return f"shell:{getpass.getuser()}"
    except (KeyError, OSError):
        return "shell"


def list_lines(sessions: sessionmaker[Session]) -> list[str]:
    with sessions() as session:
        records = bundles.list_bundles(session)
    lines = [f"{'ID':>3}  {'ACTIVE':<6}  {'NAME':<24}  {'VERSION':<20}  {'REGISTERED (UTC)':<19}  PATH"]
    for r in records:
        state = ('yes' + ('!' if r.activated_despite else '')) if r.active else ('shadow' if r.shadow else '')
        lines.append(f"{r.id:>3}  {state:<6}  {r.name[:24]:<24}  "
                     f"{r.version[:20]:<20}  {r.created_at:%Y-%m-%d %H:%M:%S}  {r.bundle_path}")
        if r.active and r.activated_despite:
            lines.append(f"     ! activated by {r.activated_by} despite: {r.activated_despite}")
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
        "calibration": manifest.calibration_map.describe(), "threshold_rule": manifest.threshold_rule,
        "activated_by": record.activated_by, "activated_despite": record.activated_despite,
        "concerns": manifest.activation_concerns(),
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
    m.add_argument("--force", action="store_true",
                   help="activate despite the guards (shuffled labels, random frozen body, threshold, AUC); audited")
    m.set_defaults(run=run)
    m = models.add_parser("shadow", help="run a candidate bundle beside the active one, never sent (folder or id)")
    m.add_argument("key", metavar="PATH|ID", nargs="?")
    m.add_argument("--clear", action="store_true", help="no shadow bundle")
    m.set_defaults(run=run)
    m = models.add_parser("promote", help="make the shadow bundle the active one (its guards apply)")
    m.add_argument("--force", action="store_true", help="promote despite the guards; audited")
    m.set_defaults(run=run)
    m = models.add_parser("show", help="a bundle's manifest summary (default: the active one)")
    m.add_argument("model_id", nargs="?", type=int)
    m.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """``egfr-node models list | activate | shadow | promote | show``."""

    def do(runtime: Any) -> int:
        if args.models_command == "list":
            print("\n".join(list_lines(runtime.sessions)))
        elif args.models_command == "activate":
            from dicom_node.bundles import ActivationRefused, activate

            try:
                record = activate(runtime.sessions, args.key, user=shell_user(), force=args.force)
            except ActivationRefused as exc:
                print(f"egfr-node: bundle {args.key} refused:", file=sys.stderr)
                for concern in exc.concerns:
                    print(f"  - {concern}", file=sys.stderr)
                print("egfr-node: --force activates it anyway (audited, and said in every SR)", file=sys.stderr)
                return 1
            print(f"model bundle {record.id} ({record.name} {record.version}) is active; new jobs use it")
            if record.activated_despite:
                print(f"FORCED despite: {record.activated_despite}")
        elif args.models_command == "shadow":
            from dicom_node.bundles import set_shadow

            if (args.key is None) == (not args.clear):
                print("egfr-node: give a bundle (PATH or ID) or --clear", file=sys.stderr)
                return 1
            shadow = set_shadow(runtime.sessions, None if args.clear else args.key, user=shell_user())
            print(f"model bundle {shadow.id} ({shadow.name} {shadow.version}) is the shadow: it runs on each new study "
                  "after the active one; its answers are stored, never sent" if shadow else "no shadow bundle")
        elif args.models_command == "promote":
            from dicom_node.bundles import ActivationRefused, promote

            try:
                record = promote(runtime.sessions, user=shell_user(), force=args.force)
            except ActivationRefused as exc:
                print("egfr-node: the shadow bundle's guards refuse it:", file=sys.stderr)
                for concern in exc.concerns:
                    print(f"  - {concern}", file=sys.stderr)
                print("egfr-node: --force promotes it anyway (audited, and said in every SR)", file=sys.stderr)
                return 1
            print(f"model bundle {record.id} ({record.name} {record.version}) promoted: active; new jobs use it")
        else:
            print(show_text(runtime.sessions, args.model_id))
        return 0

    return with_runtime(args, do)
