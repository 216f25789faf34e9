"""The bundle lifecycle the command line and the console share: register a bundle folder
(``pipeline.model.registry``, which ``train --register`` uses too: manifest, every sha256,
every fold loads as this network's weights) and activate
it, with its guards (issue 27, item 5).

Activation refuses a bundle whose ``Manifest.activation_concerns`` are not empty (a
shuffled-label control, a frozen random body, a threshold outside [0.05, 0.95], a
cross-validated AUC whose CI does not exclude 0.5, or none recorded), naming each; ``force``
activates it anyway. Every activation is written to the audit trail with who did it, and a
forced one records what it overrode on the bundle's row: the console shows it and the SR
says it ("activated despite: ...").
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from db import audit, bundles
from pipeline.model import registry
from pipeline.model.bundle import BundleError, Manifest

__all__ = ["ActivationRefused", "register_bundle", "activate", "set_shadow", "promote"]


class ActivationRefused(BundleError):
    """The bundle's guards refuse it; ``concerns`` lists each reason (``force`` overrides)."""

    def __init__(self, key: str, concerns: list[str]) -> None:
        self.concerns = concerns
        super().__init__(f"bundle {key} refused: " + "; ".join(concerns) + " (--force activates it anyway, audited)")


def register_bundle(sessions: sessionmaker[Session], folder: Path) -> tuple[bundles.BundleRecord, Manifest]:
    """Check ``folder`` and record it, not active (``pipeline.model.registry``). Raises BundleError."""
    record, manifest, _ = registry.register_bundle(sessions, folder)
    return record, manifest


def activate(sessions: sessionmaker[Session], key: str, *, user: str, force: bool = False,
             remote: str = "") -> bundles.BundleRecord:
    """Activate a bundle named by folder (registered first) or by its id, checked again either
    way; refused (ActivationRefused) when it has concerns and ``force`` is not given. Audited
    as ``user`` (refusals too)."""
    try:
        if Path(key).is_dir():
            record, manifest = register_bundle(sessions, Path(key))
        elif key.isdigit():
            with sessions() as session:
                record = bundles.get_bundle(session, int(key))
            manifest = registry.checked_registered(record)
        else:
            raise BundleError(f"{key} is neither a bundle folder nor a registered bundle id")
        concerns = manifest.activation_concerns()
        if concerns and not force:
            raise ActivationRefused(str(record.id), concerns)
    except (BundleError, bundles.BundleRegistryError) as exc:
        with sessions.begin() as session:
            audit.record(session, user, "activate", f"bundle {key}"[:128], f"refused: {exc}", remote)
        raise
    despite = "; ".join(concerns)
    with sessions.begin() as session:
        activated = bundles.activate(session, record.id, by=user, despite=despite)
        outcome = f"bundle {activated.id} ({activated.name} {activated.version}) active" + (
            f"; FORCED despite: {despite}" if despite else "") + (" (was the shadow: promoted)" if record.shadow else "")
        audit.record(session, user, "activate --force" if despite else "activate", f"bundle {activated.id}", outcome,
                     remote)
    return activated


def set_shadow(sessions: sessionmaker[Session], key: str | None, *, user: str, remote: str = "") -> bundles.BundleRecord | None:
    """Make a bundle (folder, registered first, or id; checked as for activation) the shadow:
    it runs on each new study after the active bundle's results, and its answers are stored,
    never sent. A shadow answers no patient, so its guards do not refuse it. ``key`` None
    clears the shadow. Audited."""
    try:
        if key is None:
            record = None
        elif Path(key).is_dir():
            record, _ = register_bundle(sessions, Path(key))
        elif key.isdigit():
            with sessions() as session:
                record = bundles.get_bundle(session, int(key))
            registry.checked_registered(record)
        else:
            raise BundleError(f"{key} is neither a bundle folder nor a registered bundle id")
        with sessions.begin() as session:
            done = bundles.set_shadow(session, record.id if record else None)
            audit.record(session, user, "shadow", f"bundle {key}"[:128] if key else "none",
                         f"bundle {done.id} ({done.name} {done.version}) is the shadow" if done else "no shadow", remote)
        return done
    except (BundleError, bundles.BundleRegistryError) as exc:
        with sessions.begin() as session:
            audit.record(session, user, "shadow", f"bundle {key}"[:128], f"refused: {exc}", remote)
        raise


def promote(sessions: sessionmaker[Session], *, user: str, force: bool = False, remote: str = "") -> bundles.BundleRecord:
    """Make the shadow bundle the active one (its guards apply, as to any activation); audited."""
    with sessions() as session:
        candidate = bundles.shadow(session)
    if candidate is None:
        raise BundleError("no shadow bundle to promote (egfr-node models shadow BUNDLE sets one)")
    return activate(sessions, str(candidate.id), user=user, force=force, remote=remote)
