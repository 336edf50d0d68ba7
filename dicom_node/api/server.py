"""Serving the dialog API from ``dicom_node serve`` (uvicorn in a background thread).

:class:`ApiServer` pairs the :class:`~dicom_node.api.dialog.DialogService` with a
:class:`~dicom_node.api.http_server.BackgroundHttpServer`, which binds its socket itself (port 0
gives a free port known before the first request) and keeps uvicorn's access log off (its
lines would show request paths, which hold Study Instance UIDs).
"""

from __future__ import annotations

import logging

from dicom_node.api._events import LiveEvents
from dicom_node.api.app import create_app
from dicom_node.api.dialog import DialogService, ModelProvider
from dicom_node.api.http_server import BackgroundHttpServer
from dicom_node.errors import ServiceError
from dicom_node.settings import Settings
from dicom_node.store import Database

logger = logging.getLogger(__name__)

class ApiServer:
    """The dialog API and reader page on ``api.bind_address``:``api.port``.

    Parameters
    ----------
    settings
        The node's settings.
    database
        The node's database (``NodeService.db``); by default one is opened on
        ``settings.database_url`` and closed by :meth:`stop`.
    model_provider
        Returns the model; default :func:`dicom_node.models.model_cache.get_model`.

    Examples
    --------
    >>> server = ApiServer(settings, database=service.db)    # doctest: +SKIP
    >>> host, port = server.start()                           # doctest: +SKIP
    >>> server.stop()                                         # doctest: +SKIP
    """

    def __init__(
        self,
        settings: Settings,
        database: Database | None = None,
        *,
        model_provider: ModelProvider | None = None,
    ) -> None:
        self.settings = settings
        self.db = database or Database(settings.database_url)
        self._owns_db = database is None
        self._model_provider = model_provider
        self.service: DialogService | None = None
        self._http: BackgroundHttpServer | None = None
        self._live: LiveEvents | None = None

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` the server listens on (after :meth:`start`)."""
        if self._http is None:
            raise ServiceError("the API server is not running")
        return self._http.host, self._http.port

    @property
    def port(self) -> int:
        """The bound port (the one the OS chose for ``api.port = 0``)."""
        return self.address[1]

    @property
    def url(self) -> str:
        """Base URL of the API, e.g. ``http://127.0.0.1:8080``."""
        if self._http is None:
            raise ServiceError("the API server is not running")
        return self._http.url

    def is_alive(self) -> bool:
        """Whether the API's server thread runs."""
        return self._http is not None and self._http.is_alive()

    def start(self) -> tuple[str, int]:
        """Create missing tables, bind the port and serve in a background thread.

        Returns
        -------
        tuple of (str, int)
            The address and port the API listens on.

        Raises
        ------
        ServiceError
            When the port cannot be bound, the server does not come up, or it already runs.
        DatabaseError
            When the database cannot be reached or its tables created.
        """
        if self._http is not None:
            raise ServiceError("the API server is already running")
        self.db.create_all()
        service = DialogService(self.settings, self.db, self._model_provider)
        try:
            app = create_app(service)
            http = BackgroundHttpServer(
                app, self.settings.api.bind_address, self.settings.api.port, "dialog API",
            )
            http.start()
        except ServiceError:
            service.close()
            raise
        self.service, self._http, self._live = service, http, app.state.live
        return self.address

    def stop(self) -> None:
        """Stop serving (open requests get a grace period), wait for running dialog turns
        and SR deliveries, and close the database when the server opened it."""
        if self._live is not None:
            self._live.close()  # open event streams end, so the server stops at once
            self._live = None
        if self._http is not None:
            self._http.stop()
            self._http = None
        if self.service is not None:
            self.service.close()
            self.service = None
        if self._owns_db:
            self.db.dispose()

    def __enter__(self) -> ApiServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


__all__ = ["ApiServer"]
