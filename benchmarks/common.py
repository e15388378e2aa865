"""Shared pieces of the benchmark scripts: flags, the matmul peak, XLA FLOP counts, timing, tables.

Every figure a script reports as a fraction of peak is measured against a large float32 (or
`--dtype`) matmul timed *in the same process, right before*, so ratios stay meaningful on a shared or
loaded machine even when absolute times do not.

Configs benchmarked: the stages of `configs/cascades/shapes.py` (base, tsr, ssr) and "small", a
base-stage U-Net of ~37M parameters at the shapes base resolution 16×24×40 (defined here). `--tiny`
swaps in the tiny cascade and a tiny matmul, for the tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Callable, Sequence

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)  # `configs/` lives at the repository root.

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import ml_collections  # pylint: disable=g-import-not-at-top

from configs.cascades import shapes  # pylint: disable=g-import-not-at-top
from dreamix_jax import cascade as cascade_lib  # pylint: disable=g-import-not-at-top
from dreamix_jax import config_utils as cu  # pylint: disable=g-import-not-at-top

DTYPES = ("float32", "bfloat16")


def parser(description: str) -> argparse.ArgumentParser:
  """Flags every benchmark takes: --dtype, --tiny, --repeats, --configs."""
  p = argparse.ArgumentParser(description=description)
  p.add_argument("--dtype", default="float32", choices=DTYPES,
                 help="Compute dtype of the U-Nets (and of the peak matmul); params stay float32.")
  p.add_argument("--tiny", action="store_true",
                 help="Tiny cascade, tiny matmul, one repeat: checks the script, not the speed.")
  p.add_argument("--repeats", type=int, default=3, help="Timed calls per row (the best is kept).")
  return p


def parse_configs(value: str | None, tiny: bool) -> list[str]:
  """Comma-separated config names (default: all; "small" has no tiny version)."""
  valid = ("base", "tsr", "ssr") if tiny else ("base", "tsr", "ssr", "small")
  names = list(valid) if value is None else [n for n in value.split(",") if n]
  bad = [n for n in names if n not in valid]
  if bad:
    raise SystemExit(f"Unknown config(s) {bad}; choose from {valid} (comma-separated).")
  return names


# --------------------------------------------------------------------------------------------------
# Configs.

def small_stage_config() -> ml_collections.ConfigDict:
  """A base stage of ~37M parameters at 16×24×40 (the shapes base resolution, wider and deeper)."""
  return cu.stage("base", 16, 24, 40, 3, unet=dict(
      channels=128, channel_mult=(1, 2, 3), num_res_blocks=(1, 2, 2), attn_levels=(2,),
      cross_attn_levels=(1,), temporal_attn_levels=(1, 2), temporal_conv=True, head_dim=32),
      sampler=dict(num_steps=32, eta=0.0, guidance=3.0, thresholding="dynamic"))


def cascade_config(tiny: bool, dtype: str) -> ml_collections.ConfigDict:
  """The shapes cascade (or its tiny version) plus the "small" stage, every U-Net in `dtype`."""
  cfg = shapes.get_config("tiny" if tiny else None)
  with cfg.unlocked():
    if not tiny:
      cfg.stages.small = small_stage_config()
    for name in cfg.stages:
      cfg.stages[name].backbone.dtype = dtype
  return cfg


def stages(tiny: bool, dtype: str) -> tuple[dict[str, cascade_lib.Stage], cascade_lib.Cascade]:
  """{name: Stage} for base, tsr, ssr (and small), and the cascade (for its schedule and text)."""
  cfg = cascade_config(tiny, dtype)
  casc = cascade_lib.Cascade.from_config(cfg)
  out = {s.name: s for s in casc.stages}
  if "small" in cfg.stages:
    out["small"] = cascade_lib.stage_from_config("small", cfg.stages.small)
  return out, casc


def default_batch(name: str, tiny: bool) -> int:
  """Training batch per config: 8 for the shapes stages (their pretraining batch), 2 for small."""
  if tiny:
    return 1
  return 2 if name == "small" else 8


# --------------------------------------------------------------------------------------------------
# Measuring.

def block(tree):
  return jax.block_until_ready(tree)


def best_time(fn: Callable[[], object], repeats: int) -> float:
  """Best wall time of `repeats` calls of `fn` (results blocked on), after one untimed warm-up."""
  block(fn())
  times = []
  for _ in range(max(1, repeats)):
    t0 = time.perf_counter()
    block(fn())
    times.append(time.perf_counter() - t0)
  return min(times)


def flops(compiled) -> float:
  """FLOPs of one call from XLA's cost analysis of a compiled program (0 when unavailable)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get("flops", 0.0))


def matmul_peak(dtype: str, tiny: bool, repeats: int = 5) -> tuple[float, float, int]:
  """Measured matmul throughput through XLA: (FLOP/s, seconds per call, n) for an n×n @ n×n."""
  n = 256 if tiny else 3072
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(k1, (n, n), jnp.dtype(dtype))
  b = jax.random.normal(k2, (n, n), jnp.dtype(dtype))
  matmul = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
  seconds = best_time(lambda: matmul(a, b), repeats)
  return 2.0 * n ** 3 / seconds, seconds, n


@dataclasses.dataclass
class Table:
  """A markdown table printed row by row (long benchmarks show progress)."""

  columns: Sequence[str]
  printed_header: bool = False

  def row(self, *values) -> None:
    if len(values) != len(self.columns):
      raise ValueError(f"Row has {len(values)} values for {len(self.columns)} columns.")
    if not self.printed_header:
      print("| " + " | ".join(self.columns) + " |")
      print("|" + "|".join("---" for _ in self.columns) + "|")
      self.printed_header = True
    print("| " + " | ".join(_fmt(v) for v in values) + " |", flush=True)


def _fmt(v) -> str:
  if isinstance(v, float):
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
  return str(v)


def header(title: str, dtype: str) -> None:
  """One line naming the benchmark, device and dtype, before the table."""
  dev = jax.devices()[0]
  print(f"## {title} — {dev.platform} ({dev.device_kind}, {jax.device_count()} device(s)), "
        f"dtype={dtype}", flush=True)
