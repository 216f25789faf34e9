"""Logs carry UIDs, never patient names or IDs, at every level."""

from __future__ import annotations

import logging

import pytest

from dicom_node.receive.server import DicomNode
from tests.dicom_factory import mask_for, mr_series
from tests.node.scu import association, store
from tests.waiting import wait_for


def test_no_patient_name_or_id_in_any_log_record(node: DicomNode, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    images = mr_series(2)
    for ds in images:
        ds.PatientName = "DOE^JANE"
        ds.PatientID = "MRN-55501"
    broken = mr_series(1)[0]
    broken.PatientName, broken.PatientID = "DOE^JANE", "MRN-55501"
    del broken.SeriesInstanceUID
    store(node.port, [*images, mask_for(images), images[0], broken])
    with association(node.port, calling="INTRUDER", called="NOT_US") as assoc:
        assert assoc.is_rejected
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert images[0].SOPInstanceUID in text and broken.SOPInstanceUID in text  # UIDs are what logs name
    for secret in ("DOE", "JANE", "MRN-55501"):
        assert secret not in text


NAMES = ["Jane Doe", "<b>Mallory</b> O'Brien", "Bad\x07Name\x1b[31m", "Smith^Anna^Maria", "Zoë Ünal"]


def test_no_patient_name_in_the_node_log_even_from_library_warnings(tmp_path, phantom_study) -> None:
    """Issue 29, defect 2: highdicom warns, quoting it, about a PatientName without ``^`` when
    the SR and the card are built. Studies with such names, markup and control characters go
    through ``egfr-node serve`` (its own logging set-up); no name or ID reaches its log."""
    import shutil
    import signal

    import pydicom

    from tests.node.bundles import QUICK, write_random_bundle
    import subprocess
    import sys
    from pathlib import Path

    from tests.node.process import cli, free_port, wait_until_listening, write_config

    port = free_port()
    config = write_config(tmp_path / "node", port, stable=1.0, scan=0.3)
    with open(config, "a") as handle:
        handle.write('[logging]\nlevel = "DEBUG"\n')
    assert cli(config, "db", "upgrade").returncode == 0
    assert cli(config, "models", "activate", str(write_random_bundle(tmp_path / "bundle", params=QUICK)), "--force").returncode == 0
    folders = []
    for k, name in enumerate(NAMES):
        source = phantom_study("axial2d", "seg", seed=60 + k, patient_index=60 + k)
        folder = tmp_path / f"study-{k}"
        shutil.copytree(source.folder, folder)
        for path in folder.rglob("*.dcm"):
            ds = pydicom.dcmread(path)
            ds.PatientName, ds.PatientID = name, f"MRN-{k}{k}{k}77"
            ds.save_as(path, enforce_file_format=True)
        folders.append(folder)
    log_file = open(tmp_path / "node.log", "w")  # a file, not a pipe: a full pipe would block the node
    node = subprocess.Popen([sys.executable, "-m", "dicom_node.cli", "--config", str(config), "serve"], stdout=log_file,
                            stderr=subprocess.STDOUT, cwd=Path(__file__).parents[2])
    try:
        wait_until_listening(port, node)
        for folder in folders:
            assert set(store(port, sorted(str(p) for p in folder.rglob("*.dcm")))) == {0}
        def finished() -> str:
            listed = cli(config, "queue", "list").stdout
            return listed if listed.count(" done ") + listed.count(" failed ") >= len(NAMES) else ""

        listed = wait_for(finished, 300, "every study done or failed", every=1.0)
    finally:
        node.send_signal(signal.SIGINT)
        node.wait(60)
        log_file.close()
    output = (tmp_path / "node.log").read_text(errors="replace")
    assert listed.count(" done ") == len(NAMES), listed + output[-3000:]
    for k, name in enumerate(NAMES):
        for part in {name, *name.replace("^", " ").split()} - {"O'Brien"}:
            if len(part) >= 4:
                assert part not in output, (part, output[-3000:])
        assert f"MRN-{k}{k}{k}77" not in output
    assert "<value withheld>" in output  # highdicom's person-name warning was logged, its value withheld
