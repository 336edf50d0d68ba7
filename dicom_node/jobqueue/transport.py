"""The embedded queue's transport: kombu's SQLAlchemy transport on a SQLite file.

kombu 5.x passes every transport option it does not know to ``create_engine``, including
the virtual transport's own ``polling_interval``, which SQLAlchemy refuses; so its default
poll of once a second could not be shortened. This subclass takes ``polling_interval`` out
before the engine is made. It also creates the SQLite file mode 0600 before SQLite does
(:func:`~dicom_node.store.database.private_sqlite_file`): queued messages name studies. It
is registered as the ``nodesqla`` scheme.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import sqlalchemy as kombu_sqla
from sqlalchemy.engine import make_url

from dicom_node.store.database import private_sqlite_file

#: URL scheme of this transport (``nodesqla+sqlite:///path``).
SCHEME = "nodesqla"
#: Options of the virtual transport itself, not of the SQLAlchemy engine.
_TRANSPORT_ONLY_OPTIONS = ("polling_interval",)


class Channel(kombu_sqla.Channel):  # type: ignore[misc]
    """kombu's SQLAlchemy channel, without passing transport-only options to the engine."""

    def _engine_from_config(self) -> Any:
        client = self.connection.client
        url = make_url(client.hostname)
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            file = Path(str(url.database)).expanduser()
            file.parent.mkdir(parents=True, exist_ok=True)
            private_sqlite_file(file)
        saved = dict(client.transport_options)
        try:
            for key in _TRANSPORT_ONLY_OPTIONS:
                client.transport_options.pop(key, None)
            return super()._engine_from_config()
        finally:
            client.transport_options.clear()
            client.transport_options.update(saved)


class Transport(kombu_sqla.Transport):  # type: ignore[misc]
    """kombu's SQLAlchemy transport with :class:`Channel`."""

    Channel = Channel


TRANSPORT_ALIASES.setdefault(SCHEME, f"{__name__}:Transport")

__all__ = ["SCHEME", "Channel", "Transport"]
