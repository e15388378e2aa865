"""Test setup: 8 simulated CPU devices (set before JAX initialises its backends)."""

import os

# Tests compile far more than they run: a lower XLA backend optimisation level halves compile time.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8"
                           " --xla_backend_optimization_level=0").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
