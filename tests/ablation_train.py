"""Ablation: why the paper's recipe, trained from scratch, loses to a plain ResNet-50 loop
(issue 15). Not a test: a script that writes ``docs/examples/ablation.md``.

On phantom cohorts at a clear and a weaker EGFR effect, it starts from the paper recipe (the
old default: frozen random body, max lr 4e-2, soft-F1, mixup, oversampling, rotation / zoom /
lighting, fastai head, nested selection) and changes one value at a time toward the plain
loop of ``tests/bench_train.py``; every row keeps the changes above it. Every row trains on
the same cached inputs, with the same epochs and folds; every row runs with each of
``--seeds`` (3 by default: the patient splits and the initialisation change with the seed,
the same for every row), and each row's mean AUC is compared with the scratch recipe's (row
7, the default), paired on the same patients and seeds, with a stratified patient bootstrap
95 % CI (``pipeline.model.performance.paired_auc_difference``). Beside the chain: the plain
loop and a non-deep baseline (lesion intensity and shape features, logistic regression; both
from ``tests/bench_train.py``), single changes from the final recipe, the shuffled-label
control, and the LR range test (fastai's ``lr_find``) on each outer fold's training patients.

    python tests/ablation_train.py --work /tmp/ablation                     # every row, both cohorts, 3 seeds
    python tests/ablation_train.py --work /tmp/ablation --out docs/examples/ablation.md --jsonl docs/examples/ablation.jsonl

Results (with every patient's out-of-fold score) are appended to ``<work>/results.jsonl`` as
each run ends; a second call with the same ``--work`` reuses them (delete the file to start
again), so a long ablation can be run in parts. Several processes may share one ``--work``
(each run is claimed first): on a CPU, one per core with ``OMP_NUM_THREADS=1`` gets more runs
an hour than one process on every core at small crops. ``--jsonl`` copies them where they are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's pipeline, not tests/pipeline
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import features_cv, plain_loop_cv  # noqa: E402

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
    from pipeline.model.performance import auc, auc_ci

    low, high = auc_ci(labels, scores, 2000, 0)
    return {"auc": round(auc(labels, scores), 3), "ci": [round(low, 3), round(high, 3)],
            "labels": [int(v) for v in labels], "scores": [round(float(v), 6) for v in scores]}


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
        finding = lr_range_test(x, prepared.labels, np.where(assignment != k)[0], settings,
                                seed=settings.seed * 100 + k, device=device)
        suggestions.append(finding.suggestion)
    return {"suggestions": [float(f"{v:.2e}") for v in suggestions]}


#: The row every other is compared with: the end of the chain, the scratch recipe (the default).
REFERENCE = "7"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="cohorts, cache and results.jsonl (kept)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--seeds", default="0,1,2", help="every row runs with each seed (splits and initialisation)")
    p.add_argument("--cohorts", default="clear,weak")
    p.add_argument("--only", help="comma list of row keys to run (default: all)")
    p.add_argument("--out", type=Path, help="write the markdown tables here")
    p.add_argument("--jsonl", type=Path, help="copy the raw results (JSON lines, every patient's score) here")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    p.add_argument("--output-size", type=int, default=96, help="crop size in pixels (the node's 96 by default)")
    args = p.parse_args(argv)

    from training.engine import resolve_device
    from training.settings import TrainSettings

    device = resolve_device(args.device)
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    args.work.mkdir(parents=True, exist_ok=True)
    results_file = args.work / "results.jsonl"
    seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
    done = read_results(results_file)
    params = PreprocessParams(output_size=args.output_size)
    rows = ablation_rows(args.epochs, args.folds, device.type, TrainSettings)
    wanted = set(args.only.split(",")) if args.only else None
    print(f"device: {device} ({machine}); torch {torch.__version__}", flush=True)
    for cohort in [c.strip() for c in args.cohorts.split(",") if c.strip()]:
        prepared = None
        for seed in seeds:
            for key, label, settings in rows:
                if (cohort, key, seed) in done or (wanted is not None and key not in wanted):
                    continue
                if not claim(args.work / "claims", f"{cohort}-{key}-{seed}"):
                    continue  # another process of this --work runs it
                done.update(read_results(results_file))
                if (cohort, key, seed) in done:
                    continue
                prepared = prepared if prepared is not None else prepare(args.work, cohort, params)
                result = run_row(prepared, key, settings, seed, args, device)
                row = {"cohort": cohort, "row": key, "seed": seed, "label": label, "device": machine,
                       "epochs": args.epochs, "folds": args.folds, "output_size": args.output_size, **result}
                done[(cohort, key, seed)] = row
                with open(results_file, "a") as handle:
                    handle.write(json.dumps(row) + "\n")
                print(json.dumps({k: v for k, v in row.items() if k not in ("scores", "labels")}), flush=True)
    if args.jsonl:
        args.jsonl.parent.mkdir(parents=True, exist_ok=True)
        args.jsonl.write_text(results_file.read_text() if results_file.is_file() else "")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(render(done, rows, args, machine, seeds))
        print(f"wrote {args.out}")
    return 0


def read_results(results_file: Path) -> dict[tuple[str, str, int], dict]:
    """The runs already in ``results.jsonl``, by (cohort, row, seed)."""
    done: dict[tuple[str, str, int], dict] = {}
    if results_file.is_file():
        for line in results_file.read_text().splitlines():
            row = json.loads(line)
            done[(row["cohort"], row["row"], row.get("seed", 0))] = row
    return done


def claim(folder: Path, name: str) -> bool:
    """Take one run for this process, so several processes on one ``--work`` (one per core,
    ``OMP_NUM_THREADS=1``) share the rows without running one twice; a claim whose process
    has ended is taken over (a killed run is run again)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            os.kill(int(path.read_text() or 0), 0)
            return False  # its process is alive
        except (ProcessLookupError, ValueError):
            path.write_text(str(os.getpid()))
            return True
    with os.fdopen(fd, "w") as handle:
        handle.write(str(os.getpid()))
    return True


