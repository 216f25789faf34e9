"""Phantom cohort generator: realistic post-contrast T1 brain MRI studies with lesion masks.

``generate_study`` writes one DICOM study (MR series + SEG or RTSTRUCT) and returns its
ground truth as a ``PhantomStudy``; ``generate_cohort`` writes many plus ``labels.csv``.
See ``pipeline/phantom/README.md`` and ``pipeline.phantom.lesion`` for the EGFR effect.
"""

from pipeline.phantom.cohort import generate_cohort
from pipeline.phantom.geometry import GEOMETRIES
from pipeline.phantom.render import BiasField
from pipeline.phantom.study import DEFAULT_EFFECT_SIZE, MASK_KINDS, PhantomStudy, generate_study

__all__ = ["BiasField", "DEFAULT_EFFECT_SIZE", "GEOMETRIES", "MASK_KINDS", "PhantomStudy", "generate_cohort",
           "generate_study"]
