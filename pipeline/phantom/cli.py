"""``egfr-node phantom OUT --patients N --positive-fraction F --seed S [...]``: write a phantom cohort."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pipeline.phantom.cohort import generate_cohort
from pipeline.phantom.geometry import GEOMETRIES
from pipeline.phantom.study import DEFAULT_EFFECT_SIZE, PhantomStudy

__all__ = ["build_parser", "main"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _unit_interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], not {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], not {value}")
    return value


def build_parser(prog: str = "egfr-node phantom") -> argparse.ArgumentParser:
    """The argument parser (the lead's CLI may mount it as a subcommand)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Write a phantom cohort of post-contrast T1 brain MRI studies (DICOM MR + SEG or RTSTRUCT) "
                    "and labels.csv. The EGFR label changes lesion appearance by --effect-size (0 = no signal).")
    parser.add_argument("out", type=Path, metavar="OUT", help="folder to write the studies and labels.csv into")
    parser.add_argument("--patients", type=_positive_int, required=True, help="number of patients (studies)")
    parser.add_argument("--positive-fraction", type=_unit_interval, required=True,
                        help="share of EGFR-positive patients; round(N*F) are positive")
    parser.add_argument("--seed", type=int, required=True, help="random seed; the same seed writes the same files")
    parser.add_argument("--mask", choices=("seg", "rtstruct", "outline", "mixed"), default="seg",
                        help="lesion mask object (default seg; outline = an ellipse on one slice as a viewer saves "
                             "it, an Enhanced SR; mixed = seg or rtstruct drawn per patient)")
    parser.add_argument("--geometry", choices=(*GEOMETRIES, "mixed"), default="mixed",
                        help="acquisition geometry (default mixed = drawn per patient)")
    parser.add_argument("--effect-size", type=_unit_interval, default=DEFAULT_EFFECT_SIZE,
                        help=f"strength of the EGFR appearance effect in [0, 1] (default {DEFAULT_EFFECT_SIZE})")
    parser.add_argument("--jobs", type=_positive_int, default=1,
                        help="studies generated in parallel processes (default 1; the files do not depend on it)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status (argparse exits with 2 on bad arguments)."""
    args = build_parser().parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        print(f"egfr-node phantom: OUT {args.out} exists and is not a folder", file=sys.stderr)
        return 2
    started = time.perf_counter()
    last = [started]

    def progress(done: int, total: int, study: PhantomStudy) -> None:
        now = time.perf_counter()
        status = "positive" if study.egfr_positive else "negative"
        print(f"[{done}/{total}] {study.patient_id} {study.geometry:<10} {study.mask_kind:<8} {status} "
              f"lesion {study.lesion_volume_cm3:.2f} cm3 ({now - last[0]:.1f} s)", flush=True)
        last[0] = now

    try:
        studies = generate_cohort(args.out, args.patients, args.positive_fraction, args.seed, mask_kind=args.mask,
                                  geometry=args.geometry, effect_size=args.effect_size, progress=progress,
                                  jobs=args.jobs)
    except (FileExistsError, ValueError) as error:
        print(f"egfr-node phantom: {error}", file=sys.stderr)
        return 1
    positives = sum(s.egfr_positive for s in studies)
    print(f"wrote {len(studies)} studies ({positives} EGFR-positive) and {args.out / 'labels.csv'} "
          f"in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
