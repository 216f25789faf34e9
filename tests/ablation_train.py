"""Ablation: why the paper's recipe, trained from scratch, loses to a plain ResNet-50 loop
(issue 15). Not a test: a script that writes ``docs/examples/ablation.md``.

On phantom cohorts at a clear and a weaker EGFR effect, it starts from the paper recipe (the
old default: frozen random body, max lr 4e-2, soft-F1, mixup, oversampling, rotation / zoom /
lighting, fastai head, nested selection) and changes one value at a time toward the plain
loop of ``tests/bench_train.py``; every row keeps the changes above it. Every row trains on
the same cached inputs and the same patient splits (seed 0) in the same run, with the same
epochs and folds. Beside the chain: the LR range test (fastai's ``lr_find``) on each outer
fold's training patients, single changes from the final recipe (oversampling, more epochs,
mixup back), and the shuffled-label control of the final recipe.

    python tests/ablation_train.py --work /tmp/ablation                     # both cohorts, 15 epochs, 3 folds
    python tests/ablation_train.py --work /tmp/ablation --out docs/examples/ablation.md

Results are appended to ``<work>/results.jsonl`` as each run ends; a second call with the
same ``--work`` reuses them (delete the file to start again), so a long ablation can be run
in parts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's pipeline, not tests/pipeline
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import plain_loop_cv  # noqa: E402

from pipeline.prep.params import PreprocessParams  # noqa: E402

#: (row label, the change from the row above). The first row is the paper recipe itself.
CHAIN: list[tuple[str, dict]] = [
    ("paper recipe, no weights (the old default): frozen random body, max lr 4e-2, soft-F1, mixup, "
     "oversampling, rotation/zoom/lighting, fastai head, nested selection", {}),
    ("train the whole body (not frozen)", {"freeze_body": False}),
    ("max lr 1e-3 (not 4e-2)", {"max_lr": 1e-3}),
    ("cross-entropy (not soft-F1)", {"loss": "ce"}),
    ("no mixup", {"mixup": False}),
    ("quarter turns and mirroring (not rotation/zoom/lighting)", {"augmentation": "dihedral"}),
    ("linear head (not fastai's)", {"head": "linear"}),
    ("fixed selection: all training patients, last epoch, median, 0.5 (not nested)", {"selection": "fixed",
                                                                                       "selection_metric": "last"}),
]
#: Single changes from the end of the chain (the scratch recipe).
SIDE: list[tuple[str, dict]] = [
    ("scratch recipe without oversampling (as the plain loop)", {"oversample": False}),
    ("scratch recipe with mixup", {"mixup": True}),
    ("scratch recipe with fastai's head", {"head": "fastai"}),
    ("scratch recipe, nested selection", {"selection": "nested"}),
    ("scratch recipe, BatchNorm statistics recomputed on the training images after training", {
        "batchnorm_statistics": "recomputed"}),
    ("scratch recipe, 30 epochs", {"epochs": 30}),
]

COHORTS = {  # name: (patients, positive fraction, effect size, seed, geometry)
    "clear": (30, 0.5, 1.0, 21, "mixed"),
    "weak": (40, 0.5, 0.6, 22, "mixed"),
    # 1 mm axial series, as the demo's and test_learning's: the lesion shows on all 5 model slices
    "clear1mm": (30, 0.5, 1.0, 23, "axial3d"),
    "weak1mm": (40, 0.5, 0.5, 24, "axial3d"),
}


def prepare(work: Path, name: str, params: PreprocessParams):  # noqa: ANN201 (training types imported late)
    from pipeline.phantom import generate_cohort
    from training.cache import prepare_cohort
    from training.cohort import read_cohort

    patients, fraction, effect, seed, geometry = COHORTS[name]
    folder = work / name
    if not (folder / "labels.csv").is_file():
        generate_cohort(folder, patients=patients, positive_fraction=fraction, seed=seed, geometry=geometry,
                        effect_size=effect, jobs=2)
    prepared = prepare_cohort(read_cohort(folder / "labels.csv"), params, work / "cache")
    if prepared.failures:
        print(f"{name}: {len(prepared.failures)} studies failed preprocessing: {prepared.failures[0].reason}")
    return prepared


def pooled(labels: np.ndarray, scores: np.ndarray) -> dict:
    from sklearn.metrics import roc_auc_score

    from training.metrics import bootstrap_auc_ci

    low, high = bootstrap_auc_ci(labels, scores, 2000, 0)
    return {"auc": round(float(roc_auc_score(labels, scores)), 3), "ci": [round(low, 3), round(high, 3)]}


def run_recipe(prepared, settings) -> dict:  # noqa: ANN001
    """One cross-validation with ``settings``; the pooled AUC of each fold's own choice of slice
    aggregation (median unless nested selection chose another) and what each fold kept."""
    from training.run import run_cv

    groups = [e.group or e.patient_id for e in prepared.entries]
    labels = prepared.labels.copy()
    if settings.shuffle_labels:
        labels = np.random.default_rng([settings.seed, 0x5EED]).permutation(labels)
    start = time.perf_counter()
    run = run_cv(prepared.inputs, labels, groups, settings, settings.seed, progress=False)
    seconds = time.perf_counter() - start
    images = sum(r.train_images for r in run.results)
    return {**pooled(labels, run.selected_scores), "seconds": round(seconds, 1), "images_per_s": round(images / seconds, 1),
            "kept_epochs": [r.epoch for r in run.results], "thresholds": [round(r.threshold, 3) for r in run.results]}


def run_lr_find(prepared, settings, folds: int) -> dict:  # noqa: ANN001
    from training.engine import resolve_device
    from training.lr_find import lr_range_test
    from training.splits import assign_folds

    device = resolve_device(settings.device)
    groups = [e.group or e.patient_id for e in prepared.entries]
    assignment = assign_folds(prepared.labels, groups, folds, settings.seed)
    x = torch.as_tensor(prepared.inputs, device=device)
    suggestions = []
    for k in range(folds):
        finding = lr_range_test(x, prepared.labels, np.where(assignment != k)[0], settings, seed=k, device=device)
        suggestions.append(finding.suggestion)
    return {"suggestions": [float(f"{v:.2e}") for v in suggestions]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="cohorts, cache and results.jsonl (kept)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--cohorts", default="clear,weak")
    p.add_argument("--only", help="comma list of row numbers to run (default: all)")
    p.add_argument("--out", type=Path, help="write the markdown table here")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    p.add_argument("--output-size", type=int, default=96, help="crop size in pixels (the node's 96 by default)")
    args = p.parse_args(argv)

    from training.engine import resolve_device
    from training.settings import TrainSettings

    device = resolve_device(args.device)
    torch.set_num_threads(torch.get_num_threads())
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    args.work.mkdir(parents=True, exist_ok=True)
    results_file = args.work / "results.jsonl"
    done = {}
    if results_file.is_file():
        for line in results_file.read_text().splitlines():
            row = json.loads(line)
            done[(row["cohort"], row["row"])] = row
    params = PreprocessParams(output_size=args.output_size)
    base = {"epochs": args.epochs, "folds": args.folds, "device": device.type, "bootstrap": 0, "seed": 0}
    chain_settings = []
    values = {"recipe": "paper", "allow_random_frozen_body": True, **base}
    for _, change in CHAIN:
        values = {**values, **change}
        chain_settings.append(TrainSettings.from_mapping(values))
    scratch = chain_settings[-1]
    rows: list[tuple[str, str, object]] = [(f"{i}", label, s) for i, ((label, _), s) in enumerate(zip(CHAIN, chain_settings))]
    rows.append(("plain", "plain torchvision loop (tests/bench_train.py): linear head, AdamW, one-cycle 1e-3, CE, "
                          "one quarter turn + flip per batch, no oversampling, last epoch", None))
    rows += [(f"s{i + 1}", label, scratch.replace(**change)) for i, (label, change) in enumerate(SIDE)]
    rows.append(("shuffled", "scratch recipe, labels shuffled (negative control)", scratch.replace(shuffle_labels=True)))
    rows.append(("lr_find", "LR range test of the scratch recipe on each outer fold's training patients", scratch))
    wanted = set(args.only.split(",")) if args.only else None
    print(f"device: {device} ({machine}); torch {torch.__version__}", flush=True)
    for cohort in [c.strip() for c in args.cohorts.split(",") if c.strip()]:
        prepared = None
        for key, label, settings in rows:
            if (cohort, key) in done or (wanted is not None and key not in wanted):
                continue
            prepared = prepared if prepared is not None else prepare(args.work, cohort, params)
            if key == "plain":
                from training.splits import assign_folds

                groups = [e.group or e.patient_id for e in prepared.entries]
                folds = assign_folds(prepared.labels, groups, args.folds, 0)  # the recipes' splits
                plain = plain_loop_cv(prepared.inputs, prepared.labels, folds, epochs=args.epochs, device=device)
                result = {**pooled(prepared.labels, plain["scores"]), "seconds": round(plain["seconds"], 1),
                          "images_per_s": round(plain["images_per_s"], 1)}
            elif key == "lr_find":
                result = run_lr_find(prepared, settings, args.folds)
            else:
                result = run_recipe(prepared, settings)
            row = {"cohort": cohort, "row": key, "label": label, "device": machine, **result}
            done[(cohort, key)] = row
            with open(results_file, "a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(render(done, rows, args, machine))
        print(f"wrote {args.out}")
    return 0


def render(done: dict, rows: list, args: argparse.Namespace, machine: str) -> str:
    """The table: pooled out-of-fold patient AUC (95 % bootstrap CI) per row and cohort, and
    the seconds each took; what a row could not run says so."""
    cohorts = [c.strip() for c in args.cohorts.split(",") if c.strip()]

    def cell(cohort: str, key: str) -> str:
        row = done.get((cohort, key))
        if row is None:
            return "not run"
        if key == "lr_find":
            return "suggested " + ", ".join(f"{v:.1e}" for v in row["suggestions"])
        return f"{row['auc']:.2f} ({row['ci'][0]:.2f}-{row['ci'][1]:.2f})"

    header = "| # | change | " + " | ".join(
        f"{c}: {COHORTS[c][0]} patients, effect {COHORTS[c][2]:g}, {COHORTS[c][4]}" for c in cohorts) + " |"
    lines = [f"Device: {machine}; {args.epochs} epochs, {args.folds} folds (seed 0, the same patient splits in every "
             f"row), the node's own inputs [5, 3, {args.output_size}, {args.output_size}] (N4, z-score, crop), cached once.",
             "",
             header, "| --- | --- | " + " | ".join("---" for _ in cohorts) + " |"]
    for key, label, _ in rows:
        lines.append(f"| {key} | {label} | " + " | ".join(cell(c, key) for c in cohorts) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
