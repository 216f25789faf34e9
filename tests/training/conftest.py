"""Phantom cohorts for the training tests, generated once per session.

Tiny settings so the module runs in minutes on 2 CPU cores: axial2d studies (the cheapest
to preprocess), 32x32 model inputs, N4 off (``bias_correction=False``: the cache test
covers the N4 path by counting calls instead), 3 folds, a few epochs. The preprocessing
cache is shared by every test of the session.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from pipeline.prep.params import PreprocessParams
from pipeline.phantom import generate_cohort

TEST_PARAMS = PreprocessParams(output_size=32, bias_correction=False)
#: The learning tests' inputs: as TEST_PARAMS (the demo's too).
LEARN_PARAMS = TEST_PARAMS
PATIENTS = 30


@pytest.fixture(scope="session")
def training_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("training")


@pytest.fixture(scope="session")
def cache_dir(training_root: Path) -> Path:
    return training_root / "cache"


@pytest.fixture(scope="session")
def clear_cohort(training_root: Path) -> Path:
    """30 axial2d patients, half EGFR positive, the strongest phantom effect (1.0)."""
    out = training_root / "clear"
    generate_cohort(out, patients=PATIENTS, positive_fraction=0.5, seed=5, geometry="axial2d", effect_size=1.0, jobs=2)
    return out / "labels.csv"


@pytest.fixture(scope="session")
def learning_cohort(training_root: Path) -> Path:
    """30 patients, half EGFR positive, the strongest phantom effect (1.0), 1 mm axial series
    (the lesion shows on all 5 model slices; on 5 mm slices the outer two miss it), as the demo's."""
    out = training_root / "learning"
    generate_cohort(out, patients=PATIENTS, positive_fraction=0.5, seed=21, geometry="axial3d", effect_size=1.0, jobs=2)
    return out / "labels.csv"


@pytest.fixture(scope="session")
def null_cohort(training_root: Path) -> Path:
    """The learning cohort's design with effect size 0: the label carries no signal."""
    out = training_root / "null"
    generate_cohort(out, patients=PATIENTS, positive_fraction=0.5, seed=6, geometry="axial3d", effect_size=0.0, jobs=2)
    return out / "labels.csv"


@pytest.fixture(scope="session")
def heldout_cohort(training_root: Path) -> Path:
    """Patients no bundle of these tests trained on: the learning cohort's design (1 mm axial,
    effect 1.0), another seed, 20 patients half positive."""
    out = training_root / "heldout"
    generate_cohort(out, patients=20, positive_fraction=0.5, seed=23, geometry="axial3d", effect_size=1.0, jobs=2)
    # IDs of their own: the phantom numbers its patients from 1 in every cohort, and evaluate
    # names a study whose patient ID trained the bundle
    labels = out / "labels.csv"
    with open(labels, newline="") as handle:
        rows = list(csv.DictReader(handle))
    with open(labels, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "patient_id": f"HELD-{r['patient_id']}"} for r in rows)
    return labels


def train_on(cohort: Path, out: Path, cache_dir: Path, **changes: object):  # noqa: ANN201
    from training.run import train_bundle

    from .learn_settings import LEARN_SETTINGS

    outcome = train_bundle(cohort, out, settings=LEARN_SETTINGS.replace(**changes), params=LEARN_PARAMS, cache_dir=cache_dir,
                           progress=False)
    h = outcome.report["headline"]
    print(f"{cohort.parent.name} {changes or ''}: pooled patient AUC {h['auc']:.3f} CI {h['auc_ci95']}")
    return outcome


@pytest.fixture(scope="session")
def learned_bundle(learning_cohort: Path, training_root: Path, cache_dir: Path):  # noqa: ANN201
    """The default recipe's test-sized run on the clear cohort (test_learning, test_evaluate)."""
    return train_on(learning_cohort, training_root / "learned", cache_dir)


@pytest.fixture(scope="session")
def shuffled_bundle(learning_cohort: Path, training_root: Path, cache_dir: Path):  # noqa: ANN201
    """The same run on permuted labels: the negative control."""
    return train_on(learning_cohort, training_root / "shuffled", cache_dir, shuffle_labels=True)
