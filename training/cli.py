"""``egfr-node train``: rebuild and evaluate the fold ensemble from a cohort CSV.

    train --cohort cohort.csv --out DIR [--recipe auto|paper|scratch] [--device cpu|cuda|auto]
          [--epochs N] [--folds K] [--seed S] [--repeats R] [--shuffle-labels]
          [--selection fixed|nested|paper] [--freeze-body | --full-finetune]
          [--allow-random-frozen-body] [--output-size N] [--imagenet-weights FILE] [--lr LR]
          [--loss f1|ce] [--mixup | --no-mixup] [--augmentation fastai|dihedral|none]
          [--head fastai|linear] [--calibration logistic|isotonic|none] [--permutations N]
          [--cache DIR] [--register] [--no-progress] [--deterministic]
    train --resume OUT                            # go on with an interrupted run
    train --cohort cohort.csv --lr-find [...]     # the LR range test only, on training patients

Settings come from the recipe (``--recipe``, default ``auto``: the paper's with
``--imagenet-weights``, the scratch recipe without; :mod:`training.settings`), then the
``[training]`` table of the node's config file (``egfr-node --config FILE train``; run
alone, as under torchrun, the file ``$EGFR_NODE_CONFIG`` names, as for every node command),
then the flags. ``--register`` records the bundle in
the node's database (needs ``database_url``); activation stays a separate, explicit step.
Exit status 0 on success, 1 on a one-line error (printed), 130 on Ctrl-C (no bundle left).
"""

from __future__ import annotations

import argparse
import logging
import json
import shutil
import sys
import os
import tomllib
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any

from pipeline.model.calibrate import CALIBRATION_METHODS
from training.settings import AUGMENTATIONS, HEADS, LOSSES, RECIPES, SELECTIONS, TrainSettings
from pipeline.prep.params import PreprocessParams
from pipeline.model.device import DEVICES

__all__ = ["main", "build_parser", "register_bundle"]

log = logging.getLogger(__name__)


