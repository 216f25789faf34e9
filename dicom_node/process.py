"""One job: select -> preprocess -> infer -> report, results archived through the intake path.

DESIGN.md data flow. :func:`run_job` takes a claimed job and the bundle it was claimed with,
and returns what the job record keeps (model, selection, scores, probability, status, the
result instances' UIDs, per-stage times). Every result (the SEG derived from an RTSTRUCT or an
outline, the SR, the result card, built in that order) gets its SOP Instance UID here and is
archived with ``origin="node"`` before anything is sent; each is handed to ``on_archived`` as
soon as it is archived, so the worker sends the SR before the card is drawn (issue 30), and
records those sends with the job's deliveries in the transaction that marks the job done
(``dicom_node.worker``). A retry re-sends the same instance, and the node never treats its
own results as input. The UIDs of a job's results follow from the job and its bundle
(:func:`result_uids`), so a job retried after some of its results were archived (a worker
killed part-way) reuses those and builds only what is missing, instead of leaving unsent
copies; a replay or rerun is a new job and builds new ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable

import numpy as np
import SimpleITK as sitk
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy.orm import Session, sessionmaker

from db.instances import node_instance_paths, received_study_paths
from db.sop_classes import OUTLINE
from dicom_node.store.archive import Archive
from dicom_node.config import Config
from dicom_node.job_result import JobResult, ModelRef, ResultInstances, Selection, ShadowResult, status_word
from dicom_node.store.intake import store_result
from dicom_node.report import AlgorithmInfo, LesionFinding, build_result_card, build_sr, seg_from_volume_mask
from dicom_node.report.image_point import nearest_image_point
from dicom_node.report.sr import probability_words
from pipeline.contrast import ContrastRule, check_contrast
from pipeline.model.infer import FoldEnsemble, Prediction
from pipeline.prepare import PreparedStudy, prepare_study
from pipeline.prep.bias_cache import BiasFieldCache
from pipeline.timing import Laps
from pipeline.uids import is_uid

__all__ = ["JobContext", "run_job", "run_shadow", "result_uids"]

#: The UIDs each job's results need (instance and series of each object, the SEG's tracking UID).
RESULT_UID_KINDS = ("sr", "sr_series", "seg", "seg_series", "seg_tracking", "card", "card_series")

#: Told the SOP Instance UID of each result of a job as soon as it is archived, before the next is
#: built: the worker's early send (``dicom_node.sending.EarlySend.archived``, which returns when
#: the send is done or after 1 s).
Archived = Callable[[str], None]

log = logging.getLogger(__name__)


@dataclass
class JobContext:
    """What a job needs from the node: configuration, archive and database; ``bias_fits``: the
    worker's brain masks and N4 fields fitted before their jobs (None: every job fits its own)."""

    config: Config
    archive: Archive
    sessions: sessionmaker[Session]
    bias_fits: BiasFieldCache | None = None


def result_uids(study_uid: str, job_key: str | None, device_uid: str, version: str) -> dict[str, str]:
    """The UIDs of a job's results: derived from the study, the job (``job_key``: its id and
    creation time, so a job of another database never shares them) and the bundle, the same for
    every attempt of one job; random outside a job (``job_key`` None)."""
    if job_key is None:
        return {kind: generate_uid() for kind in RESULT_UID_KINDS}
    return {kind: generate_uid(entropy_srcs=["egfr-node result", study_uid, job_key, device_uid, version, kind])
            for kind in RESULT_UID_KINDS}


def _archive(ctx: JobContext, ds: Dataset) -> str:
    return store_result(ctx.archive, ctx.sessions, ds)


def _segment_tracking(seg: Dataset, segment_number: int) -> tuple[str | None, str | None]:
    for item in seg.get("SegmentSequence", []):
        if int(item.get("SegmentNumber", 0)) == segment_number:
            uid = item.get("TrackingUID")
            ident = item.get("TrackingID")
            return (str(ident) if ident else None), (str(uid) if uid else None)
    return None, None


def _usable_id(tracking_id: str | None, segment: int) -> str:
    """The mask's tracking identifier for the result, or "Lesion N" when it has none (or only spaces)."""
    text = (tracking_id or "").strip()
    return (text or f"Lesion {segment}")[:64]


