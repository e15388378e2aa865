"""A multi-host Dreamix finetune on one machine: N processes × D simulated CPU devices, checked
against the same run in a single process.

  python launch/multihost_local.py --num_processes=2 --devices_per_process=2 --steps=3 --out=/tmp/mh

Each worker is a separate Python process that starts `jax.distributed` over localhost (CPU
collectives over gloo), builds the tiny moving-shapes cascade on a global mesh of N·D devices
(`--mesh`, default data=2 × fsdp=rest), and runs `steps` mixed finetuning steps of the base stage
(`dreamix.finetune.finetune_stage`, every host holding the same input, each device its batch slice).
Process 0 writes the loss history and the gathered final parameters. A reference process with N·D
devices and no `jax.distributed` does the same; the launcher prints the largest differences and
exits non-zero when they exceed `--tolerance`. On a real cluster the same code runs with
`config.distributed.enabled=True` (see `dreamix_jax.parallel.initialize`).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def worker(args) -> None:
  """One process of the run (or the single-process reference when `process_id < 0`)."""
  from dreamix_jax import parallel
  if args.process_id >= 0:
    parallel.initialize(parallel.distributed_config(
        enabled=True, coordinator_address=f"127.0.0.1:{args.port}",
        num_processes=args.num_processes, process_id=args.process_id))
  import importlib.util
  import pathlib

  import jax
  import jax.numpy as jnp

  from dreamix_jax import cascade as cascade_lib
  from dreamix_jax.dreamix import finetune
  from dreamix_jax.train import checkpoints

  root = pathlib.Path(__file__).resolve().parents[1]
  spec = importlib.util.spec_from_file_location("shapes", root / "configs/cascades/shapes.py")
  shapes = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(shapes)
  layout = parallel.Layout(parallel.make_mesh(parallel.parse_mesh(args.mesh)))
  cascade = cascade_lib.Cascade.from_config(shapes.get_config("tiny"), layout)
  stage = cascade.stage("base")
  params = cascade.init_params_sharded(jax.random.PRNGKey(0), stage)
  k_video, k_text = jax.random.split(jax.random.PRNGKey(1))
  video = jnp.tanh(jax.random.normal(k_video, (1,) + stage.shape + (3,)))
  text = jax.random.normal(k_text, (1, cascade.text_len, cascade.text_dim))
  mask = jnp.arange(cascade.text_len)[None] < 5
  cfg = finetune.finetune_config(steps=args.steps, batch_size=args.batch, stages=("base",),
                                 log_every=1, checkpoint_every=args.steps, ema_decay=0.0)
  cfg.optimizer.lr = 1e-3
  t0 = time.time()
  final, history = finetune.finetune_stage(cascade, stage, params, {"base": video}, text, mask, cfg,
                                           workdir=None)
  seconds = time.time() - t0
  flat = checkpoints.flatten(parallel.to_host(final))  # every process joins the gather
  if parallel.is_primary():
    os.makedirs(args.out, exist_ok=True)
    name = "reference" if args.process_id < 0 else "multihost"
    np.savez(os.path.join(args.out, f"{name}.npz"), **flat)
    with open(os.path.join(args.out, f"{name}.json"), "w") as f:
      json.dump(dict(losses=[h["loss"] for h in history], seconds=seconds,
                     process_count=jax.process_count(), devices=jax.device_count(),
                     local_devices=jax.local_device_count(), mesh=dict(layout.mesh.shape)), f)


def launch(args) -> int:
  port = args.port or _free_port()
  script = os.path.abspath(__file__)
  common = [sys.executable, script, "--worker", f"--port={port}", f"--steps={args.steps}",
            f"--batch={args.batch}", f"--mesh={args.mesh}", f"--out={args.out}",
            f"--num_processes={args.num_processes}"]

  def env(devices):
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    flags.append(f"--xla_force_host_platform_device_count={devices}")
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags))

  procs = [subprocess.Popen(common + [f"--process_id={i}"], env=env(args.devices_per_process))
           for i in range(args.num_processes)]
  procs.append(subprocess.Popen(common + ["--process_id=-1"],
                                env=env(args.num_processes * args.devices_per_process)))
  codes = [p.wait(timeout=args.timeout) for p in procs]
  if any(codes):
    print(f"workers exited with {codes}", file=sys.stderr)
    return 1
  load = lambda name: (json.load(open(os.path.join(args.out, f"{name}.json"))),
                       np.load(os.path.join(args.out, f"{name}.npz")))
  (multi, multi_p), (ref, ref_p) = load("multihost"), load("reference")
  loss_diff = float(np.max(np.abs(np.subtract(multi["losses"], ref["losses"]))))
  param_diff = max(float(np.max(np.abs(multi_p[k] - ref_p[k]))) for k in ref_p.files)
  ok = loss_diff <= args.tolerance and param_diff <= args.tolerance
  summary = dict(ok=ok, loss_max_abs_diff=loss_diff, param_max_abs_diff=param_diff,
                 multihost=multi, reference=ref)
  with open(os.path.join(args.out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  print(f"| run | processes | devices | mesh | steps | s |\n|---|---|---|---|---|---|")
  for name, r in (("multihost", multi), ("reference", ref)):
    print(f"| {name} | {r['process_count']} | {r['devices']} | {r['mesh']} | {args.steps} | "
          f"{r['seconds']:.1f} |")
  print(f"max |Δ loss| = {loss_diff:.2e}, max |Δ param| = {param_diff:.2e} "
        f"(tolerance {args.tolerance:g}): {'MATCH' if ok else 'MISMATCH'}")
  return 0 if ok else 1


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=2)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--batch", type=int, default=4, help="global batch (copies of the input)")
  parser.add_argument("--mesh", default="data:2,fsdp:-1")
  parser.add_argument("--out", default="/tmp/dreamix_multihost")
  parser.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
  parser.add_argument("--tolerance", type=float, default=1e-5)
  parser.add_argument("--timeout", type=float, default=900)
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--process_id", type=int, default=-1, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:
    worker(args)
    return 0
  return launch(args)


if __name__ == "__main__":
  sys.exit(main())
