"""One study (a folder, or the list of its files) -> the model input, with nothing written (DESIGN.md data flow, steps
``pipeline.load.select`` + ``pipeline.prep.preprocess``).

The node's worker, training's cohort cache and ``egfr-node preprocess`` all start here, so
they build the same input with the same parameters (train/serve skew is a defect).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.load.attributes import acquisition_attributes
from pipeline.prep.bias_cache import BiasFieldCache
from pipeline.prep.params import PreprocessParams
from pipeline.prep.preprocess import ModelInput, preprocess
from pipeline.load.select import SelectionRules
from pipeline.load.study import LoadedStudy, load_study

__all__ = ["PreparedStudy", "prepare_study"]


@dataclass(frozen=True, eq=False)
class PreparedStudy:
    """The loaded study (image, lesion, what was selected) and its model input.

    ``model_input.provenance`` holds the selection record (``"selection"``), the chosen series
    and mask with how the series was acquired (``"chosen"``: UIDs, mask kind and
    :func:`pipeline.load.attributes.acquisition_attributes`) and the timings of every step,
    ``load_study`` first.
    """

    study: LoadedStudy
    model_input: ModelInput


def prepare_study(
    study: Path | Sequence[Path],
    params: PreprocessParams | None = None,
    rules: SelectionRules | None = None,
    bias_cache: BiasFieldCache | None = None,
) -> PreparedStudy:
    """Select, load and preprocess one study: a folder, or exactly the files listed
    (:func:`pipeline.load.study.load_study`). ``bias_cache``: brain masks and N4 fields fitted
    before (:mod:`pipeline.prep.bias_cache`); the input is the same with or without it.

    Raises the ``PipelineError`` of whichever step fails (selection, volume, mask, preprocess).
    """
    start = time.perf_counter()
    loaded = load_study(study, rules)
    load_s = time.perf_counter() - start
    model_input = preprocess(loaded, params, bias_cache)
    provenance = dict(model_input.provenance)
    provenance["selection"] = loaded.selection
    provenance["chosen"] = {"series_uid": loaded.series_uid, "mask_sop_uid": loaded.mask_sop_uid, "mask_kind": loaded.mask_kind,
                            **(acquisition_attributes(loaded.series_instances[0].header) if loaded.series_instances else {})}
    provenance["timings_s"] = {"load_study": round(load_s, 4), **provenance.get("timings_s", {})}
    return PreparedStudy(loaded, ModelInput(model_input.array, provenance, model_input.lesion_mask))