def _usable_uid(tracking_uid: str | None, fallback: str, study_uid: str) -> str:
    """The mask's tracking UID for the result, or the node's own when the mask has none or one
    that is not a valid UID (a sender's bug must not fail the job at its last step)."""
    if tracking_uid and is_uid(tracking_uid):
        return tracking_uid
    if tracking_uid:
        log.warning("study %s: the mask's tracking UID is not a valid UID; the results use the node's own", study_uid,
                    extra={"study_uid": study_uid})
    return fallback


def _fold_rule(aggregation: str, scale: str | None, calibrated: bool) -> str:
    """How the fold models' scores make the probability, in the words the SR and card print:
    "mean of logits, then calibrated"."""
    plural = {"probability": "probabilities", "logit": "logits"}.get(scale or "probability", f"{scale}s")
    return f"{aggregation} of {plural}" + (", then calibrated" if calibrated else "")


def _algorithm(bundle: FoldEnsemble, config: Config, contrast: str = "", activated_despite: str = "") -> AlgorithmInfo:
    m = bundle.manifest
    return AlgorithmInfo(
        name=m.name[:64], version=m.version[:64], device_uid=m.device_uid, manufacturer=config.report.manufacturer[:64],
        model_name=f"{m.architecture} x{len(m.folds)} folds"[:64], threshold=m.threshold,
        slice_aggregation=m.slice_aggregation, fold_aggregation=_fold_rule(m.fold_aggregation, m.fold_scale,
                                                                           m.calibration_map.applied),
        contrast_evidence=contrast,
        bundle_parameters=tuple(line[:1024] for line in m.parameter_lines()), activated_despite=activated_despite[:1024],
    )


def _contrast(ctx: JobContext, prepared: PreparedStudy) -> str:
    """The evidence of contrast in the chosen series (ContrastError without it, by default)."""
    rule = ContrastRule(ctx.config.contrast.require_evidence, ctx.config.contrast.series_description_pattern)
    return check_contrast(_series_headers(prepared), prepared.study.series_uid, rule)


def _series_headers(prepared: PreparedStudy) -> list[Dataset]:
    """The chosen series' headers as indexing read them (no file is read twice)."""
    return [instance.header for instance in prepared.study.series_instances]


def lesion_centroid_lps(lesion: sitk.Image) -> tuple[float, float, float]:
    """The centre of the lesion mask's voxels, in patient coordinates (LPS, mm)."""
    k, j, i = np.nonzero(sitk.GetArrayViewFromImage(lesion))
    if not len(i):
        raise ValueError("the lesion mask is empty")
    x, y, z = lesion.TransformContinuousIndexToPhysicalPoint((float(i.mean()), float(j.mean()), float(k.mean())))
    return float(x), float(y), float(z)


