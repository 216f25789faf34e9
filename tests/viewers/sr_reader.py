"""The SR read as OHIF reads it, outside the browser: ``sr-reader/read_sr.mjs`` runs dcmjs and
``@cornerstonejs/adapters`` (the versions OHIF 3.13.2 ships, pinned in ``sr-reader/package.json``)
under the machine's Node.js.

``install_sr_reader()`` runs ``npm install`` once into ``$EGFR_NODE_TEST_CACHE`` (default
``~/.cache/egfr-node-tests``); ``read_sr()`` returns what the adapters made of an SR file.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from pydicom.dataset import Dataset

from tests.viewers.ohif_app import NpmUnavailable, cache_root

__all__ = ["install_sr_reader", "image_planes", "read_sr"]

SOURCE = Path(__file__).with_name("sr-reader")


def install_sr_reader() -> Path:
    """The folder holding ``read_sr.mjs`` beside its ``node_modules`` (installed once per
    ``package.json``)."""
    manifest = (SOURCE / "package.json").read_bytes()
    target = cache_root() / f"sr-reader-{hashlib.sha256(manifest).hexdigest()[:12]}"
    if not (target / "node_modules" / "@cornerstonejs" / "adapters" / "package.json").is_file():
        npm = shutil.which("npm")
        if npm is None or shutil.which("node") is None:
            raise NpmUnavailable("node and npm are not installed")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(dir=target.parent, prefix=target.name + ".partial-"))
        try:
            shutil.copy(SOURCE / "package.json", partial)
            done = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--silent"], cwd=partial,
                                  capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                raise NpmUnavailable(f"npm install of {SOURCE / 'package.json'} failed: {done.stderr.strip()[-500:]}")
            shutil.rmtree(target, ignore_errors=True)
            partial.rename(target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    shutil.copy(SOURCE / "read_sr.mjs", target / "read_sr.mjs")
    return target


def image_planes(images: list[Dataset]) -> dict[str, dict]:
    """What OHIF's metadata provider holds for each single-frame source image
    (``imagePlaneModule``), keyed ``<SOPInstanceUID>:1`` as the adapters look images up."""
    planes = {}
    for image in images:
        orientation = [float(v) for v in image.ImageOrientationPatient]
        row_spacing, column_spacing = (float(v) for v in image.PixelSpacing)
        planes[f"{image.SOPInstanceUID}:1"] = {
            "imagePositionPatient": [float(v) for v in image.ImagePositionPatient],
            "rowCosines": orientation[:3], "columnCosines": orientation[3:],
            "rowPixelSpacing": row_spacing, "columnPixelSpacing": column_spacing,
            "frameOfReferenceUID": str(image.FrameOfReferenceUID), "rows": int(image.Rows),
            "columns": int(image.Columns),
        }
    return planes


def read_sr(reader: Path, sr_path: Path, planes: dict[str, dict]) -> dict:
    """``read_sr.mjs``'s JSON for ``sr_path``: the measurements the adapters made, the NUM items
    of each group as dcmjs reads them, and the warnings the adapters logged."""
    planes_path = Path(sr_path).with_suffix(".planes.json")
    planes_path.write_text(json.dumps(planes))
    done = subprocess.run([shutil.which("node") or "node", str(reader / "read_sr.mjs"), str(sr_path), str(planes_path)],
                          cwd=reader, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise AssertionError(f"read_sr.mjs failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout)
