"""A cohort to share (issue 28, item 5): the confirmed studies' received DICOM, de-identified,
with their labels, so several sites can pool their cases for a multi-site model.

De-identification is dicognito's (https://github.com/blairconrad/dicognito), chosen over
pydicom's helpers (which only remove private tags and leave the profile to the caller) and
over ``deid`` (a recipe language that must be written and kept right for every IOD) because
one ``Anonymizer`` replaces every UID of every file with a value derived from the original
under one random key: the MR series, the SEG or RTSTRUCT that references it and the labels
stay consistent with each other, while nothing links them back. It replaces names and IDs
with made-up ones, shifts dates, and clears addresses and institutions; private tags are
removed here as well (they may hold anything). Every written file is then checked: none of
the original identifying values (patient name, ID, birth date, accession number, institution,
the original UIDs) may remain anywhere in its bytes; a file that fails is not written.

Only what the pipeline reads of what the node received is exported: the images and the
lesion masks, never the node's own SR, SEG or card, nor a report, PDF or capture that came with
the study (their free text or pixels may name the patient, which no check of attributes sees).
Only studies whose outcome is positive or negative from the metastasis (resection or biopsy;
the primary tumour only when asked, as ``train --from-outcomes`` counts them). A patient with
several studies is one ``group`` in ``labels.csv`` (``patient_id`` numbered per study), so
``train`` keeps them in one fold.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import pydicom
from sqlalchemy.orm import Session, sessionmaker

from db.instances import received_study_inputs
from db.outcomes import list_outcomes

__all__ = ["ExportedCohort", "DeidentificationError", "export_cohort", "IDENTIFYING"]

log = logging.getLogger(__name__)

#: The attributes whose original values must not remain in an exported file.
IDENTIFYING = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName", "OtherPatientIDs",
               "ReferringPhysicianName", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")


class DeidentificationError(RuntimeError):
    """An exported file would still hold an identifying value; names the attribute, never the value."""


@dataclass(frozen=True)
class ExportedCohort:
    folder: Path
    studies: int
    instances: int
    labels_csv: Path


def _identifying_values(ds: pydicom.Dataset) -> dict[str, bytes]:
    out = {}
    for keyword in IDENTIFYING:
        value = ds.get(keyword)
        text = str(value).strip() if value is not None else ""
        if len(text) >= 4:  # shorter values (a sex, a one-letter ID) match unrelated bytes
            out[keyword] = text.encode("utf-8", "replace")
    return out


def export_cohort(sessions: sessionmaker[Session], archive_root: Path, out: Path, *,
                  include_primary: bool = False) -> ExportedCohort:
    """Write every confirmed (positive or negative) study's received images and masks,
    de-identified, to ``out/<new study UID>/``, and ``out/labels.csv`` (the cohort CSV
    ``train`` and ``import`` read). ``out`` must not exist."""
    from dicognito.anonymizer import Anonymizer

    from dicom_node.outcomes import METASTASIS_SOURCES

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose a new folder for the export")
    with sessions() as session:
        sources = (*METASTASIS_SOURCES, "primary_only") if include_primary else METASTASIS_SOURCES
        confirmed = [o for o in list_outcomes(session) if o.value.label is not None and o.value.source in sources]
        files = {o.study_uid: received_study_inputs(session, o.study_uid) for o in confirmed}
    anonymizer = Anonymizer()  # one key for the whole export: UIDs consistent across MR, mask and labels
    out.mkdir(parents=True)
    rows, instances = [], 0
    studies_of: dict[str, int] = {}  # a patient's studies so far, by their new Patient ID
    for outcome in confirmed:
        new_study = patient = None
        for relative in files[outcome.study_uid]:
            ds = pydicom.dcmread(Path(archive_root) / relative)
            original = _identifying_values(ds)
            ds.remove_private_tags()
            anonymizer.anonymize(ds)
            new_study, patient = str(ds.StudyInstanceUID), str(ds.get("PatientID", ""))
            target = out / new_study / f"{ds.SOPInstanceUID}.dcm"
            target.parent.mkdir(exist_ok=True)
            ds.save_as(target, enforce_file_format=True)
            data = target.read_bytes()
            leaked = [k for k, v in original.items() if v in data]
            if leaked:
                target.unlink()
                raise DeidentificationError(f"an exported instance of study {outcome.study_uid} still holds its "
                                            f"original {', '.join(leaked)}: nothing of it is kept")
            instances += 1
        if new_study is None:
            log.warning("study %s has an outcome but no received instance in the archive: not exported",
                        outcome.study_uid, extra={"study_uid": outcome.study_uid})
            continue
        patient = patient or new_study  # no Patient ID: the study stands alone
        studies_of[patient] = studies_of.get(patient, 0) + 1
        rows.append({"patient_id": f"{patient}-{studies_of[patient]}", "group": patient, "study_uid": new_study,
                     "egfr_status": outcome.value.status, "source": outcome.value.source,
                     "subtype": outcome.value.subtype or "", "folder": new_study})
    labels = out / "labels.csv"
    with open(labels, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["patient_id", "group", "study_uid", "egfr_status", "source", "subtype",
                                                    "folder"])
        writer.writeheader()
        writer.writerows(rows)
    (out / "README.txt").write_text(
        "De-identified by egfr-node (dicognito: UIDs, names, IDs replaced consistently, dates shifted, private tags "
        "removed). labels.csv: the EGFR status pathology found and the tissue it came from.\n", encoding="utf-8")
    return ExportedCohort(out, len(rows), instances, labels)
