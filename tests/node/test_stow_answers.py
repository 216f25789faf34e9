"""What a STOW-RS destination answered decides whether a result counts as sent: only the
instances the server lists as stored are. A 200 that is not DICOM JSON (a proxy's sign-in page),
an empty 204, or a list that misses an instance is a failed try, retried later; a DICOM JSON
answer whose media type carries a parameter is read like one without. The server is a real
HTTP server on loopback that answers as each case says."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dicom_node.config import Destination
from dicom_node.dicomweb_peer import stow_files
from dicom_node.scu import SendError
from tests.dicom_factory import mr_series, write_datasets

#: the answer of the next request: (HTTP status, Content-Type, body), the body a function of
#: the SOP Instance UIDs sent
ANSWER: dict[str, object] = {}


def _stored(uids: list[str], listed: int | None = None) -> bytes:
    items = [{"00081155": {"vr": "UI", "Value": [uid]}} for uid in uids[:listed]]
    return json.dumps({"00081199": {"vr": "SQ", "Value": items}}).encode()


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        status, media_type, body = ANSWER["status"], ANSWER["type"], ANSWER["body"]
        payload = body(ANSWER["uids"]) if callable(body) else body
        self.send_response(int(status))  # type: ignore[call-overload]
        if media_type:
            self.send_header("Content-Type", str(media_type))
        self.send_header("Content-Length", str(len(payload)))  # type: ignore[arg-type]
        self.end_headers()
        self.wfile.write(payload)  # type: ignore[arg-type]

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/dicom-web"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize(("status", "media_type", "body", "stored"), [
    (200, "application/dicom+json", _stored, True),
    (200, "application/dicom+json; charset=utf-8", _stored, True),
    (200, "text/html; charset=utf-8", b"<html><body>Sign in</body></html>", False),
    (204, "", b"", False),
    (200, "application/dicom+json", lambda uids: _stored(uids, listed=1), False),
])
def test_only_instances_the_server_lists_as_stored_count_as_sent(server: str, tmp_path: Path, status: int,
                                                                  media_type: str, body: object, stored: bool) -> None:
    images = mr_series(2)
    paths = write_datasets(images, tmp_path / "out")
    ANSWER.update(status=status, type=media_type, body=body, uids=[str(ds.SOPInstanceUID) for ds in images])
    destination = Destination("web", dicomweb_url=server)
    if stored:
        assert [r.status for r in stow_files(destination, paths, timeout=5)] == [0, 0]
    else:
        with pytest.raises(SendError, match=r"did not confirm (1|2) of 2 instances as stored \(HTTP 20[04]"):
            stow_files(destination, paths, timeout=5)
