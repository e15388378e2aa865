"""The XLA flags of every JAX process the tests run: `conftest.py` sets them for pytest's own
processes (with 8 simulated devices), and the tests that start subprocesses pass them on.

The suite compiles far more than it runs, so these trade run speed for compile speed: the lowest
backend optimisation level, and XLA:CPU's older loop-emitter code generation for fusions instead of
the MLIR fusion emitters (at optimisation level 0 it compiles the tests' programs with ~40% less
CPU; outputs agree to float32 rounding). Not for training: at the default optimisation level the
emitters compile faster and run faster (benchmarks/README.md).
"""

FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