def build_parser(prog: str = "egfr-node train") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Train and evaluate the EGFR fold ensemble (Haim et al. 2022 recipe).")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--cohort", type=Path, help="cohort CSV: patient id, Study Instance UID, EGFR status")
    source.add_argument("--from-outcomes", action="store_true",
                        help="the node's confirmed pathology outcomes (positive/negative, resection or biopsy)")
    p.add_argument("--since", type=date.fromisoformat, help="with --from-outcomes: pathology dated on or after YYYY-MM-DD")
    p.add_argument("--holdout-after", type=date.fromisoformat,
                   help="with --from-outcomes: cases with pathology after YYYY-MM-DD are held out and evaluated")
    p.add_argument("--include-primary", action="store_true",
                   help="with --from-outcomes: count outcomes from the primary tumour only too")
    p.add_argument("--skip-missing", action="store_true",
                   help="train without the rows whose study the node never received (default: refuse, exit 2)")
    p.add_argument("--out", type=Path, help="bundle folder to create (must not exist; not needed with --lr-find)")
    p.add_argument("--recipe", choices=("auto", *RECIPES),
                   help="auto (default): paper with --imagenet-weights, scratch without")
    p.add_argument("--device", choices=DEVICES)
    p.add_argument("--epochs", type=int)
    p.add_argument("--folds", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--repeats", type=int, help="repeat the whole CV with seeds seed, seed+1, ... (spread in the report)")
    p.add_argument("--shuffle-labels", action="store_true", default=None, help="negative control: permuted labels")
    p.add_argument("--selection", choices=SELECTIONS)
    body = p.add_mutually_exclusive_group()
    body.add_argument("--freeze-body", dest="freeze_body", action="store_true", default=None)
    body.add_argument("--full-finetune", dest="freeze_body", action="store_false")
    p.add_argument("--allow-random-frozen-body", action="store_true", default=None,
                   help="force a frozen body without ImageNet weights (it does not learn; for ablations)")
    p.add_argument("--lr", type=float, dest="max_lr", help="one-cycle max learning rate (paper 4e-2, scratch 1e-3)")
    p.add_argument("--loss", choices=LOSSES)
    mixup = p.add_mutually_exclusive_group()
    mixup.add_argument("--mixup", dest="mixup", action="store_true", default=None)
    mixup.add_argument("--no-mixup", dest="mixup", action="store_false")
    p.add_argument("--augmentation", choices=AUGMENTATIONS)
    p.add_argument("--head", choices=HEADS)
    p.add_argument("--lr-find", action="store_true",
                   help="run the LR range test on the first fold's training patients, print the suggestion, train nothing")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--imagenet-weights", type=Path, help="local torchvision resnet50-0676ba61.pth (nothing is downloaded)")
    p.add_argument("--output-size", type=int, help="model input side in pixels (paper 96)")
    p.add_argument("--no-bias-correction", action="store_true", help="skip N4 (quick experiments only; recorded)")
    p.add_argument("--cache", type=Path, help="preprocessing cache folder (default: beside --out)")
    p.add_argument("--name", help="the bundle's name, the SR's algorithm name (default: from the recipe that ran)")
    p.add_argument("--calibration", choices=CALIBRATION_METHODS,
                   help="map from score to probability fitted on the out-of-fold patients (default logistic)")
    p.add_argument("--permutations", type=int, help="N shuffled-label trainings beside the real one: permutation p-value")
    p.add_argument("--version")
    p.add_argument("--register", action="store_true", help="record the bundle in the node's database (not activated)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--deterministic", action="store_true", default=None,
                   help="torch's deterministic algorithms only: two CPU runs give the same weights bit for bit")
    p.add_argument("--resume", type=Path, metavar="OUT",
                   help="alone: go on with the interrupted run that was to write OUT, from each fold's last epoch, "
                        "with its own arguments (the result is the uninterrupted run's with --deterministic)")
    return p


def checkpoints_of(out: Path) -> Path:
    """Where a run that writes the bundle ``out`` keeps its arguments and each fold's state
    after every epoch (removed when the bundle is written): ``.<name>.checkpoints`` beside it."""
    out = Path(out).absolute()
    return out.parent / f".{out.name}.checkpoints"


def _resumed_argv(argv: list[str]) -> list[str] | None:
    """``--resume OUT`` (with ``--no-progress`` at most): the interrupted run's own arguments."""
    if "--resume" not in argv:
        return None
    rest = [a for a in argv if a != "--no-progress"]
    if len(rest) != 2 or rest[0] != "--resume":
        raise SystemExit("train: --resume takes only the bundle folder OUT of the interrupted run "
                         "(its arguments are the ones it was started with)")
    saved = checkpoints_of(Path(rest[1])) / "arguments.json"
    if not saved.is_file():
        raise SystemExit(f"train: nothing to resume for {rest[1]}: {saved} does not exist")
    arguments = json.loads(saved.read_text(encoding="utf-8"))
    return [*arguments, *(["--no-progress"] if "--no-progress" in argv and "--no-progress" not in arguments else [])]


def _node_training_table() -> Mapping[str, Any]:
    """Run alone (``python -m training.cli``, torchrun): the ``[training]`` table of the node's
    config file named by ``$EGFR_NODE_CONFIG``, the one way the node's commands find it; none
    without it."""
    path = os.environ.get("EGFR_NODE_CONFIG")
    if not path:
        return {}
    try:
        table = tomllib.loads(Path(path).read_text(encoding="utf-8")).get("training", {})
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"EGFR_NODE_CONFIG {path}: {exc}") from None
    if not isinstance(table, dict):
        raise ValueError(f"EGFR_NODE_CONFIG {path}: [training] must be a table")
    return table


def _settings(args: argparse.Namespace, training_table: Mapping[str, Any] | None = None) -> TrainSettings:
    values: dict[str, Any] = dict(training_table if training_table is not None else _node_training_table())
    if args.recipe is not None:
        values["recipe"] = args.recipe
    for key in ("device", "epochs", "folds", "seed", "repeats", "shuffle_labels", "selection", "freeze_body", "max_lr",
                "loss", "batch_size", "mixup", "augmentation", "head", "allow_random_frozen_body", "calibration",
                "permutations", "deterministic"):
        value = getattr(args, key)
        if value is not None:
            values[key] = value
    if args.imagenet_weights is not None:
        values["imagenet_weights"] = str(args.imagenet_weights)
    return TrainSettings.from_mapping(values)


