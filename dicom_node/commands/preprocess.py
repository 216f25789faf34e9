"""``egfr-node preprocess PATH|STUDY_UID [--out DIR]``: what the model will see of one study
(inputs.npz, provenance.json, crops.png), from a folder or a study in the archive; and
``egfr-node phantom`` (the phantom package's command line).

Success: a short summary on stdout, exit 0. Any ``PipelineError`` (selection, volume, mask,
preprocessing): exactly one line on stderr, exit 1."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

from dicom_node.commands._common import fail, load
from pipeline.errors import PipelineError
from pipeline.prep.params import PreprocessParams

__all__ = ["register", "preprocess", "preprocess_folder", "phantom"]


def register(sub: Any) -> None:
    p = sub.add_parser("preprocess", help="model inputs, provenance and a contact sheet for one study")
    p.add_argument("path", help="a folder of one study's DICOM files, or a Study Instance UID in the archive")
    p.add_argument("--out", help="output folder (default ./preprocess-out, or ./preprocess-out/<study UID>)")
    p.set_defaults(run=preprocess)
    p = sub.add_parser("phantom", help="write a phantom cohort of DICOM studies", add_help=False)
    p.set_defaults(run=phantom, forwards=True)


def preprocess(args: argparse.Namespace) -> int:
    path = Path(args.path)
    out = Path(args.out) if args.out else Path("preprocess-out")
    if not path.exists():
        # Not a folder: a Study Instance UID in the archive.
        from pipeline.uids import InvalidUID, check_uid

        try:
            study_uid = check_uid("study", args.path)
        except InvalidUID:
            return fail(f"{args.path} is neither a folder nor a Study Instance UID")
        path = load(args).storage.archive_path / study_uid
        if not path.is_dir():
            return fail(f"study {study_uid} is not in the archive ({path})")
        out = Path(args.out) if args.out else Path("preprocess-out") / study_uid
    return preprocess_folder(path, out)


def phantom(args: argparse.Namespace) -> int:
    """``egfr-node phantom OUT ...``: the phantom package's command line."""
    from pipeline.phantom.cli import main as phantom_main

    return phantom_main(list(args.rest))


def preprocess_folder(
    study_dir: Path,
    out_dir: Path,
    params: PreprocessParams | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Preprocess the study in ``study_dir`` into ``out_dir``; return the exit code (0 or 1)."""
    # SimpleITK loads here, not when the command line is parsed.
    from dicom_node.commands.preprocess_files import CROPS_FILE, INPUTS_FILE, PROVENANCE_FILE, preprocess_study_to_folder

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
