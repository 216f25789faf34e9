"""The preprocessing cache (training.cache): keyed by study + parameters, failures kept with reasons."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from pipeline.prep.params import PreprocessParams
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

    # the lesion the cohort names and the node's received files (a corrected mask is a new file)
    # are part of what is cached: a change is computed again, never read back
    from dataclasses import replace as changed

    entry = cohort.entries[0]
    files = tuple(sorted(entry.folder.rglob("*.dcm")))
    tried: list[object] = []

    def tries(**change: object) -> int:
        tried.clear()
        prepare_cohort(changed(cohort, entries=(changed(entry, **change),)), TEST_PARAMS, cache,
                       prepare=lambda given, params, rules: (tried.append(given), prepare_study(given, params, rules))[1])
        return len(tried)

    assert tries() == 0  # the study folder as before: its cached input
    assert tries(files=files) == 1 and tries(files=files) == 0  # the node's files: computed once, then cached
    assert tries(files=files[1:]) == 1  # other files: computed again
    assert tries(lesion_label="Lesion 2") == 1  # another lesion: computed again (this one has none: a failure)

    other = PreprocessParams.from_dict(TEST_PARAMS.to_dict() | {"output_size": 24})
    assert params_key(other) != params_key(TEST_PARAMS)
    third = prepare_cohort(cohort, other, cache, prepare=counting)
    assert third.computed == 4 and third.inputs.shape[-1] == 24
    shutil.rmtree(cache)


_WITHOUT_SIMPLEITK = """
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("SimpleITK", "highdicom"):
            raise ImportError("not installed here: " + name)
sys.meta_path.insert(0, Blocker())
import numpy as np
from pipeline.prep.params import PreprocessParams
from training.cache import prepare_cohort
from training.cohort import read_cohort
import training.run  # the whole training entry point imports without SimpleITK
params = PreprocessParams.from_dict({params!r})
prepared = prepare_cohort(read_cohort({csv!r}), params, {cache!r})
assert prepared.cached == {count} and prepared.computed == 0 and not prepared.failures, prepared
np.save({out!r}, prepared.inputs)
"""


def test_a_cached_cohort_trains_where_simpleitk_is_not_installed(clear_cohort: Path, tmp_path: Path) -> None:
    """A GPU machine gets the cohort's cache, not its DICOM or SimpleITK: reading it needs neither."""
    import subprocess
    import sys

    rows = clear_cohort.read_text().splitlines()
    lines = [rows[0]] + [",".join(r.split(",")[:-1] + [str(clear_cohort.parent / r.split(",")[-1])]) for r in rows[1:3]]
    csv_path = tmp_path / "cohort.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    cache = tmp_path / "cache"
    here = prepare_cohort(read_cohort(csv_path), TEST_PARAMS, cache)  # the default prepare_study
    assert here.computed == 2
    out = tmp_path / "inputs.npy"
    code = _WITHOUT_SIMPLEITK.format(params=TEST_PARAMS.to_dict(), csv=str(csv_path), cache=str(cache), count=2, out=str(out))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    assert np.array_equal(np.load(out), here.inputs)