def register_bundle(bundle: Path, database_url: str) -> tuple[int, bool]:
    """Record ``bundle`` in the node's database (migrated first) as the node registers one
    (``pipeline.model.registry``: checked, never activated): its id, and whether it is new."""
    from db.engine import make_engine, make_sessionmaker
    from db.migrate import upgrade
    from pipeline.model.registry import register_bundle as register

    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        record, _, created = register(make_sessionmaker(engine), Path(bundle))
        return record.id, created
    finally:
        engine.dispose()


class CohortCheckError(ValueError):
    """The cohort names studies the node never received (exit status 2)."""


def checked_cohort(args: argparse.Namespace, settings: Any, archive_root: Path | None, database_url: str | None) -> Any:
    """The cohort to train on, checked before anything is pinned or trained: from the CSV or the
    node's outcomes; with the node's database every archived study must have been received
    (CohortCheckError naming the row and the UID, unless --skip-missing drops them, said
    one line each); at least ``2 * folds`` studies of both classes."""
    from dataclasses import replace

    from training.cohort import CohortError, read_cohort, with_received_files

    holdout, provenance = None, None
    if args.from_outcomes:
        from training.outcomes_cohort import cohort_from_outcomes

        if not database_url or archive_root is None:
            raise ValueError("--from-outcomes reads the node's outcomes: run it as egfr-node train (the node's database)")
        built = cohort_from_outcomes(database_url, archive_root, since=args.since, holdout_after=args.holdout_after,
                                     include_primary=args.include_primary)
        cohort, holdout, provenance = built.train, built.holdout, built.provenance
    else:
        if args.cohort is None:
            raise ValueError("--cohort CSV or --from-outcomes is needed")
        cohort = read_cohort(args.cohort, archive_root)
        if database_url and archive_root is not None:
            cohort = with_received_files(cohort, database_url, archive_root)
    missing = [e for e in cohort.entries if e.files is not None and not e.files]
    if missing and not args.skip_missing:
        first = missing[0]
        raise CohortCheckError(f"{cohort.source} row {first.row}: study {first.study_uid} is not in the node's archive"
                               + (f" (and {len(missing) - 1} more rows)" if len(missing) > 1 else "")
                               + "; import it first, or --skip-missing trains without such rows")
    for entry in missing:
        print(f"skipped: row {entry.row}: study {entry.study_uid} is not in the node's archive")
    cohort = replace(cohort, entries=tuple(e for e in cohort.entries if e not in missing))
    positives = sum(e.label for e in cohort.entries)
    if len(cohort) < 2 * settings.folds or positives < 1 or positives == len(cohort):
        raise CohortError(f"{len(cohort)} studies ({positives} positive) cannot be split into {settings.folds} folds: "
                          "both classes are needed, and at least 2 studies per fold")
    return cohort, holdout, provenance


def pin_studies(study_uids: list[str], database_url: str, reason: str) -> list[str]:
    """Pin these studies in the node's database, so retention never deletes what a model was
    trained on (``egfr-node archive unpin`` releases them); returns the ones this call pinned
    (not pinned before), for :func:`unpin_studies` when the training fails."""
    from db.engine import make_engine, make_sessionmaker
    from db.retention import pin, pinned

    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine).begin() as session:
            before = pinned(session, study_uids)  # a pin made before stays as it was made
            return [uid for uid in study_uids if uid not in before and pin(session, uid, "egfr-node train", reason)]
    finally:
        engine.dispose()


def unpin_studies(study_uids: list[str], database_url: str) -> None:
    from db.engine import make_engine, make_sessionmaker
    from db.retention import unpin

    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine).begin() as session:
            for uid in study_uids:
                unpin(session, uid)
    finally:
        engine.dispose()


