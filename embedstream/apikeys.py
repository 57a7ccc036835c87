"""API keys: how they are made, stored (hashed) and read back.

A key is a long random token (``es_`` + 43 URL-safe characters, 256 bits), so
its SHA-256 is stored instead of the key and no slow KDF is needed: nobody can
guess a 256-bit token from its hash, and a lookup costs one hash. A key file
(or ``EMBEDSTREAM_API_KEYS``) holds one entry per line::

    # tenant  sha256 of the key (hex)                                          options
    acme      9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08  rate=50 burst=200 name=ci

``rate`` (inputs per second) and ``burst`` override the gateway's default rate
limit for that tenant; ``name`` is a free label. ``#`` starts a comment. In the
environment variable, ``;`` separates entries as newlines do.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from embedstream.errors import ConfigError

#: Prefix of every generated key, so a leaked one is recognisable (secret scanners).
KEY_PREFIX = "es_"
#: A tenant name starts with a letter; it becomes part of Redis keys and hash tags.
TENANT_RE = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}")
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_NAME_RE = re.compile(r"[A-Za-z0-9._@-]{1,64}")


@dataclass(frozen=True, slots=True)
class Entry:
    """One accepted key: its tenant, the SHA-256 of the key, and optional limits."""

    tenant: str
    digest: str
    rate: float | None = None
    burst: int | None = None
    name: str = ""

    def line(self) -> str:
        """The entry as one line of a key file."""
        options = []
        if self.rate is not None:
            options.append(f"rate={self.rate:g}")
        if self.burst is not None:
            options.append(f"burst={self.burst}")
        if self.name:
            options.append(f"name={self.name}")
        return " ".join([self.tenant, self.digest, *options])


def digest(key: str) -> str:
    """The SHA-256 hex digest under which ``key`` is stored."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh random API key."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def check_tenant(tenant: str) -> str:
    """``tenant`` if it is a valid tenant name; else ConfigError."""
    if not TENANT_RE.fullmatch(tenant):
        raise ConfigError(f"tenant {tenant!r}: a letter, then up to 63 letters, digits, '.', '_' or '-'")
    return tenant


def parse(text: str, source: str, *, inline: bool = False) -> list[Entry]:
    """Every entry of a key file's text (``inline``: the variable's, ``;``-separated); errors name the line."""
    parts = re.split(r"[\n;]", text) if inline else text.splitlines()
    unit = "entry" if inline else "line"
    entries = []
    for number, raw in enumerate(parts, start=1):
        line = raw.split("#", 1)[0].strip()
        if line:
            entries.append(_parse_line(line, f"{source} {unit} {number}"))
    return entries


def _parse_line(line: str, where: str) -> Entry:
    fields = line.split()
    if len(fields) < 2:
        raise ConfigError(f"{where}: expected '<tenant> <sha256 hex of the key> [rate=N] [burst=N] [name=X]'")
    tenant, hexdigest, *options = fields
    try:
        check_tenant(tenant)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if not _DIGEST_RE.fullmatch(hexdigest):
        raise ConfigError(f"{where}: the key hash must be 64 lowercase hex characters (sha256), not a key")
    values: dict[str, str] = {}
    for option in options:
        name, sep, value = option.partition("=")
        if not sep or name not in _OPTIONS or name in values:
            raise ConfigError(f"{where}: unknown or repeated option {name!r}; use rate=, burst=, name=")
        values[name] = value
    rate = _number(values, "rate", float, where)
    burst = _number(values, "burst", int, where)
    label = values.get("name", "")
    if label and not _NAME_RE.fullmatch(label):
        raise ConfigError(f"{where}: name= takes up to 64 letters, digits, '.', '_', '@' or '-'")
    return Entry(tenant, hexdigest, rate, int(burst) if burst is not None else None, label)


_OPTIONS = ("rate", "burst", "name")


def _number(values: dict[str, str], name: str, kind: Callable[[str], float], where: str) -> float | None:
    if name not in values:
        return None
    try:
        number = kind(values[name])
    except ValueError:
        number = -1
    if not number >= 0:
        raise ConfigError(f"{where}: {name}= must be a number >= 0")
    return number


def index(entries: Iterable[Entry]) -> dict[str, Entry]:
    """Entries by digest; the same tenant must not be given two different limits."""
    by_digest: dict[str, Entry] = {}
    limits: dict[str, tuple[float | None, int | None]] = {}
    for entry in entries:
        limit = (entry.rate, entry.burst)
        if limits.setdefault(entry.tenant, limit) != limit:
            raise ConfigError(f"tenant {entry.tenant!r} has entries with different rate=/burst=; give them all one")
        by_digest[entry.digest] = entry
    return by_digest


def read_file(path: str) -> list[Entry]:
    """The entries of the key file at ``path``."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"EMBEDSTREAM_API_KEYS_FILE {path!r} cannot be read: {exc}") from None
    return parse(text, path)


def append(path: str, entry: Entry) -> None:
    """Add ``entry`` to the key file (created with mode 0600 when missing)."""
    if Path(path).exists():
        read_file(path)  # never append to a file the gateway would refuse
    Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as out:
        if out.tell() and not Path(path).read_bytes().endswith(b"\n"):
            out.write("\n")
        out.write(entry.line() + "\n")


def remove(path: str, keep: Callable[[Entry], bool]) -> int:
    """Rewrite the key file without the entries ``keep`` rejects; returns how many went.

    The new file replaces the old one in one rename, so a gateway never reads
    half of it. Comments and other lines stay as they were.
    """
    text = Path(path).read_text()
    kept, removed = [], 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if line and not keep(_parse_line(line, f"{path} line {number}")):
            removed += 1
            continue
        kept.append(raw)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".apikeys-")
    with os.fdopen(fd, "w") as out:
        out.write("".join(line + "\n" for line in kept))
    os.chmod(tmp, os.stat(path).st_mode & 0o777)
    os.replace(tmp, path)
    return removed
