"""Benchmark: does the bundle's calibration make its probability a probability on patients it
never saw? (issue 27, item 3; not a test).

Trains the default recipe on a phantom cohort at the paper's class balance (59 patients, 16
EGFR positive: oversampling trains at 1:1, so the network's scores are too high for a 27 %
prevalence), then ``evaluate``s the bundle, exactly as the node serves it, on a larger
held-out cohort of the same design made with another seed, and prints the calibration slope
and calibration-in-the-large of the folds' uncalibrated mean score and of the served
(calibrated) probability, with the bounds the issue sets (slope in [0.7, 1.3],
|in-the-large| < 0.3), and the device.

    python tests/bench_calibration.py                       # about an hour on 2 CPU cores (5 folds x 5 repeats)
    python tests/bench_calibration.py --work /tmp/cal --figure docs/images/calibration-heldout.png

Only torch, numpy and ``pipeline`` at module level; ``training`` inside main.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's pipeline, not tests/pipeline

from pipeline.prep.params import PreprocessParams  # noqa: E402
from tests.bench_heldout import announce_device, heldout_arguments  # noqa: E402

SLOPE_BOUNDS = (0.7, 1.3)
IN_THE_LARGE_BOUND = 0.3


def within(calibration: dict) -> bool:
    slope, citl = calibration["slope"], calibration["in_the_large"]
    return slope is not None and citl is not None and SLOPE_BOUNDS[0] <= slope <= SLOPE_BOUNDS[1] \
        and abs(citl) < IN_THE_LARGE_BOUND


def main(argv: list[str] | None = None) -> int:
    p = heldout_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    p.add_argument("--repeats", type=int, default=5,
                   help="CV repeats: the calibration is fitted on each patient's ensemble of out-of-fold models")
    p.add_argument("--calibration", default="logistic", choices=("logistic", "isotonic"))
    p.add_argument("--figure", type=Path, help="copy the held-out reliability diagram here")
    p.add_argument("--reuse", action="store_true", help="evaluate the bundle a previous run left in --work (no training)")
    args = p.parse_args(argv)

    from pipeline.phantom import generate_cohort
    from training.evaluate import evaluate_bundle
    from training.run import train_bundle
    from training.settings import TrainSettings

    device, name = announce_device(args.device)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-calibration-"))
    try:
        fraction = args.positives / args.patients
        for folder, patients, seed in (("train", args.patients, 61), ("heldout", args.heldout, 62)):
            if not (work / folder / "labels.csv").is_file():
                start = time.perf_counter()
                generate_cohort(work / folder, patients=patients, positive_fraction=fraction, seed=seed,
                                geometry=args.geometry, effect_size=args.effect_size, jobs=2)
                print(f"{folder}: {patients} phantom patients in {time.perf_counter() - start:.0f} s", flush=True)
        params = PreprocessParams(output_size=args.output_size, bias_correction=False)
        settings = TrainSettings.from_mapping({"epochs": args.epochs, "folds": args.folds, "device": device.type,
                                               "calibration": args.calibration, "repeats": args.repeats})
        bundle = work / f"bundle-{args.calibration}"
        if args.reuse and bundle.is_dir():
            from pipeline.model.bundle import Manifest

            manifest = Manifest.load_checked(bundle)
            print(f"reusing {bundle}: {manifest.calibration_map.describe()}; threshold {manifest.threshold:.3f}", flush=True)
        else:
            if bundle.exists():
                shutil.rmtree(bundle)
            start = time.perf_counter()
            outcome = train_bundle(work / "train" / "labels.csv", bundle, settings=settings, params=params,
                                   cache_dir=work / "cache", progress=False)
            print(f"trained in {time.perf_counter() - start:.0f} s: {outcome.manifest.calibration_map.describe()}; "
                  f"threshold {outcome.manifest.threshold:.3f}", flush=True)
        out = work / f"evaluation-{args.calibration}"
        if out.exists():
            shutil.rmtree(out)
        report = evaluate_bundle(bundle, work / "heldout" / "labels.csv", out, cache_dir=work / "cache", device=args.device,
                                 bootstrap=2000).report
        f = report["figures"]
        raw, calibrated = f["calibration_raw"], f["calibration"]
        rows = {"uncalibrated (folds' mean score)": raw, f"served ({args.calibration} calibration)": calibrated}
        print(f"held out: {report['cases_scored']} patients ({f['positives']} positive), AUC {report['auc']:.3f} "
              f"(95% CI {report['auc_ci'][0]:.3f}-{report['auc_ci'][1]:.3f})")
        print(f"bounds: slope in [{SLOPE_BOUNDS[0]}, {SLOPE_BOUNDS[1]}], |calibration-in-the-large| < {IN_THE_LARGE_BOUND}")
        for label, c in rows.items():
            print(f"  {label:<36} slope {c['slope']:6.2f}  in-the-large {c['in_the_large']:+6.2f}  Brier {c['brier']:.3f}  "
                  f"mean {c['mean_predicted']:.3f} vs observed {c['observed']:.3f}  "
                  f"{'within' if within(c) else 'OUTSIDE'} the bounds")
        print(json.dumps({"device": name, "auc": report["auc"], "raw": raw, "calibrated": calibrated,
                          "command": "python tests/bench_calibration.py " + " ".join(sys.argv[1:] if argv is None else argv)}))
        if args.figure:
            args.figure.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(out / "calibration.png", args.figure)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
