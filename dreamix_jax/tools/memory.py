"""Memory planner: per-device bytes of a stage's Dreamix finetune step on a mesh, before buying one.

  python -m dreamix_jax.tools.memory --config=configs/cascades/imagen_video.py --stage=base \
      --mesh=fsdp:4 [--topology=v4:2x2x1] [--optimizer=adam|adamw|adafactor] \
      [--remat=none|full|dots_saveable|dots_no_batch] [--batch=1] [--alpha=0.35] [--hbm_gib=32]
      [--nocompile] [--pipeline_dir=<diffusers pipeline folder>]

Compiles the mixed finetune step (`dreamix.objective.make_mixed_loss` + `train.state.make_train_step`,
as `dreamix.finetune` runs it) ahead of time for the mesh, from abstract inputs only
(`jax.ShapeDtypeStruct`s with shardings: nothing is allocated), and reads XLA's `memory_analysis()`.
Prints per-device bytes of parameters, gradients (parameter-sized, they live in XLA's temporary
buffers), optimizer state and XLA's temporaries, the peak (arguments + outputs − donated aliases +
temporaries), and whether it fits an HBM size (default 32 GiB, a TPU v4 chip). `--nocompile`
prints only the train state's exact per-device bytes (params, gradients, optimizer state; no
activations), in seconds at any size.

A diffusers cascade (`configs/cascades/modelscope.py`, `source = "diffusers"`) is planned without
its weights: the UNet3D from `MODELSCOPE_UNET` (or `--pipeline_dir`'s `unet/config.json`) and the
SD autoencoder's latent shape (`shape_only_cascade`).

Two compilers:
- `--topology=v4:2x2x1` (any TPU topology name): the real TPU compiler, deviceless, as on a TPU VM
  — no TPU needed, only the `libtpu` wheel that `jax[tpu]` of this JAX version requires, installed
  beside the environment and put on the planner's path (docs/memory_plan.md, "On the TPU compiler";
  not a project requirement: importable, it makes every JAX process probe for TPUs). This is the
  answer to trust: TPU buffer assignment, fusion and scheduling, and rematerialisation that
  actually frees activations.
- no `--topology`: simulated CPU devices. The CPU backend does not free rematerialised activations
  (a 16-layer `jax.checkpoint` chain needs *more* temporaries than without remat on CPU, 7× less on
  TPU v4), so for remat'd programs this overestimates activation memory severely; use it for
  parameter/optimizer bytes and sharding checks only.
"""

from __future__ import annotations

import math
import os
import sys

if __name__ == "__main__":  # before JAX starts: one simulated CPU device per mesh position
  _mesh_arg = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--mesh=")), "fsdp:4")
  # (a deviceless TPU compile needs no simulated devices, and JAX_PLATFORMS=cpu does not stop it)
  _count = math.prod(abs(int(p.split(":")[1])) for p in _mesh_arg.split(",") if ":" in p)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={max(_count, 1)}").strip()

import importlib.metadata  # noqa: E402
import importlib.util  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
from absl import app, flags  # noqa: E402
from jax.experimental import topologies  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from dreamix_jax import cascade as cascade_lib, parallel  # noqa: E402
from dreamix_jax.autoencoders import sd_vae  # noqa: E402
from dreamix_jax.backbones import base as backbone_base, unet  # noqa: E402
from dreamix_jax.dreamix import objective  # noqa: E402
from dreamix_jax.train import losses, state as state_lib  # noqa: E402

GIB = 1 << 30
# unet/config.json of damo-vilab/text-to-video-ms-1.7b (Zeroscope's is the same network): what a
# diffusers cascade (`cascade.source = "diffusers"`) is planned with when no pipeline folder is
# given. 1,411,233,860 parameters, as diffusers' `UNet3DConditionModel(**MODELSCOPE_UNET)`.
MODELSCOPE_UNET = {"_class_name": "UNet3DConditionModel", "act_fn": "silu",
                   "attention_head_dim": 64, "block_out_channels": [320, 640, 1280, 1280],
                   "cross_attention_dim": 1024,
                   "down_block_types": ["CrossAttnDownBlock3D"] * 3 + ["DownBlock3D"],
                   "downsample_padding": 1, "in_channels": 4, "layers_per_block": 2,
                   "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
                   "out_channels": 4, "sample_size": 32,
                   "up_block_types": ["UpBlock3D"] + ["CrossAttnUpBlock3D"] * 3}


