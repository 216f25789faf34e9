"""``preprocess_study_to_folder`` and the ``preprocess`` command core on phantom studies."""

from __future__ import annotations

import io
import json
import time
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import SelectionError
from dicom_node.commands.preprocess_files import preprocess_study_to_folder
from pipeline.phantom import PhantomStudy
from dicom_node.commands.preprocess import preprocess_folder as run


@pytest.fixture(scope="module")
def written(phantom_study: Callable[..., PhantomStudy], tmp_path_factory: pytest.TempPathFactory) -> tuple:
    phantom = phantom_study("axial2d", "seg")
    out = tmp_path_factory.mktemp("preprocessed")
    return phantom, out, preprocess_study_to_folder(phantom.folder, out)


def test_writes_inputs_provenance_and_contact_sheet(written: tuple) -> None:
    phantom, out, provenance = written
    assert sorted(p.name for p in out.iterdir()) == ["crops.png", "inputs.npz", "provenance.json"]

    with np.load(out / "inputs.npz") as npz:
        array, indices, z_mm = npz["array"], npz["slice_indices"], npz["slice_z_mm"]
    assert array.shape == (5, 3, 96, 96) and array.dtype == np.float32 and np.isfinite(array).all()
    assert indices.tolist() == provenance["slices"]["indices"]
    assert z_mm.tolist() == pytest.approx(provenance["slices"]["z_mm"])

    saved = json.loads((out / "provenance.json").read_text())
    assert saved == json.loads(json.dumps(provenance))
    assert saved["study_uid"] == phantom.study_uid
    assert saved["series_uid"] == phantom.image_series_uid
    assert saved["mask_sop_uid"] == phantom.mask_sop_uid
    # the selection record of load_study: the chosen series' volume as it was loaded
    assert saved["selection"]["volume"]["size"][2] == 28 and saved["selection"]["volume"]["acquisition_plane"] == "axial"
    assert set(saved["crop_box"]) >= {"voxels", "lps_mm", "side_mm"}
    assert len(saved["lesion"]["centroid_lps_mm"]) == 3
    assert {"load_study", "brain_mask", "bias_field", "zscore", "crop_resize", "write_outputs"} <= set(saved["timings_s"])
    assert saved["params"]["output_size"] == 96

    import matplotlib.image

    png = matplotlib.image.imread(out / "crops.png")
    assert png.shape[0] > 200 and png.shape[1] > 5 * 150  # five panels side by side
    assert png[..., :3].std() > 0.1  # not blank


def test_run_success_prints_summary(phantom_study: Callable[..., PhantomStudy], tmp_path: Path) -> None:
    phantom = phantom_study("axial2d", "seg")
    stdout, stderr = io.StringIO(), io.StringIO()
    code = run(phantom.folder, tmp_path / "out", stdout=stdout, stderr=stderr)
    assert code == 0
    assert stderr.getvalue() == ""
    text = stdout.getvalue()
    assert f"study {phantom.study_uid}" in text
    assert "slices k=[" in text and "crop" in text
    assert (tmp_path / "out" / "inputs.npz").is_file()


def test_run_without_mask_prints_one_line(phantom_study: Callable[..., PhantomStudy], tmp_path: Path) -> None:
    phantom = phantom_study("axial2d", "seg")
    study = tmp_path / "study"
    shutil.copytree(phantom.folder, study)
    removed = 0
    for path in list(study.rglob("*.dcm")):
        import pydicom

        if pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID == phantom.mask_sop_uid:
            path.unlink()
            removed += 1
    assert removed == 1
    with pytest.raises(SelectionError):
        preprocess_study_to_folder(study, tmp_path / "direct")
    stdout, stderr = io.StringIO(), io.StringIO()
    code = run(study, tmp_path / "out", stdout=stdout, stderr=stderr)
    assert code == 1
    assert stdout.getvalue() == ""
    lines = stderr.getvalue().splitlines()
    assert lines == [f"error: no lesion mask (SEG, RTSTRUCT or an outline SR) in study {phantom.study_uid}"]
    assert not (tmp_path / "out" / "inputs.npz").exists()


def test_run_missing_folder(tmp_path: Path) -> None:
    stderr = io.StringIO()
    assert run(tmp_path / "nope", tmp_path / "out", stdout=io.StringIO(), stderr=stderr) == 1
    assert stderr.getvalue().count("\n") == 1
    assert "does not exist" in stderr.getvalue()


def test_provenance_written_once_after_the_other_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dicom_node.commands import preprocess_files as outputs
    from pipeline.prep.preprocess import ModelInput

    written_paths: list[str] = []
    write_text = Path.write_text

    def recording_write_text(self: Path, *args, **kwargs):
        written_paths.append(self.name)
        assert (self.parent / "inputs.npz").is_file() and (self.parent / "crops.png").is_file()
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", recording_write_text)
    array = np.zeros((5, 3, 8, 8), np.float32)
    prov = {"study_uid": "1.2.3", "slices": {"indices": [0, 1, 2, 3, 4]}, "timings_s": {"zscore": 0.5}}
    began = time.perf_counter()
    paths = outputs.write_outputs(ModelInput(array=array, provenance=prov), tmp_path)
    elapsed = time.perf_counter() - began
    assert written_paths == ["provenance.json"]
    saved = json.loads(paths["provenance"].read_text())
    assert saved["timings_s"]["zscore"] == 0.5 and 0.0 < saved["timings_s"]["write_outputs"] <= elapsed + 1e-4  # rounded to 0.1 ms
    assert "write_outputs" not in prov["timings_s"]  # the caller's record is left as it was