def run_job(ctx: JobContext, study_uid: str, ensemble: FoldEnsemble, job_key: str | None = None,
            activated_despite: str = "", keep: dict[str, Any] | None = None,
            on_archived: Archived | None = None) -> JobResult:
    """Run the pipeline on ``study_uid`` with ``ensemble``; archive the results (or reuse those
    an earlier attempt of the job ``job_key`` names archived); return the record.
    ``activated_despite``: the guards the bundle was activated over (``models activate
    --force``), said in the SR's algorithm parameters. ``keep``: a dict that receives the
    prepared study (``"prepared"``), for the shadow bundle to reuse. ``on_archived``: told the
    UID of each result as soon as it is archived, before the next is built.

    Raises ``pipeline.errors.PipelineError`` (one line) when the study cannot be used.
    """
    laps = Laps()
    lap, timings = laps.lap, laps.timings
    with ctx.sessions() as session:
        inputs = [ctx.archive.path(p) for p in received_study_paths(session, study_uid)]
    manifest = ensemble.manifest
    prepared = prepare_study(inputs, manifest.preprocessing, bias_cache=ctx.bias_fits)
    if keep is not None:
        keep["prepared"] = prepared
    lap("preprocess")
    contrast = _contrast(ctx, prepared)
    prediction = ensemble.predict(prepared.model_input.array)
    lap("infer")
    uids = result_uids(study_uid, job_key, manifest.device_uid, manifest.version)
    instances = _build_and_archive(ctx, prepared, prediction, ensemble, uids, contrast, activated_despite, on_archived)
    lap("report")
    study = prepared.study
    slices = prepared.model_input.provenance["slices"]
    calibrated = manifest.calibration_map.applied
    log.info("study %s: EGFR %s, %s) (bundle %s %s); SR %s", study_uid,
             status_word(prediction.positive), probability_words(prediction.probability, calibrated, threshold=manifest.threshold),
             manifest.name,
             manifest.version, instances.sr, extra={"study_uid": study_uid})
    outlined = study.selection["lesion"] if study.mask_kind == OUTLINE else {}
    return JobResult.of(
        model=ModelRef(manifest.name, manifest.version, manifest.device_uid),
        selection=Selection(
            series_uid=study.series_uid, mask_sop_uid=study.mask_sop_uid, mask_kind=study.mask_kind,
            lesion_number=study.lesion_number, lesion_label=study.lesion_label,
            slices=tuple(int(k) for k in slices["indices"]), mid_slice=int(slices["mid"]),
            mask=outlined.get("description"), tracking_uid=outlined.get("tracking_uid"),
        ),
        scores=prediction.scores.tolist(), probability=prediction.probability, positive=prediction.positive,
        calibrated=calibrated, raw_score=prediction.raw_score,
        fold_probabilities=[] if prediction.fold_probabilities is None else prediction.fold_probabilities.tolist(),
        calibration=manifest.calibration_map.describe(), threshold=manifest.threshold,
        threshold_rule=manifest.threshold_rule, contrast=contrast, slice_aggregation=manifest.slice_aggregation,
        fold_aggregation=manifest.fold_aggregation, fold_scale=manifest.fold_scale, instances=instances,
        timings_s={**{f"preprocess.{k}": v for k, v in prepared.model_input.provenance["timings_s"].items()}, **timings},
    )


