"""Two processes × two simulated CPU devices (`jax.distributed` over localhost, gloo collectives)
finetune the tiny base stage and match the same run in one process with four devices."""

import json
import os
import pathlib
import subprocess
import sys

from compile_flags import FAST_COMPILE

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_two_process_finetune_matches_single_process(tmp_path):
  # The launcher picks a free coordinator port and strips the 8-device flag for its workers.
  env = dict(os.environ, XLA_FLAGS=FAST_COMPILE)
  proc = subprocess.run(
      [sys.executable, str(ROOT / "launch" / "multihost_local.py"), "--num_processes=2",
       "--devices_per_process=2", "--steps=2", "--mesh=data:2,fsdp:-1", f"--out={tmp_path}",
       "--timeout=600"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=700)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["ok"]
  multi, ref = summary["multihost"], summary["reference"]
  assert (multi["process_count"], multi["devices"], multi["local_devices"]) == (2, 4, 2)
  assert (ref["process_count"], ref["devices"]) == (1, 4)
  assert multi["mesh"] == ref["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1}
  assert len(multi["losses"]) == 2
  assert summary["loss_max_abs_diff"] <= 1e-5 and summary["param_max_abs_diff"] <= 1e-5
