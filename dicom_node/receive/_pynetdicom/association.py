"""Overrides 3 and 4 of ``dicom_node.receive._pynetdicom``: the association server admits
connections by source, runs TLS handshakes in each connection's thread, and gives an
association slot only to a valid A-ASSOCIATE-RQ; its associations run :class:`NodeDUL` and
:class:`NodeDIMSE`."""

from __future__ import annotations

import socket
import threading
import time
from copy import deepcopy
from datetime import datetime
from typing import Any

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from dicom_node.receive._pynetdicom.contract import written_for
from dicom_node.receive._pynetdicom.dul import NodeDUL
from dicom_node.receive._pynetdicom.encodings import NodeDIMSE
from dicom_node.receive._pynetdicom.spool import MessageQueue
from dicom_node.receive.limits import Connection, ConnectionTable, TransportLimits

__all__ = ["NodeAssociation", "NodeAssociationServer", "start_server"]

written_for(__name__, "3.0.4")


class NodeAssociation(Association):
    """An acceptor Association whose DUL is a :class:`NodeDUL`."""

    def __init__(self, ae: Any, mode: str, limits: TransportLimits, connection: Connection,
                 table: ConnectionTable) -> None:
        super().__init__(ae, mode)
        #: Set when a DIMSE message or a DUL primitive is queued for this association (override 7).
        self.work_queued = threading.Event()
        self.dimse = NodeDIMSE(self)
        self.dimse.msg_queue = MessageQueue(self.work_queued.set, limits.sync_spool)
        self.dul = NodeDUL(self, limits, connection, table)
        # the timeout setters configure the DUL's timers: apply them to the new DUL
        self.acse_timeout = limits.acse_timeout
        self.network_timeout = limits.network_timeout


class NodeRequestHandler(RequestHandler):
    """pynetdicom's request handler, creating a :class:`NodeAssociation`."""

    server: "NodeAssociationServer"

    def __init__(self, request: Any, client_address: Any, server: Any, connection: Connection) -> None:
        self.connection = connection
        super().__init__(request, client_address, server)

    def _create_association(self) -> Association:
        # pynetdicom.transport.RequestHandler._create_association, with NodeAssociation
        assoc = NodeAssociation(self.ae, "acceptor", self.server.limits, self.connection, self.server.connections)
        assoc._server = self.server
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        assoc.set_socket(AssociationSocket(assoc, client_socket=self.request))
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = deepcopy(self.server.contexts)
        assoc.requestor.address_info = self.remote
        for event in self.server._handlers:
            if event.is_intervention and self.server._handlers[event]:
                assoc.bind(event, *self.server._handlers[event])
            elif isinstance(event, evt.NotificationEvent):
                for handler in self.server._handlers[event]:
                    assoc.bind(event, handler[0], handler[1])
        return assoc


class NodeAssociationServer(ThreadedAssociationServer):
    """The listener: admission per source, TLS handshakes off the accept loop, slots at
    A-ASSOCIATE-RQ (overrides 3 and 4)."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, ae: Any, address: tuple[str, int], *, limits: TransportLimits, connections: ConnectionTable,
                 ssl_context: Any = None, evt_handlers: list[Any] | None = None) -> None:
        self.limits = limits
        self.connections = connections
        self.request_queue_size = limits.listen_backlog
        super().__init__(ae, address, ae.ae_title, ae.supported_contexts, ssl_context, evt_handlers)
        self.bind(evt.EVT_REQUESTED, self._on_requested)

    def server_bind(self) -> None:
        if self.limits.reuse_port:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, Any]:
        # pynetdicom wraps TLS here, in the accept loop; the handshake moves to the connection's thread
        accepted: tuple[socket.socket, Any] = self.socket.accept()
        return accepted

    def process_request(self, request: Any, client_address: Any) -> None:
        source = str(client_address[0])
        conn = self.connections.admit(source, request)
        try:
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            request.settimeout(self.limits.acse_timeout)
            thread = threading.Thread(target=self._serve_connection, args=(request, client_address, conn),
                                      name=f"Connection@{source}", daemon=True)
            thread.start()
        except (OSError, RuntimeError) as exc:  # no thread left
            self.connections.release(conn)
            self.connections.rejections.note(source, f"connection not served: {type(exc).__name__}")
            self.shutdown_request(request)

    def _serve_connection(self, request: Any, client_address: Any, conn: Connection) -> None:
        try:
            if self.ssl_context:
                request = self.ssl_context.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
                conn.sock = request
                request.settimeout(max(0.1, conn.since + self.limits.acse_timeout - time.monotonic()))
                request.do_handshake()
            NodeRequestHandler(request, client_address, self, conn)
        except Exception as exc:
            self.connections.release(conn)
            self.connections.rejections.note(conn.source, f"connection failed before association: {type(exc).__name__}",
                                             str(exc))
            self.shutdown_request(request)

    def _on_requested(self, event: evt.Event) -> None:
        """A valid A-ASSOCIATE-RQ arrived: take a slot, or reject 'local limit exceeded'."""
        assoc = event.assoc
        dul = assoc.dul
        if not isinstance(dul, NodeDUL):
            return
        rq = assoc.requestor.primitive
        calling = str(rq.calling_ae_title or "").strip()
        called = str(rq.called_ae_title or "").strip()
        ae = assoc.ae
        if ae.require_calling_aet and calling not in [s.strip() for s in ae.require_calling_aet]:
            return  # pynetdicom rejects it (calling AE not recognised); it keeps no slot
        if ae.require_called_aet and called != assoc.acceptor.ae_title.strip():
            return
        reason = self.connections.establish(dul.connection, calling)
        if reason is None:
            return
        self.connections.rejections.note(dul.connection.source, reason, f"calling AE {calling}")
        assoc.acse.send_reject(0x02, 0x03, 0x02)  # rejected-transient, presentation related, local limit exceeded
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()


def start_server(ae: Any, address: tuple[str, int], *, limits: TransportLimits, connections: ConnectionTable,
                 ssl_context: Any = None, evt_handlers: list[Any] | None = None) -> NodeAssociationServer:
    """Listen (non-blocking) as ``AE.start_server(block=False)`` does, with :class:`NodeAssociationServer`."""
    server = NodeAssociationServer(ae, address, limits=limits, connections=connections, ssl_context=ssl_context,
                                   evt_handlers=evt_handlers)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name=f"AcceptorServer@{datetime.now():%Y%m%d%H%M%S}", daemon=True)
    thread.start()
    ae._servers.append(server)
    return server

