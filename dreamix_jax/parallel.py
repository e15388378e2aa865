"""Device meshes, logical-axis sharding rules and multi-host setup, shared by every job.

Parameters carry *logical* axis names (`nn.with_logical_partitioning` in `models/layers.py` and
`models/t5.py`); U-Net activations are constrained at block boundaries with the names in
`unet.ACTIVATION_AXES`. A `Layout` (a mesh with axes `('data', 'fsdp', 'tensor')` plus the rules that
map logical names to those axes) turns them into `NamedSharding`s for `jax.jit`'s `in_shardings` /
`out_shardings`. Default rules: batches over `data × fsdp`; a weight's input channels ('embed') over
`fsdp` (ZeRO-3 style: gathered per layer, stored 1/n per device); output channels, heads and the
vocabulary over `tensor` (Megatron style).

A dimension that a mesh axis does not divide is left unsharded on that axis (e.g. the 3 input
channels of the stem convolution), so any model fits any mesh; `jit` would otherwise reject the
array.

Multi-host: `initialize(config.distributed)` starts `jax.distributed` (CPU collectives over gloo when
the backend is a CPU); global batches are assembled from what each host holds with
`put_batch` (a copy of the whole batch per host) or `jax.make_array_from_process_local_data` (a
per-host slice, see `data.pipeline.batch_indices(..., process_index, process_count)`); only process
0 writes files and logs (`is_primary`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis name -> mesh axes (a name, a tuple of names, or None for replicated).
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    # Block-boundary activations: folded (B·T) rows over fsdp, then data. Listing them as
    # ("data", "fsdp"), like 'batch', compiled to wrong gradients on data=2 × fsdp=2 × tensor=2
    # (XLA CPU, jax 0.10.2, either partitioner: up to 9% of the largest gradient, forward exact;
    # `tests/test_parallel.py::test_unet_gradient_on_three_axis_mesh` reproduces it with the old
    # order). Either order places the same number of rows per device.
    ("activation_batch", ("fsdp", "data")),
    ("activation_height", None),
    ("activation_width", None),
    ("activation_embed", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("heads_kv", "tensor"),
    ("vocab", "tensor"),
    ("relpos_buckets", None),
)


# --------------------------------------------------------------------------------------------------
# Meshes.

def mesh_shape(spec: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Sizes of ('data', 'fsdp', 'tensor') from `spec` (missing axes are 1; one -1 takes the devices
  the others leave). Without a -1 the mesh may use fewer devices than there are (the first ones)."""
  unknown = sorted(set(spec) - set(MESH_AXES))
  if unknown:
    raise ValueError(f"Unknown mesh axes {unknown}; a mesh has axes {MESH_AXES}.")
  sizes = [int(spec.get(a, 1)) for a in MESH_AXES]
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"Mesh {dict(spec)}: sizes must be positive, with at most one -1 (fill).")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(f"Mesh {dict(spec)}: {num_devices} devices are not divisible by the fixed "
                       f"axes' product {known}; change the sizes.")
    sizes[sizes.index(-1)] = num_devices // known
  elif known > num_devices:
    raise ValueError(f"Mesh {dict(spec)} needs {known} devices but only {num_devices} exist; use "
                     "-1 on one axis to fill the devices there are.")
  return tuple(sizes)


def make_mesh(spec: Mapping[str, int] | None = None,
              devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A ('data', 'fsdp', 'tensor') mesh (`jax.make_mesh`, Auto axes). Default: all data-parallel."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(dict(spec or {"data": -1}), len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3,
                       devices=devices[:math.prod(shape)])


def parse_mesh(text: str) -> dict[str, int]:
  """'fsdp:4' or 'data:2,fsdp:2,tensor:2' -> {'fsdp': 4} (command-line form of a mesh)."""
  out = {}
  for part in filter(None, (p.strip() for p in text.split(","))):
    name, sep, size = part.partition(":")
    if not sep or not size.lstrip("-").isdigit():
      raise ValueError(f"Mesh {text!r}: each entry is axis:size, e.g. 'data:2,fsdp:4'.")
    out[name] = int(size)
  mesh_shape(out, 1 << 30)  # validates names and sizes
  return out


# --------------------------------------------------------------------------------------------------
# Layouts: mesh + rules -> shardings.

