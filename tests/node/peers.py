"""PACS stand-ins that are real DICOM peers on loopback: a pynetdicom Storage SCP that keeps
what it receives, DCMTK's storescp, and Orthanc (routing PACS, DICOMweb server)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest

from pydicom import dcmread
from pydicom.dataset import Dataset

from dicom_node.commands.demo import LocalPacs
from tests.conftest import require_tool
from tests.node.process import free_port
from tests.waiting import wait_for


#: The demo's stand-in PACS: a Storage SCP writing each instance to a folder.
PynetdicomPacs = LocalPacs


class StorescpPacs:
    """DCMTK storescp as PACS (TCP_NODELAY=1 as NOTES.md says), writing into ``folder``."""

    def __init__(self, folder: Path, *, syntaxes: str = "+xa") -> None:
        """``syntaxes``: storescp's transfer syntax option (``+xa`` any, ``+xi`` implicit VR
        little endian only, as the oldest receivers)."""
        require_tool("storescp")
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.port = free_port()
        self.process = subprocess.Popen(
            ["storescp", "-aet", "PACS", "-od", str(folder), syntaxes, str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "TCP_NODELAY": "1"},
        )
        wait_for(self._listening, 30, f"storescp listening on port {self.port}")

    def _listening(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"storescp exited with {self.process.returncode}: {self.process.stderr.read()[-500:]!r}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def datasets(self) -> list[Dataset]:
        return [dcmread(p) for p in self.files()]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "orthanc"


def _orthanc() -> str:
    path = shutil.which("Orthanc")
    if path is None:
        pytest.fail("Orthanc not found: install the Debian package orthanc (scripts/test does)")
    return path


class Orthanc:
    """A private Orthanc on loopback ports, configured with deploy/orthanc/: with ``node_port``
    it knows the node (as the modality ``egfr-node``, AE EGFR_NODE) and, with ``route``, routes
    stable studies to it; with ``dicomweb`` it serves DICOMweb under ``/dicom-web/`` (Debian's
    orthanc-dicomweb plugin), as a viewer reads it, and can push to ``web_servers`` (name ->
    Orthanc's ``DicomWeb.Servers`` entry) by STOW-RS."""

    def __init__(self, tmp: Path, node_port: int | None = None, *, dicomweb: bool = False, route: bool = True,
                 web_servers: dict | None = None, http_port: int | None = None, masks_only: bool = False) -> None:
        config = json.loads((DEPLOY / "orthanc.json").read_text())
        self.dicom_port, self.http_port = free_port(), http_port or free_port()
        tmp.mkdir(parents=True, exist_ok=True)
        script = DEPLOY / "route-to-egfr-node.lua"
        if masks_only:  # the deployed script, switched to its masks-only rule
            text = script.read_text()
            assert "\nMASKS_ONLY = false" in text
            script = tmp / "route-masks-only.lua"
            script.write_text(text.replace("\nMASKS_ONLY = false", "\nMASKS_ONLY = true"))
        config.update(
            StorageDirectory=str(tmp / "orthanc-db"), IndexDirectory=str(tmp / "orthanc-db"),
            DicomPort=self.dicom_port, HttpPort=self.http_port, StableAge=1,
            LuaScripts=[str(script)] if node_port and route else [],
            DicomModalities={"egfr-node": ["EGFR_NODE", "127.0.0.1", node_port]} if node_port else {},
        )
        if dicomweb:
            plugin = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
            if not plugin.is_file():
                pytest.fail(f"{plugin} not found: install the Debian package orthanc-dicomweb (scripts/test does)")
            config.update(Plugins=[str(plugin)],
                          DicomWeb={"Enable": True, "Root": "/dicom-web/", "Servers": web_servers or {}})
        path = tmp / "orthanc.json"
        path.write_text(json.dumps(config))
        self.log = open(tmp / "orthanc.log", "a")
        self.process = subprocess.Popen([_orthanc(), str(path)], stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(self._answers, 30, "Orthanc's REST API (Orthanc did not start)", every=0.2)

    @property
    def dicomweb_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def _answers(self) -> bool:
        try:
            self.get("/system")
            return True
        except OSError:
            return False

    def get(self, path: str):  # type: ignore[no-untyped-def]
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as response:
            return json.loads(response.read())

    def post(self, path: str, body: object):  # type: ignore[no-untyped-def]
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=json.dumps(body).encode(),
                                         method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())

    def upload(self, file: Path) -> None:
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}/instances", data=file.read_bytes(),
                                         method="POST", headers={"Content-Type": "application/dicom"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.loads(response.read())["Status"] in ("Success", "AlreadyStored")

    def series_modalities(self) -> list[tuple[str, str]]:
        out = []
        for study in self.get("/studies"):
            for series in self.get(f"/studies/{study}/series"):
                tags = series["MainDicomTags"]
                out.append((tags.get("Modality", ""), tags.get("SeriesDescription", "")))
        return sorted(out)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(20)
        self.log.close()
