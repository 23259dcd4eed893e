"""The put path's layout (`backends/test_put_path.py`) through a Citus coordinator: shards as distributed schemas,
the body index without a pending list, and provisioning again switching shards made before (Citus carries the
ALTER INDEX to the worker holding the shard)."""

from __future__ import annotations

import pytest
from backends.test_put_path import *  # noqa: F403

pytestmark = [pytest.mark.citus, pytest.mark.postgres]