@dataclasses.dataclass(frozen=True)
class Layout:
  """A mesh and the logical-axis rules that place arrays on it (hashable: compiled functions are
  cached per layout)."""

  mesh: jax.sharding.Mesh
  rules: tuple = DEFAULT_RULES

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  def spec(self, logical: Sequence[str | None] | None, shape: Sequence[int]) -> P:
    """The mesh PartitionSpec for logical axis names, dropping mesh axes that do not divide."""
    if logical is None:
      return P()
    mesh_axes = nn.logical_to_mesh_axes(tuple(logical), self.rules)
    out = []
    for dim, axes in zip(shape, mesh_axes):
      axes = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
      while axes and dim % math.prod(self.mesh.shape[a] for a in axes):
        axes = axes[:-1]
      out.append(None if not axes else (axes[0] if len(axes) == 1 else axes))
    return P(*out)

  def sharding(self, logical, shape) -> NamedSharding:
    return NamedSharding(self.mesh, self.spec(logical, shape))

  def param_shardings(self, boxed) -> Any:
    """Shardings (same structure as the unboxed tree) of a boxed parameter tree, e.g.
    `cascade.abstract_params(stage)` (shapes only, no memory)."""
    logical = nn.get_partition_spec(boxed)
    shapes = nn.meta.unbox(boxed)
    return jax.tree_util.tree_map(lambda spec, x: self.sharding(tuple(spec), x.shape), logical,
                                  shapes, is_leaf=lambda x: isinstance(x, P))

  def state_shardings(self, abstract_state, params_abstract, param_shardings) -> Any:
    """Shardings of a pytree holding parameter-shaped subtrees (a TrainState, an optax state):
    a leaf whose path ends with a parameter's path and whose shape matches takes that parameter's
    sharding; anything else (step counters, Adafactor's factored row/column statistics) is
    replicated."""
    by_path = {}
    for (path, leaf), sh in zip(jax.tree_util.tree_flatten_with_path(params_abstract)[0],
                                jax.tree_util.tree_leaves(param_shardings)):
      by_path[_path_keys(path)] = (tuple(leaf.shape), sh)

    def pick(path, leaf):
      keys = _path_keys(path)
      for i in range(len(keys)):
        hit = by_path.get(keys[i:])
        if hit is not None and hit[0] == tuple(np.shape(leaf)):
          return hit[1]
      return self.replicated

    return jax.tree_util.tree_map_with_path(pick, abstract_state)

  def batch_shardings(self, batch) -> Any:
    """Leading (batch) axis over the 'batch' rule's mesh axes, other axes replicated."""
    return jax.tree_util.tree_map(
        lambda x: self.sharding(("batch",) + (None,) * (np.ndim(x) - 1), np.shape(x)), batch)

  @contextlib.contextmanager
  def activated(self):
    """Context under which a traced model applies its logical activation constraints."""
    with jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh), nn.logical_axis_rules(self.rules):
      yield

  def wrap(self, fn: Callable) -> Callable:
    """`fn` traced under `activated()` (for `jax.jit`; the context is entered at trace time)."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
      with self.activated():
        return fn(*args, **kwargs)

    return wrapped


def _path_keys(path) -> tuple[str, ...]:
  return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def layout_from_config(config: ml_collections.ConfigDict) -> Layout | None:
  """The job's Layout from `config.mesh` and `config.logical_axis_rules` (None without a mesh)."""
  if "mesh" not in config or config.mesh is None:
    return None
  rules = tuple((name, tuple(axes) if isinstance(axes, list) else axes)
                for name, axes in config.get("logical_axis_rules", DEFAULT_RULES))
  return Layout(make_mesh(dict(config.mesh)), rules)


# --------------------------------------------------------------------------------------------------
# Placing arrays.

def put(tree, shardings):
  """Places host (or single-device) arrays, identical on every process, onto `shardings`; each
  device receives only its own slice."""
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree_util.tree_map(lambda _: shardings, tree)
  if jax.process_count() == 1:
    return jax.device_put(tree, shardings)

  def one(x, sh):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return jax.device_put(x, sh)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sh, lambda idx: x[idx])

  return jax.tree_util.tree_map(one, tree, shardings)


def put_process_local(tree, shardings):
  """Assembles global arrays from this process's contiguous slice of the leading axis (the
  per-host input pipeline's output)."""
  return jax.tree_util.tree_map(
      lambda x, sh: jax.make_array_from_process_local_data(sh, np.asarray(x)), tree, shardings)


def copy_to(tree, shardings):
  """A fresh copy of `tree` laid out as `shardings` (the caller's arrays survive a donation)."""
  return jax.jit(lambda t: jax.tree_util.tree_map(lambda x: x.copy(), t),
                 out_shardings=shardings)(tree)


def init_sharded(init_fn: Callable[[], Any], shardings) -> Any:
  """Runs `init_fn` under `jit` with output shardings: each device materialises only its slice."""
  return jax.jit(init_fn, out_shardings=shardings)()


def to_host(tree):
  """numpy copies of (possibly multi-host sharded) arrays, on every process."""
  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))
  return jax.tree_util.tree_map(one, tree)


def is_primary() -> bool:
  """Whether this process writes outputs and logs (process 0)."""
  return jax.process_index() == 0


# --------------------------------------------------------------------------------------------------
# Multi-host.

def distributed_config(enabled=False, coordinator_address="", num_processes=0, process_id=-1,
                       cpu_collectives="gloo") -> ml_collections.ConfigDict:
  """`config.distributed`: with `enabled`, `jax.distributed.initialize` runs before anything else.
  Empty/0/-1 fields are auto-detected (TPU pods, SLURM, ...); give all three on plain machines."""
  return ml_collections.ConfigDict(dict(enabled=enabled, coordinator_address=coordinator_address,
                                        num_processes=num_processes, process_id=process_id,
                                        cpu_collectives=cpu_collectives))


def initialize(cfg: ml_collections.ConfigDict | Mapping | None) -> None:
  """Starts `jax.distributed` when `cfg.enabled` (idempotent). Must run before JAX touches a device."""
  if not cfg or not cfg["enabled"] or jax.distributed.is_initialized():
    return
  if cfg["cpu_collectives"]:
    jax.config.update("jax_cpu_collectives_implementation", cfg["cpu_collectives"])
  kwargs = {}
  if cfg["coordinator_address"]:
    kwargs["coordinator_address"] = cfg["coordinator_address"]
  if cfg["num_processes"] > 0:
    kwargs["num_processes"] = cfg["num_processes"]
  if cfg["process_id"] >= 0:
    kwargs["process_id"] = cfg["process_id"]
  jax.distributed.initialize(**kwargs)
