"""The node's DICOM transport: pynetdicom's association server with the limits a hospital
network needs. This package is the one place the node overrides pynetdicom internals, one
concern a module, each written against pynetdicom 3.0.4 and saying so (``written_for``):
``contract.check_pynetdicom`` refuses to start the SCP on any other release, or when a
private name an override uses has moved. Each override is the smallest that removes one
behaviour:

1. ``socket.accept()`` returns a blocking socket without timeout, and
   ``DULServiceProvider._read_pdu_data`` then does a blocking ``recv`` of whatever length the
   PDU header declares: a peer that declares more than it sends holds the connection and its
   two threads for ever; the ARTIM timer is only looked at between PDUs; ``AE.shutdown``
   cannot abort it (the DUL thread is not a daemon, so the process cannot exit either).
   :meth:`dul.NodeDUL._read_pdu_data` reads with deadlines: the whole A-ASSOCIATE-RQ within
   ``acse_timeout`` of the connection, afterwards each PDU within ``network_timeout`` of its
   first byte.
2. The declared PDU length is compared with nothing (a 4 GiB declaration is read into
   memory). Here: before association at most ``max_associate_request_bytes``; afterwards a
   P-DATA-TF at most the maximum PDU size the node announced; an unknown PDU type, or any
   PDU but an A-ASSOCIATE-RQ before association, drops the connection at once.
3. ``AE.maximum_associations`` counts every acceptor thread, including connections that never
   sent an A-ASSOCIATE-RQ: ten silent sockets refuse every PACS with "local limit exceeded".
   Here the AE's own count is disabled and a slot is taken only when a valid A-ASSOCIATE-RQ
   arrives (``EVT_REQUESTED``, :meth:`association.NodeAssociationServer._on_requested`), with a limit per
   calling AE title too; connections still negotiating have their own budget per source
   address and overall (when that is full the oldest negotiating connection is dropped).
4. ``AssociationServer.get_request`` runs the TLS handshake in the accept loop without a
   timeout: one silent TLS client stops every accept. Here the handshake runs in the
   connection's own thread under the ACSE timeout.
5. ``_config.STORE_RECV_CHUNKED_DATASET`` spools a C-STORE dataset to a ``NamedTemporaryFile``
   in the system temp folder, with no bound on its size, and leaves it (open, on disk) when
   the connection ends mid-dataset. Here it spools into the archive's ``.incoming`` folder
   (same file system: linked into place, not copied), the dataset bytes are counted as they
   arrive (past ``max_instance_bytes`` the rest is discarded and the C-STORE handler answers
   0xA700), and a partial spool file is removed when the connection ends.
6. ``DULServiceProvider.receive_pdu(wait=True, timeout=acse_timeout)`` keeps the association
   thread waiting after its DUL has ended; here the wait ends with the DUL.
7. The DUL reactor and the association reactor poll: each sleeps 1 ms whenever it finds
   nothing to do, so every C-STORE waits up to 1 ms for its dataset to be noticed, 1 ms for
   the message to reach the handler and 1 ms for the response to be sent (at one
   association that is most of a store-nothing SCP's time per instance). Here each waits
   for its work instead, still at most 1 ms so pynetdicom's timers are looked at as often:
   the DUL in ``select`` on its socket and a wake-up socket that a primitive queued for
   sending writes to (:attr:`dul.NodeDUL._run_loop_delay`); the association on an event set when
   a message or primitive is queued for it (:class:`reactor.ReactorClock`). The DUL reactor then
   sleeps the 0 s that delay returns, which only hands the GIL to a busy association thread
   and waits to get it back; :class:`reactor.ReactorClock` skips it (7% more instances per second at
   one association, ``tests/bench_ingest.py``).
8. Not a pynetdicom fault, a use of its two threads: once a C-STORE's dataset is whole in
   its spool file and the message queued for the association thread, the DUL thread, which
   waits for the peer until the response goes back, fsyncs the spool (``sync_spool``,
   :class:`spool.MessageQueue`). The disk works while the association thread checks the dataset;
   the archive waits for that fsync (:attr:`SpooledDataset.synced`) before it links the file. A
   helper thread would not do: it must take the GIL to start, and the checking thread
   holds it until it waits.
9. pynetdicom encodes the spool's File Meta Information and every C-STORE-RSP with
   pydicom's generic writer (the response twice). Here both are the libraries' own
   encodings memoised (``dicom_node.receive._pynetdicom.encodings``): ``dimse_messages.create_file_meta``
   and ``write_file_meta_info`` write the memoised bytes, and
   :meth:`encodings.NodeDIMSE.send_msg` sends a plain C-STORE-RSP from them; anything else goes
   through pynetdicom unchanged.

Where each lives: 1, 2, 6 and the DUL half of 7 in ``dul``; 3 and 4 in ``association``;
5 and 8 in ``spool``; 7 in ``reactor``; 9 in ``encodings``. 7 and 9 only buy speed (7 % more instances per
second, and an eighth of the time per instance, at one association where they were measured) and run only with
``node.receive_speedups`` (default on); 1 to 6 and 8 are what the network and the archive
rely on and always run. The C-STORE handler sees one :class:`SpooledDataset` per request.
"""

from __future__ import annotations

from dicom_node.receive._pynetdicom import encodings, reactor, spool
from dicom_node.receive._pynetdicom.association import NodeAssociationServer, start_server
from dicom_node.receive._pynetdicom.contract import UnsupportedPynetdicom, check_pynetdicom
from dicom_node.receive._pynetdicom.spool import SpooledDataset, spooled_dataset

__all__ = [
    "NodeAssociationServer",
    "SpooledDataset",
    "UnsupportedPynetdicom",
    "check_pynetdicom",
    "install",
    "spooled_dataset",
    "start_server",
]


def install(*, speedups: bool) -> None:
    """Patch this process's pynetdicom: spooling always; the reactor's wait for work and the
    memoised encodings when ``speedups`` (``node.receive_speedups``), pynetdicom's own code
    for both otherwise."""
    spool.install()
    for module in (reactor, encodings):
        if speedups:
            module.install()
        else:
            module.uninstall()
