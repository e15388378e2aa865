r"""Where a stage's train step spends its time, and what XLA compiler options change it.

Two modes, one table each, on the train step `unet_step.py` times (pretraining's video loss, one
jitted state-donating step, batch 8 for the shapes stages):

  --mode=profile   runs the step under `jax.profiler` (a Perfetto trace in a temporary folder) and
                   sums the executed XLA operations' time by kind: the HLO instruction's name without
                   its numeric suffix (`transpose_copy_fusion.35` -> `transpose_copy_fusion`), per
                   step, summed over the runtime's threads, largest first.
  --mode=options   compiles the same lowered step once per variant of XLA options
                   (`Lowered.compile(compiler_options)`, so one process, one set of inputs) and
                   times the variants interleaved, round by round, so a load that drifts hits them
                   alike; the loss of each variant's first step against the default's shows what the
                   options do to the numerics.

`--backbone` overrides fields of the stage's `UNetConfig` (comma-separated `key=value`, Python
literals), e.g. the direction-of-motion A/B arms of docs/motion_direction.md:

  python benchmarks/step_profile.py --mode=profile --backbone='channels=16,head_dim=16'
  python benchmarks/step_profile.py --mode=options --backbone='channels=16,head_dim=16' \
      --variants='noynn:xla_cpu_experimental_ynn_fusion_type=;onednn:xla_cpu_use_onednn=true'

The operation names are the CPU and GPU runtimes' HLO names; a TPU trace names its ops the same way.
"""

from __future__ import annotations

import ast
import collections
import glob
import gzip
import json
import re
import statistics
import tempfile
import time

import common  # pylint: disable=g-bad-import-order

import jax

from dreamix_jax import cascade as cascade_lib
import unet_step  # pylint: disable=g-bad-import-order

PROFILE_COLUMNS = ("config", "op_kind", "ms_per_step", "share", "ops_per_step")
OPTIONS_COLUMNS = ("config", "variant", "xla_options", "compile_s", "best_s", "median_s",
                   "x_default", "loss_rel_diff")
# An HLO instruction's name (lower case, digits, '_', '-', '.'); the trace's other events are the
# runtime's bookkeeping (executor, argument handling, Python frames, thread pools).
_HLO_NAME = re.compile(r"[a-z][a-z0-9_\-]*(\.[0-9]+)*")


def parse_backbone(text: str) -> dict:
  """'channels=16,spacetime_conv_levels=(0,1)' -> {'channels': 16, 'spacetime_conv_levels': (0, 1)}:
  comma-separated key=value at the top level (commas inside brackets belong to the value)."""
  out, depth, start = {}, 0, 0
  pieces = []
  for i, ch in enumerate(text + ","):
    depth += ch in "([{"
    depth -= ch in ")]}"
    if ch == "," and depth == 0:
      pieces.append(text[start:i])
      start = i + 1
  for piece in filter(None, (p.strip() for p in pieces)):
    key, sep, value = piece.partition("=")
    if not sep:
      raise SystemExit(f"--backbone entry {piece!r} is not key=value.")
    try:
      out[key.strip()] = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      raise SystemExit(f"--backbone value {value!r} of {key!r} is not a Python literal.") from None
  return out


def parse_variants(text: str) -> dict[str, dict]:
  """'name:opt=val,opt=val;name2:...' -> {name: {opt: val}}; 'true'/'false' -> bool, digits -> int,
  anything else (the empty string included) a string. The default variant (no options) is added."""
  variants = {"default": {}}
  for spec in filter(None, (s.strip() for s in text.split(";"))):
    name, sep, opts = spec.partition(":")
    if not sep or not name or name in variants:
      raise SystemExit(f"--variants entry {spec!r}: write a new name, a colon, then opt=value,...")
    options = {}
    for kv in filter(None, opts.split(",")):
      key, eq, value = kv.partition("=")
      if not eq:
        raise SystemExit(f"--variants option {kv!r} of {name!r} is not opt=value.")
      options[key] = {"true": True, "false": False}.get(value.lower(), value)
      if isinstance(options[key], str) and value.lstrip("-").isdigit():
        options[key] = int(value)
    variants[name] = options
  return variants


def build_stage(name: str, tiny: bool, dtype: str, backbone: dict):
  """(Stage, Cascade) for config `name` of `common.cascade_config`, its backbone overridden."""
  cfg = common.cascade_config(tiny, dtype)
  with cfg.unlocked():
    bb = cfg.stages[name].backbone
    unknown = sorted(set(backbone) - set(bb.keys()))
    if unknown:
      raise SystemExit(f"--backbone: {unknown} are not fields of the {name} stage's backbone "
                       f"({sorted(bb.keys())}).")
    for key, value in backbone.items():
      bb[key] = value
  casc = cascade_lib.Cascade.from_config(cfg)
  stage = {s.name: s for s in casc.stages}.get(name) or cascade_lib.stage_from_config(
      name, cfg.stages[name])
  return stage, casc