def define_flags():
  """Registers this tool's flags (only when it runs as a program, so importing it defines none)."""
  config_flags.DEFINE_config_file("config", None, "A cascade config file.", lock_config=True)
  flags.DEFINE_string("stage", "base", "The stage to finetune.")
  flags.DEFINE_string("mesh", "fsdp:4", "Mesh sizes, e.g. 'fsdp:4' or 'data:2,fsdp:2' (no -1).")
  flags.DEFINE_string("topology", "", "A TPU topology to compile for with the TPU compiler, "
                      "deviceless (needs libtpu), e.g. 'v4:2x2x1'; empty: simulated CPU devices.")
  flags.DEFINE_enum("optimizer", "adam", list(state_lib.OPTIMIZERS), "Optimizer.")
  flags.DEFINE_string("remat", "", "Remat policy (default: the config's): "
                      + " | ".join(unet.REMAT_POLICIES))
  flags.DEFINE_string("dtype", "", "Compute dtype (default: the config's), e.g. bfloat16.")
  flags.DEFINE_integer("batch", 1, "Finetuning batch (copies of the input video).")
  flags.DEFINE_float("alpha", 0.35, "Mixed objective weight (0 or 1 compile one variant only).")
  flags.DEFINE_float("hbm_gib", 32.0, "Memory per device, GiB (TPU v4: 32).")
  flags.DEFINE_bool("compile", True, "Compile the step for XLA's buffer assignment; --nocompile: "
                    "only the train state's exact per-device bytes (seconds, any size).")
  flags.DEFINE_string("pipeline_dir", "", "A diffusers cascade: the pipeline folder whose "
                      "unet/ and vae/ config.json to plan (no weights read); default: "
                      "ModelScope's UNet3D (MODELSCOPE_UNET) and the SD VAE.")


def _libtpu_requirement() -> str:
  """The libtpu pin of this JAX's `tpu` extra (e.g. 'libtpu==0.0.42.*'), from JAX's metadata."""
  for requirement in importlib.metadata.requires("jax") or ():
    name, _, marker = requirement.partition(";")
    if name.strip().startswith("libtpu") and "tpu" in marker:
      return name.strip()
  return "libtpu"


def topology_devices(topology: str) -> list:
  """The devices of a TPU topology (e.g. 'v4:2x2x1': 4 v4 chips) for a deviceless compile.

  v4 and v5p chips are one 'megacore' device each (two TensorCores), as JAX sees them on a TPU VM.
  Raises a ValueError saying what to install when `libtpu` is missing.
  """
  if importlib.util.find_spec("libtpu") is None:
    raise ValueError(f"--topology={topology} compiles with the TPU compiler, which needs the libtpu "
                     "wheel beside the environment: pip install --no-deps --target DIR "
                     f"'{_libtpu_requirement()}', then run with PYTHONPATH=DIR (or drop --topology "
                     "to plan on simulated CPU devices).")
  chip = topology.split(":", 1)[0]
  config = "megacore" if chip in ("v4", "v5p") else "default"
  return list(topologies.get_topology_desc(topology, "tpu", chip_config_name=config).devices)


def _shard_bytes(tree) -> int:
  """Bytes one device holds of an abstract tree with shardings (the largest shard per leaf)."""
  total = 0
  for leaf in jax.tree_util.tree_leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape)
    total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
  return total


