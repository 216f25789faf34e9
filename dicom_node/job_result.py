"""What a finished job keeps: frozen records built once by :mod:`dicom_node.process` (or by
the worker for a re-send), written to the job row as JSON by :meth:`to_json`.

The JSON is the record the console, the API and ``evaluate --served`` read back; its keys are
those of these fields (``selection.mask`` and ``selection.tracking_uid`` only for a viewer
outline, ``model.id`` once the worker knows which bundle row ran).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

__all__ = ["JobResult", "ModelRef", "ResendResult", "ResultInstances", "Selection", "ShadowResult",
           "result_sop_uids", "status_word"]


@dataclass(frozen=True)
class ModelRef:
    """The bundle that answered: its manifest's name, version and device UID, and its row."""

    name: str
    version: str
    device_uid: str
    id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if key != "id" or value is not None}


@dataclass(frozen=True)
class ResultInstances:
    """The SOP Instance UIDs of a job's results: the SR, the SEG derived from an RTSTRUCT or an
    outline (None when the mask was a SEG), the result card (None when cards are off)."""

    sr: str
    seg: str | None = None
    card: str | None = None

    def sop_uids(self) -> list[str]:
        """In sending order: the derived SEG first (the SR references it), the SR, the card."""
        return [uid for uid in (self.seg, self.sr, self.card) if uid]

    def to_json(self) -> dict[str, str | None]:
        return {"sr": self.sr, "seg": self.seg, "card": self.card}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ResultInstances:
        return cls(sr=str(data["sr"]), seg=data.get("seg"), card=data.get("card"))


@dataclass(frozen=True)
class Selection:
    """Which series, mask and lesion the answer is about, and the slices that were scored."""

    series_uid: str
    mask_sop_uid: str
    mask_kind: str
    lesion_number: int
    lesion_label: str | None
    slices: tuple[int, ...]
    mid_slice: int
    #: a viewer outline's description and tracking UID (None for a SEG or an RTSTRUCT)
    mask: str | None = None
    tracking_uid: str | None = None

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record["slices"] = list(self.slices)
        if self.mask is None and self.tracking_uid is None:
            del record["mask"], record["tracking_uid"]
        return record


def _rounded(values: Sequence[float]) -> tuple[float, ...]:
    return tuple(round(float(v), 6) for v in values)


def _rounded_answer(scores: Sequence[Sequence[float]], probability: float, raw_score: float) -> dict[str, Any]:
    """A prediction's numbers to six places, as the job and shadow records keep them."""
    return {"scores": tuple(_rounded(row) for row in scores), "probability": round(float(probability), 6),
            "raw_score": round(float(raw_score), 6)}


def status_word(positive: bool) -> str:
    """The answer as the record, the log and the console say it."""
    return "positive" if positive else "negative"


@dataclass(frozen=True)
class JobResult:
    """The answer of one job, and how it was reached (the record an SR's numbers come from)."""

    model: ModelRef
    selection: Selection
    #: per fold model, per scored slice: the probability the fold gave the slice ([K][S])
    scores: tuple[tuple[float, ...], ...]
    probability: float
    positive: bool
    calibrated: bool
    raw_score: float
    fold_probabilities: tuple[float, ...]
    calibration: str
    threshold: float
    threshold_rule: str
    contrast: str
    slice_aggregation: str
    fold_aggregation: str
    fold_scale: str
    instances: ResultInstances
    timings_s: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, *, scores: Sequence[Sequence[float]], probability: float, raw_score: float,
           fold_probabilities: Sequence[float], **rest: Any) -> JobResult:
        """Rounded to six places, as the record keeps them."""
        return cls(**_rounded_answer(scores, probability, raw_score), fold_probabilities=_rounded(fold_probabilities),
                   **rest)

    @property
    def status(self) -> str:
        return status_word(self.positive)

    def answered_by(self, model_id: int) -> JobResult:
        return replace(self, model=replace(self.model, id=model_id))

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model.to_json(),
            "selection": self.selection.to_json(),
            "scores": [list(row) for row in self.scores],
            "probability": self.probability,
            "status": self.status,
            "calibrated": self.calibrated,
            "raw_score": self.raw_score,
            "fold_probabilities": list(self.fold_probabilities),
            "calibration": self.calibration,
            "threshold": self.threshold,
            "threshold_rule": self.threshold_rule,
            "contrast": self.contrast,
            "slice_aggregation": self.slice_aggregation,
            "fold_aggregation": self.fold_aggregation,
            "fold_scale": self.fold_scale,
            "instances": self.instances.to_json(),
            "timings_s": dict(self.timings_s),
        }


@dataclass(frozen=True)
class ResendResult:
    """A re-send job's record: the results of ``resend_of_job``, sent again unchanged."""

    resend_of_job: int
    instances: ResultInstances
    probability: float | None
    status: str | None

    def to_json(self) -> dict[str, Any]:
        return {"resend_of_job": self.resend_of_job, "instances": self.instances.to_json(),
                "probability": self.probability, "status": self.status}


@dataclass(frozen=True)
class ShadowResult:
    """The shadow bundle's answer on a study: stored beside the job, never archived nor sent."""

    model: ModelRef
    probability: float
    positive: bool
    calibrated: bool
    raw_score: float
    threshold: float
    scores: tuple[tuple[float, ...], ...]
    timings_s: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, *, scores: Sequence[Sequence[float]], probability: float, raw_score: float,
           **rest: Any) -> ShadowResult:
        """Rounded to six places, as :meth:`JobResult.of`."""
        return cls(**_rounded_answer(scores, probability, raw_score), **rest)

    @property
    def status(self) -> str:
        return status_word(self.positive)

    def answered_by(self, model_id: int) -> ShadowResult:
        return replace(self, model=replace(self.model, id=model_id))

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model.to_json(), "probability": self.probability, "status": self.status,
                "calibrated": self.calibrated, "raw_score": self.raw_score, "threshold": self.threshold,
                "scores": [list(row) for row in self.scores], "timings_s": dict(self.timings_s)}


def result_sop_uids(record: Mapping[str, Any] | None) -> list[str]:
    """The instances a stored job record sends (:meth:`ResultInstances.sop_uids`); none when
    the record has no results."""
    instances = (record or {}).get("instances") or {}
    if not instances.get("sr"):
        return []
    return ResultInstances.from_json(instances).sop_uids()
