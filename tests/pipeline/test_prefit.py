"""The brain mask and N4 field fitted before the mask arrives (issue 30, ``pipeline.prefit``):
the job that takes the fit builds exactly the model input it would have built alone."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.contrast import ContrastRule
from pipeline.load.index import index_files
from pipeline.load.study import LoadedStudy, load_study
from pipeline.phantom import PhantomStudy
from pipeline.prefit import prefit_bias_fields, prefit_candidates
from pipeline.prep.bias_cache import BiasFieldCache, BiasFit, fit_brain_and_bias, volume_key
from pipeline.prep.params import PreprocessParams
from pipeline.prepare import prepare_study

PARAMS = PreprocessParams()  # the paper's preprocessing: N4 on


@pytest.fixture(scope="module")
def axial_fit(phantom_study: Callable[..., PhantomStudy]) -> tuple[LoadedStudy, BiasFit]:
    study = load_study(phantom_study("axial2d", "seg").folder)
    return study, fit_brain_and_bias(study.image, None, PARAMS)


def _images(phantom: PhantomStudy) -> list[Path]:
    return sorted(p for p in phantom.folder.rglob("*.dcm") if p.parent.name.startswith("MR"))


@pytest.mark.parametrize(("geometry", "mask_kind"), [("axial2d", "seg"), ("axial3d", "rtstruct"), ("sagittal3d", "seg")])
def test_a_fit_made_from_the_images_alone_gives_the_job_the_same_input(
        phantom_study: Callable[..., PhantomStudy], geometry: str, mask_kind: str) -> None:
    phantom = phantom_study(geometry, mask_kind)
    files = sorted(phantom.folder.rglob("*.dcm"))
    cache = BiasFieldCache(2**30)

    fitted = prefit_bias_fields(_images(phantom), PARAMS, cache)  # the mask has not arrived
    assert [f.series_uid for f in fitted] == [phantom.image_series_uid] and not fitted[0].already_kept
    assert len(cache) == 1

    alone = prepare_study(files, PARAMS).model_input
    taken = prepare_study(files, PARAMS, bias_cache=cache).model_input
    assert np.array_equal(taken.array, alone.array)  # bit for bit, not approximately
    assert taken.provenance["bias_field"] == {**alone.provenance["bias_field"], "fitted_before_the_job": True}
    assert taken.provenance["zscore"] == alone.provenance["zscore"]
    assert taken.provenance["timings_s"]["brain_mask"] == 0.0
    assert taken.provenance["timings_s"]["bias_field"] < alone.provenance["timings_s"]["bias_field"] / 5
    assert "fitted_before_the_job" not in alone.provenance["bias_field"]


def test_other_voxels_or_other_parameters_miss_the_fit(phantom_study: Callable[..., PhantomStudy]) -> None:
    phantom = phantom_study("axial2d", "seg")
    study = load_study(phantom.folder)
    key = volume_key(study.image, PARAMS)
    assert volume_key(study.image, PARAMS) == key
    assert volume_key(study.image, dataclasses.replace(PARAMS, n4_iterations=49)) != key
    changed = sitk.Image(study.image)
    changed[10, 10, 3] = changed[10, 10, 3] + 1.0
    assert volume_key(changed, PARAMS) != key
    moved = sitk.Image(study.image)
    moved.SetOrigin(tuple(v + 0.5 for v in study.image.GetOrigin()))
    assert volume_key(moved, PARAMS) != key

    cache = BiasFieldCache(2**30)
    prefit_bias_fields(_images(phantom), PARAMS, cache)
    other = dataclasses.replace(PARAMS, n4_iterations=49)  # a bundle with another recipe
    taken = prepare_study(sorted(phantom.folder.rglob("*.dcm")), other, bias_cache=cache).model_input
    assert "fitted_before_the_job" not in taken.provenance["bias_field"]
    assert len(cache) == 2  # the job's own fit is kept beside the first


def test_a_job_waits_for_the_fit_in_progress_instead_of_fitting_twice(axial_fit: tuple[LoadedStudy, BiasFit]) -> None:
    real = axial_fit[1]
    started, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def slow_fit() -> BiasFit:
        calls.append(threading.current_thread().name)
        started.set()
        release.wait(10)
        return real

    cache = BiasFieldCache(2**30)
    results: dict[str, tuple[BiasFit, bool]] = {}
    prefit = threading.Thread(target=lambda: results.__setitem__("prefit", cache.get_or_fit("k", slow_fit)), name="prefit")
    prefit.start()
    assert started.wait(10)
    job = threading.Thread(target=lambda: results.__setitem__("job", cache.get_or_fit("k", slow_fit)), name="job")
    job.start()
    job.join(0.3)
    assert job.is_alive()  # waiting for the fit in progress
    release.set()
    prefit.join(10)
    job.join(10)
    assert calls == ["prefit"]
    assert results["prefit"] == (real, False) and results["job"] == (real, True)


def test_a_failed_fit_is_not_kept_and_the_next_caller_fits_again() -> None:
    cache = BiasFieldCache(2**30)

    def broken() -> BiasFit:
        raise RuntimeError("N4 failed")

    with pytest.raises(RuntimeError, match="N4 failed"):
        cache.get_or_fit("k", broken)
    assert "k" not in cache and len(cache) == 0


def test_the_cache_keeps_the_most_recently_used_within_its_bytes(axial_fit: tuple[LoadedStudy, BiasFit]) -> None:
    study, fit = axial_fit
    size = study.image.GetNumberOfPixels()
    assert fit.nbytes == size * (1 + 4 + 4)  # brain mask (uint8), corrected and log field (float32)

    cache = BiasFieldCache(2 * fit.nbytes)
    for key in ("a", "b"):
        cache.get_or_fit(key, lambda: fit)
    assert cache.get_or_fit("a", lambda: fit) == (fit, True)  # "a" used last: "b" goes first
    cache.get_or_fit("c", lambda: fit)
    assert "a" in cache and "c" in cache and "b" not in cache
    assert cache.nbytes <= cache.max_bytes
    tiny = BiasFieldCache(fit.nbytes - 1)
    tiny.get_or_fit("a", lambda: fit)
    assert len(tiny) == 0  # larger than the whole cache: used once, not kept


def test_only_post_contrast_series_are_fitted_ahead(phantom_study: Callable[..., PhantomStudy]) -> None:
    phantom = phantom_study("axial2d", "seg")
    series = list(index_files(_images(phantom)).series.values())
    assert [s.series_uid for s in prefit_candidates(series, ContrastRule())] == [phantom.image_series_uid]
    for instance in series[0].instances:  # a series without the attribute: not known to be post-contrast
        for keyword in ("ContrastBolusAgent", "ContrastBolusAgentSequence"):
            if keyword in instance.header:
                delattr(instance.header, keyword)
    assert prefit_candidates(series, ContrastRule()) == []
    assert prefit_candidates(series, ContrastRule(require_evidence=False)) == series  # the only MR series
    assert prefit_bias_fields(_images(phantom), dataclasses.replace(PARAMS, bias_correction=False),
                              BiasFieldCache(2**30)) == []
