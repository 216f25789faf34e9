"""PACS stand-ins that are real DICOM peers on loopback: a pynetdicom Storage SCP that keeps
what it receives, and DCMTK's storescp."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from dicom_node.commands.demo import LocalPacs
from tests.conftest import require_tool
from tests.node.process import free_port


#: The demo's stand-in PACS: a Storage SCP writing each instance to a folder.
PynetdicomPacs = LocalPacs


class StorescpPacs:
    """DCMTK storescp as PACS (TCP_NODELAY=1 as NOTES.md says), writing into ``folder``."""

    def __init__(self, folder: Path) -> None:
        require_tool("storescp")
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.port = free_port()
        self.process = subprocess.Popen(
            ["storescp", "-aet", "PACS", "-od", str(folder), "+xa", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "TCP_NODELAY": "1"},
        )
        time.sleep(0.3)

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def datasets(self) -> list[Dataset]:
        return [dcmread(p) for p in self.files()]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