def main(argv: list[str] | None = None, *, archive_root: Path | None = None, database_url: str | None = None,
         training_table: Mapping[str, Any] | None = None) -> int:
    """The command line; under ``egfr-node train`` the node passes its archive, database and
    the ``[training]`` table of its config file (``training_table``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    resumed = _resumed_argv(argv)
    args = build_parser().parse_args(resumed if resumed is not None else argv)
    args.resuming, args.argv = resumed is not None, (resumed if resumed is not None else argv)
    from training import distributed

    distributed.init_from_env(args.device or "cpu")  # under torchrun: join the process group
    try:
        return _train(args, archive_root, database_url, training_table)
    finally:
        distributed.shutdown()


def _train(args: argparse.Namespace, archive_root: Path | None, database_url: str | None,
           training_table: Mapping[str, Any] | None = None) -> int:
    from training import distributed
    from training.cohort import CohortError, node_database
    from training.run import TrainingError, train_bundle

    register_url, database_url = database_url, node_database(database_url)  # register creates the database if need be
    newly_pinned: list[str] = []
    try:
        settings = _settings(args, training_table)
        if args.out is None and not args.lr_find:
            raise ValueError("--out is needed (the bundle folder to create)")
        if args.register and not register_url:
            raise ValueError("--register needs the node's database (database_url)")
        if args.register and settings.shuffle_labels:
            raise ValueError("--register with --shuffle-labels: a label-shuffled control is never registered")
        if args.holdout_after is not None and not args.from_outcomes:
            raise ValueError("--holdout-after splits the node's outcomes by date: use it with --from-outcomes")
        params = PreprocessParams()
        changes = {}
        if args.output_size is not None:
            changes["output_size"] = args.output_size
        if args.no_bias_correction:
            changes["bias_correction"] = False
        if changes:
            params = PreprocessParams.from_dict(params.to_dict() | changes)
        if settings.imagenet_weights is not None and not Path(settings.imagenet_weights).is_file():
            raise ValueError(f"--imagenet-weights {settings.imagenet_weights} does not exist (nothing is downloaded)")
        if args.lr_find:
            return _lr_find(args, settings, params, archive_root)
        cohort, holdout, provenance = checked_cohort(args, settings, archive_root, database_url)
        if holdout is not None and not holdout.entries:
            raise ValueError(f"--holdout-after {args.holdout_after.isoformat()}: no confirmed case has a later pathology date")
        if database_url and distributed.is_main():
            every = [e.study_uid for e in cohort.entries + (holdout.entries if holdout else ())]
            newly_pinned = pin_studies(every, database_url, f"training cohort of {args.out}")
            print(f"pinned {len(every)} of the cohort's studies against retention ({len(newly_pinned)} newly; "
                  "archive unpin releases them)")
        checkpoints = _checkpoint_folder(args) if distributed.world_size() == 1 else None
        outcome = train_bundle(cohort, args.out, settings=settings, params=params, archive_root=archive_root,
                               database_url=database_url, cache_dir=args.cache, name=args.name, version=args.version,
                               progress=not args.no_progress, provenance=provenance, checkpoints=checkpoints)
        if checkpoints is not None:
            shutil.rmtree(checkpoints, ignore_errors=True)  # the bundle is written: nothing left to resume
    except KeyboardInterrupt:
        _release(newly_pinned, database_url)
        print(f"interrupted: no bundle written; `train --resume {args.out}` goes on from each fold's last epoch"
              if args.out is not None and checkpoints_of(args.out).is_dir() else "interrupted: no bundle written",
              file=sys.stderr)
        return 130
    except CohortCheckError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (CohortError, TrainingError, ValueError, TypeError, FileNotFoundError, RuntimeError) as exc:
        _release(newly_pinned, database_url)
        if args.out is not None and not any(checkpoints_of(args.out).glob("*.pt")):
            shutil.rmtree(checkpoints_of(args.out), ignore_errors=True)  # it trained nothing: nothing to resume
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not distributed.is_main():
        return 0  # rank 0 reports, writes and registers
    h = outcome.report["headline"]
    d = outcome.report["data"]
    print(f"recipe: {outcome.report['recipe_text']}")
    print(f"calibration: {outcome.report['bundle_choice']['calibration']}")
    print(f"bundle {outcome.bundle}: {d['patients_used']} patients ({d['positive']} positive), "
          f"{len(d['failures'])} failed; pooled out-of-fold patient AUC {h['auc'] if h['auc'] is not None else 'n/a'} "
          f"(95% CI {h['auc_ci95']}), selection {settings.selection}")
    for failure in d["failures"]:
        print(f"failed: study {failure['study_uid']}: {failure['reason']}")
    holdout_failed = False
    if holdout is not None:
        from pipeline.model.bundle import BundleError
        from training.evaluate import EvaluationError, evaluate_bundle

        # the training run's cache (beside the bundle), never one inside the bundle it would ship in
        cache = args.cache if args.cache is not None else Path(outcome.bundle).absolute().parent / ".egfr-train-cache"
        try:
            evaluation = evaluate_bundle(outcome.bundle, holdout, Path(outcome.bundle) / "holdout",
                                         archive_root=archive_root, database_url=database_url, cache_dir=cache,
                                         device=settings.device, bootstrap=settings.bootstrap, seed=settings.seed)
        except (EvaluationError, BundleError, CohortError, ValueError, RuntimeError, FileNotFoundError) as exc:
            holdout_failed = True  # the bundle is written (and registered below when asked): say what is missing
            print(f"error: the hold-out evaluation failed, so the bundle has no hold-out report: {exc}", file=sys.stderr)
        else:
            r = evaluation.report
            print(f"hold-out (pathology after {args.holdout_after.isoformat()}): {r['cases_scored']} patients, AUC "
                  f"{r['auc'] if r['auc'] is not None else 'n/a'} (95% CI {r['auc_ci']}); "
                  f"report {evaluation.folder / 'report.md'}")
    if args.register:
        assert register_url is not None
        model_id, created = register_bundle(outcome.bundle, register_url)
        print(f"registered as model {model_id}{'' if created else ' (already known)'}; not active: activate it explicitly")
    return 1 if holdout_failed else 0


def _checkpoint_folder(args: argparse.Namespace) -> Path:
    """The run's checkpoint folder: made, with the run's arguments, for a new run; the one left
    by the interrupted run for ``--resume``. A new run refuses to start over an interrupted one."""
    folder = checkpoints_of(args.out)
    if Path(args.out).exists():
        raise ValueError(f"{args.out} already exists; choose a new folder for the bundle")
    if not args.resuming:
        if folder.exists():
            raise ValueError(f"{folder} holds an interrupted run of {args.out}: go on with `train --resume {args.out}`, "
                             "or delete that folder to start again")
        folder.mkdir(parents=True)
        (folder / "arguments.json").write_text(json.dumps(args.argv), encoding="utf-8")
    return folder


def _release(newly_pinned: list[str], database_url: str | None) -> None:
    """Undo this run's pins when it wrote no bundle (the site's own pins stay)."""
    if newly_pinned and database_url:
        unpin_studies(newly_pinned, database_url)
        print(f"released the {len(newly_pinned)} pins this run made", file=sys.stderr)


def _lr_find(args: argparse.Namespace, settings: TrainSettings, params: PreprocessParams, archive_root: Path | None) -> int:
    """``--lr-find``: the range test on the first outer fold's training patients (the test
    fold's patients are not used), with the recipe's network, loss and augmentation."""
    import numpy as np
    import torch

    from training.cache import prepare_cohort
    from training.cohort import read_cohort
    from pipeline.model.device import resolve_device
    from training.lr_find import lr_range_test
    from training.splits import assign_folds

    if args.cohort is None:
        raise ValueError("--lr-find runs on a --cohort CSV")
    cohort = read_cohort(Path(args.cohort), archive_root)
    cache = args.cache if args.cache is not None else (Path(args.out).absolute().parent if args.out else Path.cwd()) / ".egfr-train-cache"
    prepared = prepare_cohort(cohort, params, cache)
    groups = [e.group or e.patient_id for e in prepared.entries]
    folds = assign_folds(prepared.labels, groups, settings.folds, settings.seed)
    train = np.where(folds != 0)[0]
    device = resolve_device(settings.device)
    finding = lr_range_test(torch.as_tensor(prepared.inputs, device=device), prepared.labels, train, settings,
                            seed=settings.seed, device=device)
    print(f"LR range test ({settings.recipe} recipe) on the {finding.patients} training patients of fold 1 of "
          f"{settings.folds}:")
    for lr, loss in finding.summary():
        print(f"  lr {lr:.1e}  smoothed loss {loss:.3f}")
    print(f"suggested max lr (fastai's valley): {finding.suggestion:.1e}; use it with --lr, or keep the recipe's "
          f"{settings.max_lr:g}")
    return 0


if __name__ == "__main__":  # python -m training.cli
    logging.basicConfig(level=logging.WARNING)
    raise SystemExit(main())
