"""PACS stand-ins that are real DICOM peers on loopback: a pynetdicom Storage SCP that keeps
what it receives, and DCMTK's storescp."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Comprehensive3DSRStorage, SegmentationStorage

from tests.conftest import require_tool
from tests.node.process import free_port


class PynetdicomPacs:
    """A Storage SCP that writes each received instance to ``folder`` and lists it."""

    def __init__(self, folder: Path, port: int = 0, ae_title: str = "PACS") -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.received: list[Dataset] = []
        self.lock = threading.Lock()
        self.ae = AE(ae_title=ae_title)
        self.ae.supported_contexts = AllStoragePresentationContexts
        for extra in (Comprehensive3DSRStorage, SegmentationStorage):
            self.ae.add_supported_context(extra)
        self.server = self.ae.start_server(("127.0.0.1", port), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self.port = self.server.server_address[1]

    def _on_store(self, event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self.lock:
            ds.save_as(self.folder / f"{len(self.received):03d}-{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
            self.received.append(ds)
        return 0x0000

    def of_class(self, sop_class_uid: str) -> list[Dataset]:
        with self.lock:
            return [ds for ds in self.received if ds.SOPClassUID == sop_class_uid]

    def files(self) -> list[Path]:
        return sorted(self.folder.glob("*.dcm"))

    def stop(self) -> None:
        self.server.shutdown()


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
