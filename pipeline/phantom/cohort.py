"""A phantom cohort: many studies plus ``labels.csv`` (the ground truth a training run reads)."""

from __future__ import annotations

import csv
import functools
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from pipeline.phantom.geometry import GEOMETRIES
from pipeline.phantom.study import DEFAULT_EFFECT_SIZE, MASK_KINDS, OUTLINE_KIND, PhantomStudy, generate_study

__all__ = ["GEOMETRY_MIX", "LABEL_COLUMNS", "generate_cohort", "write_labels"]

# Share of each geometry when the cohort mixes them (clinical archives are mostly 2D + 3D axial).
GEOMETRY_MIX = {"axial2d": 0.4, "axial3d": 0.25, "sagittal3d": 0.2, "enhanced": 0.15}

LABEL_COLUMNS = (
    "patient_id", "study_uid", "egfr_status", "geometry", "mask_kind", "image_series_uid", "mask_sop_uid",
    "lesion_volume_cm3", "lesion_centroid_x", "lesion_centroid_y", "lesion_centroid_z", "lesion_region",
    "satellite", "effect_size", "folder",
)


def _check(patients: int, positive_fraction: float, mask_kind: str, geometry: str, effect_size: float,
           jobs: int) -> None:
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f'Argument "jobs" must be a positive integer, not {jobs!r}')
    if not isinstance(patients, int) or patients < 1:
        raise ValueError(f'Argument "patients" must be a positive integer, not {patients!r}')
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f'Argument "positive_fraction" must be in [0, 1], not {positive_fraction!r}')
    if mask_kind not in (*MASK_KINDS, OUTLINE_KIND, "mixed"):
        raise ValueError(f'Argument "mask_kind" must be seg, rtstruct, outline or mixed, not {mask_kind!r}')
    if geometry not in (*GEOMETRIES, "mixed"):
        raise ValueError(f'Argument "geometry" must be one of {", ".join(GEOMETRIES)} or mixed, not {geometry!r}')
    if not 0.0 <= effect_size <= 1.0:
        raise ValueError(f'Argument "effect_size" must be in [0, 1], not {effect_size!r}')


def write_labels(path: Path, studies: list[PhantomStudy], root: Path) -> None:
    """Write ``labels.csv``: one row per study, ``egfr_status`` positive|negative."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(LABEL_COLUMNS)
        for s in studies:
            writer.writerow([
                s.patient_id, s.study_uid, "positive" if s.egfr_positive else "negative", s.geometry, s.mask_kind,
                s.image_series_uid, s.mask_sop_uid, f"{s.lesion_volume_cm3:.4f}",
                *(f"{v:.3f}" for v in s.lesion_centroid_lps), s.lesion_region, int(s.satellite),
                f"{s.effect_size:.3f}", s.folder.relative_to(root).as_posix(),
            ])


def generate_cohort(out_dir: Path, patients: int, positive_fraction: float, seed: int, mask_kind: str = "seg",
                    geometry: str = "mixed", effect_size: float = DEFAULT_EFFECT_SIZE,
                    progress: Callable[[int, int, PhantomStudy], None] | None = None,
                    jobs: int = 1, outline_jitter_mm: float = 0.0) -> list[PhantomStudy]:
    """Write ``patients`` studies (PHANTOM-0001 ...) and ``labels.csv`` under ``out_dir``.

    Exactly ``round(patients * positive_fraction)`` patients are EGFR-positive, chosen at
    random. ``mask_kind`` and ``geometry`` may be "mixed" (drawn per patient; geometries
    with the shares in ``GEOMETRY_MIX``). ``progress(done, total, study)`` is called after
    each study (in patient order). ``jobs`` > 1 generates in that many processes; the files
    are the same as with one. ``mask_kind="outline"``: each lesion outlined on one slice as a
    viewer saves it, the ellipse moved at random by ``outline_jitter_mm``; the images are those
    of the same call with "seg".
    """
    _check(patients, positive_fraction, mask_kind, geometry, effect_size, jobs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([zlib.crc32(b"cohort"), seed])
    positives = round(patients * positive_fraction)
    labels = np.zeros(patients, dtype=bool)
    labels[rng.permutation(patients)[:positives]] = True
    names, shares = list(GEOMETRY_MIX), np.array(list(GEOMETRY_MIX.values()))
    if geometry == "mixed":
        geometries = [str(g) for g in rng.choice(names, size=patients, p=shares / shares.sum())]
    else:
        geometries = [geometry] * patients
    masks = [str(m) for m in rng.choice(MASK_KINDS, size=patients)] if mask_kind == "mixed" else [mask_kind] * patients
    calls = [functools.partial(generate_study, out_dir, seed=seed, geometry=geometries[index], mask_kind=masks[index],
                               egfr_positive=bool(labels[index]), patient_index=index + 1, effect_size=effect_size,
                               outline_jitter_mm=outline_jitter_mm if masks[index] == OUTLINE_KIND else 0.0)
             for index in range(patients)]
    studies: list[PhantomStudy] = []
    if jobs <= 1:
        for call in calls:
            studies.append(call())
            if progress is not None:
                progress(len(studies), patients, studies[-1])
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(call) for call in calls]
            for future in futures:
                studies.append(future.result())
                if progress is not None:
                    progress(len(studies), patients, studies[-1])
    write_labels(out_dir / "labels.csv", studies, out_dir)
    return studies