def shape_only_cascade(cascade_config: ml_collections.ConfigDict, layout: parallel.Layout,
                       unet_config: dict | None = None,
                       vae_config: dict | None = None) -> cascade_lib.Cascade:
  """The cascade `cascade_config` describes, without weights. A diffusers cascade
  (`source = "diffusers"`, whose architecture normally comes from a pipeline folder) gets its
  UNet3D from `unet_config` (a diffusers `unet/config.json` dict; default `MODELSCOPE_UNET`) and
  the autoencoder of `vae_config` (`vae/config.json`; default the SD VAE: 8× per frame, 4 latent
  channels) with no parameters: the planner only needs the latent shape (frames, height/f,
  width/f, channels) and the U-Net's abstract parameters."""
  if cascade_config.get("source", "project") != "diffusers":
    return cascade_lib.Cascade.from_config(cascade_config, layout)
  cfg = cascade_config.copy_and_resolve_references()
  cfg.unlock()
  architecture = {k: v for k, v in (unet_config or MODELSCOPE_UNET).items()}
  for name in cfg.order:
    run = {k: v for k, v in cfg.stages[name].backbone.items() if k != "pipeline_dir"}
    cfg.stages[name].backbone = ml_collections.ConfigDict(dict(architecture, **run))
  cfg.text.dim = architecture.get("cross_attention_dim", 1024)
  return cascade_lib.Cascade.from_config(cfg, layout,
                                         autoencoder=sd_vae.SDVAE(
      sd_vae.VAEConfig.from_diffusers(vae_config or {}), None))


def plan(cascade_config: ml_collections.ConfigDict, stage_name: str, layout: parallel.Layout, *,
         optimizer: str = "adam", remat: str = "", dtype: str = "", batch: int = 1,
         alpha: float = 0.35, hbm_bytes: int = 32 * GIB, unet_config: dict | None = None,
         vae_config: dict | None = None, compile: bool = True) -> dict:
  """Compiles the stage's mixed finetune step for `layout` from abstract inputs; returns
  per-device bytes {params, gradients, optimizer, xla_temp, arguments, outputs, aliased, peak}, the
  parameter count, compile seconds and `fits` (peak ≤ hbm_bytes). `unet_config`, `vae_config`:
  the networks of a diffusers cascade (see `shape_only_cascade`).

  `compile=False`: the analytic part only, in seconds at any size — the train state's exact
  per-device bytes from the abstract shapes and their shardings (params, parameter-sized
  gradients, optimizer state); xla_temp, arguments, outputs, aliased, peak and fits are None
  (activations need XLA's buffer assignment)."""
  cascade_config = cascade_config.copy_and_resolve_references()
  if stage_name not in cascade_config.stages:
    raise ValueError(f"No stage {stage_name!r} in cascade {cascade_config.name!r}; stages: "
                     f"{list(cascade_config.order)}.")
  backbone_cfg = cascade_config.stages[stage_name].backbone
  for field, value in (("remat", remat), ("dtype", dtype)):
    if value:
      backbone_cfg[field] = value
  cascade = shape_only_cascade(cascade_config, layout, unet_config, vae_config)
  stage = cascade.stage(stage_name)
  boxed = cascade.abstract_params(stage)
  opt = state_lib.make_optimizer(state_lib.optimizer_config(name=optimizer, lr=6e-6))
  abstract, shardings = state_lib.abstract_state_shardings(layout, boxed, opt, ema=False)
  state = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                 abstract, shardings)
  param_bytes = _shard_bytes(state.params)
  out = dict(
      stage=stage.name, mesh=dict(layout.mesh.shape), optimizer=optimizer,
      remat=str(backbone_cfg.get("remat", "")), dtype=backbone_cfg.get("dtype", ""), batch=batch,
      latent=cascade.latent_shape(stage), target=layout.mesh.devices.flat[0].device_kind,
      params_count=backbone_base.count_params(boxed), compile_seconds=None,
      params=param_bytes, gradients=param_bytes, optimizer_state=_shard_bytes(state.opt_state),
      xla_temp=None, arguments=None, outputs=None, aliased=None, peak=None, hbm=hbm_bytes,
      fits=None)
  if not compile:
    return out
  loss = objective.make_mixed_loss(
      losses.make_stage_loss(cascade.denoiser(stage), stage, cascade.schedule), stage, alpha)
  step = state_lib.make_train_step(loss, opt)
  f32 = jnp.float32
  batch_shapes = dict(video=((batch,) + cascade.latent_shape(stage), f32),
                      text=((batch, cascade.text_len, cascade.text_dim), f32),
                      text_mask=((batch, cascade.text_len), jnp.bool_),
                      temporal_mask=((batch,), f32))
  if stage.conditional:
    batch_shapes["low"] = ((batch,) + cascade.latent_shape(cascade.previous(stage)), f32)
  batch_abstract = {k: jax.ShapeDtypeStruct(s, d) for k, (s, d) in batch_shapes.items()}
  batch_sh = layout.batch_shardings(batch_abstract)
  batch_abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sh[k])
                    for k, v in batch_abstract.items()}
  key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=layout.replicated)
  jitted = jax.jit(layout.wrap(step), donate_argnums=(0,),
                   in_shardings=(shardings, batch_sh, layout.replicated),
                   out_shardings=(shardings, layout.replicated))
  t0 = time.time()
  compiled = jitted.lower(state, batch_abstract, key).compile()
  seconds = time.time() - t0
  mem = compiled.memory_analysis()
  out.update(compile_seconds=seconds, xla_temp=int(mem.temp_size_in_bytes),
             arguments=int(mem.argument_size_in_bytes), outputs=int(mem.output_size_in_bytes),
             aliased=int(mem.alias_size_in_bytes))
  out["peak"] = out["arguments"] + out["outputs"] - out["aliased"] + out["xla_temp"]
  out["fits"] = fits(out, hbm_bytes)
  return out


