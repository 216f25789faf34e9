"""The archived instances a job reads and writes: a study's received files (the job's
input), and the node's own results (SR, SEG, card). Queries only; ``dicom_node.process`` has
no SQL of its own."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from db.models import Instance, Series, Study
from db.sop_classes import IMAGE_SOP_CLASSES

__all__ = ["received_study_paths", "received_study_inputs", "node_instance_paths", "instance_path"]


def received_study_paths(session: Session, study_uid: str) -> list[str]:
    """Archive paths (relative) of a study's received instances, in the order they were
    recorded: a job's input, never the node's own results."""
    return list(session.scalars(
        select(Instance.path).join(Series).join(Study)
        .where(Study.study_uid == study_uid, Instance.origin == "received").order_by(Instance.id)
    ))


def received_study_inputs(session: Session, study_uid: str) -> list[str]:
    """Archive paths (relative) of what the pipeline reads of a study: its received images and
    masks (by class, or a viewer outline by ``mask_kind``), in the order they were recorded;
    never a report, a capture or a PDF that came with it."""
    return list(session.scalars(
        select(Instance.path).join(Series).join(Study)
        .where(Study.study_uid == study_uid, Instance.origin == "received",
               or_(Instance.sop_class_uid.in_(sorted(IMAGE_SOP_CLASSES)), Instance.mask_kind.is_not(None)))
        .order_by(Instance.id)
    ))


def node_instance_paths(session: Session, sop_uids: Collection[str]) -> dict[str, str]:
    """The archive paths (relative) of those of these SOP Instance UIDs the node has already
    archived as its own results, by UID."""
    rows = session.execute(select(Instance.sop_instance_uid, Instance.path).where(
        Instance.sop_instance_uid.in_(list(sop_uids)), Instance.origin == "node"))
    return {uid: path for uid, path in rows}


def instance_path(session: Session, sop_uid: str) -> str | None:
    """The archive path (relative) of an instance, received or the node's own; None if absent."""
    return session.scalar(select(Instance.path).where(Instance.sop_instance_uid == sop_uid))
