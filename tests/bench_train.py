"""Benchmark: the training package against a plain ResNet-50 loop, on a phantom cohort of
the paper's size (not a test).

Haim et al. 2022: 59 patients, 16 EGFR positive, 5 folds x 40 epochs, batch 32, 96x96.
Runs ``training.train_bundle`` in each ``--modes`` mode and, in the same run, on the same
cached inputs and the same patient splits, ``plain``: a 40-line torchvision loop
(:func:`plain_loop_cv`; it lives here, not in the product). Prints each one's pooled
out-of-fold patient AUC with its bootstrap 95 % CI, training images/s and the device; on a
GPU also a bare torchvision ResNet-50 training-step loop at the same batch size.

Modes: ``default`` (what ``egfr-node train`` picks: the paper recipe with
``--imagenet-weights``, the scratch recipe without), ``paper`` (the paper recipe; with no
weights file its frozen random body is forced, to show what it does), ``full`` (the paper
recipe with every layer trained), ``plain``, and ``features``: a non-deep baseline (intensity
histogram and shape of the masked lesion on the same inputs, logistic regression), so a
reader sees what the network adds. Every mode runs with each of ``--seeds`` (3 by default);
each mode's mean AUC is compared with the first mode's, paired on the same patients and
seeds, with a bootstrap 95 % CI (``pipeline.model.performance.paired_auc_difference``).

    python tests/bench_train.py                               # default, plain, features x 3 seeds (hours on 2 CPU cores)
    python tests/bench_train.py --modes default,paper,plain --epochs 15 --folds 3 --patients 30 --positives 15
    python tests/bench_train.py --epochs 1 --folds 2 --patients 12 --positives 4 --output-size 32   # smoke run
    python tests/bench_train.py --device cuda --example docs/examples/train-report-gpu.md

Only torch, numpy and ``pipeline`` are imported at module level (``training`` inside main).
With ``--work`` holding a cohort already prepared (``cohort/labels.csv`` and ``cache/``), the
phantom generator and N4 (SimpleITK) are not imported: that is how it runs on a GPU machine.
"""

from __future__ import annotations

import argparse
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


