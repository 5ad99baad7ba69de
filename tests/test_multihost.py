"""Two real processes (jax.distributed on CPU, 4 fake devices each) == one process with 8.

Both runs train the same model on the same global batches (each process loads only
its own rows), checkpoint together at step 2 and resume together to step 4.
"""
import os
import socket
import subprocess
import sys

import jax
import numpy as np

from m5_jax import checkpointing
from m5_jax import train_logging
from tests.test_train import REPO, TINY

ARGS = ['--config.mesh.fsdp=2', '--config.sharding.rules=fsdp',
        '--config.checkpoint.every_steps=2']


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _env(devices: int, **extra) -> dict:
  env = dict(os.environ, JAX_PLATFORMS='cpu', JAX_CPU_COLLECTIVES_IMPLEMENTATION='gloo',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}', **extra)
  return env


def _train(workdir: str, total: int, processes: int):
  cmd = [sys.executable, '-m', 'm5_jax.train', *TINY, *ARGS, '--workdir', workdir,
         f'--config.total_steps={total}']
  if processes == 1:
    procs = [subprocess.Popen(cmd, cwd=REPO, env=_env(8), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)]
  else:
    port = _free_port()
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, env=_env(
                                  8 // processes, JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}',
                                  JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(i)))
             for i in range(processes)]
  for p in procs:
    _, err = p.communicate(timeout=400)
    assert p.returncode == 0, err[-4000:]


def test_two_processes_train_checkpoint_and_resume_like_one(tmp_path):
  single, multi = str(tmp_path / 'single'), str(tmp_path / 'multi')
  _train(single, 4, processes=1)
  _train(multi, 2, processes=2)   # both processes save step 2 together
  assert checkpointing.list_steps(multi) == [2]
  _train(multi, 4, processes=2)   # ... and restore it together
  assert checkpointing.list_steps(multi) == [2, 4]
  want = {r['step']: r['loss'] for r in train_logging.read_metrics(single)}
  got = {r['step']: r['loss'] for r in train_logging.read_metrics(multi)}
  assert sorted(got) == [1, 2, 3, 4]
  np.testing.assert_allclose([got[s] for s in range(1, 5)], [want[s] for s in range(1, 5)],
                             rtol=0, atol=1e-5)
  _, p_single = checkpointing.restore_params(single)
  _, p_multi = checkpointing.restore_params(multi)
  for a, b in zip(jax.tree.leaves(p_single), jax.tree.leaves(p_multi)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
