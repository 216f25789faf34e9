"""Shared phantom data for the pipeline tests: generated once per session, cached per request.

``phantom_study(geometry, mask_kind, **options)`` returns a ``PhantomStudy`` (ground truth +
the folder of its DICOM files). The same geometry with mask_kind "seg" and "rtstruct" gives
the same image series (same seed), so SEG and RTSTRUCT of one lesion can be compared.
Defaults: seed 7, patient 0, EGFR negative, no satellite lesion, no brain segment; any
``generate_study`` keyword may be overridden. Do not modify the returned folders: other
tests share them (copy them to ``tmp_path`` first).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.phantom import PhantomStudy, generate_study

_DEFAULTS = {"seed": 7, "patient_index": 0, "egfr_positive": False, "satellite": False,
             "satellite_in_mask": False, "brain_segment": False}


@pytest.fixture(scope="session")
def phantom_study(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., PhantomStudy]:
    """Factory: ``phantom_study("axial3d", "rtstruct", brain_segment=True) -> PhantomStudy``."""
    cache: dict[tuple, PhantomStudy] = {}

    def make(geometry: str = "axial2d", mask_kind: str = "seg", **options: object) -> PhantomStudy:
        arguments = {**_DEFAULTS, **options}
        key = (geometry, mask_kind, tuple(sorted(arguments.items())))
        if key not in cache:
            out: Path = tmp_path_factory.mktemp(f"phantom-{geometry}-{mask_kind}")
            cache[key] = generate_study(out, geometry=geometry, mask_kind=mask_kind, **arguments)
        return cache[key]

    return make
