"""What the tests share besides fixtures (those stay in conftest.py), one module per noun.

``ROOT`` is the repository.

- ``processes``: real embedstream processes (:class:`Proc`, ``base_env``, ``start_gateway``,
  ``start_worker(s)``), ``cli``, ``wait_until``, ``stub``, ``scrape`` a process's /metrics, ``entries_added``.
- ``rpcs``: every RPC of the protos as one call (``RPCS``), ``bearer`` API-key metadata, ``inputs``.
- ``documents``: a ``section`` or ``table`` of README.md or of a page under docs/.
- ``http``: HTTP calls that never raise on an error status (``call``), a gateway's ``http_port``.
- ``deploy``: deploy/ as the deploy tests read it: kustomize renderings, compose, Dockerfile stages.
- ``models``: the packaged MiniLM folder (``MINILM``) and the session's ``REGISTRY``.
- ``tinymodels``: tiny random models of every family, saved the way real ones are.
- ``corpora``: deterministic ``texts``, and the ``SENTINEL`` text no log may hold.
- ``images``: ordinary and hostile image files.
- ``certificates``: a throwaway CA with server, client and stranger certificates.
- ``topologies``: a real Redis Cluster and a Sentinel group.
- ``netns``: several hosts on one machine (network namespaces).
- ``otlp``: a real OTLP/gRPC trace receiver.
- ``hubserver``: a local Hugging Face hub that huggingface_hub downloads from (HF_ENDPOINT).
- ``faults``: the fault-injection cluster, its ledger and the scorecard.

Import the module you need (``from tests.support.processes import Proc``): this package
imports none of them, so reading one never loads torch or OpenTelemetry.
"""

from pathlib import Path

#: The repository's root folder.
ROOT = Path(__file__).resolve().parents[2]
