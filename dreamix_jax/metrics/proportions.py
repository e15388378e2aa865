"""Confidence intervals for a share of successes (an edit's success rate, a probe's accuracy).

The benchmarks report shares over a few dozen edits or samples, where one edit moves a cell by
several points; the Wilson score interval (Wilson 1927) says how far. Unlike the normal
approximation p ± z·sqrt(p(1 − p)/n) it stays inside [0, 1] and is not zero-width at 0 or n
successes, and its coverage is close to nominal from n ≈ 10 on.
"""

from __future__ import annotations

import math

Z_95 = 1.959963984540054  # the standard normal's 97.5th percentile


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
  """The Wilson score interval (low, high) of `successes` out of `trials` (two-sided, 95% by
  default); (nan, nan) for no trials."""
  if not 0 <= successes <= trials:
    raise ValueError(f"successes must be between 0 and trials, got {successes} of {trials}.")
  if trials == 0:
    return math.nan, math.nan
  p = successes / trials
  denominator = 1 + z * z / trials
  centre = (p + z * z / (2 * trials)) / denominator
  half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
  return max(0.0, centre - half), min(1.0, centre + half)


def interval_text(successes: int, trials: int) -> str:
  """The 95% Wilson interval as "low–high" with two decimals (empty for no trials)."""
  low, high = wilson_interval(successes, trials)
  return "" if trials == 0 else f"{low:.2f}–{high:.2f}"


def sign_test(only_a: int, only_b: int) -> float:
  """Two-sided exact sign test of paired outcomes: p-value of `only_a` against `only_b`, the
  pairs where exactly one of two methods succeeded (ties, both or neither, carry no information);
  1.0 without any such pair."""
  if min(only_a, only_b) < 0:
    raise ValueError(f"counts must be non-negative, got {only_a} and {only_b}.")
  n = only_a + only_b
  tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1))
  return min(1.0, 2 * tail / 2 ** n) if n else 1.0
