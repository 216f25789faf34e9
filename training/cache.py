"""Preprocessed model inputs on disk, so a second run does not redo N4.

Each study goes through the node's own :func:`pipeline.prepare.prepare_study` with the
bundle's :class:`PreprocessParams` (train/serve skew is a defect). The array is stored as
``<cache>/<params hash>/<study uid>.npz`` (with the provenance as JSON beside it): the key is
the study and the exact preprocessing parameters. A study that fails is not cached (it is
tried again next run) but returned with its one-line reason and written to
``failures.json``, so the report lists it; nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from pipeline.errors import PipelineError
from pipeline.prep.params import PreprocessParams
from training.cohort import Cohort, CohortEntry
from pipeline.uids import is_uid

if TYPE_CHECKING:
    from pipeline.load.select import SelectionRules
    from pipeline.prepare import PreparedStudy

__all__ = ["params_key", "PreparedCohort", "StudyFailure", "prepare_cohort"]

log = logging.getLogger(__name__)


def params_key(params: PreprocessParams) -> str:
    """A short hash of every preprocessing parameter (the cache folder's name)."""
    text = json.dumps(params.to_dict(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class StudyFailure:
    patient_id: str
    study_uid: str
    reason: str


@dataclass
class PreparedCohort:
    """The studies that made it: inputs ``[N, S, C, H, W]``, labels ``[N]``, their entries;
    and the ones that did not, with reasons."""

    entries: list[CohortEntry]
    inputs: np.ndarray
    labels: np.ndarray
    failures: list[StudyFailure] = field(default_factory=list)
    cached: int = 0
    computed: int = 0
    #: per entry, the chosen series and mask and how the series was acquired
    #: (``provenance["chosen"]``; {} for an older cache file)
    attributes: list[dict[str, Any]] = field(default_factory=list)
    #: per entry, the lesion mask on the model input's pixels ``[S, H, W]`` (None from an older cache file)
    lesion_masks: list[np.ndarray | None] = field(default_factory=list)


def _rules_for(entry: CohortEntry) -> SelectionRules | None:
    if entry.lesion_label is None:
        return None
    from pipeline.load.select import SelectionRules  # with prepare_study: SimpleITK only for uncached studies

    return SelectionRules(lesion_label_pattern=f"^{re.escape(entry.lesion_label)}$", exclude_label_pattern=r"(?!)",
                          lesion_fallback_largest=False)


def _inputs_key(entry: CohortEntry) -> str:
    """What besides the study and the parameters decides its input: the lesion the cohort names,
    and the node's received files (a corrected mask is a new file), as "-<12 hex digits>"; ""
    for a study folder without a lesion label (the name it always had: prepared caches carried
    without their DICOM folders still match)."""
    parts = [entry.lesion_label or ""] + sorted(str(path) for path in entry.files or ())
    if parts == [""]:
        return ""
    return "-" + hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()[:12]


def _atomic_save(path: Path, array: np.ndarray, provenance: dict[str, Any], lesion_mask: np.ndarray | None = None) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    record = np.array(json.dumps(provenance, default=str))
    with open(tmp, "wb") as handle:
        if lesion_mask is None:
            np.savez(handle, array=array, provenance=record)
        else:
            np.savez(handle, array=array, provenance=record, lesion_mask=np.asarray(lesion_mask, dtype=np.float32))
    os.replace(tmp, path)


def prepare_cohort(
    cohort: Cohort,
    params: PreprocessParams,
    cache_dir: Path | None,
    progress: Callable[[int, int], None] | None = None,
    prepare: Callable[..., PreparedStudy] | None = None,
) -> PreparedCohort:
    """Model inputs for every study of ``cohort`` (from the cache where present).

    ``prepare`` defaults to :func:`pipeline.prepare.prepare_study`, imported only when a study
    is not cached (so a cached cohort trains where SimpleITK is not installed, e.g. a GPU box).
    """
    folder = Path(cache_dir) / params_key(params) if cache_dir is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "params.json").write_text(json.dumps(params.to_dict(), indent=2, sort_keys=True))
    kept: list[CohortEntry] = []
    arrays: list[np.ndarray] = []
    attributes: list[dict[str, Any]] = []
    masks: list[np.ndarray | None] = []
    failures: list[StudyFailure] = []
    cached = computed = 0
    for index, entry in enumerate(cohort.entries):
        target = folder / f"{entry.study_uid}{_inputs_key(entry)}.npz" if folder is not None and is_uid(entry.study_uid) \
            else None
        array: np.ndarray | None = None
        mask: np.ndarray | None = None
        series: dict[str, Any] = {}
        if target is not None and target.is_file():
            try:
                with np.load(target) as data:
                    array = data["array"].astype(np.float32)
                    mask = data["lesion_mask"] if "lesion_mask" in data else None
                    if "provenance" in data:
                        series = json.loads(str(data["provenance"])).get("chosen") or {}
                cached += 1
            except (OSError, ValueError, KeyError):
                array = None  # unreadable cache file: compute again
        if array is None:
            try:
                if entry.files is not None and not entry.files:
                    raise PipelineError(f"study {entry.study_uid} has no received instance in the node's archive")
                if entry.files is None and not entry.folder.is_dir():
                    raise PipelineError(f"study folder {entry.folder} does not exist")
                if prepare is None:
                    from pipeline.prepare import prepare_study

                    prepare = prepare_study
                prepared = prepare(list(entry.files) if entry.files is not None else entry.folder, params,
                                   _rules_for(entry))
                array = np.asarray(prepared.model_input.array, dtype=np.float32)
                mask = prepared.model_input.lesion_mask
                series = prepared.model_input.provenance.get("chosen") or {}
                computed += 1
                if target is not None:
                    _atomic_save(target, array, prepared.model_input.provenance, mask)
            except PipelineError as exc:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                failures.append(StudyFailure(entry.patient_id, entry.study_uid, f"{type(exc).__name__}: {reason}"))
                log.warning("study %s failed preprocessing: %s", entry.study_uid, reason,
                            extra={"study_uid": entry.study_uid, "reason": reason})
        if array is not None:
            expected = (params.slice_count, params.channels, params.output_size, params.output_size)
            if array.shape != expected:
                failures.append(StudyFailure(entry.patient_id, entry.study_uid, f"model input has shape {list(array.shape)}, expected {list(expected)}"))
            else:
                kept.append(entry)
                arrays.append(array)
                attributes.append(series)
                masks.append(mask)
        if progress is not None:
            progress(index + 1, len(cohort.entries))
    if folder is not None:
        (folder / "failures.json").write_text(json.dumps([f.__dict__ for f in failures], indent=2))
    shape = (0, params.slice_count, params.channels, params.output_size, params.output_size)
    inputs = np.stack(arrays) if arrays else np.zeros(shape, np.float32)
    labels = np.array([e.label for e in kept], dtype=np.int64)
    return PreparedCohort(kept, inputs, labels, failures, cached, computed, attributes, masks)
