"""Registering a bundle folder in the node's database, the one way: the bundle checked as the
node loads it (manifest, every fold's sha256, every fold loads as this network's weights),
then recorded, never activated. ``egfr-node models``/the console (``dicom_node.bundles``) and
``train --register`` both call it."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from db import bundles
from pipeline.model.bundle import MANIFEST_FILE, BundleError, Manifest
from pipeline.uids import sha256_of

__all__ = ["register_bundle", "checked_registered"]


def register_bundle(sessions: sessionmaker[Session], folder: Path) -> tuple[bundles.BundleRecord, Manifest, bool]:
    """Check ``folder`` and record it, not active: (its record, its manifest, whether it is new).
    Raises BundleError naming what is wrong."""
    from pipeline.model.infer import check_bundle  # torch: only when a bundle is checked

    folder = Path(folder).resolve()
    manifest = check_bundle(folder)
    with sessions.begin() as session:
        record, created = bundles.register(session, name=manifest.name, version=manifest.version,
                                           device_uid=manifest.device_uid, bundle_path=str(folder),
                                           manifest_sha256=sha256_of(folder / MANIFEST_FILE))
    return record, manifest, created


def checked_registered(record: bundles.BundleRecord) -> Manifest:
    """A registered bundle checked again before it serves (activation, shadow): it still loads,
    and its manifest is the one registered. Raises BundleError."""
    from pipeline.model.infer import check_bundle

    folder = Path(record.bundle_path)
    manifest = check_bundle(folder)
    if sha256_of(folder / MANIFEST_FILE) != record.manifest_sha256:
        raise BundleError(f"bundle {record.id}: {folder / MANIFEST_FILE} changed since it was registered")
    return manifest
