"""The node as a DICOMweb client (``dicomweb-client``): STOW-RS of its results to a
destination, QIDO-RS and WADO-RS from a source.

A peer's credentials are read from the files its config names (a bearer token, or a user and
a password for HTTP basic authentication) when a client is made; they never reach a log line
(the library's own logger, which prints request headers at DEBUG, is kept at WARNING).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from pydicom import dcmread
from pydicom.dataset import Dataset

from dicom_node.config import Peer
from dicom_node.scu import SendError, SendResult

__all__ = ["web_client", "stow_files", "failure_reasons", "check_web_peer", "STOW_WARNING"]

log = logging.getLogger(__name__)
logging.getLogger("dicomweb_client").setLevel(logging.WARNING)  # its DEBUG lines print headers

#: The status a STOW-RS response's Warning Reason stands for (PS3.18 10.5.3): stored, with
#: a warning (coercion, elements discarded); counted as sent, as a C-STORE warning is.
STOW_WARNING = 0xB000


def _secret(path: str) -> str:
    return Path(path).read_text(encoding="utf-8").strip()


def _session(peer: Peer) -> Any:
    """A ``requests.Session`` authenticated as ``peer``'s config says (TLS verified with its CA
    bundle when one is set)."""
    import requests

    session = requests.Session()
    if peer.token_file:
        session.headers["Authorization"] = f"Bearer {_secret(peer.token_file)}"
    elif peer.username:
        session.auth = (peer.username, _secret(peer.password_file) if peer.password_file else "")
    if peer.ca_certificates:
        session.verify = peer.ca_certificates
    if peer.certificate:
        session.cert = (peer.certificate, peer.private_key) if peer.private_key else peer.certificate
    return session


def web_client(peer: Peer, timeout: float = 30.0, session: Any = None) -> Any:
    """A ``dicomweb_client.DICOMwebClient`` for ``peer``'s DICOMweb URL, authenticated
    (``session``: one made by :func:`_session` for this peer, to watch its responses)."""
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(peer.dicomweb_url.rstrip("/"), session=session or _session(peer), timeout=timeout)
    client.set_http_retry_params(retry=False)  # the node's delivery and fetch retry with their own backoff
    return client


def failure_reasons(answer: Dataset) -> list[str]:
    """``UID: 0xCODE`` for each entry of a STOW-RS response's Failed SOP Sequence."""
    out = []
    for item in answer.get("FailedSOPSequence", []):
        code = item.get("FailureReason")
        out.append(f"{item.get('ReferencedSOPInstanceUID', '?')}: "
                   + (f"0x{int(code):04X}" if code is not None else "no reason given"))
    return out


def _answer_of(response: Any) -> Dataset:
    """The DICOM JSON body of a STOW-RS response, whatever parameters its media type carries
    (an empty dataset when there is none)."""
    if not response.content or "json" not in response.headers.get("Content-Type", ""):
        return Dataset()
    try:
        body = response.json()
        return Dataset.from_json(body) if isinstance(body, dict) else Dataset()
    except Exception:  # not DICOM JSON (a server's own error page): no reasons to quote
        return Dataset()


def stow_files(destination: Peer, paths: Sequence[Path], *, timeout: float = 30.0) -> list[SendResult]:
    """STOW-RS every file to ``destination`` in one request (the study's URL).

    Raises SendError naming the destination, the HTTP status and the server's failure reasons
    when any instance was not stored; an instance stored with a warning counts as sent.
    """
    import requests

    datasets = [dcmread(path) for path in paths]
    where = destination.where()
    studies = {str(ds.StudyInstanceUID) for ds in datasets}
    study = studies.pop() if len(studies) == 1 else None
    session = _session(destination)
    responses: list[Any] = []  # the library parses the body only for an exact media type: kept to read it here
    session.hooks["response"].append(lambda response, *args, **kwargs: responses.append(response))
    client = web_client(destination, timeout, session)
    try:
        answer = client.store_instances(datasets, study_instance_uid=study)
    except requests.HTTPError as exc:
        response = exc.response
        status = response.status_code if response is not None else 0
        reasons = failure_reasons(_answer_of(response)) if response is not None else []
        raise SendError(f"{where}: STOW-RS answered HTTP {status}"
                        + (f" ({'; '.join(reasons)[:300]})" if reasons else "")) from None
    except requests.RequestException as exc:
        raise SendError(f"{where}: STOW-RS failed: {_why(exc)}") from None
    if not len(answer) and responses:
        answer = _answer_of(responses[-1])  # "application/dicom+json; charset=utf-8" and the like
    failed = failure_reasons(answer)
    if failed:
        raise SendError(f"{where}: STOW-RS refused {'; '.join(failed)[:300]}")
    # stored is what the server lists as stored: a body that is not DICOM JSON (a proxy's page),
    # an empty one, or one missing an instance confirms nothing, and is a failed try
    stored = {str(item.get("ReferencedSOPInstanceUID", "")) for item in answer.get("ReferencedSOPSequence", [])}
    missing = [str(ds.SOPInstanceUID) for ds in datasets if str(ds.SOPInstanceUID) not in stored]
    if missing:
        last = responses[-1] if responses else None
        what = (f"HTTP {last.status_code}, {last.headers.get('Content-Type') or 'no Content-Type'}"
                if last is not None else "no response")
        raise SendError(f"{where}: STOW-RS did not confirm {len(missing)} of {len(datasets)} instances as stored "
                        f"({what}): {', '.join(missing)[:200]}")
    warned = {str(item.get("ReferencedSOPInstanceUID", "")) for item in answer.get("ReferencedSOPSequence", [])
              if "WarningReason" in item}
    return [SendResult(str(ds.SOPInstanceUID), STOW_WARNING if str(ds.SOPInstanceUID) in warned else 0)
            for ds in datasets]


def check_web_peer(peer: Peer, *, timeout: float = 10.0) -> int:
    """A QIDO-RS query for one study: the HTTP status (200 or 204 = reachable and allowed).
    Raises SendError when the server cannot be reached."""
    import requests

    try:
        response = _session(peer).get(f"{peer.dicomweb_url.rstrip('/')}/studies", params={"limit": "1"},
                                      headers={"Accept": "application/dicom+json"}, timeout=timeout)
    except requests.RequestException as exc:
        raise SendError(f"{peer.where()}: {_why(exc)}") from None
    return int(response.status_code)


def _why(exc: BaseException) -> str:
    """The kind of a network failure, without the URL's query or any header."""
    import requests

    if isinstance(exc, requests.ConnectionError):
        return "cannot connect"
    if isinstance(exc, requests.Timeout):
        return "no answer in time"
    return type(exc).__name__