def _build_and_archive(ctx: JobContext, prepared: PreparedStudy, prediction: Prediction, ensemble: FoldEnsemble,
                       uids: dict[str, str], contrast: str = "", activated_despite: str = "",
                       on_archived: Archived | None = None) -> ResultInstances:
    """The SEG (when the lesion came from an RTSTRUCT or an outline: the SR references it), the SR
    and the result card, in that order, each archived as the node's own with the UIDs ``uids``
    (:func:`result_uids`) and handed to ``on_archived`` before the next is built. One an
    earlier attempt of this job archived is reused, not built again."""
    study, config = prepared.study, ctx.config
    with ctx.sessions() as session:
        earlier = node_instance_paths(session, [uids["seg"], uids["sr"], uids["card"]])
    if earlier:
        log.info("study %s: %s of an earlier attempt reused", study.study_uid,
                 ", ".join(kind.upper() for kind in ("seg", "sr", "card") if uids[kind] in earlier),
                 extra={"study_uid": study.study_uid})

    def archived(uid: str, build: Callable[[], Dataset]) -> str:
        if uid not in earlier:
            _archive(ctx, build())
        if on_archived is not None:
            on_archived(uid)
        return uid

    algorithm = _algorithm(ensemble, config, contrast, activated_despite)
    calibrated = ensemble.manifest.calibration_map.applied
    used = sorted({uid for k in prepared.model_input.provenance["slices"]["indices"] for uid in study.source_sop_uids[k]})
    sources = study.source_headers(used)
    created = datetime.now()  # one instant for the SEG, the SR and the card
    derived_seg_uid: str | None = None
    if study.mask_kind == "SEG":
        assert study.mask_instance is not None  # load_study records the mask it used
        seg = study.mask_instance.header  # read once by the index (no pixels: the SR names the segment, not its voxels)
        segment = study.lesion_number
        tracking_id, tracking_uid = _segment_tracking(seg, segment)
    else:
        segment = 1
        if uids["seg"] in earlier:
            seg = dcmread(ctx.archive.path(earlier[uids["seg"]]), stop_before_pixels=True)
        else:
            lesion = study.lesion
            # a viewer outline keeps its measurement group's tracking identity: the node's SEG and SR
            # name the lesion the radiologist outlined (issue 31)
            outlined = study.selection["lesion"] if study.mask_kind == OUTLINE else {}
            seg = seg_from_volume_mask(
                _series_headers(prepared), sitk.GetArrayViewFromImage(lesion).astype(np.uint8),
                lesion.GetOrigin(), lesion.GetSpacing(), lesion.GetDirection(),
                segment_label=(study.lesion_label or "Lesion")[:64],
                tracking_id=_usable_id(outlined.get("tracking_id"), study.lesion_number),
                tracking_uid=_usable_uid(outlined.get("tracking_uid"), uids["seg_tracking"], study.study_uid),
                sop_instance_uid=uids["seg"],
                series_instance_uid=uids["seg_series"], drawn_as="outline" if study.mask_kind == OUTLINE else "RTSTRUCT",
                manufacturer=config.report.manufacturer[:64], software_version=ensemble.manifest.version[:64],
                device_uid=ensemble.manifest.device_uid, created=created,
            )
        tracking_id, tracking_uid = _segment_tracking(seg, 1)
        derived_seg_uid = archived(uids["seg"], lambda: seg)
    finding = LesionFinding(
        segment_number=segment, tracking_id=_usable_id(tracking_id, segment),
        tracking_uid=_usable_uid(tracking_uid, uids["seg_tracking"], study.study_uid),
        probability=float(np.clip(prediction.probability, 0.0, 1.0)),
        positive=prediction.positive, calibrated=calibrated,
    )

    def sr() -> Dataset:
        lesion_point = nearest_image_point(sources, lesion_centroid_lps(study.lesion))
        outline_report = study.mask_instance.header if study.mask_kind == OUTLINE and study.mask_instance else None
        return build_sr(sources, seg, finding, algorithm, lesion_point=lesion_point, sop_instance_uid=uids["sr"],
                        mask_report=outline_report, series_instance_uid=uids["sr_series"],
                        comprehensive_3d=config.report.sr_sop_class == "comprehensive3d",
                        institution_name=config.report.institution_name, created=created)

    def card() -> Dataset:
        model_input = prepared.model_input
        if model_input.lesion_mask is None:
            raise RuntimeError(f"study {study.study_uid}: preprocessing kept no lesion mask to draw on the result card")
        return build_result_card(
            sources[0], model_input.array[:, 0], model_input.lesion_mask, [float(v) for v in prediction.slice_scores],
            float(np.clip(prediction.probability, 0.0, 1.0)), prediction.positive, algorithm,
            sop_instance_uid=uids["card"], series_instance_uid=uids["card_series"], calibrated=calibrated, created=created,
        )

    sr_uid = archived(uids["sr"], sr)
    card_uid = archived(uids["card"], card) if config.report.result_card else None
    return ResultInstances(sr=sr_uid, seg=derived_seg_uid, card=card_uid)


def run_shadow(ctx: JobContext, study_uid: str, ensemble: FoldEnsemble, prepared: PreparedStudy | None = None) -> ShadowResult:
    """The shadow bundle on a study (issue 28): its answer, stored, never archived as a result
    nor sent. ``prepared``: the active job's prepared study, reused when the shadow bundle's
    preprocessing parameters are the same."""
    laps = Laps()
    manifest = ensemble.manifest
    if prepared is None or prepared.model_input.provenance.get("params") != manifest.preprocessing.to_dict():
        with ctx.sessions() as session:
            inputs = [ctx.archive.path(p) for p in received_study_paths(session, study_uid)]
        prepared = prepare_study(inputs, manifest.preprocessing, bias_cache=ctx.bias_fits)
    laps.lap("preprocess")
    prediction = ensemble.predict(prepared.model_input.array)
    laps.lap("infer")
    return ShadowResult.of(
        model=ModelRef(manifest.name, manifest.version, manifest.device_uid),
        scores=prediction.scores.tolist(), probability=prediction.probability, raw_score=prediction.raw_score,
        positive=prediction.positive, calibrated=manifest.calibration_map.applied, threshold=manifest.threshold,
        timings_s=laps.timings,
    )