def op_kinds(trace_file: str, steps: int) -> list[tuple[str, float, int]]:
  """(kind, milliseconds per step, operations per step) from a Perfetto trace, largest first."""
  with gzip.open(trace_file) as f:
    data = json.load(f)
  events = data["traceEvents"] if isinstance(data, dict) else data
  ms, count = collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") != "X" or not _HLO_NAME.fullmatch(e["name"]):
      continue
    kind = re.sub(r"(\.[0-9]+)+$", "", e["name"])
    ms[kind] += e.get("dur", 0) / 1e3 / steps
    count[kind] += 1
  return [(k, v, count[k] // steps) for k, v in ms.most_common()]


def profile_table(name, stage, casc, batch, repeats: int, top: int) -> None:
  params = casc.init_params(jax.random.PRNGKey(0), stage)
  compiled, state = unet_step.compiled_train_step(stage, casc, params, batch, 1.0)
  holder = [state]
  key = jax.random.PRNGKey(1)

  def call():
    holder[0], metrics = compiled(holder[0], batch, key)
    return metrics

  common.block(call())  # warm-up outside the trace
  with tempfile.TemporaryDirectory() as logdir:
    jax.profiler.start_trace(logdir, create_perfetto_trace=True)
    for _ in range(repeats):
      common.block(call())
    jax.profiler.stop_trace()
    traces = glob.glob(f"{logdir}/**/perfetto_trace.json.gz", recursive=True)
    if not traces:
      raise SystemExit("jax.profiler wrote no Perfetto trace; is the profiler available here?")
    kinds = op_kinds(traces[0], repeats)
  total = sum(ms for _, ms, _ in kinds)
  table = common.Table(PROFILE_COLUMNS)
  for kind, ms, ops in kinds[:top]:
    table.row(name, kind, ms, ms / total, ops)
  rest = kinds[top:]
  if rest:
    table.row(name, f"other ({len(rest)} kinds)", sum(r[1] for r in rest),
              sum(r[1] for r in rest) / total, sum(r[2] for r in rest))
  table.row(name, "total", total, 1.0, sum(r[2] for r in kinds))


def options_table(name, stage, casc, batch, variants: dict, rounds: int) -> None:
  params = casc.init_params(jax.random.PRNGKey(0), stage)
  step, state = unet_step.train_step(stage, casc, params, 1.0)
  key = jax.random.PRNGKey(1)
  lowered = jax.jit(step).lower(state, batch, key)  # not donating: every variant reuses `state`
  compiled, compile_s = {}, {}
  for variant, options in variants.items():
    t0 = time.perf_counter()
    try:
      compiled[variant] = lowered.compile(options) if options else lowered.compile()
    except Exception as e:  # pylint: disable=broad-except
      raise SystemExit(f"--variants {variant!r}: XLA refused {options}: {e}") from None
    compile_s[variant] = time.perf_counter() - t0
  loss = {v: float(c(state, batch, key)[1]["loss"]) for v, c in compiled.items()}
  times = {v: [] for v in compiled}
  for _ in range(rounds):
    for v, c in compiled.items():
      t0 = time.perf_counter()
      common.block(c(state, batch, key))
      times[v].append(time.perf_counter() - t0)
  table = common.Table(OPTIONS_COLUMNS)
  base = min(times["default"])
  for v, ts in times.items():
    opts = " ".join(f"{k}={val}" for k, val in variants[v].items()) or "-"
    table.row(name, v, opts, compile_s[v], min(ts), statistics.median(ts), min(ts) / base,
              abs(loss[v] - loss["default"]) / abs(loss["default"]))


def main():
  p = common.parser(__doc__.splitlines()[0])
  p.add_argument("--mode", default="profile", choices=("profile", "options"))
  p.add_argument("--config", default="base", help="base, tsr, ssr or small (one).")
  p.add_argument("--backbone", default="", help="UNetConfig overrides: key=value,...")
  p.add_argument("--variants", default="", help="options mode: name:opt=value,...;name2:...")
  p.add_argument("--top", type=int, default=15, help="profile mode: kinds listed before 'other'.")
  args = p.parse_args()
  (name,) = common.parse_configs(args.config, args.tiny)
  backbone = parse_backbone(args.backbone)
  stage, casc = build_stage(name, args.tiny, args.dtype, backbone)
  batch = unet_step.make_batch(stage, casc, common.default_batch(name, args.tiny),
                               jax.random.PRNGKey(0))
  label = name + ("" if not backbone else " " + args.backbone)
  repeats = 1 if args.tiny else args.repeats
  if args.mode == "profile":
    common.header(f"Train step by operation kind ({repeats} steps traced)", args.dtype)
    profile_table(label, stage, casc, batch, repeats, args.top)
  else:
    variants = parse_variants(args.variants)
    common.header("Train step under XLA compiler options (interleaved rounds)", args.dtype)
    options_table(label, stage, casc, batch, variants, max(2, repeats))


if __name__ == "__main__":
  main()
