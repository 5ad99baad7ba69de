"""One device mesh from the config, logical axis rules, sharded state and batches.

Config (see configs/common.py):

  config.mesh.data = -1      # mesh axis sizes; -1 = all devices not used by the others
  config.mesh.fsdp = 1
  config.mesh.tensor = 1
  config.sharding.rules = 'fsdp'   # 'dp' | 'fsdp' | 'fsdp_tp' (older names data_parallel,
                                   # fsdp_tensor still work; config_lib.SCHEMA checks them)
  config.sharding.activation_constraints = False

The model annotates parameters and activations with logical axes (batch, length,
embed, mlp, heads, kv, vocab; see m5_jax/models/layers.py). The rules below map
them to mesh axes. Batches are split over ('data', 'fsdp') and replicated over
'tensor'; each process contributes its own slice (input_pipeline.make_global_batch).

FSDP weights are gathered for compute (`compute_shardings`): the train step
constrains each parameter to its sharding without the 'fsdp' axis before the
forward pass (XLA all-gathers it; the gradient is reduce-scattered back). This is
ZeRO-3, and it is also required for correctness: XLA's SPMD partitioner (jax
0.10.2, GSPMD and Shardy alike) miscompiles dots whose weight is split over
'fsdp' on its contracting dimension while the activation's batch is split over
('data', 'fsdp'): on mesh (2,2,2) `(x @ w1) + (x @ w2.T @ w2)` comes out with the
row blocks of devices (data=0, fsdp=1) and (data=1, fsdp=0) swapped (a
collective-permute that is never undone). Forward losses can still match while
gradients are wrong. tests/test_sharding.py keeps the reproduction.

Activation constraints (`nn.with_logical_constraint` inside the model) only act
when a global mesh is set (`jax.set_mesh`); linen's DenseGeneral with a 3-D
partitioned kernel fails under a global mesh (flax#3676), so by default the mesh
is not set and XLA propagates activation shardings from the parameter and batch
shardings. Set `activation_constraints=True` for models whose kernels are 2-D.
"""
from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from m5_jax import config_lib

MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')

_COMMON = (('batch', BATCH_AXES), ('length', None), ('kv', None))
RULE_PRESETS: dict[str, tuple[tuple[str, Any], ...]] = {
    # Data parallel: parameters replicated; only the batch is split.
    'dp': _COMMON + (('embed', None), ('mlp', None), ('heads', None), ('vocab', None)),
    # ZeRO-3 style: every parameter split over 'fsdp' along its embed dimension.
    'fsdp': _COMMON + (('embed', 'fsdp'), ('mlp', None), ('heads', None), ('vocab', None)),
    # FSDP plus Megatron-style tensor parallelism over 'tensor'.
    'fsdp_tp': _COMMON + (('embed', 'fsdp'), ('mlp', 'tensor'), ('heads', 'tensor'),
                          ('vocab', 'tensor')),
}
RULE_PRESETS.update({old: RULE_PRESETS[new] for old, new in config_lib.SHARDING_ALIASES.items()})


def mesh_shape(mesh_config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, ...]:
  """Axis sizes for MESH_AXES, with one -1 resolved to the remaining devices.
  Raises ConfigError (one line, saying what to change) for an impossible mesh."""
  sizes = [int(mesh_config.get(axis, 1)) for axis in MESH_AXES]
  mesh = ', '.join(f'{a}={s}' for a, s in zip(MESH_AXES, sizes))
  fix = (f'set --config.mesh.{{{",".join(MESH_AXES)}}} so that their product is {num_devices} '
         '(one of them may be -1: the remaining devices)')
  unknown = [i for i, s in enumerate(sizes) if s == -1]
  if len(unknown) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise config_lib.ConfigError(f'mesh ({mesh}): sizes must be >= 1 and at most one -1; {fix}')
  known = math.prod(s for s in sizes if s != -1)
  if unknown:
    if num_devices % known:
      raise config_lib.ConfigError(f'mesh ({mesh}) does not divide the {num_devices} devices; '
                                   f'{fix}')
    sizes[unknown[0]] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise config_lib.ConfigError(f'mesh ({mesh}) needs {math.prod(sizes)} devices, have '
                                 f'{num_devices}; {fix}')
  return tuple(sizes)


