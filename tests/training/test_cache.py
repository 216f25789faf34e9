"""The preprocessing cache (training.cache): keyed by study + parameters, failures kept with reasons."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from pipeline.params import PreprocessParams
from pipeline.prepare import prepare_study
from training.cache import params_key, prepare_cohort
from training.cohort import read_cohort

from .conftest import TEST_PARAMS


def test_second_run_reads_the_cache_and_failures_have_reasons(clear_cohort: Path, tmp_path: Path) -> None:
    # A 4-patient copy of the cohort CSV plus one study whose folder is missing and one broken study.
    rows = clear_cohort.read_text().splitlines()
    header, body = rows[0], rows[1:5]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "junk.dcm").write_bytes(b"not dicom")
    cols = header.split(",")
    first = body[0].split(",")
    def row(patient: str, uid: str, folder: str) -> str:
        values = dict(zip(cols, first))
        values.update(patient_id=patient, study_uid=uid, folder=folder)
        return ",".join(values[c] for c in cols)
    lines = [header] + [",".join(r.split(",")[:-1] + [str(clear_cohort.parent / r.split(",")[-1])]) for r in body]
    lines += [row("GONE", "1.2.3.4.5", str(tmp_path / "nowhere")), row("BROKEN", "1.2.3.4.6", str(broken))]
    csv_path = tmp_path / "cohort.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    cohort = read_cohort(csv_path)

    calls: list[Path] = []
    def counting(folder, params, rules):
        calls.append(Path(folder))
        return prepare_study(folder, params, rules)

    cache = tmp_path / "cache"
    first_run = prepare_cohort(cohort, TEST_PARAMS, cache, prepare=counting)
    assert first_run.inputs.shape == (4, 5, 3, 32, 32) and first_run.computed == 4 and first_run.cached == 0
    assert [f.patient_id for f in first_run.failures] == ["GONE", "BROKEN"]
    assert "does not exist" in first_run.failures[0].reason and first_run.failures[1].reason
    assert (cache / params_key(TEST_PARAMS) / "failures.json").is_file()

    calls.clear()
    second = prepare_cohort(cohort, TEST_PARAMS, cache, prepare=counting)
    assert second.cached == 4 and second.computed == 0
    assert [c.name for c in calls] == ["broken"]  # only the failed study is tried again
    assert np.array_equal(first_run.inputs, second.inputs)

    other = PreprocessParams.from_dict(TEST_PARAMS.to_dict() | {"output_size": 24})
    assert params_key(other) != params_key(TEST_PARAMS)
    third = prepare_cohort(cohort, other, cache, prepare=counting)
    assert third.computed == 4 and third.inputs.shape[-1] == 24
    shutil.rmtree(cache)
