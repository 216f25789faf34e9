"""Issue 18, defect 3: a pre-contrast T1 (no Contrast/Bolus Agent) with a SEG that references
it is not predicted by default: the job fails saying why. A site whose scanners leave the
attribute out names a Series Description pattern; the evidence used is on the job and in the SR."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom.sop_class import Comprehensive3DSRStorage

from dicom_node.config import ContrastSection
from tests.node.bundles import write_random_bundle
from tests.node.peers import PynetdicomPacs
from tests.node.test_results import Node


def pre_contrast_copy(study_folder: Path, out: Path, description: str) -> Path:
    """The study with every Contrast/Bolus attribute removed from its MR images."""
    shutil.copytree(study_folder, out)
    for path in out.rglob("*.dcm"):
        ds = dcmread(path)
        if ds.Modality != "MR":
            continue
        for keyword in ("ContrastBolusAgent", "ContrastBolusRoute", "ContrastBolusVolume", "ContrastBolusAgentSequence"):
            if keyword in ds:
                delattr(ds, keyword)
        ds.SeriesDescription = description
        ds.save_as(path)
    return out


def sr_parameters(sr) -> list[str]:  # noqa: ANN001
    def walk(items):  # noqa: ANN001, ANN202
        for item in items:
            yield item
            yield from walk(item.get("ContentSequence", []))

    return [str(item.TextValue) for item in walk(sr.ContentSequence) if item.get("ValueType") == "TEXT"]


@pytest.fixture
def pacs(tmp_path: Path):
    peer = PynetdicomPacs(tmp_path / "pacs")
    yield peer
    peer.stop()


def test_a_pre_contrast_t1_fails_with_the_reason_unless_a_site_rule_accepts_it(tmp_path, pacs, phantom_study) -> None:
    study = phantom_study("axial2d", "seg")
    pre = pre_contrast_copy(study.folder, tmp_path / "pre", "T1 SE pre")
    node = Node(tmp_path / "default", pacs.port)
    try:
        node.activate(write_random_bundle(tmp_path / "bundle"))
        node.arrive(pre)
        job = node.worker.claim_once()
        assert job.state == "failed" and job.attempts == 1, (job.state, job.reason)
        assert "no evidence of a contrast agent" in job.reason and "contrast.series_description_pattern" in job.reason
        assert pacs.received == []  # nothing predicted, nothing sent
    finally:
        node.close()

    node = Node(tmp_path / "site", pacs.port)
    node.config = replace(node.config, contrast=ContrastSection(series_description_pattern=r"(?i)(\+c|post|gad)"))
    node.worker.config = node.config
    try:
        node.activate(write_random_bundle(tmp_path / "bundle-site"))
        described = pre_contrast_copy(study.folder, tmp_path / "described", "T1 SE +C")
        node.arrive(described)
        job = node.worker.claim_once()
        assert job.state == "done", job.reason
        assert "Series Description 'T1 SE +C' matches" in job.result["contrast"]
        [sr] = pacs.of_class(Comprehensive3DSRStorage)
        assert f"contrast evidence: {job.result['contrast']}" in sr_parameters(sr)
    finally:
        node.close()


def test_the_attribute_is_the_evidence_recorded_for_a_post_contrast_series(tmp_path, pacs, phantom_study) -> None:
    study = phantom_study("axial2d", "seg")
    node = Node(tmp_path, pacs.port)
    try:
        node.activate(write_random_bundle(tmp_path / "bundle"))
        node.arrive(study.folder)
        job = node.worker.claim_once()
        assert job.state == "done", job.reason
        agent = dcmread(next(p for p in study.folder.rglob("*.dcm") if dcmread(p, stop_before_pixels=True).Modality == "MR"),
                        stop_before_pixels=True).ContrastBolusAgent
        assert job.result["contrast"] == f"Contrast/Bolus Agent {agent!r}"
    finally:
        node.close()
