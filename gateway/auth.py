"""Who is calling: API keys, the tenant each belongs to, and revocation without a restart.

The keyring holds the SHA-256 of every accepted key (``embedstream.apikeys``)
from ``EMBEDSTREAM_API_KEYS`` and the key file. The file is reread when its
size, mtime or inode changes (checked at most once a second, on a call) and on
SIGHUP, so deleting a line revokes that key within a second or two.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from contextvars import ContextVar

from embedstream import apikeys
from embedstream.apikeys import Entry
from embedstream.errors import ConfigError, Unauthenticated
from embedstream.gateway.ratelimit import Limit
from embedstream.settings import Settings

log = logging.getLogger(__name__)

#: The tenant of every call while auth is off.
DEFAULT_TENANT = "default"
#: The tenant of the call being handled; set by the guard before the servicer runs.
TENANT: ContextVar[str] = ContextVar("tenant", default=DEFAULT_TENANT)
#: How often, at most, the key file's stat is compared with the one last read.
CHECK_EVERY_S = 1.0


def current_tenant() -> str:
    """The calling tenant (``default`` when auth is off)."""
    return TENANT.get()


def bearer(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The key in ``authorization: Bearer <key>``; raises Unauthenticated when absent or malformed."""
    for name, value in metadata or ():
        if name == "authorization":
            scheme, _, token = str(value).strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("malformed authorization metadata: expected 'Bearer <API key>'")
            return token.strip()
    raise Unauthenticated("missing API key: send the metadata 'authorization: Bearer <API key>'")


class Keyring:
    """The accepted keys and the limits of their tenants."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.enabled = settings.auth
        self.path = settings.api_keys_file
        self._inline = apikeys.parse(settings.api_keys, "EMBEDSTREAM_API_KEYS", inline=True)
        self._stamp: tuple[int, int, int] | None = None
        self._checked = time.monotonic()
        file_entries = []
        if self.path:
            self._stamp = _stamp(self.path)
            file_entries = apikeys.read_file(self.path)
        self._by_digest = apikeys.index([*self._inline, *file_entries])

    def __len__(self) -> int:
        return len(self._by_digest)

    def tenants(self) -> list[str]:
        """The tenants of the accepted keys (``default`` while auth is off)."""
        return sorted({e.tenant for e in self._by_digest.values()}) if self.enabled else [DEFAULT_TENANT]

    def authenticate(self, key: str) -> Entry:
        """The entry of ``key``, or Unauthenticated (the message never holds the key)."""
        if time.monotonic() - self._checked >= CHECK_EVERY_S:
            self._checked = time.monotonic()
            if self.path and _stamp(self.path) != self._stamp:
                self.reload()
        entry = self._by_digest.get(apikeys.digest(key))
        if entry is None:
            raise Unauthenticated("invalid API key: it is unknown or has been revoked")
        return entry

    def reload(self) -> None:
        """Reread the key file now. A missing file accepts no file keys; a bad one keeps the last good set."""
        if not self.path:
            return
        self._stamp = _stamp(self.path)
        if self._stamp is None:
            log.error("API key file %s is gone: only EMBEDSTREAM_API_KEYS entries are accepted now", self.path)
            self._by_digest = apikeys.index(self._inline)
            return
        try:
            self._by_digest = apikeys.index([*self._inline, *apikeys.read_file(self.path)])
        except ConfigError as exc:
            log.error("API key file not reloaded, the previous keys stay in force: %s", exc)
            return
        log.info("API keys reloaded from %s: %d keys", self.path, len(self._by_digest))

    def limit(self, entry: Entry | None) -> Limit:
        """The rate limit of ``entry``'s tenant (None: the default tenant of auth-off)."""
        rate = self.settings.rate_limit if entry is None or entry.rate is None else entry.rate
        if entry is not None and entry.burst is not None:
            return Limit(rate, entry.burst)
        return Limit(rate, self.settings.rate_burst or max(int(rate), self.settings.max_inputs_per_request))


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)
