"""The train binary: sharded == single device, loss falls, exact resume after SIGTERM."""
import os
import signal
import time

import jax
import numpy as np
import pytest

from m5_jax import checkpointing
from m5_jax import config_lib
from m5_jax import optimizer as optimizer_lib
from m5_jax import sharding
from m5_jax import synthetic_input
from m5_jax import train
from m5_jax import train_logging
from tests import state_testlib
pytest.register_assert_rewrite('train_fixtures')
from train_fixtures import (MINI_TRAINED_STEPS, REFERENCE, REFERENCE_STEPS, TINY, parse,
                            start_binary)

pytest_plugins = ['m5_fixtures', 'train_fixtures']
_CACHE = {}


def tiny_config(*overrides):
  return parse(TINY + list(overrides))


def _run_steps(config, num_steps, devices):
  """Runs the jitted train step on `devices` with the config's mesh -> (state, metrics list)."""
  key = (config.to_json(), num_steps, len(devices))
  if key not in _CACHE:
    _CACHE[key] = _run_steps_uncached(config, num_steps, devices)
  return _CACHE[key]


def _run_steps_uncached(config, num_steps, devices):
  mesh = sharding.make_mesh(config.mesh, devices)
  rules = sharding.axis_rules(config.sharding)
  task = train.make_task(config)
  tx, schedule = optimizer_lib.make_optimizer(config, 100, 2)
  init_fn = train.init_state_fn(config, task, tx)
  state, shardings = state_testlib.create_sharded(init_fn, mesh, rules)
  step_fn = jax.jit(train.make_train_step(config, task, tx, schedule, mesh),
                    in_shardings=(shardings, sharding.batch_sharding(mesh)),
                    out_shardings=(shardings, None), donate_argnums=(0,))
  data = synthetic_input.SyntheticIterator(config, mesh, config.input.batch_size, config.seed)
  losses = []
  with sharding.activation_context(mesh, rules, config.sharding.activation_constraints):
    for _ in range(num_steps):
      state, metrics = step_fn(state, next(data))
      losses.append(jax.device_get(metrics))
  return jax.device_get(state), losses


def _sharded_and_single():
  sharded_cfg = tiny_config('--config.mesh.data=2', '--config.mesh.fsdp=2',
                            '--config.mesh.tensor=2', '--config.sharding.rules=fsdp_tensor')
  return (_run_steps(sharded_cfg, 2, jax.devices()),
          _run_steps(tiny_config('--config.mesh.data=1'), 2, jax.devices()[:1]))


