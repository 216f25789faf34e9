"""``egfr-node outcomes import CSV | export CSV | report [--bundle ID] [--json] | export-cohort --deidentify OUT``:
the site's pathology outcomes and how the served model did on them (issue 28).

``import`` reads the cohort CSV's columns (the status may also be "not assessable") plus the
optional date, source, subtype and reference, with training's reader (one of the front doors
from dicom_node into training): a bad row is named with its line, and nothing of that file
is applied. ``report`` prints the running performance of a bundle (the active one by
default) on the confirmed cases, with the statistics ``evaluate`` uses.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from dicom_node.commands._common import fail, with_runtime
from dicom_node.commands.models import shell_user
from pipeline.model.performance import calibration_words

__all__ = ["register", "run", "report_lines"]


def register(sub: Any) -> None:
    p = sub.add_parser("outcomes", help="pathology outcomes: import, export, the running performance, a cohort to share")
    outcomes = p.add_subparsers(dest="outcomes_command", required=True)
    m = outcomes.add_parser("import", help="record the outcomes of a CSV (all rows or none)")
    m.add_argument("csv", type=Path)
    m.set_defaults(run=run)
    m = outcomes.add_parser("export", help="every recorded outcome as a CSV")
    m.add_argument("csv", type=Path)
    m.set_defaults(run=run)
    m = outcomes.add_parser("report", help="a bundle's running performance on the confirmed cases")
    m.add_argument("--bundle", type=int, help="bundle id (default: the active one)")
    m.add_argument("--include-primary", action="store_true", help="count outcomes from the primary tumour only too")
    m.add_argument("--json", action="store_true")
    m.set_defaults(run=run)
    m = outcomes.add_parser("export-cohort", help="the confirmed studies, de-identified, with their labels")
    m.add_argument("--deidentify", type=Path, required=True, metavar="OUT", help="folder to create")
    m.add_argument("--include-primary", action="store_true",
                   help="export studies whose outcome came from the primary tumour only too")
    m.set_defaults(run=run)


def _pct(figure: dict[str, Any]) -> str:
    k, n = figure["count"]
    low, high = figure["ci95"]
    return f"{figure['value']:.2f} ({low:.2f}-{high:.2f}; {k}/{n})" if n else "n/a"


def report_lines(report: dict[str, Any]) -> list[str]:
    b, c = report["bundle"], report["confirmed"]
    lines = [f"bundle {b['id']}: {b['name']} {b['version']}" + (" (active)" if b["active"] else "")
             + (" (shadow)" if b["shadow"] else ""),
             f"confirmed cases ({', '.join(report['sources'])}): {c['positive']} positive, {c['negative']} negative; "
             f"not counted: {report['not_counted']['not_assessable']} not assessable, "
             f"{report['not_counted']['primary_only']} from the primary tumour only"]
    if report["caution"]:
        lines.append(f"CAUTION: {report['caution']}")
    f = report["figures"]
    if f and "auc" in f:
        lines.append(f"AUC {f['auc']:.2f} (95% CI {f['auc_ci'][0]:.2f}-{f['auc_ci'][1]:.2f})")
        lines.append(f"at the threshold {b['threshold']:.3f}: sensitivity {_pct(f['sensitivity'])}, specificity "
                     f"{_pct(f['specificity'])}")
        cal = f["calibration"]
        lines.append(f"calibration: {calibration_words(cal)}")
    elif f:
        lines.append(f["note"])
    for d in report["discordant"]:
        lines.append(f"discordant: job {d['job_id']} study {d['study_uid']}: predicted {d['predicted']} "
                     f"({d['probability']:.3f}, {d['role']}), pathology {d['pathology']} ({d['source']})")
    return lines


def run(args: argparse.Namespace) -> int:
    def do(runtime: Any) -> int:
        from db import bundles
        from db.outcomes import OutcomeError, list_outcomes
        from dicom_node import outcomes

        command = args.outcomes_command
        if command == "import":
            from training.cohort import CohortError, read_outcomes_csv

            try:
                rows = read_outcomes_csv(args.csv)
                changed, unchanged = outcomes.import_rows(runtime.sessions, rows, user=shell_user(),
                                                          archive_root=runtime.archive.root)
            except (CohortError, OutcomeError) as exc:
                return fail(f"{exc}; nothing of {args.csv} was applied")
            print(f"{len(rows)} outcomes read from {args.csv}: {changed} recorded or changed, {unchanged} unchanged")
            return 0
        if command == "export":
            from training.cohort import write_outcomes_csv

            with runtime.sessions() as session:
                count = write_outcomes_csv(args.csv, list_outcomes(session))
            print(f"{count} outcomes written to {args.csv}")
            return 0
        if command == "export-cohort":
            from dicom_node.deidentify import DeidentificationError, export_cohort

            try:
                done = export_cohort(runtime.sessions, runtime.archive.root, args.deidentify,
                                     include_primary=args.include_primary)
            except (FileExistsError, DeidentificationError) as exc:
                return fail(str(exc))
            print(f"{done.studies} confirmed studies ({done.instances} instances) de-identified into {done.folder}; "
                  f"labels {done.labels_csv}")
            return 0
        with runtime.sessions() as session:
            record = bundles.get_bundle(session, args.bundle) if args.bundle else bundles.active(session)
        if record is None:
            return fail("no active bundle: name one with --bundle ID")
        report = outcomes.performance_of(runtime.sessions, record.id, include_primary=args.include_primary)
        print(json.dumps(report, indent=2, default=str) if args.json else "\n".join(report_lines(report)))
        return 0

    return with_runtime(args, do)
