"""Issue 31: a cohort whose lesions were only outlined in a viewer (one slice each, an outline
SR) trains and is evaluated like a SEG cohort: the cohort is read whatever the mask kind."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.phantom import generate_cohort
from training.cache import prepare_cohort
from training.cohort import read_cohort
from training.run import train_bundle
from training.settings import TrainSettings

from .conftest import TEST_PARAMS


def test_an_outline_only_cohort_is_prepared_from_one_slice_and_trains(tmp_path: Path) -> None:
    generate_cohort(tmp_path / "outlined", patients=8, positive_fraction=0.5, seed=31, geometry="axial2d",
                    mask_kind="outline", effect_size=1.0, outline_jitter_mm=2.0)
    labels = tmp_path / "outlined" / "labels.csv"
    prepared = prepare_cohort(read_cohort(labels), TEST_PARAMS, tmp_path / "cache")
    assert prepared.failures == [] and len(prepared.entries) == 8
    assert {a["mask_kind"] for a in prepared.attributes} == {"OUTLINE"}
    # the lesion is on the outlined slice alone: the middle of the five the model reads
    for mask in prepared.lesion_masks:
        assert mask is not None
        assert [int(np.count_nonzero(s)) > 0 for s in mask] == [False, False, True, False, False]

    outcome = train_bundle(labels, tmp_path / "bundle", settings=TrainSettings.from_mapping(
        {"epochs": 1, "folds": 2, "device": "cpu"}), params=TEST_PARAMS, cache_dir=tmp_path / "cache", progress=False)
    assert (tmp_path / "bundle" / "manifest.json").is_file()
    assert outcome.manifest.training["data"]["patients_used"] == 8 and outcome.manifest.training["data"]["failures"] == 0
