"""Core of ``egfr-node preprocess PATH [--out DIR]`` (issue 3 point 5).

The CLI (``dicom_node.cli``) resolves a study UID to its archive folder and calls
:func:`run`. Success: a short summary on stdout, exit 0. Any ``PipelineError`` (selection,
volume, mask, preprocessing): exactly one line on stderr, exit 1.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from pipeline.errors import PipelineError
from pipeline.outputs import CROPS_FILE, INPUTS_FILE, PROVENANCE_FILE, preprocess_study_to_folder
from pipeline.params import PreprocessParams

__all__ = ["run"]


def run(
    study_dir: Path,
    out_dir: Path,
    params: PreprocessParams | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Preprocess the study in ``study_dir`` into ``out_dir``; return the exit code (0 or 1)."""
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    study_dir = Path(study_dir)
    out_dir = Path(out_dir)
    if not study_dir.is_dir():
        print(f"error: study folder {study_dir} does not exist or is not a folder", file=stderr)
        return 1
    try:
        prov = preprocess_study_to_folder(study_dir, out_dir, params)
    except PipelineError as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {message}", file=stderr)
        return 1
    slices = prov["slices"]
    box = prov["crop_box"]
    lesion = prov["lesion"]
    timings = prov["timings_s"]
    centroid = ", ".join(f"{v:.1f}" for v in lesion["centroid_lps_mm"])
    lines = [
        f"study {prov['study_uid']}",
        f"  series {prov['series_uid']}",
        f"  mask {prov['mask_kind']} {prov['mask_sop_uid']} lesion {prov['lesion_number']} ({prov['lesion_label']})",
        f"  lesion {lesion['volume_cm3']:.2f} cm3, centroid LPS ({centroid}) mm",
        f"  slices k={slices['indices']} (mid {slices['mid']}), crop {box['side_mm'][0]:.1f} mm square",
        f"  brain mask {prov['brain_mask']['method']}, z-score mean {prov['zscore']['mean']:.2f} sd {prov['zscore']['sd']:.2f}",
        f"  time {sum(v for k, v in timings.items() if k not in ('total',)):.2f} s "
        f"(load {timings.get('load_study', 0.0):.2f}, N4 {timings.get('bias_field', 0.0):.2f})",
        f"  wrote {out_dir / INPUTS_FILE}, {out_dir / PROVENANCE_FILE}, {out_dir / CROPS_FILE}",
    ]
    print("\n".join(lines), file=stdout)
    return 0
