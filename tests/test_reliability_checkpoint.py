"""Checkpoints under faults: kill -9 mid-save seen by a watching evaluator and a restart;
an unwritable workdir; a disk that fills up during a save."""
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
from m5_jax.evaluate import runner

# Saves {'params': 8 x 2 MB arrays filled with the step number} at steps 1, 2, ... (async).
_SAVER = textwrap.dedent('''
    import sys
    import numpy as np
    import ml_collections
    from m5_jax import checkpointing
    ckpt = checkpointing.Checkpointer(sys.argv[1], ml_collections.ConfigDict(
        dict(keep=0, keep_every=0, async_save=True)))
    for step in range(1, 100000):
      tree = {'params': {f'w{i}': np.full((512, 1024), float(step), np.float32) for i in range(8)}}
      ckpt.save(step, tree, {'step': step})
      print('saving', step, flush=True)
''')


def _ckpt_config(**kwargs):
  return ml_collections.ConfigDict(dict(dict(keep=0, keep_every=0, async_save=True), **kwargs))


def _partial_steps(workdir) -> set[int]:
  directory = checkpointing.checkpoint_dir(workdir)
  names = os.listdir(directory) if os.path.isdir(directory) else []
  return {int(n.split('.')[0]) for n in names if 'tmp' in n}


def test_kill_9_mid_save_watching_evaluator_and_restart_never_read_the_partial_step(tmp_path):
  """An evaluator in --watch mode (the runner's own loop and checkpoint listing) runs while
  a writer saves checkpoints and is killed with SIGKILL mid-save: every step it evaluates
  is complete, the partial step is never read, and a restarted writer resumes from the
  last complete step and can write the partial step's number again."""
  workdir = str(tmp_path)
  proc = subprocess.Popen([sys.executable, '-c', _SAVER, workdir], stdout=subprocess.DEVNULL,
                          env=dict(os.environ, JAX_PLATFORMS='cpu'))
  evaluated, killed = [], {}
  try:
    deadline = time.time() + 120
    while not checkpointing.list_steps(workdir) and time.time() < deadline:
      time.sleep(0.05)
    assert checkpointing.list_steps(workdir), 'the writer saved nothing in 120 s'

    def evaluate_step(step):
      got_step, params = checkpointing.restore_params(workdir, step)
      values = {float(np.asarray(x).min()) for x in jax.tree.leaves(params)} | {
          float(np.asarray(x).max()) for x in jax.tree.leaves(params)}
      assert got_step == step and values == {float(step)}, (step, values)
      evaluated.append(step)

    def sleep_and_maybe_kill(seconds):
      if not killed and len(evaluated) >= 3 and _partial_steps(workdir):
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed['partial'] = _partial_steps(workdir)
      time.sleep(min(seconds, 0.05))

    options = runner.Options(workdir=workdir, watch=True, poll_s=0.05, watch_timeout_s=3.0)
    runner.run('kill_test', options, lambda: checkpointing.list_steps(workdir), evaluate_step,
               sleep=sleep_and_maybe_kill)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  assert killed, 'the writer was never caught mid-save'
  partial = killed['partial']
  complete = checkpointing.list_steps(workdir)
  assert partial and not partial & set(complete) and not partial & set(evaluated)
  assert evaluated == sorted(evaluated) and set(evaluated) <= set(complete)
  assert evaluated[-1] == complete[-1]   # the watcher caught up with the last complete step

  restarted = checkpointing.Checkpointer(workdir, _ckpt_config())
  latest = restarted.latest_step()
  assert latest == complete[-1] and min(partial) == latest + 1
  abstract = {'params': {f'w{i}': jax.ShapeDtypeStruct((512, 1024), np.float32, sharding=(
      jax.sharding.SingleDeviceSharding(jax.devices()[0]))) for i in range(8)}}
  state, data_state = restarted.restore(latest, abstract)
  assert data_state == {'step': latest} and float(state['params']['w7'][-1, -1]) == latest
  restarted.save(latest + 1, state, {'step': latest + 1})
  restarted.close()
  assert checkpointing.list_steps(workdir)[-1] == latest + 1
  assert not _partial_steps(workdir)  # the restart cleaned the partial step up


# ----------------------------------------------------------------------------- unwritable, full

_FILE_SIZE_LIMITED_SAVER = textwrap.dedent('''
    import resource, signal, sys
    import numpy as np
    import ml_collections
    from m5_jax import checkpointing
    ckpt = checkpointing.Checkpointer(sys.argv[1], ml_collections.ConfigDict(
        dict(keep=0, keep_every=0, async_save=True)))
    rng = np.random.default_rng(0)
    ckpt.save(1, {'params': {'w': rng.random((512, 1024), np.float32)}}, {'step': 1})
    ckpt.wait()
    # From here on the kernel refuses to grow any file past 100 kB (EFBIG), as a full
    # disk would (ENOSPC): the next checkpoint's data file cannot be written.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))
    try:
      ckpt.save(2, {'params': {'w': rng.random((512, 1024), np.float32)}}, {'step': 2})
      ckpt.close()
    except checkpointing.CheckpointWriteError as e:
      print('ERROR', e)
      sys.exit(3)
''')


def test_a_write_failure_mid_save_is_one_clear_error_and_leaves_no_corrupt_step(tmp_path):
  """A real kernel write failure (RLIMIT_FSIZE) during an async save."""
  result = subprocess.run([sys.executable, '-c', _FILE_SIZE_LIMITED_SAVER, str(tmp_path)],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert result.returncode == 3, result.stderr[-2000:]
  (line,) = [l for l in result.stdout.splitlines() if l.startswith('ERROR')]
  assert line.startswith(f'ERROR could not write checkpoint step 2 to {tmp_path}/checkpoints: ')
  assert 'File too large' in line and 'the last complete checkpoint is step 1' in line
  assert checkpointing.list_steps(str(tmp_path)) == [1]
  step, params = checkpointing.restore_params(str(tmp_path))
  assert step == 1 and params['w'].shape == (512, 1024)


def test_unwritable_workdir_is_one_line_before_any_compile(tmp_path, capsys):
  from m5_jax import train  # pylint: disable=g-import-not-at-top
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  args = ['--config', 'configs/m5_mmt.py:runlocal,modalities=t',
          '--config.input.dataset=synthetic', '--workdir', str(blocker / 'run')]
  cwd = os.getcwd()
  os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  try:
    assert train.main(args) == 1
  finally:
    os.chdir(cwd)
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1] == (f'm5_jax.train: error: workdir {blocker}/run is not writable (Not a '
                     'directory); give a writable --workdir')


@pytest.mark.skipif(os.geteuid() == 0, reason='root ignores directory permissions')
def test_read_only_workdir_is_one_line(tmp_path):
  workdir = tmp_path / 'ro'
  workdir.mkdir()
  workdir.chmod(0o555)
  try:
    with pytest.raises(checkpointing.CheckpointWriteError, match='is not writable'):
      checkpointing.check_writable(str(workdir))
  finally:
    workdir.chmod(0o755)
