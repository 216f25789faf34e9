"""``egfr-node fetch --accession N | --study UID | --patient-id ID [--date YYYYMMDD] [--source NAME] [--list]``:
ask a configured source for a study and bring its MR series and masks into the node, which
then predicts as for a pushed study (``dicom_node.fetch``). Audited."""

from __future__ import annotations

import argparse
import json
from typing import Any

from dicom_node.commands._common import fail, with_runtime
from dicom_node.commands.models import shell_user

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    p = sub.add_parser("fetch", help="query a source (C-FIND or QIDO-RS) and retrieve a study to predict")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--accession", help="Accession Number")
    which.add_argument("--study", help="Study Instance UID")
    which.add_argument("--patient-id", help="Patient ID (with --date to narrow it)")
    p.add_argument("--date", default="", help="Study Date, YYYYMMDD or a range YYYYMMDD-YYYYMMDD")
    p.add_argument("--source", help="the [[sources]] name (default: the only one)")
    p.add_argument("--list", action="store_true", help="only show what matches; retrieve nothing")
    p.add_argument("--all", action="store_true", help="retrieve every matching study (default: exactly one must match)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from db import audit
    from dicom_node.fetch import FetchError, fetch_study, find_studies, source_named

    def act(runtime: Any) -> int:
        config = runtime.config
        try:
            source = source_named(config, args.source)
            found = find_studies(config, source, accession=args.accession or "", study_uid=args.study or "",
                                 patient_id=args.patient_id or "", study_date=args.date)
        except FetchError as exc:
            return fail(str(exc))
        if args.list or not found:
            if args.json:
                print(json.dumps([study.to_json() for study in found], indent=2))
            else:
                for study in found:
                    print(f"{study.study_uid}  accession {study.accession or '-'}  {study.study_date or '-'}  "
                          + ", ".join(f"{s.modality}×{s.instances if s.instances is not None else '?'}" for s in study.series))
            return 0 if found else fail(f"no study on {source.name} matches")
        if len(found) > 1 and not args.all:
            return fail(f"{len(found)} studies on {source.name} match: name one with --study, or pass --all "
                        f"(--list shows them)")
        status = 0
        results = []
        for study in found:
            try:
                fetched = fetch_study(config, runtime.archive, runtime.sessions, source, study)
                outcome = fetched.summary()
                results.append(fetched.__dict__)
                if fetched.failed:
                    status = 1
            except FetchError as exc:
                outcome, status = f"fetch of {study.study_uid} failed: {exc}", 1
                results.append({"study_uid": study.study_uid, "error": str(exc)})
            with runtime.sessions.begin() as session:
                audit.record(session, shell_user(), "fetch", f"study {study.study_uid} from {source.name}", outcome)
            if not args.json:
                print(outcome)
        if args.json:
            print(json.dumps(results, indent=2))
        return status

    return with_runtime(args, act)
