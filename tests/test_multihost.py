"""Two real processes (jax.distributed on CPU, 4 fake devices each) == one process with 8.

The two processes train the reference run's model (tests/train_fixtures.py: one
process, 8 devices, mesh data=4 x fsdp=2) on the same global batches, each process
loading only its own rows. They checkpoint together at step 2, stop, restart
together from that checkpoint and train to step 4. Losses of steps 1-4 and the
step-4 parameters must match the one-process run within 1e-5.
"""
import socket

import jax
import numpy as np
import pytest

from m5_jax import checkpointing
from m5_jax import train_logging
pytest.register_assert_rewrite('train_fixtures')
from train_fixtures import REFERENCE, start_binary

pytest_plugins = ['train_fixtures']


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _train_two_processes(workdir, total: int, log_dir):
  port = _free_port()
  args = REFERENCE + [f'--config.total_steps={total}', '--config.checkpoint.every_steps=2']
  logs = [log_dir / f'process{i}_to_step{total}.log' for i in range(2)]
  procs = [start_binary(args, workdir, str(logs[i]), devices=4,
                        JAX_PLATFORMS='cpu', JAX_CPU_COLLECTIVES_IMPLEMENTATION='gloo',
                        JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}', JAX_NUM_PROCESSES='2',
                        JAX_PROCESS_ID=str(i))
           for i in range(2)]
  for proc, log in zip(procs, logs):
    assert proc.wait(timeout=300) == 0, log.read_text()[-4000:]


def test_two_processes_train_checkpoint_and_resume_like_one(reference_run, tmp_path):
  multi = str(tmp_path / 'multi')
  _train_two_processes(multi, 2, tmp_path)   # both save step 2 together
  assert checkpointing.list_steps(multi) == [2]
  _train_two_processes(multi, 4, tmp_path)   # ... and restore it together
  assert checkpointing.list_steps(multi) == [2, 4]
  assert 'resuming from' in (tmp_path / 'process1_to_step4.log').read_text()
  want = {r['step']: r['loss'] for r in train_logging.read_metrics(reference_run)}
  got = {r['step']: r['loss'] for r in train_logging.read_metrics(multi)}
  assert sorted(got) == [1, 2, 3, 4]   # only process 0 writes metrics, once per step
  np.testing.assert_allclose([got[s] for s in range(1, 5)], [want[s] for s in range(1, 5)],
                             rtol=0, atol=1e-5)
  _, p_single = checkpointing.restore_params(reference_run, step=4)
  _, p_multi = checkpointing.restore_params(multi, step=4)
  for a, b in zip(jax.tree.leaves(p_single), jax.tree.leaves(p_multi)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
