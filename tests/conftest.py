from __future__ import annotations

import os

# Test workflows load in the test process too (integration tests call the engine
# directly); the processes the acceptance tests start get the same setting.
os.environ.setdefault("CHAINLINE_WORKFLOWS", "tests.workflows")
