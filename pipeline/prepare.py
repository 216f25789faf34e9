"""One study folder -> the model input, with nothing written (DESIGN.md data flow, steps
``pipeline.select`` + ``pipeline.preprocess``).

The node's worker, training's cohort cache and ``egfr-node preprocess`` all start here, so
they build the same input with the same parameters (train/serve skew is a defect).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.params import PreprocessParams
from pipeline.preprocess import ModelInput, preprocess
from pipeline.select import SelectionRules
from pipeline.study import LoadedStudy, load_study

__all__ = ["PreparedStudy", "prepare_study"]


@dataclass(frozen=True, eq=False)
class PreparedStudy:
    """The loaded study (image, lesion, what was selected) and its model input.

    ``model_input.provenance`` holds the selection record (``"selection"``) and the timings
    of every step, ``load_study`` first.
    """

    study: LoadedStudy
    model_input: ModelInput


def prepare_study(
    study_dir: Path,
    params: PreprocessParams | None = None,
    rules: SelectionRules | None = None,
    exclude_sop_uids: frozenset[str] = frozenset(),
) -> PreparedStudy:
    """Select, load and preprocess the study in ``study_dir``.

    Raises the ``PipelineError`` of whichever step fails (selection, volume, mask, preprocess).
    """
    start = time.perf_counter()
    study = load_study(Path(study_dir), rules, exclude_sop_uids)
    load_s = time.perf_counter() - start
    model_input = preprocess(study, params)
    provenance = dict(model_input.provenance)
    provenance["selection"] = study.selection
    provenance["timings_s"] = {"load_study": round(load_s, 4), **provenance.get("timings_s", {})}
    return PreparedStudy(study, ModelInput(model_input.array, provenance, model_input.lesion_mask))