def fits(p: dict, hbm_bytes: int) -> bool:
  """Whether plan `p`'s per-device peak fits `hbm_bytes` of device memory."""
  return p["peak"] <= hbm_bytes


def format_plan(p: dict) -> str:
  gib = lambda b: f"{b / GIB:8.2f} GiB"
  compiled = p["compile_seconds"] is not None
  how = f"compiled in {p['compile_seconds']:.0f}s" if compiled else "analytic: not compiled"
  lines = [f"stage {p['stage']} ({p['params_count']:,} params, latent {p['latent']}), mesh "
           f"{p['mesh']} on {p['target']}, "
           f"optimizer {p['optimizer']}, remat {p['remat']}, dtype {p['dtype']}, batch {p['batch']} "
           f"({how})",
           "per device:"]
  for name in ("params", "gradients", "optimizer_state", "xla_temp"):
    if p[name] is not None:
      lines.append(f"  {name:<16}{gib(p[name])}")
  if not compiled:
    lines.append(f"  {'state + grads':<16}{gib(p['params'] + p['gradients'] + p['optimizer_state'])}"
                 "  (activations not included: compile for XLA's temporaries)")
    return "\n".join(lines)
  lines.append(f"  {'peak':<16}{gib(p['peak'])}  (arguments + outputs − donated + XLA temporaries; "
               "gradients are inside the temporaries)")
  lines.append(f"  fits {p['hbm'] / GIB:g} GiB: {'yes' if p['fits'] else 'NO'}")
  return "\n".join(lines)


def main(argv):
  del argv
  f = flags.FLAGS
  spec = parallel.parse_mesh(f.mesh)
  if any(v == -1 for v in spec.values()):
    raise app.UsageError("--mesh: give every axis size explicitly (the planner simulates them).")
  devices = topology_devices(f.topology) if f.topology else None
  layout = parallel.Layout(parallel.make_mesh(spec, devices=devices))
  unet_config = vae_config = None
  if f.pipeline_dir:
    from dreamix_jax.backbones import diffusers_import  # pylint: disable=g-import-not-at-top
    unet_config, vae_config = (
        diffusers_import.read_json(diffusers_import.component_dir(f.pipeline_dir, c),
                                   "config.json") for c in ("unet", "vae"))
  print(format_plan(plan(f.config, f.stage, layout, optimizer=f.optimizer, remat=f.remat,
                         dtype=f.dtype, batch=f.batch, alpha=f.alpha,
                         hbm_bytes=int(f.hbm_gib * GIB), unet_config=unet_config,
                         vae_config=vae_config, compile=f.compile)))


if __name__ == "__main__":
  define_flags()
  app.run(main)
