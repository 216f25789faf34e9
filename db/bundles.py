"""The model bundles the node knows, and which one is active (at most one; a partial unique
index enforces it). The bundle folder itself is checked by ``pipeline.model.bundle`` before
anything here is called: this module only keeps the records.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.models import Model, utcnow

__all__ = ["BundleRecord", "BundleRegistryError", "register", "activate", "active", "list_bundles", "get_bundle",
           "set_shadow", "shadow"]

#: The reason a queued job waits while no bundle is active.
NO_ACTIVE_MODEL = "no active model"


class BundleRegistryError(ValueError):
    """A registry operation that cannot be done (unknown bundle id); one line."""


@dataclass(frozen=True)
class BundleRecord:
    id: int
    name: str
    version: str
    device_uid: str
    bundle_path: str
    manifest_sha256: str
    created_at: datetime
    active: bool
    activated_at: datetime | None = None
    activated_by: str | None = None
    activated_despite: str | None = None  # the guards a forced activation overrode
    shadow: bool = False

    @classmethod
    def of(cls, model: Model) -> BundleRecord:
        return cls(model.id, model.name, model.version, model.device_uid, model.bundle_path, model.manifest_sha256,
                   model.created_at, bool(model.active), model.activated_at, model.activated_by,
                   model.activated_despite or None, bool(model.shadow))


def register(
    session: Session, *, name: str, version: str, device_uid: str, bundle_path: str, manifest_sha256: str
) -> tuple[BundleRecord, bool]:
    """Record a bundle (not active). The same device UID registered again returns the
    existing record, updated to the given path: (record, created)."""
    existing = session.scalars(select(Model).where(Model.device_uid == device_uid)).one_or_none()
    if existing is not None:
        if existing.manifest_sha256 != manifest_sha256:
            raise BundleRegistryError(
                f"bundle device UID {device_uid} is registered (id {existing.id}) with another manifest; "
                "a retrained bundle needs a new device UID"
            )
        existing.bundle_path = bundle_path
        return BundleRecord.of(existing), False
    model = Model(name=name, version=version, device_uid=device_uid, bundle_path=bundle_path,
                  manifest_sha256=manifest_sha256, created_at=utcnow(), active=False)
    session.add(model)
    session.flush()
    return BundleRecord.of(model), True


def activate(session: Session, model_id: int, *, by: str = "", despite: str = "") -> BundleRecord:
    """Make ``model_id`` the active bundle (the previous one is deactivated in the same
    transaction), recording who did it and the guards it was activated over (``despite``).
    Jobs already running keep the bundle they were claimed with."""
    model = session.get(Model, model_id, with_for_update=True)
    if model is None:
        raise BundleRegistryError(f"no model bundle {model_id}")
    session.execute(update(Model).where(Model.active.is_(True), Model.id != model_id).values(active=False))
    session.flush()
    model.active, model.shadow = True, False  # a promoted shadow is no longer the shadow
    model.activated_at, model.activated_by, model.activated_despite = utcnow(), by[:64] or None, despite or None
    session.flush()
    return BundleRecord.of(model)


def set_shadow(session: Session, model_id: int | None) -> BundleRecord | None:
    """Make ``model_id`` the shadow bundle (the previous one stops being it), or clear the
    shadow with None. The active bundle cannot be its own shadow."""
    session.execute(update(Model).where(Model.shadow.is_(True)).values(shadow=False))
    session.flush()
    if model_id is None:
        return None
    model = session.get(Model, model_id, with_for_update=True)
    if model is None:
        raise BundleRegistryError(f"no model bundle {model_id}")
    if model.active:
        raise BundleRegistryError(f"bundle {model_id} is the active bundle; a shadow is a candidate beside it")
    model.shadow = True
    session.flush()
    return BundleRecord.of(model)


def shadow(session: Session) -> BundleRecord | None:
    model = session.scalars(select(Model).where(Model.shadow.is_(True))).one_or_none()
    return BundleRecord.of(model) if model else None


def active(session: Session) -> BundleRecord | None:
    model = session.scalars(select(Model).where(Model.active.is_(True))).one_or_none()
    return BundleRecord.of(model) if model else None


def get_bundle(session: Session, model_id: int) -> BundleRecord:
    model = session.get(Model, model_id)
    if model is None:
        raise BundleRegistryError(f"no model bundle {model_id}")
    return BundleRecord.of(model)


def list_bundles(session: Session) -> list[BundleRecord]:
    return [BundleRecord.of(m) for m in session.scalars(select(Model).order_by(Model.id))]
