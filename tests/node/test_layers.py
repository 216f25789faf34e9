"""DESIGN.md's one-way dependencies, as the running code has them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def modules_loaded_by(*imports: str) -> set[str]:
    code = f"import sys; import {', '.join(imports)}; print('\\n'.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return {name.split(".")[0] for name in done.stdout.split()}


def test_the_receive_path_never_imports_torch_or_image_processing() -> None:
    loaded = modules_loaded_by("dicom_node.scp", "dicom_node.archive", "dicom_node.worker", "dicom_node.cli", "db.ingest", "db.queue")
    assert not loaded & {"torch", "torchvision", "SimpleITK", "highdicom", "matplotlib", "training"}


def test_db_imports_nothing_of_ours() -> None:
    loaded = modules_loaded_by("db.models", "db.ingest", "db.queue", "db.migrate", "db.engine")
    assert not loaded & {"dicom_node", "pipeline", "training"}
