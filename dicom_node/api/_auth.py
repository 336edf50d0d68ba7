"""Bearer-token authentication against the users of ``[api.users]``.

Each user has a token, configured as its SHA-256 (``token_sha256``) or, for development, in
clear (``token``). A request presents ``Authorization: Bearer <token>``; its SHA-256 is
compared with every user's in constant time, so neither the answer nor its timing tells
which users exist.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from dicom_node.api.errors import AuthenticationError
from dicom_node.settings import ApiSettings, ApiUser


@dataclass(frozen=True)
class Reader:
    """The authenticated user of a request."""

    #: The key in ``[api.users]``; recorded as author and login name.
    name: str
    #: DICOM person name (``Family^Given``).
    display_name: str
    organization: str
    may_sign: bool


def token_digest(token: str) -> str:
    """SHA-256 (lowercase hex) of a token, as configured in ``token_sha256``."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _user_digest(user: ApiUser) -> str:
    if user.token_sha256 is not None:
        return user.token_sha256
    assert user.token is not None  # the settings require one of the two
    return token_digest(user.token.get_secret_value())


class Authenticator:
    """Maps bearer tokens to readers.

    Parameters
    ----------
    settings
        The ``[api]`` section.
    """

    def __init__(self, settings: ApiSettings) -> None:
        self._users = [
            (bytes.fromhex(_user_digest(user)), Reader(name, user.display_name,
                                                       user.organization, user.may_sign))
            for name, user in sorted(settings.users.items())
        ]

    def reader(self, authorization: str | None) -> Reader:
        """The reader an ``Authorization`` header value authenticates.

        Raises
        ------
        AuthenticationError
            When the header is missing, not a bearer token, or no user's token.
        """
        if not authorization:
            raise AuthenticationError("a bearer token is required")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationError("the Authorization header must be 'Bearer <token>'")
        presented = hashlib.sha256(token.encode("utf-8")).digest()
        found: Reader | None = None
        for digest, reader in self._users:
            # Every user is compared, so the time taken does not depend on which one matched.
            if hmac.compare_digest(digest, presented):
                found = reader
        if found is None:
            raise AuthenticationError("the token is not valid")
        return found


__all__ = ["Authenticator", "Reader", "token_digest"]
