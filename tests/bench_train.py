"""Benchmark: the full training recipe on a phantom cohort of the paper's size (not a test).

Haim et al. 2022: 59 patients, 16 EGFR positive, 5 folds x 40 epochs, batch 32, 96x96.
Times frozen-body and full fine-tuning runs of ``training.train_bundle``, prints the device
and training images/s, and on a GPU also a bare torchvision ResNet-50 training-step loop
at the same batch size (the ceiling the recipe's steps are compared with).

    python tests/bench_train.py                               # full recipe (about an hour per mode on 2 CPU cores)
    python tests/bench_train.py --epochs 1 --folds 2 --patients 12 --positives 4 --output-size 32   # smoke run
    python tests/bench_train.py --device cuda --example docs/examples/train-report.md

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

from pipeline.params import PreprocessParams  # noqa: E402


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--patients", type=int, default=59)
    p.add_argument("--positives", type=int, default=16)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--output-size", type=int, default=96)
    p.add_argument("--geometry", default="axial2d", help="phantom geometry (axial2d is the cheapest to preprocess)")
    p.add_argument("--device", default="auto", choices=("cpu", "cuda", "auto"))
    p.add_argument("--modes", default="frozen,full", help="comma list of frozen, full")
    p.add_argument("--lr", type=float, help="max lr (default: the paper's 4e-2)")
    p.add_argument("--selection", default="nested", choices=("nested", "paper"))
    p.add_argument("--work", type=Path, help="working folder (default: a temporary one, removed)")
    p.add_argument("--example", type=Path, help="copy the first mode's report.md here, with the timings appended")
    p.add_argument("--bare-steps", type=int, default=30)
    p.add_argument("--one-after-another", action="store_true", help="train the folds one after another (default: together)")
    args = p.parse_args(argv)

    from training.engine import resolve_device
    from training.run import train_bundle
    from training.settings import TrainSettings

    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {device} ({name}); torch {torch.__version__}")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        cohort_dir = work / "cohort"
        if not (cohort_dir / "labels.csv").is_file():
            from pipeline.phantom import generate_cohort  # SimpleITK: not needed when --work holds a prepared cohort

            start = time.perf_counter()
            generate_cohort(cohort_dir, patients=args.patients, positive_fraction=args.positives / args.patients, seed=59,
                            geometry=args.geometry, jobs=2)
            print(f"phantom cohort: {args.patients} patients in {time.perf_counter() - start:.1f} s")
        params = PreprocessParams(output_size=args.output_size)
        results = []
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            settings = TrainSettings(epochs=args.epochs, folds=args.folds, device=device.type, freeze_body=(mode == "frozen"),
                                     selection=args.selection, folds_together=not args.one_after_another,
                                     **({"max_lr": args.lr} if args.lr else {}))
            out = work / f"bundle-{mode}"
            if out.exists():
                shutil.rmtree(out)
            start = time.perf_counter()
            outcome = train_bundle(cohort_dir / "labels.csv", out, settings=settings, params=params, cache_dir=work / "cache",
                                   progress=True)
            wall = time.perf_counter() - start
            throughput = outcome.report["throughput"]  # the folds may overlap (trained together): the CV's own time
            train_s = throughput["cv_seconds"]
            row = {"mode": mode, "folds": throughput["folds"], "wall_s": round(wall, 1), "train_s": round(train_s, 1),
                   "images_per_s": round(throughput["training_images"] / train_s, 1), "pooled_auc": outcome.report["headline"]["auc"],
                   "auc_ci95": outcome.report["headline"]["auc_ci95"]}
            results.append((row, out))
            print(json.dumps(row))
        bare = None
        if device.type == "cuda":
            bare = bare_loop(device, 32, args.output_size, args.bare_steps)
            print(f"bare torchvision ResNet-50 training loop, batch 32, {args.output_size}px: {bare:.0f} images/s")
        if args.example and results:
            row, out = results[0]
            text = (out / "report.md").read_text()
            lines = ["", "## Benchmark (tests/bench_train.py)", "", f"- Device: {device} ({name}), torch {torch.__version__}.",
                     f"- Command: `python tests/bench_train.py {' '.join(sys.argv[1:] if argv is None else argv)}`".rstrip()]
            lines += [f"- {r['mode']}: {r['wall_s']} s wall, {r['train_s']} s training, {r['images_per_s']} images/s, "
                      f"pooled AUC {r['pooled_auc']}" for r, _ in results]
            if bare:
                lines.append(f"- Bare torchvision training loop, batch 32: {bare:.0f} images/s.")
            args.example.parent.mkdir(parents=True, exist_ok=True)
            args.example.write_text(text + "\n".join(lines) + "\n")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
