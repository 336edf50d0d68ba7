"""TLS contexts for DICOM associations, built from the ``[tls]`` settings."""

from __future__ import annotations

import ssl

from dicom_node.errors import ServiceError
from dicom_node.settings import TlsSettings


def _load_chain(context: ssl.SSLContext, tls: TlsSettings) -> None:
    if tls.cert is None or tls.key is None:
        raise ServiceError("tls.cert and tls.key are needed for TLS")
    try:
        context.load_cert_chain(certfile=tls.cert, keyfile=tls.key)
    except (OSError, ssl.SSLError) as exc:
        raise ServiceError(
            f"cannot load tls.cert {tls.cert} with tls.key {tls.key}: {exc}"
        ) from exc


def _load_ca(context: ssl.SSLContext, tls: TlsSettings) -> None:
    if tls.ca is None:
        return
    try:
        context.load_verify_locations(cafile=tls.ca)
    except (OSError, ssl.SSLError) as exc:
        raise ServiceError(f"cannot load tls.ca {tls.ca}: {exc}") from exc


def server_context(tls: TlsSettings) -> ssl.SSLContext:
    """The SSL context of the node's SCP (TLS 1.2 or newer).

    Parameters
    ----------
    tls
        The ``[tls]`` settings; ``cert`` and ``key`` must be set.

    Raises
    ------
    ServiceError
        When a file cannot be loaded (the message names the key).
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, tls)
    _load_ca(context, tls)
    context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_NONE
    return context


def client_context(tls: TlsSettings) -> ssl.SSLContext:
    """The SSL context for the node's own associations (PACS delivery, RIS queries).

    The peer's certificate is checked against ``tls.ca`` (or the system store when none is
    set); the node presents its own certificate when ``cert`` and ``key`` are set.

    Raises
    ------
    ServiceError
        When a file cannot be loaded (the message names the key).
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_ca(context, tls)
    if tls.cert is not None and tls.key is not None:
        _load_chain(context, tls)
    return context


__all__ = ["client_context", "server_context"]
