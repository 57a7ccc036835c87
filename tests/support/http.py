"""HTTP calls with the standard library, for the gateway's HTTP API: ``call`` never raises on a
4xx/5xx, ``http_port`` reads the port a gateway announced."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from tests.support.processes import Proc


@dataclass
class Response:
    """What an HTTP call got back (urllib's, without raising on 4xx/5xx)."""

    status_code: int
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


def call(method: str, url: str, body: object = None, headers: dict[str, str] | None = None) -> Response:
    """One HTTP call with the standard library; ``body`` is JSON-encoded unless it is bytes."""
    content = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=content, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as got:
            return Response(got.status, {k.lower(): v for k, v in got.headers.items()}, got.read().decode())
    except urllib.error.HTTPError as got:
        with got:
            return Response(got.code, {k.lower(): v for k, v in got.headers.items()}, got.read().decode())


def http_port(gateway: Proc) -> int:
    """The HTTP port a gateway announced (it binds a free one in tests)."""
    found = re.search(r"HTTP on [^\s:]+:(\d+)", gateway.log())
    assert found, gateway.log()
    return int(found.group(1))
