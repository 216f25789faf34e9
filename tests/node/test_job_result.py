"""Issue 33, item 3: a job's result is a frozen record, and the JSON the job row keeps (what
the console, the API and ``evaluate --served`` read back) has the keys they read."""

from __future__ import annotations

import dataclasses
import json

import pytest

from dicom_node.job_result import JobResult, ModelRef, ResendResult, ResultInstances, Selection, result_sop_uids


def _result(mask_kind: str = "SEG", **selection: object) -> JobResult:
    return JobResult.of(
        model=ModelRef("EGFR ResNet-50 (scratch)", "1.0", "2.25.7"),
        selection=Selection(series_uid="1.2.3", mask_sop_uid="1.2.4", mask_kind=mask_kind, lesion_number=2,
                            lesion_label="met", slices=(4, 5, 6), mid_slice=5, **selection),
        scores=[[0.1234567891, 0.2, 0.3], [0.4, 0.5, 0.6]], probability=0.61234567, positive=True, calibrated=True,
        raw_score=0.5, fold_probabilities=[0.2, 0.5], calibration="logistic (Platt)", threshold=0.42,
        threshold_rule="youden", contrast="", slice_aggregation="median", fold_aggregation="mean",
        fold_scale="probability", instances=ResultInstances(sr="2.25.1", seg=None, card="2.25.3"),
        timings_s={"infer": 0.25},
    )


def test_the_record_is_frozen_and_the_bundle_row_is_set_on_a_copy() -> None:
    result = _result()
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.probability = 0.9
    answered = result.answered_by(7)
    assert answered.model.id == 7 and result.model.id is None
    assert "id" not in result.to_json()["model"] and answered.to_json()["model"]["id"] == 7


def test_the_json_kept_on_the_job_row() -> None:
    record = json.loads(json.dumps(_result().answered_by(3).to_json()))
    assert record["status"] == "positive" and record["probability"] == 0.612346
    assert record["scores"][0] == [0.123457, 0.2, 0.3]
    assert record["selection"]["slices"] == [4, 5, 6] and "mask" not in record["selection"]
    assert record["instances"] == {"sr": "2.25.1", "seg": None, "card": "2.25.3"}
    assert {"calibration", "threshold", "threshold_rule", "fold_probabilities", "raw_score", "timings_s",
            "slice_aggregation", "fold_aggregation", "fold_scale", "contrast"} <= set(record)
    outline = _result("OUTLINE", mask="Lesion 1 (viewer)", tracking_uid="2.25.9").to_json()["selection"]
    assert (outline["mask"], outline["tracking_uid"]) == ("Lesion 1 (viewer)", "2.25.9")


def test_results_are_sent_seg_first_then_sr_then_card() -> None:
    instances = ResultInstances(sr="2.25.1", seg="2.25.2", card="2.25.3")
    assert instances.sop_uids() == ["2.25.2", "2.25.1", "2.25.3"]
    resend = ResendResult(resend_of_job=4, instances=instances, probability=0.3, status="negative").to_json()
    assert result_sop_uids(resend) == ["2.25.2", "2.25.1", "2.25.3"]
    assert result_sop_uids(None) == [] and result_sop_uids({"status": "negative"}) == []
