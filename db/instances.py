"""The archived instances a job reads and writes: a study's received files (the job's
input), and the node's own results (SR, SEG, card). Queries only; ``dicom_node.process`` has
no SQL of its own."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Instance, Series, Study

__all__ = ["received_study_paths", "recorded_node_instances"]


def received_study_paths(session: Session, study_uid: str) -> list[str]:
    """Archive paths (relative) of a study's received instances, in the order they were
    recorded: a job's input, never the node's own results."""
    return list(session.scalars(
        select(Instance.path).join(Series).join(Study)
        .where(Study.study_uid == study_uid, Instance.origin == "received").order_by(Instance.id)
    ))


def recorded_node_instances(session: Session, sop_uids: Collection[str]) -> set[str]:
    """Which of these SOP Instance UIDs the node has already archived as its own results."""
    return set(session.scalars(select(Instance.sop_instance_uid).where(
        Instance.sop_instance_uid.in_(list(sop_uids)), Instance.origin == "node")))