def ablation_rows(epochs: int, folds: int, device: str, settings_type) -> list[tuple[str, str, object]]:  # noqa: ANN001
    """(key, label, settings or None) of every row, in the table's order."""
    base = {"epochs": epochs, "folds": folds, "device": device, "bootstrap": 0, "seed": 0}
    chain_settings = []
    values = {"recipe": "paper", "allow_random_frozen_body": True, **base}
    for _, change in CHAIN:
        values = {**values, **change}
        chain_settings.append(settings_type.from_mapping(values))
    scratch = chain_settings[-1]
    rows: list[tuple[str, str, object]] = [(f"{i}", label, s) for i, ((label, _), s) in enumerate(zip(CHAIN, chain_settings))]
    rows.append(("plain", "plain torchvision loop (tests/bench_train.py): linear head, AdamW, one-cycle 1e-3, CE, "
                          "one quarter turn + flip per batch, no oversampling, last epoch", None))
    rows.append(("features", "no network: lesion intensity histogram and shape on the same inputs, logistic regression "
                             "(tests/bench_train.py)", None))
    rows += [(f"s{i + 1}", label, scratch.replace(**change)) for i, (label, change) in enumerate(SIDE)]
    rows.append(("shuffled", "scratch recipe, labels shuffled (negative control)", scratch.replace(shuffle_labels=True)))
    rows.append(("lr_find", "LR range test of the scratch recipe on each outer fold's training patients", scratch))
    return rows


def run_row(prepared, key: str, settings, seed: int, args: argparse.Namespace, device: torch.device) -> dict:  # noqa: ANN001
    from training.splits import assign_folds

    groups = [e.group or e.patient_id for e in prepared.entries]
    if key in ("plain", "features"):
        folds = assign_folds(prepared.labels, groups, args.folds, seed)  # the recipes' splits for this seed
        if key == "plain":
            plain = plain_loop_cv(prepared.inputs, prepared.labels, folds, epochs=args.epochs, device=device, seed=seed)
        else:
            plain = {**features_cv(prepared.inputs, prepared.lesion_masks, prepared.labels, folds), "images_per_s": None}
        return {**pooled(prepared.labels, plain["scores"]), "seconds": round(plain["seconds"], 1),
                "images_per_s": None if plain["images_per_s"] is None else round(plain["images_per_s"], 1)}
    if key == "lr_find":
        return run_lr_find(prepared, settings.replace(seed=seed), args.folds)
    return run_recipe(prepared, settings.replace(seed=seed))


def render(done: dict, rows: list, args: argparse.Namespace, machine: str, seeds: list[int]) -> str:
    """One table per cohort: each row's AUC per seed, their mean, and the paired difference
    from the scratch recipe (row 7) with its 95 % CI; what a row could not run says so."""
    from pipeline.model.performance import paired_auc_difference

    ran_on = sorted({r["device"] for r in done.values() if r.get("cohort") in args.cohorts.split(",")}) or [machine]
    lines = [f"Device: {' and '.join(ran_on)} (each run's own in the JSON lines; seconds per run depend on what "
             f"else the machine ran); {args.epochs} epochs, {args.folds} folds, seeds {', '.join(map(str, seeds))} (each seed "
             f"its own patient splits, the same for every row), the node's own inputs [5, 3, {args.output_size}, "
             f"{args.output_size}] (N4, z-score, crop), cached once.", ""]
    for cohort in [c.strip() for c in args.cohorts.split(",") if c.strip()]:
        patients, fraction, effect, _, geometry = COHORTS[cohort]
        lines += [f"### {cohort}: {patients} patients ({fraction:.0%} positive), effect {effect:g}, {geometry}", "",
                  "| # | change | AUC per seed (pooled out of fold) | mean | difference from row 7 (95 % CI) | s per run |",
                  "| --- | --- | --- | --- | --- | --- |"]
        reference = [done.get((cohort, REFERENCE, s)) for s in seeds]
        for key, label, _ in rows:
            runs = [done.get((cohort, key, s)) for s in seeds]
            if any(r is None for r in runs):
                ran = [f"{r['auc']:.2f} (seed {s})" for r, s in zip(runs, seeds) if r is not None and "auc" in r]
                count = sum(r is not None for r in runs)
                lines.append(f"| {key} | {label} | {', '.join(ran + ['not run'])} ({count} of {len(seeds)} seeds) | | | |")
                continue
            if key == "lr_find":
                text = "; ".join(", ".join(f"{v:.1e}" for v in r["suggestions"]) for r in runs)
                lines.append(f"| {key} | {label} | suggested max lr per fold: {text} | | | |")
                continue
            aucs = [r["auc"] for r in runs]
            difference = ""
            if key == REFERENCE:
                difference = "(the reference)"
            elif key != "shuffled" and all(r is not None for r in reference):
                labels = np.asarray(runs[0]["labels"])
                paired = paired_auc_difference(labels, [r["scores"] for r in runs], [r["scores"] for r in reference], 2000, 0)
                difference = f"{paired['difference']:+.2f} ({paired['ci95'][0]:+.2f} to {paired['ci95'][1]:+.2f})"
            elif key == "shuffled":
                difference = "n/a (other labels)"
            seconds = np.mean([r["seconds"] for r in runs])
            lines.append(f"| {key} | {label} | {', '.join(f'{v:.2f}' for v in aucs)} | {np.mean(aucs):.2f} | {difference} | "
                         f"{seconds:.0f} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
