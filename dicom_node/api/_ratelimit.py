"""Limiting failed bearer tokens per client address.

A client that presents ``limit`` invalid tokens within ``window_s`` seconds is refused with
429 and ``Retry-After`` until the oldest of those failures is older than the window; its
requests are not even checked meanwhile, so guessing gains nothing from being fast. A valid
token is never delayed and never counts. IPv6 clients are counted per /64 network (one host
usually holds the whole network), IPv4 clients per address. The table keeps at most
``max_clients`` addresses, dropping the least recently seen, so a flood of addresses cannot
fill memory.

Behind a reverse proxy on loopback, uvicorn takes the client address from the proxy's
``X-Forwarded-For`` header (``FORWARDED_ALLOW_IPS``, by default 127.0.0.1 and ::1); other
proxies must be trusted there too, or every client counts as the proxy.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from dicom_node.api.errors import TooManyFailuresError

logger = logging.getLogger(__name__)

#: Client addresses remembered at most.
MAX_CLIENTS = 10_000


def client_key(host: str | None) -> str:
    """The key failures count under: the IPv4 address, the IPv6 /64, or the host as given."""
    if not host:
        return "(unknown)"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class FailedTokenLimiter:
    """Counts failed tokens per client and refuses clients over the limit.

    Parameters
    ----------
    limit
        Failures within `window_s` after which a client is refused.
    window_s
        Seconds a failure counts.
    max_clients
        Clients remembered at most (least recently seen forgotten first).
    clock
        Monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        limit: int,
        window_s: float,
        *,
        max_clients: int = MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        if max_clients < 1:
            raise ValueError(f"max_clients must be >= 1, got {max_clients}")
        self.limit = limit
        self.window_s = window_s
        self._max_clients = max_clients
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float] | None:
        """The client's failures within the window (older ones dropped); lock held."""
        failures = self._failures.get(key)
        if failures is None:
            return None
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        if not failures:
            del self._failures[key]
            return None
        return failures

    def check(self, host: str | None) -> None:
        """Refuse a client that is over the limit.

        Raises
        ------
        TooManyFailuresError
            With the seconds until its oldest counted failure expires (429).
        """
        key = client_key(host)
        with self._lock:
            now = self._clock()
            failures = self._recent(key, now)
            if failures is None or len(failures) < self.limit:
                return
            wait = failures[-self.limit] + self.window_s - now
        raise TooManyFailuresError(
            "too many invalid tokens from this client; try again later",
            max(1, math.ceil(wait)),
        )

    def record_failure(self, host: str | None) -> None:
        """Count an invalid token presented by a client."""
        key = client_key(host)
        with self._lock:
            now = self._clock()
            failures = self._recent(key, now)
            if failures is None:
                failures = self._failures[key] = deque(maxlen=self.limit)
            failures.append(now)
            self._failures.move_to_end(key)
            while len(self._failures) > self._max_clients:
                self._failures.popitem(last=False)
            reached = len(failures) == self.limit
        if reached:
            # The address (no patient data) lets an operator block the client elsewhere;
            # the tokens it tried are never logged.
            logger.warning(
                "API client %s refused for up to %.0f s after %d invalid tokens",
                key, self.window_s, self.limit,
            )


__all__ = ["MAX_CLIENTS", "FailedTokenLimiter", "client_key"]
