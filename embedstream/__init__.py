"""embedstream: self-hosted embedding inference over gRPC, queued through Redis streams.

Public surface: :mod:`embedstream.v1` (generated gRPC stubs), :mod:`embedstream.wire`
(the queue format), :mod:`embedstream.keys` (Redis key names),
:class:`embedstream.settings.Settings` and the ``embedstream`` command.
"""

__version__ = "0.1.0"
