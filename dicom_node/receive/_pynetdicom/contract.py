"""The pynetdicom internals ``dicom_node.receive._pynetdicom`` overrides, checked before the SCP listens.

The node's network protections (deadlines on every PDU, the PDU size caps, the association
budgets, spooling into the archive, the TLS handshake off the accept loop) live in overrides
of pynetdicom 3.0.4's private methods and module attributes. A release that renamed one
would not fail loudly: the override would stop being called and a protection would vanish.
So the node runs only on the release the overrides were written and tested against, and
checks at start that each private name it uses is still there with the signature it expects.
"""

from __future__ import annotations

import importlib
import inspect

import pynetdicom

__all__ = ["SUPPORTED_VERSION", "UnsupportedPynetdicom", "written_for", "contract_problems", "check_pynetdicom"]

#: The release pyproject pins; the overrides were written against its source.
SUPPORTED_VERSION = "3.0.4"

#: override module -> the pynetdicom release it was written against (each declares its own)
_WRITTEN_FOR: dict[str, str] = {}


def written_for(module: str, version: str) -> None:
    """Declare that override module ``module`` was written against pynetdicom ``version``:
    :func:`check_pynetdicom` refuses to start on any other installed release."""
    _WRITTEN_FOR[module] = version

#: (module, class or None, name, expected parameters of a method / None for an attribute)
_METHODS = (
    ("pynetdicom.dul", "DULServiceProvider", "_read_pdu_data", ["self"]),
    ("pynetdicom.dul", "DULServiceProvider", "_decode_pdu", ["self", "bytestream"]),
    ("pynetdicom.transport", "RequestHandler", "_create_association", ["self"]),
)
_MODULE_ATTRIBUTES = (
    ("pynetdicom.dimse_messages", "NamedTemporaryFile"),
    ("pynetdicom.dimse_messages", "create_file_meta"),
    ("pynetdicom.dimse_messages", "write_file_meta_info"),
    ("pynetdicom.association", "time"),
    ("pynetdicom.dul", "time"),
    ("pynetdicom._config", "STORE_RECV_CHUNKED_DATASET"),
)
#: instance attributes the overrides read or replace, as the class's own source sets them
_SET_IN_SOURCE = (
    ("pynetdicom.ae", "ApplicationEntity", "self._servers"),
    ("pynetdicom.transport", "AssociationServer", "self._handlers"),
    ("pynetdicom.dul", "DULServiceProvider", "self._run_loop_delay"),
    ("pynetdicom.dul", "DULServiceProvider", "self._recv_pdu"),
    ("pynetdicom.dul", "DULServiceProvider", "self.event_queue"),
    ("pynetdicom.dul", "DULServiceProvider", "self.to_provider_queue"),
    ("pynetdicom.dul", "DULServiceProvider", "self.to_user_queue"),
    ("pynetdicom.transport", "RequestHandler", "assoc._server"),
    ("pynetdicom.dimse_primitives", "DIMSEPrimitive", "_dataset_file"),
    ("pynetdicom.dimse_messages", None, "primitive._dataset_file = "),
    ("pynetdicom.dul", None, '"Evt17"'),
)


class UnsupportedPynetdicom(RuntimeError):
    """The installed pynetdicom is not the one the node's transport overrides were written for."""


def contract_problems() -> list[str]:
    """Each private name of pynetdicom the transport uses that is missing or changed, one line each."""
    problems = []
    for module_name, class_name, name, parameters in _METHODS:
        owner = getattr(importlib.import_module(module_name), class_name, None)
        method = getattr(owner, name, None)
        where = f"{module_name}.{class_name}.{name}"
        if not callable(method):
            problems.append(f"{where} is gone")
        elif list(inspect.signature(method).parameters) != parameters:
            problems.append(f"{where}{inspect.signature(method)} no longer takes ({', '.join(parameters)})")
    for module_name, name in _MODULE_ATTRIBUTES:
        if not hasattr(importlib.import_module(module_name), name):
            problems.append(f"{module_name}.{name} is gone")
    for module_name, source_class, text in _SET_IN_SOURCE:
        module = importlib.import_module(module_name)
        owner = getattr(module, source_class, None) if source_class else module
        try:
            source = inspect.getsource(owner) if owner is not None else ""
        except (OSError, TypeError):
            source = ""
        if text not in source:
            problems.append(f"{module_name}{'.' + source_class if source_class else ''} no longer uses {text}")
    return problems


def check_pynetdicom() -> None:
    """Raise UnsupportedPynetdicom, naming the versions and what moved, unless the installed
    pynetdicom is the supported one with every private name in place."""
    installed = pynetdicom.__version__
    stale = sorted(module for module, version in _WRITTEN_FOR.items() if version != installed)
    if installed != SUPPORTED_VERSION or stale:
        raise UnsupportedPynetdicom(
            f"pynetdicom {installed} is installed; egfr-node's SCP overrides pynetdicom internals for its network "
            f"protections and supports pynetdicom {SUPPORTED_VERSION} only: pip install pynetdicom=={SUPPORTED_VERSION}"
            + (f" (written for another release: {', '.join(stale)})" if stale else ""))
    problems = contract_problems()
    if problems:
        raise UnsupportedPynetdicom(f"pynetdicom {installed} does not have what egfr-node's SCP overrides: "
                                    + "; ".join(problems))
