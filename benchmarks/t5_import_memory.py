r"""Host-memory peak of the streaming T5 weight import, against the checkpoint's file size.

Writes a synthetic Hugging Face T5 v1.1 encoder checkpoint (config.json + model.safetensors, random
float32 values, ~1 GB by default: the "large" dimensions with 16 layers) straight from numpy, then
measures the maximum resident set size (`/usr/bin/time -v`) of three fresh processes on the CPU
backend:
  baseline   python + jax + dreamix_jax imported, nothing loaded;
  streaming  `t5_weights.load_t5_params` (one tensor at a time, params end up in host memory);
  load_file  `safetensors.numpy.load_file` of the whole file then conversion to jax arrays (the
             non-streaming way, for comparison).
On the CPU backend the imported params themselves live in host memory, so the best possible
streaming peak is baseline + one model copy + one tensor; a non-streaming import needs two copies.

  python benchmarks/t5_import_memory.py [--workdir=/tmp/t5_mem] [--num_layers=16]
"""

import json
import os
import re
import subprocess
import sys
import tempfile

from absl import app
from absl import flags
import flax.traverse_util
import numpy as np
import safetensors.numpy

from dreamix_jax.text import t5
from dreamix_jax.text import t5_weights

_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoint directory (default: a new temp dir).")
_NUM_LAYERS = flags.DEFINE_integer("num_layers", 16, "Encoder layers (large dims; 16 = ~1 GB).")

_PRELUDE = ("import jax, jax.numpy as jnp, numpy as np, safetensors.numpy;"
            "from dreamix_jax.text import t5_weights;")
_PROGRAMS = {
    "baseline": "jnp.zeros(1).block_until_ready()",
    "streaming": "p = t5_weights.load_t5_params({dir!r}); jax.block_until_ready(p)",
    "load_file": ("f = safetensors.numpy.load_file({dir!r} + '/model.safetensors');"
                  "p = {{k: jnp.asarray(np.ascontiguousarray(v.T)) for k, v in f.items()}};"
                  "jax.block_until_ready(p)"),
}


def write_checkpoint(directory: str, config: t5.T5Config) -> str:
  """Writes config.json and model.safetensors for `config`; returns the weights path."""
  os.makedirs(directory, exist_ok=True)
  hf_config = dict(model_type="t5", vocab_size=config.vocab_size, d_model=config.d_model,
                   d_kv=config.d_kv, d_ff=config.d_ff, num_layers=config.num_layers,
                   num_heads=config.num_heads, feed_forward_proj="gated-gelu")
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(hf_config, f)
  shapes = {path: s.shape for path, s in
            flax.traverse_util.flatten_dict(t5.param_shapes(config)).items()}
  rng = np.random.default_rng(0)
  tensors = {}
  for name, target in t5_weights.hf_name_map(config).items():
    shape = shapes[target.path][::-1] if target.transpose else shapes[target.path]
    tensors[name] = rng.standard_normal(shape, dtype=np.float32) * 0.02
  path = os.path.join(directory, "model.safetensors")
  safetensors.numpy.save_file(tensors, path)
  return path


def max_rss_mb(program: str) -> float:
  """Maximum resident set size (MiB) of `python -c program` on the CPU backend."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-c", _PRELUDE + program],
                          env=env, capture_output=True, text=True, check=True)
  kbytes = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1)
  return int(kbytes) / 1024


def main(argv):
  del argv
  config = t5.preset("large", num_layers=_NUM_LAYERS.value)
  directory = _WORKDIR.value or tempfile.mkdtemp(prefix="t5_mem_")
  path = write_checkpoint(directory, config)
  file_mb = os.path.getsize(path) / 2**20
  largest_mb = config.vocab_size * config.d_model * 4 / 2**20
  rows = {name: max_rss_mb(program.format(dir=directory)) for name, program in _PROGRAMS.items()}
  print(f"checkpoint {path}: {file_mb:.0f} MiB (largest tensor {largest_mb:.0f} MiB)")
  print(f"{'process':<10} {'max RSS MiB':>12} {'- baseline':>11} {'/ file size':>12}")
  for name, rss in rows.items():
    extra = rss - rows["baseline"]
    print(f"{name:<10} {rss:12.0f} {extra:11.0f} {extra / file_mb:12.2f}")


if __name__ == "__main__":
  app.run(main)
