"""A pynetdicom association server that idle or greedy peers cannot block.

pynetdicom starts an association (a thread counted against ``maximum_associations``) for every
accepted TCP connection and then waits up to ``acse_timeout`` for its A-ASSOCIATE-RQ. Ten
idle sockets therefore fill a node with ``max_associations = 10`` for 30 s, and a peer that
reconnects keeps it full. :class:`GuardedAssociationServer` (made with pynetdicom's
``AE.make_server(..., server_class=...)``) adds two gates in front of the association:

* a **per-peer limit**: a connection from an address that already holds
  ``node.max_connections_per_peer`` open connections is closed at once;
* a **first-PDU timeout**: a connection is handed to pynetdicom only once it has sent
  something, at most ``node.first_pdu_timeout`` seconds after it was accepted; an idle one is
  closed without ever holding an association slot.

So a C-ECHO from another host still gets through while one host holds idle sockets open.
"""

from __future__ import annotations

import logging
import select
import socket
import socketserver
import threading
from collections import Counter
from typing import Any

from pynetdicom.transport import ThreadedAssociationServer

logger = logging.getLogger(__name__)


class GuardedAssociationServer(ThreadedAssociationServer):
    """:class:`pynetdicom.transport.ThreadedAssociationServer` with the gates above.

    Set :attr:`max_per_peer` and :attr:`first_pdu_timeout` on the instance after
    ``AE.make_server`` created it (pynetdicom passes no extra arguments to the class).
    """

    #: Open connections one peer address may hold.
    max_per_peer: int = 8
    #: Seconds a connection may stay silent before it is closed.
    first_pdu_timeout: float = 5.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._peers: Counter[str] = Counter()
        self._peers_lock = threading.Lock()
        #: Connections closed by a gate, per reason (``per-peer limit``, ``no A-ASSOCIATE-RQ``).
        self.closed: Counter[str] = Counter()

    @staticmethod
    def _host(client_address: Any) -> str:
        return str(client_address[0]) if isinstance(client_address, tuple) else str(
            client_address
        )

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Admit a connection unless its peer already holds :attr:`max_per_peer` of them."""
        host = self._host(client_address)
        with self._peers_lock:
            if self._peers[host] >= self.max_per_peer:
                self.closed["per-peer limit"] += 1
                refused = True
            else:
                self._peers[host] += 1
                refused = False
        if refused:
            logger.warning(
                "closed a connection from %s: it already holds %d open connections "
                "(node.max_connections_per_peer)", host, self.max_per_peer,
            )
            return False
        return True

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Wait for the peer's first bytes, then let pynetdicom run the association."""
        host = self._host(client_address)
        try:
            raw = request if isinstance(request, socket.socket) else request[1]
            readable, _, _ = select.select([raw], [], [], self.first_pdu_timeout)
            if not readable:
                self.closed["no A-ASSOCIATE-RQ"] += 1
                logger.warning(
                    "closed an idle connection from %s: no A-ASSOCIATE-RQ within %.0f s "
                    "(node.first_pdu_timeout)", host, self.first_pdu_timeout,
                )
                self.shutdown_request(request)
                return
            super().process_request_thread(request, client_address)
        finally:
            with self._peers_lock:
                self._peers[host] -= 1
                if self._peers[host] <= 0:
                    del self._peers[host]

    def shutdown(self) -> None:
        """Stop serving and close the socket.

        pynetdicom's own ``shutdown`` also removes the server from the AE's list of servers,
        which only ``AE.start_server`` fills; this server comes from ``AE.make_server`` and
        is stopped by its owner (:class:`~dicom_node.dicom.scp.StoreSCP`).
        """
        socketserver.TCPServer.shutdown(self)
        self.server_close()

    def open_connections(self) -> dict[str, int]:
        """Open connections per peer address (for tests and diagnostics)."""
        with self._peers_lock:
            return dict(self._peers)


__all__ = ["GuardedAssociationServer"]
