"""embedstream: self-hosted embedding inference over gRPC, queued through Redis streams.

Public surface: :mod:`embedstream.v1` (generated gRPC stubs), :mod:`embedstream.client`, :mod:`embedstream.wire`
(the queue format), :mod:`embedstream.keys` (Redis key names),
:class:`embedstream.settings.Settings` and the ``embedstream`` command.

The repository's gateway/ and workers/ folders install as :mod:`embedstream.gateway` and
:mod:`embedstream.workers`; they build on this layer and nothing here imports them.
"""

__version__ = "0.1.0"