def test_fsdp_tensor_on_8_devices_equals_1_device():
  """Mesh (data=2, fsdp=2, tensor=2): losses, gradient norms and parameters after two
  steps equal one device's. (Without sharding.gather_for_compute the gradients were
  ~2% off: an XLA SPMD miscompile, see tests/test_sharding.py.)"""
  (sharded, sharded_metrics), (single, single_metrics) = _sharded_and_single()
  for got, want in zip(sharded_metrics, single_metrics):
    for name in want:  # every loss term (contrastive over the global batch too) and count
      if name.startswith(('loss', 'count', 'grad_norm')):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5, err_msg=name)
  assert sharded_metrics[0]['loss'] != sharded_metrics[1]['loss']  # the params did move
  for a, b in zip(jax.tree.leaves(sharded['params']), jax.tree.leaves(single['params'])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_gradient_accumulation_sums_numerators_and_denominators():
  _, one = _run_steps(tiny_config('--config.mesh.data=1'), 2, jax.devices()[:1])
  _, acc = _run_steps(tiny_config('--config.mesh.data=1', '--config.num_microbatches=2'), 1,
                      jax.devices()[:1])
  # Same masks; masked terms are divided by the global masked-token counts, so they are
  # exact. (Contrastive terms see their microbatch's negatives: not compared.)
  for name in one[0]:
    if name.startswith(('loss/masked_', 'count/')):
      np.testing.assert_allclose(acc[0][name], one[0][name], rtol=1e-5, err_msg=name)


def test_tiny_m5_mmt_on_mini_loss_falls_and_writes_workdir(mini_tfds, mini_trained):
  """The shared `mini_trained` run (train_fixtures.mini_train_args; the eval e2e
  tests score its checkpoints)."""
  data_dir = mini_tfds[0]
  rows = train_logging.read_metrics(mini_trained)
  losses = [r['loss'] for r in rows]
  assert [r['step'] for r in rows] == list(range(1, MINI_TRAINED_STEPS + 1))
  assert np.mean(losses[-4:]) < losses[0] - 1.0, losses
  assert {'grad_norm', 'param_norm', 'lr', 'loss/masked_text', 'loss/masked_image',
          'loss/contrastive_text_image', 'perf/steps_per_sec', 'perf/examples_per_sec',
          'perf/eta_hours'} <= set(rows[-1])
  assert checkpointing.list_steps(mini_trained) == [12, 24]
  saved = config_lib.load_workdir_config(mini_trained)
  assert saved.total_steps == MINI_TRAINED_STEPS and saved.input.data_dir == data_dir
  assert os.listdir(os.path.join(mini_trained, 'tensorboard'))


def test_sigterm_then_restart_is_bitwise_equal_to_uninterrupted(reference_run, tmp_path):
  """kill -TERM a real train binary after step 3; the restart resumes from the
  preemption checkpoint and ends bitwise equal to the uninterrupted reference run."""
  args = REFERENCE + [f'--config.total_steps={REFERENCE_STEPS}',
                      '--config.checkpoint.every_steps=1000']
  workdir = str(tmp_path / 'interrupted')
  proc = start_binary(args, workdir, str(tmp_path / 'first.log'))
  metrics = os.path.join(workdir, train_logging.METRICS_FILE)
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(metrics) and len(open(metrics).read().splitlines()) >= 3:
      proc.send_signal(signal.SIGTERM)
      break
    time.sleep(0.01)
  assert proc.wait(timeout=120) == 0, (tmp_path / 'first.log').read_text()[-3000:]
  (saved,) = checkpointing.list_steps(workdir)
  assert 3 <= saved < REFERENCE_STEPS, 'the run finished before SIGTERM arrived'

  restart = start_binary(args, workdir, str(tmp_path / 'restart.log'))
  assert restart.wait(timeout=240) == 0, (tmp_path / 'restart.log').read_text()[-3000:]
  assert checkpointing.list_steps(workdir) == [saved, REFERENCE_STEPS]
  _, expected = checkpointing.restore_params(reference_run)
  _, resumed = checkpointing.restore_params(workdir)
  assert state_testlib.tree_equal(resumed, expected)
  assert 'resuming from' in (tmp_path / 'restart.log').read_text()


def test_nonfinite_loss_stops_naming_the_step(tmp_path):
  # Text only, no transformer layers: the cheapest model to compile.
  text_only = ['--config', 'configs/m5_mmt.py:runlocal,modalities=t'] + [
      a for a in TINY[2:] if 'table' not in a]
  config = parse(text_only + ['--config.total_steps=3', '--config.optimizer.lr=1e30',
                              '--config.optimizer.grad_clip_norm=0.0',
                              '--config.model.fusion_layers=0', '--config.model.encoder_layers=0'])
  with pytest.raises(FloatingPointError, match=r'non-finite loss \(nan\) at step \d'):
    train.train(config, str(tmp_path))


def test_total_steps_zero_saves_the_initial_state_without_compiling(tmp_path, monkeypatch):
  """`m5_jax.train --config.total_steps=0` exits 0 with a step-0 checkpoint (the initial,
  random weights) and the resolved config, and never builds a train step."""
  def no_train_step(*args, **kwargs):
    raise AssertionError('a train step was built with nothing to train')
  monkeypatch.setattr(train, 'make_train_step', no_train_step)
  args = TINY + ['--config.total_steps=0', '--workdir', str(tmp_path)]
  assert train.main(args) == 0
  assert checkpointing.list_steps(str(tmp_path)) == [0]
  assert config_lib.load_workdir_config(str(tmp_path)).total_steps == 0
  # The checkpoint holds exactly the state the train binary starts from.
  config = parse(TINY)
  task = train.make_task(config)
  tx, _ = optimizer_lib.make_optimizer(config, 1, 0)
  mesh, rules = sharding.make_mesh(config.mesh), sharding.axis_rules(config.sharding)
  with sharding.activation_context(mesh, rules, config.sharding.activation_constraints):
    expected, _ = state_testlib.create_sharded(train.init_state_fn(config, task, tx), mesh, rules)
  expected = expected['params']
  _, params = checkpointing.restore_params(str(tmp_path))
  assert state_testlib.tree_equal(params, expected)
  # Run again (already checkpointed): still exits 0, nothing new.
  assert train.main(args) == 0
  assert checkpointing.list_steps(str(tmp_path)) == [0]
