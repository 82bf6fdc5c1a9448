"""
realtimed's tests.

Property tests run under a Hypothesis settings profile chosen with the
``HYPOTHESIS_PROFILE`` environment variable:

- ``ci`` (the default): no per-example deadline, so a busy machine cannot
  fail a test by being slow; examples derived from each test's name, so a
  run is repeatable; a bounded number of examples; and the blob that
  reproduces a failure printed with it.
- ``dev``: random examples and more of them, for hunting bugs locally; also
  without a deadline.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    deadline=None,
    derandomize=True,
    print_blob=True,
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    deadline=None,
    max_examples=300,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
