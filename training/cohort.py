"""The cohort CSV: one study per patient, its EGFR status and where its files are.

Columns are matched case-insensitively, ignoring spaces, ``_`` and ``-``:

- patient: ``patient_id``, ``PatientID``, ``patient``, ``subject``, ``subject_id``
- study: ``study_uid``, ``study_instance_uid``, ``StudyInstanceUID``
- status: ``egfr_status``, ``egfr``, ``label``, ``status``; values positive/negative,
  mutant/wild-type (wildtype, wt), pos/neg, 1/0, true/false, yes/no (case-insensitive)
- optional: lesion label (``lesion_label``, ``lesion``, ``segment``, ``segment_label``,
  ``roi``) naming the mask segment / ROI of the resected lesion; split group
  (``group``, ``split_group``, ``site``, ``centre``, ``center``) kept together in one fold;
  ``folder`` / ``path`` relative to the CSV's folder (used when no archive root is given).

With an archive root each study is ``<archive_root>/<study_uid>`` (the node's archive
layout); otherwise the ``folder``/``path`` column names it. Under ``egfr-node`` a study read
from the archive is the list of instances the node received (:func:`with_received_files`,
from its database), as a job reads it: the node's own results (a SEG derived from an
RTSTRUCT, the SR, the card) in the same folder are never taken as input.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.uids import is_uid

if TYPE_CHECKING:
    from db.outcomes import OutcomeRow, OutcomeView

__all__ = ["CohortError", "CohortEntry", "Cohort", "read_cohort", "parse_status", "with_received_files", "node_database",
           "read_outcomes_csv", "write_outcomes_csv", "STATUS_VALUES"]

_ALIASES = {
    "patient_id": ("patient_id", "PatientID", "patient", "subject", "subject_id"),
    "study_uid": ("study_uid", "study_instance_uid", "StudyInstanceUID", "study"),
    "status": ("egfr_status", "egfr", "label", "status", "egfr_mutation"),
    "lesion_label": ("lesion_label", "lesion", "segment", "segment_label", "roi", "roi_name"),
    "group": ("group", "split_group", "site", "centre", "center"),
    "folder": ("folder", "path", "study_folder", "study_dir"),
    # the outcomes CSV's optional columns (egfr-node outcomes import)
    "date": ("date", "outcome_date", "pathology_date"),
    "source": ("source", "tissue", "specimen"),
    "subtype": ("subtype", "mutation_subtype", "mutation"),
    "reference": ("reference", "pathology_reference", "report"),
}
_NOT_ASSESSABLE = ("not assessable", "not_assessable", "not-assessable", "na", "n/a", "unknown")
_POSITIVE = ("positive", "pos", "mutant", "mutated", "mut", "1", "true", "yes")
_NEGATIVE = ("negative", "neg", "wild-type", "wildtype", "wild type", "wt", "0", "false", "no")
#: What a status cell may hold (shown in the error for anything else).
STATUS_VALUES = (_POSITIVE, _NEGATIVE)


class CohortError(ValueError):
    """The cohort CSV cannot be used; the message names the file, row and column."""


@dataclass(frozen=True)
class CohortEntry:
    patient_id: str
    study_uid: str
    label: int  # 1 = EGFR positive (mutant)
    folder: Path
    lesion_label: str | None = None
    group: str | None = None
    row: int = 0
    in_archive: bool = False  # the folder is the node's archive's, not a column of the CSV
    #: exactly the files to read (the node's received instances), or None: the whole folder
    files: tuple[Path, ...] | None = None


@dataclass(frozen=True)
class Cohort:
    source: Path
    entries: tuple[CohortEntry, ...]

    @property
    def positives(self) -> int:
        return sum(e.label for e in self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def summary(self) -> dict[str, int]:
        return {"patients": len(self.entries), "positive": self.positives, "negative": len(self.entries) - self.positives}


def parse_status(value: str) -> int:
    """1 for positive/mutant/1/true, 0 for negative/wild-type/0/false; else ValueError listing what is accepted."""
    text = str(value).strip().lower()
    if text in _POSITIVE:
        return 1
    if text in _NEGATIVE:
        return 0
    raise ValueError(
        f"EGFR status {value!r} is not understood; accepted (any case): positive: {', '.join(_POSITIVE)}; "
        f"negative: {', '.join(_NEGATIVE)}"
    )


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name.strip().lower())


def _columns(header: list[str], path: Path, required: tuple[str, ...] = ("patient_id", "study_uid", "status")) -> dict[str, str]:
    found: dict[str, str] = {}
    for column in header:
        key = _key(column)
        for field, aliases in _ALIASES.items():
            if key in {_key(a) for a in aliases}:
                if field in found:
                    raise CohortError(f"{path}: columns {found[field]!r} and {column!r} both name the {field.replace('_', ' ')}")
                found[field] = column
    missing = [f for f in required if f not in found]
    if missing:
        spell = "; ".join(f"{f}: {', '.join(_ALIASES[f])}" for f in missing)
        raise CohortError(f"{path}: no column for {', '.join(missing)} (accepted spellings, any case: {spell}); header is {header}")
    return found


def read_cohort(csv_path: Path | Cohort, archive_root: Path | None = None) -> Cohort:
    """Read and check the cohort CSV; every problem is a CohortError naming the row. A
    :class:`Cohort` already built (from the node's outcomes) is returned as it is."""
    if isinstance(csv_path, Cohort):
        return csv_path
    path = Path(csv_path)
    if not path.is_file():
        raise CohortError(f"cohort file {path} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames:
            raise CohortError(f"{path}: empty file (a header row is needed)")
        cols = _columns(list(reader.fieldnames), path)
        if archive_root is None and "folder" not in cols:
            raise CohortError(f"{path}: without an archive root a 'folder' or 'path' column must name each study's folder")
        entries: list[CohortEntry] = []
        seen_patients: dict[str, int] = {}
        seen_studies: dict[str, int] = {}
        for number, row in enumerate(reader, start=2):
            if not any((v or "").strip() for v in row.values()):
                continue
            patient = (row.get(cols["patient_id"]) or "").strip()
            study = (row.get(cols["study_uid"]) or "").strip()
            if not patient:
                raise CohortError(f"{path} row {number}: empty patient id")
            if not is_uid(study):
                raise CohortError(f"{path} row {number}: {study!r} is not a Study Instance UID")
            try:
                label = parse_status(row.get(cols["status"]) or "")
            except ValueError as exc:
                raise CohortError(f"{path} row {number}, column {cols['status']!r}: {exc}") from None
            if patient in seen_patients:
                raise CohortError(f"{path} row {number}: patient listed again (first on row {seen_patients[patient]}); one study per patient")
            if study in seen_studies:
                raise CohortError(f"{path} row {number}: study {study} listed again (first on row {seen_studies[study]})")
            seen_patients[patient], seen_studies[study] = number, number
            # A folder named in the CSV wins (a study outside the archive); else the archive's.
            relative = (row.get(cols["folder"]) or "").strip() if "folder" in cols else ""
            if relative:
                folder = (path.parent / relative).resolve()
            elif archive_root is not None:
                folder = Path(archive_root) / study
            else:
                raise CohortError(f"{path} row {number}: empty {cols['folder']!r}")
            lesion = (row.get(cols["lesion_label"]) or "").strip() or None if "lesion_label" in cols else None
            group = (row.get(cols["group"]) or "").strip() or None if "group" in cols else None
            entries.append(CohortEntry(patient, study, label, folder, lesion, group, number, in_archive=not relative))
    if not entries:
        raise CohortError(f"{path}: no patients listed")
    return Cohort(path, tuple(entries))


def node_database(database_url: str | None) -> str | None:
    """``database_url`` when the node's database is there to read (a SQLite file that exists,
    or a server URL), else None (a cohort trained outside any node)."""
    if not database_url:
        return None
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
        return None
    return database_url


def with_received_files(cohort: Cohort, database_url: str, archive_root: Path) -> Cohort:
    """The cohort with each archived study's received instances (``db.instances``), the files a
    job of the node reads; an entry whose study the node never received gets an empty list
    (it fails preparation with that reason)."""
    from dataclasses import replace

    from db.engine import make_engine, make_sessionmaker
    from db.instances import received_study_paths

    engine = make_engine(database_url)
    try:
        sessions = make_sessionmaker(engine)
        with sessions() as session:
            entries = tuple(replace(e, files=tuple(Path(archive_root) / p for p in received_study_paths(session, e.study_uid)))
                            if e.in_archive else e for e in cohort.entries)
    finally:
        engine.dispose()
    return Cohort(cohort.source, entries)


def read_outcomes_csv(csv_path: Path) -> list[OutcomeRow]:
    """The rows of an outcomes CSV (``egfr-node outcomes import``): the cohort CSV's columns,
    the status also "not assessable", plus the optional date (YYYY-MM-DD), source (resection,
    biopsy, primary_only; default resection), subtype (exon19_deletion, L858R, other) and
    reference. Every problem is a CohortError naming the line; nothing is returned then."""
    from datetime import date

    from db.outcomes import OutcomeError, OutcomeRow, OutcomeValue

    path = Path(csv_path)
    if not path.is_file():
        raise CohortError(f"outcomes file {path} does not exist")
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames:
            raise CohortError(f"{path}: empty file (a header row is needed)")
        cols = _columns(list(reader.fieldnames), path, required=("study_uid", "status"))
        seen: dict[str, int] = {}
        for number, row in enumerate(reader, start=2):
            if not any((v or "").strip() for v in row.values()):
                continue

            def cell(field: str) -> str:
                return (row.get(cols[field]) or "").strip() if field in cols else ""

            study = cell("study_uid")
            if not is_uid(study):
                raise CohortError(f"{path} line {number}: {study!r} is not a Study Instance UID")
            if study in seen:
                raise CohortError(f"{path} line {number}: study {study} listed again (first on line {seen[study]})")
            seen[study] = number
            text = cell("status")
            try:
                status = "not_assessable" if text.lower() in _NOT_ASSESSABLE else \
                    ("positive" if parse_status(text) else "negative")
            except ValueError as exc:
                raise CohortError(f"{path} line {number}, column {cols['status']!r}: {exc}; or not assessable") from None
            try:
                when = date.fromisoformat(cell("date")) if cell("date") else None
            except ValueError:
                raise CohortError(f"{path} line {number}: date {cell('date')!r} is not YYYY-MM-DD") from None
            try:
                value = OutcomeValue(status, cell("source") or "resection", when, cell("subtype") or None,
                                     cell("reference") or None)
            except OutcomeError as exc:
                raise CohortError(f"{path} line {number}: {exc}") from None
            rows.append(OutcomeRow(number, cell("patient_id"), study, value))
    if not rows:
        raise CohortError(f"{path}: no outcomes listed")
    return rows


def write_outcomes_csv(path: Path, outcomes: list[OutcomeView]) -> int:
    """The site's outcomes as a CSV that ``read_outcomes_csv`` and ``read_cohort`` read back
    (``not_assessable`` rows are not a cohort's: ``read_cohort`` refuses them)."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["study_uid", "egfr_status", "date", "source", "subtype", "reference", "updated_by", "updated_at"])
        for view in outcomes:
            v = view.value
            writer.writerow([view.study_uid, v.status, v.outcome_date.isoformat() if v.outcome_date else "", v.source,
                             v.subtype or "", v.reference or "", view.updated_by, view.updated_at.isoformat() + "Z"])
    return len(outcomes)
