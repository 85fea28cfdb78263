"""How long the fuzz targets run: a bounded number of examples in ``make test``,
many more with ``CAFS_FUZZ=long`` (``make fuzz``).

A crash or a hang is a bug; a domain error (the parser's own error class) is
the right answer to bad input. Inputs that found bugs are kept in the tests as
``@example``s, so they are tried first on every run.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "fuzz-short",
    max_examples=150,
    deadline=2000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=False,
)
settings.register_profile(
    "fuzz-long",
    max_examples=20_000,
    deadline=5000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILE = "fuzz-long" if os.environ.get("CAFS_FUZZ") == "long" else "fuzz-short"
