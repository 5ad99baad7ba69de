"""The train binary: sharded == single device, loss falls, exact resume after SIGTERM."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest

from m5_jax import checkpointing
from m5_jax import config_lib
from m5_jax import optimizer as optimizer_lib
from m5_jax import sharding
from m5_jax import synthetic_input
from m5_jax import train
from m5_jax import train_logging

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A small text+table M5-MMT on synthetic data (masked modeling + contrastive).
# Adam's eps is raised so that float rounding in near-zero gradients is not amplified
# to lr-sized updates (which would make sharded-vs-single comparisons meaningless).
TINY = ['--config', 'configs/m5_mmt.py:runlocal,modalities=tp',
        '--config.input.dataset=synthetic', '--config.modality.text.max_len=16',
        '--config.modality.table.max_len=16', '--config.model.dropout=0.0',
        '--config.optimizer.eps=1e-3']
_CACHE = {}


def tiny_config(*overrides):
  config, _ = config_lib.parse_command_line(TINY + list(overrides), {})
  return config


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
  state, shardings = sharding.create_sharded(init_fn, mesh, rules)
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


def test_train_loop_loss_falls_and_writes_workdir(tmp_path):
  config = tiny_config('--config.total_steps=30', '--config.checkpoint.every_steps=15')
  train.train(config, str(tmp_path))
  rows = train_logging.read_metrics(str(tmp_path))
  losses = [r['loss'] for r in rows]
  assert [r['step'] for r in rows] == list(range(1, 31))
  assert np.mean(losses[-5:]) < losses[0] - 1.0, losses
  assert {'grad_norm', 'param_norm', 'lr', 'loss/masked_text', 'loss/contrastive_text_table',
          'perf/steps_per_sec', 'perf/examples_per_sec', 'perf/eta_hours'} <= set(rows[-1])
  assert checkpointing.list_steps(str(tmp_path)) == [15, 30]
  assert config_lib.load_workdir_config(str(tmp_path)).total_steps == 30
  assert os.listdir(tmp_path / 'tensorboard')


def _binary(workdir, *overrides, cache_dir):
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  return subprocess.Popen([sys.executable, '-m', 'm5_jax.train', *TINY, '--workdir', workdir,
                           '--config.checkpoint.every_steps=1000', *overrides],
                          cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)


def test_sigterm_then_restart_is_bitwise_equal_to_uninterrupted(tmp_path):
  total = '--config.total_steps=60'
  cache = str(tmp_path / 'jax_cache')
  full = _binary(str(tmp_path / 'full'), total, cache_dir=cache)
  _, err = full.communicate(timeout=300)
  assert full.returncode == 0, err[-3000:]

  interrupted = str(tmp_path / 'interrupted')
  proc = _binary(interrupted, total, cache_dir=cache)
  metrics = os.path.join(interrupted, train_logging.METRICS_FILE)
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(metrics) and len(open(metrics).read().splitlines()) >= 3:
      proc.send_signal(signal.SIGTERM)
      break
    time.sleep(0.02)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-3000:]
  (saved,) = checkpointing.list_steps(interrupted)
  assert 3 <= saved < 60, 'the run finished before SIGTERM arrived'

  restart = _binary(interrupted, total, cache_dir=cache)
  _, err = restart.communicate(timeout=300)
  assert restart.returncode == 0, err[-3000:]
  assert checkpointing.list_steps(interrupted) == [saved, 60]
  _, expected = checkpointing.restore_params(str(tmp_path / 'full'))
  _, resumed = checkpointing.restore_params(interrupted)
  assert checkpointing.tree_equal(resumed, expected)


def test_nonfinite_loss_stops_naming_the_step(tmp_path):
  config = tiny_config('--config.total_steps=3', '--config.optimizer.lr=1e30',
                       '--config.optimizer.grad_clip_norm=0.0')
  with pytest.raises(FloatingPointError, match=r'non-finite loss \(nan\) at step \d'):
    train.train(config, str(tmp_path))
