"""Running an ASGI app (FastAPI) with uvicorn in a background thread of the node.

``dicom_node serve`` runs its DICOM server, its scheduler and its worker in one process;
its HTTP endpoints (health and metrics, the reader's API) run the same way, each on its own
port. Port 0 binds any free port; :attr:`BackgroundHttpServer.port` tells which.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

import uvicorn

from dicom_node.errors import ServiceError

logger = logging.getLogger(__name__)

#: Seconds to wait for uvicorn to start serving.
START_TIMEOUT_S = 15.0
#: Seconds open requests get when the server stops.
STOP_TIMEOUT_S = 10.0


class BackgroundHttpServer:
    """uvicorn serving an ASGI app from a daemon thread.

    Parameters
    ----------
    app
        The ASGI application.
    host, port
        Where to listen (port 0 = any free port).
    name
        Used in log messages and the thread name.
    """

    def __init__(self, app: Any, host: str, port: int, name: str) -> None:
        self.name = name
        self.host = host
        self._socket = socket.socket(
            socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM
        )
        try:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._socket.bind((host, port))
            self._socket.listen(128)
        except OSError as exc:
            self._socket.close()
            raise ServiceError(
                f"the {name} HTTP server cannot listen on {host}:{port}: {exc}"
            ) from exc
        self.port: int = self._socket.getsockname()[1]
        # No access log: request paths hold Study Instance UIDs.
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=int(STOP_TIMEOUT_S),
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start serving; returns once the server accepts connections.

        Raises
        ------
        ServiceError
            When the server did not start within :data:`START_TIMEOUT_S`.
        """
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            name=f"http-{self.name}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ServiceError(f"the {self.name} HTTP server did not start; see the log")
            time.sleep(0.01)  # polling uvicorn's flag, not a synchronisation delay
        logger.info("%s HTTP server on %s:%d", self.name, self.host, self.port)

    def is_alive(self) -> bool:
        """Whether the server's thread runs (started and not stopped or crashed)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def url(self) -> str:
        """Base URL of the server."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        """Stop serving (open requests get :data:`STOP_TIMEOUT_S`) and close the socket."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S + 5)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(STOP_TIMEOUT_S)
            self._thread = None
        self._socket.close()


__all__ = ["START_TIMEOUT_S", "STOP_TIMEOUT_S", "BackgroundHttpServer"]
