"""Shared pytest configuration: Hypothesis profiles.

``HYPOTHESIS_PROFILE=thorough`` runs many more examples (for a nightly or a local soak);
the default ``ci`` profile keeps the suite fast but still meaningful.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("thorough", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
