"""Mesh from config, logical rule presets, state created sharded, batches sharded."""
import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from m5_jax import sharding
from tests import toy_state


def _mesh(data=-1, fsdp=1, tensor=1, devices=None):
  return sharding.make_mesh(ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor)),
                            devices)


def test_mesh_shape_resolves_minus_one_and_rejects_bad_sizes():
  cfg = lambda **k: ml_collections.ConfigDict(dict(dict(data=-1, fsdp=1, tensor=1), **k))  # noqa: E731
  assert sharding.mesh_shape(cfg(fsdp=2, tensor=2), 8) == (2, 2, 2)
  assert sharding.mesh_shape(cfg(data=1, fsdp=-1), 8) == (1, 8, 1)
  for bad in (cfg(fsdp=3), cfg(data=-1, fsdp=-1), cfg(data=4, fsdp=4)):
    with pytest.raises(ValueError, match='mesh'):
      sharding.mesh_shape(bad, 8)


def test_mesh_axes_are_auto():
  mesh = _mesh(fsdp=4)
  assert dict(mesh.shape) == {'data': 2, 'fsdp': 4, 'tensor': 1}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


@pytest.mark.parametrize('rules,kernel,embed_table', [
    ('data_parallel', P(None, None), P(None, None)),
    ('fsdp', P('fsdp', None), P(None, 'fsdp')),
    ('fsdp_tensor', P('fsdp', 'tensor'), P('tensor', 'fsdp')),
])
def test_state_created_sharded_by_rule_preset(rules, kernel, embed_table):
  mesh = _mesh(data=2, fsdp=2, tensor=2)
  tx = toy_state.make_tx()
  state, shardings = sharding.create_sharded(
      toy_state.init_fn(tx), mesh, sharding.axis_rules(ml_collections.ConfigDict({'rules': rules})))
  params = state['params']
  assert params['up']['kernel'].sharding.spec == kernel
  assert params['embed']['embedding'].sharding.spec == embed_table
  # Optimizer moments follow their parameters; the scalar count is replicated.
  mu = state['opt_state'][1][0].mu
  assert mu['up']['kernel'].sharding.spec == kernel
  assert shardings['step'].spec == P()
  # The out bias has 3 elements: an axis that does not divide it is dropped.
  assert params['out']['bias'].sharding.spec == P(None)
  if rules != 'data_parallel':  # each device holds only its shard
    assert params['up']['kernel'].addressable_shards[0].data.size < 16 * 32


def test_sharded_init_equals_single_device_init():
  tx = toy_state.make_tx()
  rules = sharding.RULE_PRESETS['fsdp_tensor']
  sharded, _ = sharding.create_sharded(toy_state.init_fn(tx), _mesh(data=2, fsdp=2, tensor=2), rules)
  single, _ = sharding.create_sharded(toy_state.init_fn(tx), _mesh(devices=jax.devices()[:1]), rules)
  for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(single)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_global_batch_splits_rows_over_data_and_fsdp():
  mesh = _mesh(data=2, fsdp=2, tensor=2)
  batch = {'x': np.arange(8 * 3).reshape(8, 3), 'm': {'y': np.ones(8, bool)}}
  out = sharding.global_batch(batch, mesh)
  assert out['x'].shape == (8, 3) and out['x'].sharding.spec == P(('data', 'fsdp'))
  shard_rows = {s.index[0].start for s in out['x'].addressable_shards}
  assert shard_rows == {0, 2, 4, 6}  # 4 batch shards, replicated over tensor
  np.testing.assert_array_equal(np.asarray(out['x']), batch['x'])
  assert sharding.process_batch_size(8, mesh) == 8
  with pytest.raises(ValueError, match='not divisible'):
    sharding.process_batch_size(6, mesh)