def bare_loop(device: torch.device, batch: int, size: int, steps: int) -> float:
    """Images/s of a plain torchvision ResNet-50 training step (SGD, CE, no augmentation)."""
    from torchvision.models import resnet50

    model = resnet50(weights=None, num_classes=2).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 2, (batch,), device=device)
    for i in range(steps + 3):
        if i == 3:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def plain_loop_cv(inputs: np.ndarray, labels: np.ndarray, folds: np.ndarray, *, epochs: int, device: torch.device,
                  seed: int = 0, max_lr: float = 1e-3, batch_size: int = 32) -> dict:
    """The plain baseline: per test fold, torchvision ``resnet50(weights=None, num_classes=2)``
    on the training patients' slices as images, AdamW (weight decay 1e-2) with PyTorch's
    one-cycle at ``max_lr``, cross-entropy, one random quarter turn and horizontal flip per
    batch, the last epoch kept; each test patient's score is the median of its slices'
    probabilities. Returns the out-of-fold scores ``[N]``, images/s and seconds."""
    from torchvision.models import resnet50

    n, s = inputs.shape[:2]
    scores = np.full(n, np.nan)
    images, start = 0, time.perf_counter()
    for k in sorted(set(folds.tolist())):
        train, test = np.where(folds != k)[0], np.where(folds == k)[0]
        torch.manual_seed(seed * 1000 + k)
        x = torch.as_tensor(inputs[train], device=device).reshape(-1, *inputs.shape[2:])
        y = torch.as_tensor(np.repeat(labels[train], s), device=device)
        model = resnet50(weights=None, num_classes=2).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=max_lr, weight_decay=1e-2)
        steps = -(-len(y) // batch_size)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, epochs=epochs, steps_per_epoch=steps)
        for _ in range(epochs):
            model.train()
            order = torch.randperm(len(y), device=device)
            for i in range(steps):
                batch = order[i * batch_size:(i + 1) * batch_size]
                xb = torch.rot90(x[batch], int(torch.randint(4, ())), dims=(2, 3))
                if torch.rand(()) < 0.5:
                    xb = xb.flip(3)
                loss = torch.nn.functional.cross_entropy(model(xb), y[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                images += len(batch)
        model.eval()
        with torch.inference_mode():
            x_test = torch.as_tensor(inputs[test], device=device).reshape(-1, *inputs.shape[2:])
            probability = torch.softmax(model(x_test).float(), dim=1)[:, 1].reshape(len(test), s)
        scores[test] = probability.median(dim=1).values.double().cpu().numpy()
    seconds = time.perf_counter() - start
    return {"scores": scores, "images_per_s": images / seconds, "seconds": seconds}


def lesion_features(inputs: np.ndarray, masks: list) -> np.ndarray:
    """A non-deep description of each patient's lesion on the model's own inputs: the
    z-scored intensities inside the lesion mask over the five slices (a 10-bin histogram on
    [-3, 5], mean, SD, 10th/50th/90th percentiles, skewness) and its shape (area per slice as a
    fraction of the crop, mean area, its spread over the slices, and elongation from the second
    moments of the mid slice). ``inputs [N, S, C, H, W]``, ``masks``: ``[S, H, W]`` each."""
    from scipy.stats import skew

    rows = []
    for x, mask in zip(inputs, masks):
        if mask is None:
            raise ValueError("a cached input has no lesion mask (cached before masks were stored): clear the cache")
        inside = mask > 0.5
        values = x[:, 0][inside] if inside.any() else np.zeros(1)
        hist = np.histogram(np.clip(values, -3, 5), bins=10, range=(-3, 5))[0] / max(values.size, 1)
        areas = inside.reshape(inside.shape[0], -1).mean(axis=1)
        mid = inside[inside.shape[0] // 2]
        yy, xx = np.nonzero(mid)
        if yy.size > 2:
            eig = np.linalg.eigvalsh(np.cov(np.stack([yy, xx]).astype(float)))
            elongation = float(np.sqrt(max(eig[-1], 1e-9) / max(eig[0], 1e-9)))
        else:
            elongation = 1.0
        rows.append(np.concatenate([hist, [values.mean(), values.std(), *np.percentile(values, [10, 50, 90]),
                                           float(skew(values)) if values.size > 2 else 0.0],
                                    areas, [areas.mean(), areas.std(), elongation]]))
    return np.asarray(rows)


def features_cv(inputs: np.ndarray, masks: list, labels: np.ndarray, folds: np.ndarray) -> dict:
    """The non-deep baseline: :func:`lesion_features`, standardised, L2 logistic regression
    (scikit-learn, class-balanced), fitted per fold on the training patients; out-of-fold
    probabilities ``[N]``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    start = time.perf_counter()
    x = lesion_features(inputs, masks)
    scores = np.full(len(labels), np.nan)
    for k in sorted(set(folds.tolist())):
        train, test = folds != k, folds == k
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, class_weight="balanced", max_iter=2000))
        model.fit(x[train], labels[train])
        scores[test] = model.predict_proba(x[test])[:, 1]
    return {"scores": scores, "seconds": time.perf_counter() - start, "features": int(x.shape[1])}


def mode_settings(mode: str, **values) -> "TrainSettings":  # noqa: F821 (training is imported in main)
    """The ``TrainSettings`` of a benchmark mode (see the module docstring)."""
    from training.settings import TrainSettings

    if mode == "default":
        return TrainSettings.from_mapping(values)
    if mode in ("paper", "frozen"):
        return TrainSettings.from_mapping({"recipe": "paper", "allow_random_frozen_body": True, **values})
    if mode == "full":
        return TrainSettings.from_mapping({"recipe": "paper", "freeze_body": False, **values})
    raise ValueError(f"unknown mode {mode!r} (default, paper, full, plain)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--patients", type=int, default=59)
    p.add_argument("--positives", type=int, default=16)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seeds", default="0,1,2", help="every mode is run with each seed (splits and initialisation)")
    p.add_argument("--output-size", type=int, default=96)
    p.add_argument("--no-bias-correction", action="store_true", help="N4 off (quick runs)")
    p.add_argument("--geometry", default="axial2d", help="phantom geometry (axial2d is the cheapest to preprocess)")
    p.add_argument("--device", default="auto", choices=("cpu", "cuda", "auto"))
    p.add_argument("--modes", default="default,plain,features", help="comma list of default, paper, full, plain, features")
    p.add_argument("--effect-size", type=float, default=0.6, help="phantom EGFR effect (0..1)")
    p.add_argument("--lr", type=float, help="max lr of the recipe modes (default: each recipe's own)")
    p.add_argument("--imagenet-weights", help="local resnet50-0676ba61.pth for the recipe modes")
    p.add_argument("--selection", choices=("nested", "fixed", "paper"), help="default: each recipe's own")
    p.add_argument("--work", type=Path, help="working folder (default: a temporary one, removed)")
    p.add_argument("--jsonl", type=Path, help="append every run's row (with its out-of-fold scores) here")
    p.add_argument("--example", type=Path, help="copy the first mode's report.md (seed 0) here, with the figures appended")
    p.add_argument("--bare-steps", type=int, default=30)
    p.add_argument("--one-after-another", action="store_true", help="train the folds one after another (default: together)")
    args = p.parse_args(argv)

    from training.cache import prepare_cohort
    from training.cohort import read_cohort
    from training.engine import resolve_device
    from training.run import train_bundle
    from training.splits import assign_folds
    from pipeline.model.performance import auc, auc_ci, paired_auc_difference

    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {device} ({name}); torch {torch.__version__}")
    seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        cohort_dir = work / "cohort"
        if not (cohort_dir / "labels.csv").is_file():
            from pipeline.phantom import generate_cohort  # SimpleITK: not needed when --work holds a prepared cohort

            start = time.perf_counter()
            generate_cohort(cohort_dir, patients=args.patients, positive_fraction=args.positives / args.patients, seed=59,
                            geometry=args.geometry, effect_size=args.effect_size, jobs=2)
            print(f"phantom cohort: {args.patients} patients in {time.perf_counter() - start:.1f} s")
        params = PreprocessParams(output_size=args.output_size, bias_correction=not args.no_bias_correction)
        prepared = prepare_cohort(read_cohort(cohort_dir / "labels.csv"), params, work / "cache")
        labels = prepared.labels
        groups = [e.group or e.patient_id for e in prepared.entries]
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        runs: dict[str, list[dict]] = {}
        first_report: Path | None = None
        for mode in modes:
            for seed in seeds:
                start = time.perf_counter()
                if mode in ("plain", "features"):
                    folds = assign_folds(labels, groups, args.folds, seed)  # the recipe's splits for this seed
                    if mode == "plain":
                        done = plain_loop_cv(prepared.inputs, labels, folds, epochs=args.epochs, device=device, seed=seed)
                        recipe, images_per_s = "plain torchvision loop", done["images_per_s"]
                    else:
                        done = features_cv(prepared.inputs, prepared.lesion_masks, labels, folds)
                        recipe, images_per_s = f"lesion features ({done['features']}) + logistic regression", None
                    scores, train_s = done["scores"], done["seconds"]
                else:
                    changes = {"epochs": args.epochs, "folds": args.folds, "device": device.type, "seed": seed,
                               "folds_together": not args.one_after_another, "bootstrap": 0}
                    changes.update({k: v for k, v in (("max_lr", args.lr), ("selection", args.selection),
                                                        ("imagenet_weights", args.imagenet_weights)) if v is not None})
                    settings = mode_settings(mode, **changes)
                    out = work / f"bundle-{mode}-s{seed}"
                    if out.exists():
                        shutil.rmtree(out)
                    outcome = train_bundle(cohort_dir / "labels.csv", out, settings=settings, params=params,
                                           cache_dir=work / "cache", progress=True)
                    scores = outcome.served.raw  # the served rule's out-of-fold scores (one fold model per patient)
                    throughput = outcome.report["throughput"]
                    recipe, train_s = settings.recipe, throughput["cv_seconds"]
                    images_per_s = throughput["training_images"] / train_s
                    first_report = first_report or out / "report.md"
                row = {"mode": mode, "recipe": recipe, "seed": seed, "device": name, "wall_s": round(time.perf_counter() - start, 1),
                       "train_s": round(train_s, 1), "images_per_s": None if images_per_s is None else round(images_per_s, 1),
                       "auc": round(auc(labels, scores), 6), "auc_ci95": [round(v, 6) for v in auc_ci(labels, scores, 2000, 0)],
                       "scores": [round(float(v), 6) for v in scores]}
                runs.setdefault(mode, []).append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "scores"}), flush=True)
                if args.jsonl:
                    args.jsonl.parent.mkdir(parents=True, exist_ok=True)
                    with open(args.jsonl, "a") as handle:
                        handle.write(json.dumps({**row, "labels": [int(v) for v in labels],
                                                 "study_uids": [e.study_uid for e in prepared.entries]}) + "\n")
        reference = modes[0]
        summary = []
        for mode, rows in runs.items():
            paired = paired_auc_difference(labels, [r["scores"] for r in rows], [r["scores"] for r in runs[reference]], 2000, 0)
            summary.append({"mode": mode, "recipe": rows[0]["recipe"], "seeds": [r["seed"] for r in rows],
                            "auc": [r["auc"] for r in rows], "mean_auc": round(float(np.mean([r["auc"] for r in rows])), 4),
                            f"difference_vs_{reference}": round(paired["difference"], 4),
                            "ci95": [round(v, 4) for v in paired["ci95"]],
                            "images_per_s": [r["images_per_s"] for r in rows], "train_s": [r["train_s"] for r in rows]})
            print(json.dumps(summary[-1]), flush=True)
        bare = None
        if device.type == "cuda":
            bare = bare_loop(device, 32, args.output_size, args.bare_steps)
            print(f"bare torchvision ResNet-50 training loop, batch 32, {args.output_size}px: {bare:.0f} images/s")
        if args.example and first_report is not None:
            text = first_report.read_text()
            lines = ["", "## Benchmark (tests/bench_train.py)", "", f"- Device: {device} ({name}), torch {torch.__version__}.",
                     f"- Command: `python tests/bench_train.py {' '.join(sys.argv[1:] if argv is None else argv)}`".rstrip(),
                     f"- {len(seeds)} seeds ({', '.join(map(str, seeds))}) per mode; AUC: pooled out-of-fold patient AUC of "
                     f"each seed; the difference: mean AUC minus {reference}'s, paired on the same patients and seeds "
                     "(stratified patient bootstrap, 95 % CI).", "",
                     f"| mode | AUC per seed | mean | difference vs {reference} (95 % CI) | training s per seed | images/s |",
                     "| --- | --- | --- | --- | --- | --- |"]
            for r in summary:
                ips = ", ".join("-" if v is None else f"{v:g}" for v in r["images_per_s"])
                lines.append(f"| {r['mode']} ({r['recipe']}) | {', '.join(f'{v:.2f}' for v in r['auc'])} | {r['mean_auc']:.2f} | "
                             f"{r[f'difference_vs_{reference}']:+.2f} ({r['ci95'][0]:+.2f} to {r['ci95'][1]:+.2f}) | "
                             f"{', '.join(f'{v:g}' for v in r['train_s'])} | {ips} |")
            if bare:
                lines.append(f"\nBare torchvision training loop, batch 32: {bare:.0f} images/s.")
            args.example.parent.mkdir(parents=True, exist_ok=True)
            args.example.write_text(text + "\n".join(lines) + "\n")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
