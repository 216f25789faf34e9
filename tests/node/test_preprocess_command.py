"""From PACS to model input: a phantom study sent to the node, then `egfr-node preprocess`
by Study Instance UID from the archive."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from dicom_node.cli import main
from dicom_node.receive.server import DicomNode
from tests.node.scu import store


@pytest.fixture
def config_file(config, tmp_path: Path) -> Path:
    path = tmp_path / "egfr-node.toml"
    path.write_text(f'[storage]\ndata_dir = "{config.storage.data_dir}"\n')
    return path


def test_preprocess_a_study_received_by_the_node(node: DicomNode, phantom_study, config_file: Path, tmp_path: Path, capsys) -> None:
    phantom = phantom_study("axial2d", "seg")
    files = sorted(p for p in phantom.folder.rglob("*.dcm"))
    assert set(store(node.port, [dcmread(f) for f in files])) == {0}

    out = tmp_path / "out"
    assert main(["--config", str(config_file), "preprocess", phantom.study_uid, "--out", str(out)]) == 0
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["study_uid"] == phantom.study_uid
    assert provenance["series_uid"] == phantom.image_series_uid
    assert provenance["mask_sop_uid"] == phantom.mask_sop_uid
    assert np.allclose(provenance["lesion"]["centroid_lps_mm"], phantom.lesion_centroid_lps, atol=5.0)
    with np.load(out / "inputs.npz") as inputs:
        assert inputs["array"].shape == (5, 3, 96, 96) and inputs["array"].dtype == np.float32
        assert list(inputs["slice_indices"]) == provenance["slices"]["indices"]
    assert (out / "crops.png").stat().st_size > 0


def test_preprocess_names_what_is_wrong(config_file: Path, tmp_path: Path, capsys) -> None:
    assert main(["--config", str(config_file), "preprocess", "1.2.3.4.5"]) == 1
    assert "study 1.2.3.4.5 is not in the archive" in capsys.readouterr().err
    assert main(["--config", str(config_file), "preprocess", "not/a/folder"]) == 1
    assert "neither a folder nor a Study Instance UID" in capsys.readouterr().err
