"""One study folder -> ``inputs.npz``, ``provenance.json`` and ``crops.png`` (issue 3 point 5).

``inputs.npz`` holds ``array`` (float32 ``[5, 3, 96, 96]``), ``slice_indices`` (int64 k of
each slice) and ``slice_z_mm``; ``provenance.json`` what was chosen (series, mask, lesion,
selection record), the slices, the crop box in voxels and mm, the lesion centroid in
patient mm, the timings per step (``write_outputs``: the two other files; provenance.json is
written once, last) and the preprocessing parameters.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dicom_node.commands.contact_sheet import write_contact_sheet
from pipeline.prep.params import PreprocessParams
from pipeline.prepare import prepare_study
from pipeline.prep.preprocess import ModelInput

if TYPE_CHECKING:
    from pipeline.load.select import SelectionRules

__all__ = ["INPUTS_FILE", "PROVENANCE_FILE", "CROPS_FILE", "preprocess_study_to_folder", "write_outputs"]

logger = logging.getLogger(__name__)

INPUTS_FILE = "inputs.npz"
PROVENANCE_FILE = "provenance.json"
CROPS_FILE = "crops.png"


def _write_files(model_input: ModelInput, out_dir: Path) -> tuple[dict[str, Path], dict[str, Any]]:
    """Write the three files; return their paths and the provenance as written.

    ``inputs.npz`` and ``crops.png`` first, then ``provenance.json`` once, with the time the
    other two took as ``timings_s.write_outputs`` (its own write is not timed).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    prov = dict(model_input.provenance)
    slices = prov.get("slices", {})
    inputs = out_dir / INPUTS_FILE
    np.savez_compressed(
        inputs,
        array=model_input.array,
        slice_indices=np.asarray(slices.get("indices", []), dtype=np.int64),
        slice_z_mm=np.asarray(slices.get("z_mm", []), dtype=np.float64),
    )
    crops = write_contact_sheet(model_input.array, model_input.lesion_mask, prov, out_dir / CROPS_FILE)
    prov["timings_s"] = {**prov.get("timings_s", {}), "write_outputs": round(time.perf_counter() - start, 4)}
    provenance = out_dir / PROVENANCE_FILE
    provenance.write_text(json.dumps(prov, indent=2, allow_nan=False) + "\n")
    return {"inputs": inputs, "provenance": provenance, "crops": crops}, prov


def write_outputs(model_input: ModelInput, out_dir: Path) -> dict[str, Path]:
    """Write the three files of one preprocessed study into ``out_dir`` (created)."""
    return _write_files(model_input, out_dir)[0]


def preprocess_study_to_folder(
    study_dir: Path,
    out_dir: Path,
    params: PreprocessParams | None = None,
    rules: SelectionRules | None = None,
) -> dict[str, Any]:
    """Load the study in ``study_dir``, preprocess it, write the three files; return the provenance.

    Raises the ``PipelineError`` of whichever step fails (selection, volume, mask, preprocess).
    """
    prepared = prepare_study(Path(study_dir), params, rules)
    _, prov = _write_files(prepared.model_input, out_dir)
    logger.info("study %s preprocessed into %s", prepared.study.study_uid, out_dir)
    return prov
