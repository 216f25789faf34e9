"""Benchmark: how good is one outlined slice? (issue 31, item 5; not a test).

A bundle is trained on SEG masks (the default recipe, a phantom cohort at the paper's class
balance), then ``evaluate``d, exactly as the node serves it, twice on the same held-out
patients: once with their SEG (the whole lesion), once with the lesion outlined on one slice
as a reader draws it in a viewer (an ellipse around its largest cross-section, saved as
OHIF saves it, moved and resized at random by ``--jitter-mm``). Prints, per patient, how far
the probability moved, and the pooled AUC of each with its CI and the paired difference
(patient bootstrap), with the device.

    python tests/bench_outline.py                        # about 15 minutes on 2 CPU cores
    python tests/bench_outline.py --work /tmp/outline --jitter-mm 3

Only torch, numpy and ``pipeline`` at module level; ``training`` inside main.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's pipeline, not tests/pipeline

from pipeline.prep.params import PreprocessParams  # noqa: E402
from tests.bench_heldout import announce_device, heldout_arguments  # noqa: E402


def _cases(folder: Path) -> dict[str, tuple[float, int]]:
    """study UID -> (served probability, label) of an ``evaluate`` output's cases.csv."""
    with open(folder / "cases.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {r["study_uid"]: (float(r["probability"]), 1 if r["label"] in ("positive", "1") else 0)
            for r in rows if r.get("probability") not in (None, "")}


def paired_auc(labels: np.ndarray, first: np.ndarray, second: np.ndarray, draws: int, seed: int = 0) -> dict:
    """AUC of each score and of their difference, with percentile CIs over a stratified patient bootstrap."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    positives, negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    samples = []
    for _ in range(draws):
        pick = np.concatenate([rng.choice(positives, len(positives)), rng.choice(negatives, len(negatives))])
        a, b = roc_auc_score(labels[pick], first[pick]), roc_auc_score(labels[pick], second[pick])
        samples.append((a, b, b - a))
    low, high = np.percentile(np.array(samples), [2.5, 97.5], axis=0)
    point = (roc_auc_score(labels, first), roc_auc_score(labels, second))
    return {"seg": (point[0], low[0], high[0]), "outline": (point[1], low[1], high[1]),
            "difference": (point[1] - point[0], low[2], high[2])}


def main(argv: list[str] | None = None) -> int:
    p = heldout_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    p.add_argument("--jitter-mm", type=float, default=2.0, help="how far a reader's ellipse strays (SD, mm)")
    p.add_argument("--bootstrap", type=int, default=2000)
    args = p.parse_args(argv)

    from pipeline.phantom import generate_cohort
    from training.evaluate import evaluate_bundle
    from training.run import train_bundle
    from training.settings import TrainSettings

    device, name = announce_device(args.device)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-outline-"))
    try:
        fraction = args.positives / args.patients
        outlined = f"heldout-outline-{args.jitter_mm:g}mm"
        cohorts = (("train", args.patients, 71, "seg"), ("heldout-seg", args.heldout, 72, "seg"),
                   (outlined, args.heldout, 72, "outline"))
        for folder, patients, seed, mask in cohorts:
            if not (work / folder / "labels.csv").is_file():
                start = time.perf_counter()
                generate_cohort(work / folder, patients=patients, positive_fraction=fraction, seed=seed, mask_kind=mask,
                                geometry=args.geometry, effect_size=args.effect_size, jobs=2,
                                outline_jitter_mm=args.jitter_mm)
                print(f"{folder}: {patients} phantom patients in {time.perf_counter() - start:.0f} s", flush=True)
        bundle = work / "bundle"
        if not (bundle / "manifest.json").is_file():
            start = time.perf_counter()
            settings = TrainSettings.from_mapping({"epochs": args.epochs, "folds": args.folds, "device": device.type})
            train_bundle(work / "train" / "labels.csv", bundle, settings=settings,
                         params=PreprocessParams(output_size=args.output_size, bias_correction=False),
                         cache_dir=work / "cache", progress=False)
            print(f"trained on SEG masks in {time.perf_counter() - start:.0f} s", flush=True)
        scored = {}
        for mask, folder in (("seg", "heldout-seg"), ("outline", outlined)):
            out = work / f"evaluation-{folder}"
            if out.exists():
                shutil.rmtree(out)
            report = evaluate_bundle(bundle, work / folder / "labels.csv", out, cache_dir=work / f"cache-{folder}",
                                     device=args.device, bootstrap=200).report
            print(f"{mask}: {report['cases_scored']} of {report['cases_listed']} held-out patients scored", flush=True)
            scored[mask] = _cases(out)
        common = sorted(set(scored["seg"]) & set(scored["outline"]))
        seg = np.array([scored["seg"][uid][0] for uid in common])
        outline = np.array([scored["outline"][uid][0] for uid in common])
        labels = np.array([scored["seg"][uid][1] for uid in common])
        moved = np.abs(outline - seg)
        aucs = paired_auc(labels, seg, outline, args.bootstrap)
        print(f"\n{len(common)} held-out patients ({int(labels.sum())} positive), {args.geometry}, the same images; "
              f"outline: an ellipse on one slice, jitter {args.jitter_mm:g} mm")
        print(f"probability moved |outline - SEG|: median {np.median(moved):.3f}, mean {moved.mean():.3f}, "
              f"95th percentile {np.percentile(moved, 95):.3f}, max {moved.max():.3f}; "
              f"status changed for {int(np.sum((seg >= 0.5) != (outline >= 0.5)))} (at 0.5)")
        for key, label in (("seg", "SEG (whole lesion)"), ("outline", "outline (one slice)")):
            auc, low, high = aucs[key]
            print(f"  AUC {label:<22} {auc:.3f} (95% CI {low:.3f}-{high:.3f})")
        diff, low, high = aucs["difference"]
        print(f"  AUC outline - SEG        {diff:+.3f} (95% CI {low:+.3f} to {high:+.3f}, paired patient bootstrap)")
        print(json.dumps({"device": name, "patients": len(common), "moved_median": float(np.median(moved)),
                          "moved_p95": float(np.percentile(moved, 95)), "auc": aucs,
                          "command": "python tests/bench_outline.py " + " ".join(sys.argv[1:] if argv is None else argv)}))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