def make_mesh(mesh_config: ml_collections.ConfigDict,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The (data, fsdp, tensor) mesh over `devices` (default: all), Auto axis types."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(mesh_config, len(devices))
  try:  # topology-aware order on TPU/GPU; contiguous on CPU
    grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
  except (ValueError, NotImplementedError, AssertionError):
    grid = np.asarray(devices).reshape(shape)
  return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def axis_rules(sharding_config: ml_collections.ConfigDict) -> tuple[tuple[str, Any], ...]:
  name = sharding_config.rules
  if name not in RULE_PRESETS:
    raise config_lib.ConfigError(f"bad value {name!r} for config key 'sharding.rules': "
                                 f'expected one of {", ".join(config_lib.SHARDING_PRESETS)}')
  return RULE_PRESETS[name]


def _drop_indivisible_axes(spec: P, shape: Sequence[int], mesh: Mesh) -> P:
  """Drops mesh axes from dimensions they do not divide (e.g. a bias of size 3)."""
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = math.prod(mesh.shape[a] for a in names)
    fitted.append(axes if names and dim % size == 0 else None)
  return P(*fitted)


def shardings_for(boxed_abstract: Any, mesh: Mesh, rules) -> Any:
  """NamedShardings for a tree whose leaves may be flax LogicallyPartitioned boxes.

  The result has the structure of the *unboxed* tree. Unannotated leaves are
  replicated; mesh axes that do not divide a dimension are dropped for it.
  """
  logical = nn.get_partition_spec(boxed_abstract)
  mesh_specs = nn.logical_to_mesh(logical, rules)
  shapes = nn.unbox(boxed_abstract)
  return jax.tree.map(
      lambda spec, x: NamedSharding(mesh, _drop_indivisible_axes(spec, x.shape, mesh)),
      mesh_specs, shapes, is_leaf=lambda x: isinstance(x, P))


def state_shardings(init_fn: Callable[[], Any], mesh: Mesh, rules) -> tuple[Any, Any]:
  """(abstract unboxed state, its NamedShardings) of what `init_fn` would return.

  `init_fn` returns a tree that may hold flax partitioning boxes; nothing is
  computed (jax.eval_shape).
  """
  with nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(init_fn)
    return nn.unbox(boxed), shardings_for(boxed, mesh, rules)


def init_sharded(init_fn: Callable[[], Any], shardings: Any) -> Any:
  """Runs `init_fn` under jit with `out_shardings`: each device computes only its shard."""
  return jax.jit(lambda: nn.unbox(init_fn()), out_shardings=shardings)()


def without_axis(shardings: Any, axis: str) -> Any:
  """`shardings` with mesh axis `axis` dropped from every spec (replicated over it)."""
  def drop(s: NamedSharding) -> NamedSharding:
    def keep(axes):
      names = (axes,) if isinstance(axes, str) else tuple(axes or ())
      kept = tuple(a for a in names if a != axis)
      return kept[0] if len(kept) == 1 else (kept or None)
    return NamedSharding(s.mesh, P(*(keep(a) for a in s.spec)))
  return jax.tree.map(drop, shardings, is_leaf=lambda x: isinstance(x, NamedSharding))


def compute_shardings(param_shardings: Any) -> Any:
  """Where parameters are used: gathered over 'fsdp', still split over 'tensor'."""
  return without_axis(param_shardings, 'fsdp')


def gather_for_compute(params: Any, param_shardings: Any) -> Any:
  """Inside jit: all-gathers FSDP-split parameters (see the module docstring for why)."""
  return jax.lax.with_sharding_constraint(params, compute_shardings(param_shardings))


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying `shardings` (what a restore is asked to produce)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def data_axes_of(mesh: Mesh, axes: Sequence[str] = BATCH_AXES) -> tuple[str, ...]:
  """The mesh axes the batch dimension is sharded over (those of `axes` the mesh has)."""
  present = tuple(a for a in axes if a in mesh.axis_names)
  if not present:
    raise ValueError(f'mesh axes {mesh.axis_names} contain none of the data axes {tuple(axes)}')
  return present


def batch_sharding(mesh: Mesh, data_axes: Sequence[str] | None = None) -> NamedSharding:
  axes = data_axes_of(mesh) if data_axes is None else tuple(data_axes)
  return NamedSharding(mesh, P(axes))


def rows_for_mesh(mesh: Mesh, global_batch_size: int,
                  data_axes: Sequence[str] | None = None) -> np.ndarray:
  """The global-batch rows this process's devices hold, in the order that
  `jax.make_array_from_process_local_data` expects them in the local batch."""
  sharding = batch_sharding(mesh, data_axes)
  slices = {(idx[0].start or 0, idx[0].stop if idx[0].stop is not None else global_batch_size)
            for idx in sharding.addressable_devices_indices_map((global_batch_size,)).values()}
  return np.concatenate([np.arange(a, b) for a, b in sorted(slices)])


def batch_shards(mesh: Mesh) -> int:
  """How many ways the batch dimension is split."""
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def process_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """This process's share of the global batch (every process feeds its own devices)."""
  shards = batch_shards(mesh)
  if global_batch_size % shards:
    raise config_lib.ConfigError(
        f'global batch size {global_batch_size} is not divisible by the {shards} batch shards '
        f'of mesh {dict(mesh.shape)}; set --config.input.batch_size to a multiple of {shards} '
        '(or change config.mesh)')
  if global_batch_size % jax.process_count():
    raise config_lib.ConfigError(
        f'global batch size {global_batch_size} is not divisible by the {jax.process_count()} '
        f'processes; set --config.input.batch_size to a multiple of {jax.process_count()}')
  return global_batch_size // jax.process_count()


@contextlib.contextmanager
def activation_context(mesh: Mesh, rules, constraints: bool):
  """Trace-time context for the model: logical rules, and the mesh when constraints act."""
  with contextlib.ExitStack() as stack:
    stack.enter_context(nn.logical_axis_rules(rules))
    if constraints:
      stack.enter_context(jax.set_mesh(mesh))
    yield


def describe(shardings: Any) -> str:
  """A short summary: how many leaves are split over each mesh axis."""
  counts: dict[str, int] = {}
  for s in jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding)):
    used = {a for axes in s.spec if axes for a in ((axes,) if isinstance(axes, str) else axes)}
    for a in used or {'replicated'}:
      counts[a] = counts.get(a, 0) + 1
  return ', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))


def log_mesh(mesh: Mesh) -> None:
  logging.info('mesh %s over %d devices (%d processes)', dict(mesh.shape), mesh.size,
               jax.process_count())
