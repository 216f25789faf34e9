"""The brain mask and N4 bias field of a study's post-contrast series, fitted while the study
waits for its lesion mask (issue 30; :mod:`pipeline.prep.bias_cache`).

Which series the mask will name is not known before the mask arrives; the one the method
reads is a post-contrast T1, so the series with evidence of a contrast agent
(:func:`pipeline.contrast.contrast_evidence`, with the site's rule) are fitted, or the only
MR series of a study that has one. The volume is built by the function
:func:`pipeline.load.study.load_study` builds it with (``series_volume``), so the job's key matches when the mask names that series;
when it names another, the job fits its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.contrast import ContrastRule, contrast_evidence
from pipeline.load.index import SeriesEntry, index_files
from pipeline.load.select import SelectionRules
from pipeline.load.study import series_volume
from pipeline.prep.bias_cache import BiasFieldCache, fit_brain_and_bias, volume_key
from pipeline.prep.params import PreprocessParams

__all__ = ["PrefitSeries", "prefit_candidates", "prefit_bias_fields"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrefitSeries:
    """One series fitted ahead: its UID, whether the fit was already kept, and the seconds it took."""

    series_uid: str
    already_kept: bool
    seconds: float


def prefit_candidates(series: Sequence[SeriesEntry], rule: ContrastRule, modality: str = "MR") -> list[SeriesEntry]:
    """The series worth a fit before the mask: MR image series with evidence of contrast; the
    only MR image series when the study has one and the rule does not require evidence."""
    images = [s for s in series if s.is_mr_image_series and s.modality == modality]
    enhanced = [s for s in images if contrast_evidence([i.header for i in s.instances], rule) is not None]
    if enhanced:
        return enhanced
    return images if len(images) == 1 and not rule.require_evidence else []


def prefit_bias_fields(files: Sequence[Path], params: PreprocessParams, cache: BiasFieldCache,
                       rules: SelectionRules | None = None, contrast: ContrastRule | None = None,
                       limit: int = 2, series_uids: Collection[str] | None = None) -> list[PrefitSeries]:
    """Fit and keep in ``cache`` the brain mask and N4 field of at most ``limit`` candidate
    series of the study made of ``files`` (:func:`prefit_candidates`), or of the series
    ``series_uids`` (those a mask that has arrived names). Nothing to do with N4 off or a
    brain segment required from the mask. Raises what loading the volume or the fit raises
    (``pipeline.errors.PipelineError``)."""
    rules = rules or SelectionRules()
    if not params.bias_correction or (params.brain_mask_method == "segment" and params.brain_mask_fallback == "error"):
        return []
    index = index_files(files)
    done = []
    chosen = ([index.series[uid] for uid in series_uids if uid in index.series] if series_uids is not None else
              prefit_candidates(list(index.series.values()), contrast or ContrastRule(), rules.image_modality))
    for series in chosen[:limit]:
        start = time.perf_counter()
        image = series_volume(series, rules).image
        _, kept = cache.get_or_fit(volume_key(image, params), lambda: fit_brain_and_bias(image, None, params))
        done.append(PrefitSeries(series.series_uid, kept, round(time.perf_counter() - start, 3)))
        logger.info("study %s: bias field of series %s fitted ahead of %s in %.2f s%s", index.study_uid,
                    series.series_uid, "the mask" if series_uids is None else "the job", done[-1].seconds,
                    " (already kept)" if kept else "")
    return done
