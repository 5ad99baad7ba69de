"""Orbax checkpoints: restore onto other meshes, keep policy, crash safety, fine-tune init."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import ml_collections
import numpy as np
import pytest

from m5_jax import checkpointing
from m5_jax import sharding
from tests import state_testlib
from tests import toy_state

RULES = sharding.RULE_PRESETS['fsdp_tensor']


def _mesh(fsdp, tensor, devices=None):
  return sharding.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=fsdp, tensor=tensor)),
                            devices)


def _ckpt_config(**k):
  return ml_collections.ConfigDict(dict(dict(keep=3, keep_every=0, async_save=True), **k))


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  """A toy state saved on mesh (fsdp=8, tensor=1) at step 5, with an iterator state."""
  workdir = str(tmp_path_factory.mktemp('ckpt'))
  tx = toy_state.make_tx()
  state, _ = state_testlib.create_sharded(toy_state.init_fn(tx, seed=3), _mesh(8, 1), RULES)
  state = jax.tree.map(lambda x: x + 1 if x.dtype == np.float32 else x, state)  # not the init
  ckpt = checkpointing.Checkpointer(workdir, _ckpt_config())
  ckpt.save(5, state, {'step': 5, 'seed': 0})
  ckpt.close()
  return workdir, jax.device_get(state), tx


@pytest.mark.parametrize('fsdp,tensor,num_devices', [(2, 4, 8), (1, 1, 1)])
def test_restore_onto_another_mesh(saved, fsdp, tensor, num_devices):
  workdir, expected, tx = saved
  mesh = _mesh(fsdp, tensor, jax.devices()[:num_devices])
  abstract, shardings = sharding.state_shardings(toy_state.init_fn(tx), mesh, RULES)
  ckpt = checkpointing.Checkpointer(workdir, _ckpt_config())
  assert ckpt.latest_step() == 5
  state, data_state = ckpt.restore(5, sharding.abstract_with_shardings(abstract, shardings))
  ckpt.close()
  assert data_state == {'step': 5, 'seed': 0}
  assert state_testlib.tree_equal(state, expected)
  kernel = state['params']['up']['kernel']
  assert kernel.sharding == shardings['params']['up']['kernel']
  assert len(kernel.sharding.device_set) == num_devices


def test_restore_params_only(saved):
  workdir, expected, _ = saved
  assert checkpointing.list_steps(workdir) == [5]
  step, params = checkpointing.restore_params(workdir)
  assert step == 5 and state_testlib.tree_equal(params, expected['params'])
  with pytest.raises(FileNotFoundError, match='no checkpoint at step 4'):
    checkpointing.restore_params(workdir, step=4)
  with pytest.raises(FileNotFoundError, match='no checkpoints under'):
    checkpointing.restore_params(workdir + '_wrong')


def test_init_params_from_with_include_exclude(saved):
  workdir, expected, tx = saved
  state, shardings = state_testlib.create_sharded(toy_state.init_fn(tx, seed=9), _mesh(4, 2), RULES)
  params, copied = checkpointing.init_params_from(
      workdir, state['params'], shardings['params'], include=r'^(up|embed)/', exclude='bias$')
  assert sorted(copied) == ['embed/embedding', 'up/kernel']
  np.testing.assert_array_equal(params['up']['kernel'], expected['params']['up']['kernel'])
  np.testing.assert_array_equal(params['up']['bias'], state['params']['up']['bias'])
  np.testing.assert_array_equal(params['out']['kernel'], state['params']['out']['kernel'])
  with pytest.raises(ValueError, match='no parameter matched'):
    checkpointing.init_params_from(workdir, state['params'], shardings['params'], include='nope')


def test_keep_policy_last_n_plus_every_k(tmp_path):
  tree = {'w': np.arange(4.0)}
  ckpt = checkpointing.Checkpointer(str(tmp_path), _ckpt_config(keep=2, keep_every=4,
                                                                async_save=False))
  for step in range(1, 10):
    ckpt.save(step, tree, {'step': step})
  ckpt.close()
  assert checkpointing.list_steps(str(tmp_path)) == [4, 8, 9]


_SAVER = textwrap.dedent('''
    import sys
    import numpy as np
    import ml_collections
    from m5_jax import checkpointing
    ckpt = checkpointing.Checkpointer(sys.argv[1], ml_collections.ConfigDict(
        dict(keep=100, keep_every=0, async_save=True)))
    tree = {f'w{i}': np.full((1024, 1024), float(i), np.float32) for i in range(24)}
    for step in range(1, 1000):
      ckpt.save(step, tree, {'step': step})
      print('saving', step, flush=True)
''')


def test_a_checkpoint_killed_mid_save_is_never_chosen(tmp_path):
  """SIGKILL a process while it writes ~100 MB checkpoints; only finalized steps count."""
  workdir = str(tmp_path)
  proc = subprocess.Popen([sys.executable, '-c', _SAVER, workdir], stdout=subprocess.PIPE,
                          text=True, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  ckpt_dir = checkpointing.checkpoint_dir(workdir)
  deadline = time.time() + 120
  try:
    # Wait until one step is complete and the next one is half written.
    while time.time() < deadline:
      line = proc.stdout.readline()
      names = os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else []
      if line.startswith('saving') and int(line.split()[1]) >= 2 and any('tmp' in n for n in names):
        break
    proc.send_signal(signal.SIGKILL)
  finally:
    proc.wait()
  names = os.listdir(ckpt_dir)
  half_written = [n for n in names if 'tmp' in n]
  steps = checkpointing.list_steps(workdir)
  assert half_written, names   # the kill did leave a half-written step behind ...
  assert steps and all(str(s) in names for s in steps)
  assert not any(n.split('.')[0] == str(max(steps) + 1) and 'tmp' not in n for n in names)
  # ... and every listed step restores completely.
  manager_tree = {f'w{i}': np.zeros((1024, 1024), np.float32) for i in range(24)}
  ckpt = checkpointing.Checkpointer(workdir, _ckpt_config())
  latest = ckpt.latest_step()
  assert latest == max(steps)
  restored, data_state = ckpt.restore(latest, jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=jax.sharding.SingleDeviceSharding(
          jax.devices()[0])), manager_tree))
  ckpt.close()
  assert data_state == {'step': latest}
  for i in range(24):
    assert float(restored[f'w{i}'][0, 0]) == i and float(restored[f'w{i}'][-1, -1]) == i
