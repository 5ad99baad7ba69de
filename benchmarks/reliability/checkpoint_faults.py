"""Checkpoint and process defects (issue 16): damaged steps, a failed save, two trainers
on one workdir, SIGTERM during start-up, a resume with another model, evaluators on
every node.

    from benchmarks.reliability import checkpoint_faults
    for case in checkpoint_faults.CASES:
      result = case.run(WORK_DIR)   # {'survived', 'items_lost', 'problems', 'outcome'}

Each case builds its own tiny workdir (a 256x256 parameter, or the tiny synthetic text
model's step-0 checkpoint: no train step is compiled) and runs the real binary or the
code path the binaries use. *Items lost*: readable checkpoint steps that are no longer
restorable or were not evaluated. The helpers (damaging a step, a stale or live lock,
the failed-save script) are shared with tests/test_reliability_checkpoint.py and
tests/test_reliability_train.py; the reliability suite (run.py) tabulates the cases.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Callable

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The tiny synthetic text model; total_steps=0 checkpoints its initial state (step 0).
TINY = ['--config', 'configs/m5_mmt.py:runlocal,modalities=t', '--config.input.dataset=synthetic',
        '--config.modality.text.max_len=8', '--config.model.encoder_layers=0']


# ---------------------------------------------------------------- damaging a step


def data_files(step_dir: str) -> list[str]:
  return [os.path.join(root, f) for root, _, files in os.walk(step_dir) for f in files
          if f'{os.sep}d{os.sep}' in os.path.join(root, f)]


def truncate_largest_data_file(step_dir: str) -> None:
  """A damaged step: its largest array file cut in half (a bad copy, a disk error)."""
  largest = max(data_files(step_dir), key=os.path.getsize)
  with open(largest, 'r+b') as f:
    f.truncate(os.path.getsize(largest) // 2)


def half_delete(step_dir: str) -> None:
  """What kill -9 leaves while the keep policy deletes a step: its array files gone, the
  directory and its metadata still there (so the step is still listed)."""
  for path in data_files(step_dir):
    os.remove(path)


def save_steps(workdir: str, steps, keep: int = 0):
  """Checkpoints whose parameter is the step number plus noise (so that the array files
  are large enough to damage); -> the abstract state to restore them into."""
  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from m5_jax import checkpointing  # pylint: disable=g-import-not-at-top
  ckpt = checkpointing.Checkpointer(workdir, ml_collections.ConfigDict(
      dict(keep=keep, keep_every=0, async_save=False)))
  rng = np.random.default_rng(0)
  for step in steps:
    ckpt.save(step, {'params': {'w': (step + rng.random((256, 256)) * 1e-3).astype(np.float32)}},
              {'step': step})
  ckpt.close()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return {'params': {'w': jax.ShapeDtypeStruct((256, 256), np.float32, sharding=device)}}


# ---------------------------------------------------------------- processes


def process_start(pid: int) -> str | None:
  from m5_jax import checkpointing  # pylint: disable=g-import-not-at-top
  return checkpointing._process_start(pid)  # pylint: disable=protected-access


def write_lock(workdir: str, pid: int, host: str | None = None) -> str:
  """A trainer lock as `pid` on `host` (default: this one) would hold it; -> its path."""
  from m5_jax import checkpointing  # pylint: disable=g-import-not-at-top
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, checkpointing.LOCK_FILENAME)
  with open(path, 'w') as f:
    json.dump({'pid': pid, 'host': host or socket.gethostname(), 'started': time.time(),
               'proc_start': process_start(pid)}, f)
  return path


# A checkpointer whose directory stops being one after step 1 (as an unwritable one
# would, for root too): Orbax leaves non-daemon threads waiting 5 minutes.
FAILED_SAVE = '''
import os, sys, jax, ml_collections
from m5_jax import checkpointing, train
ckpt = checkpointing.Checkpointer(sys.argv[1], ml_collections.ConfigDict(dict(keep=0)))
ckpt.save(1, {'w': jax.numpy.ones((64, 64))}, {'step': 1})
ckpt.wait()
os.rename(ckpt.directory, ckpt.directory + '.moved')
open(ckpt.directory, 'w').close()
try:
  ckpt.save(2, {'w': jax.numpy.ones((64, 64))}, {'step': 2})
  ckpt.close()
except checkpointing.CheckpointWriteError as e:
  print('ERROR', e, flush=True)
sys.exit(train.exit_promptly(1))   # how `python -m m5_jax.train` ends (train.run_main)
'''


def train_process(args, workdir: str, **kwargs) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, '-m', 'm5_jax.train', *args, '--workdir', workdir],
                          cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          **kwargs)


def run_train(args, workdir: str) -> tuple[int, list[str]]:
  """(exit code, the stderr lines of its errors) of the train binary."""
  proc = train_process(args, workdir)
  _, err = proc.communicate(timeout=300)
  return proc.returncode, [l for l in err.splitlines() if 'm5_jax.train: error' in l
                           or 'Traceback' in l]


# ---------------------------------------------------------------- the cases


def _half_deleted_step_and_evaluator_all(work: str) -> dict:
  from m5_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from m5_jax.evaluate import runner  # pylint: disable=g-import-not-at-top
  save_steps(work, [1, 2, 3])
  half_delete(os.path.join(checkpointing.checkpoint_dir(work), '2'))
  evaluated = runner.run('fault', runner.Options(workdir=work, all=True),
                         lambda: checkpointing.list_steps(work),
                         lambda step: checkpointing.restore_params(work, step))
  problems = [] if evaluated == [1, 3] else [f'evaluated {evaluated}, want [1, 3]']
  return {'problems': problems, 'items_lost': len({1, 3} - set(evaluated)),
          'outcome': f'evaluated {evaluated}; step 2 skipped with a warning'}


def _corrupt_latest_blocks_restart(work: str) -> dict:
  from m5_jax import checkpointing  # pylint: disable=g-import-not-at-top
  args = TINY + ['--config.total_steps=0']
  code, errors = run_train(args, work)
  directory = checkpointing.checkpoint_dir(work)
  if code or checkpointing.list_steps(work) != [0]:
    return {'problems': [f'setup failed: {code} {errors}'], 'items_lost': 0, 'outcome': ''}
  shutil.copytree(os.path.join(directory, '0'), os.path.join(directory, '3'))
  truncate_largest_data_file(os.path.join(directory, '3'))
  code, errors = run_train(args, work)
  aside = [n for n in os.listdir(directory) if n.startswith('3.corrupt-')]
  problems = [f'exit {code}: {errors[-1:]}'] if code else []
  if not aside:
    problems.append('step 3 not moved aside')
  lost = 0 if checkpointing.list_steps(work) == [0] else 1
  return {'problems': problems, 'items_lost': lost,
          'outcome': f'restarted from step 0; damaged step moved to {aside[:1]}'}


def _failed_save_hangs(work: str) -> dict:
  start = time.time()
  proc = subprocess.run([sys.executable, '-c', FAILED_SAVE, work], cwd=REPO, capture_output=True,
                        text=True, timeout=600)
  seconds = time.time() - start
  problems = []
  if proc.returncode != 1 or 'ERROR could not write checkpoint step 2' not in proc.stdout:
    problems.append(f'exit {proc.returncode}: {proc.stdout[-200:]}')
  if seconds > 60:
    problems.append(f'exited after {seconds:.0f} s')
  return {'problems': problems, 'items_lost': 0,
          'outcome': f'one error line, exit 1 after {seconds:.1f} s'}


def _second_trainer(work: str) -> dict:
  from m5_jax import checkpointing  # pylint: disable=g-import-not-at-top
  holder = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])
  try:
    write_lock(work, holder.pid)
    code, errors = run_train(TINY + ['--config.total_steps=0'], work)
  finally:
    holder.kill()
    holder.wait()
  problems = []
  if code != 1 or len(errors) != 1 or 'is in use by another trainer' not in errors[0]:
    problems.append(f'exit {code}: {errors}')
  if os.path.exists(checkpointing.checkpoint_dir(work)):
    problems.append('the second trainer touched the checkpoints')
  return {'problems': problems, 'items_lost': 0, 'outcome': (errors or [''])[-1]}


def _sigterm_during_start_up(work: str) -> dict:
  from m5_jax import checkpointing  # pylint: disable=g-import-not-at-top
  proc = train_process(TINY + ['--config.total_steps=50'], work)
  lock = os.path.join(work, checkpointing.LOCK_FILENAME)
  deadline = time.time() + 120
  while not os.path.exists(lock) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  steps = checkpointing.list_steps(work)
  problems = [] if proc.returncode == 0 and steps == [0] else [
      f'exit {proc.returncode}, steps {steps}: {err[-300:]}']
  return {'problems': problems, 'items_lost': 0,
          'outcome': f'exit {proc.returncode}; saved steps {steps}'}


def _incompatible_resume(work: str) -> dict:
  vocab = lambda n: [f'--config.model.vocab_size={n}', f'--config.modality.text.vocab_size={n}']  # noqa: E731
  code, errors = run_train(TINY + ['--config.total_steps=0'] + vocab(256), work)
  if code:
    return {'problems': [f'setup failed: {errors}'], 'items_lost': 0, 'outcome': ''}
  code, errors = run_train(TINY + ['--config.total_steps=0'] + vocab(512), work)
  problems = []
  if code != 1 or len(errors) != 1 or '2 parameters differ' not in errors[0]:
    problems.append(f'exit {code}: {[e[:300] for e in errors]}')
  elif len(errors[0]) > 1000:
    problems.append(f'{len(errors[0])} characters')
  return {'problems': problems, 'items_lost': 0, 'outcome': (errors or [''])[-1][:160] + ' ...'}


def _evaluators_on_every_node(work: str) -> dict:
  del work
  proc = subprocess.run(['bash', 'launch/gpu_slurm.sbatch', '--config', 'configs/m5_mmt.py',
                         '--workdir', '/shared/w'], cwd=REPO, capture_output=True, text=True,
                        env=dict(os.environ, DRY_RUN='1', SLURM_JOB_NUM_NODES='4'))
  evals = [l for l in proc.stdout.splitlines() if 'm5_jax.evaluate.' in l]
  bad = [l for l in evals if not l.startswith('+ srun --nodes=1 --ntasks=1 ')]
  problems = [f'{len(bad)} eval commands on several nodes'] if bad or len(evals) != 4 else []
  return {'problems': problems, 'items_lost': 0,
          'outcome': f'{len(evals)} eval commands, each srun --nodes=1 --ntasks=1'}


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  what: str
  check: Callable[[str], dict]

  def run(self, work: str) -> dict:
    """{'survived', 'items_lost', 'problems', 'outcome', 'seconds'} in a fresh folder."""
    folder = os.path.join(work, self.name)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    start = time.time()
    try:
      result = self.check(folder)
    except Exception as e:  # pylint: disable=broad-except
      result = {'problems': [f'{type(e).__name__}: {str(e)[:300]}'], 'items_lost': 0,
                'outcome': ''}
    return dict(result, survived=not result['problems'], seconds=round(time.time() - start, 1))


CASES = (
    Case('half_deleted_step', 'kill -9 during the keep policy delete, then an evaluator --all',
         _half_deleted_step_and_evaluator_all),
    Case('corrupt_latest', 'a damaged latest checkpoint, then a restart',
         _corrupt_latest_blocks_restart),
    Case('failed_save_exit', 'the checkpoint directory unwritable mid-run',
         _failed_save_hangs),
    Case('second_trainer', 'a second trainer on a workdir in use', _second_trainer),
    Case('sigterm_start_up', 'SIGTERM during start-up (restore, compile)',
         _sigterm_during_start_up),
    Case('incompatible_resume', 'resume a workdir with another model', _incompatible_resume),
    Case('multi_host_eval', 'eval binaries under SLURM on 4 nodes', _evaluators_on_every_node),
)
