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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.reliability import checkpoint_faults  # noqa: E402  pylint: disable=wrong-import-position

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


# ----------------------------------------------------------------------------- unreadable steps


def test_a_corrupt_latest_step_is_moved_aside_and_the_one_before_restored(tmp_path, caplog):
  workdir = str(tmp_path)
  abstract = checkpoint_faults.save_steps(workdir, [1, 2, 3])
  directory = checkpointing.checkpoint_dir(workdir)
  checkpoint_faults.truncate_largest_data_file(os.path.join(directory, '3'))
  ckpt = checkpointing.Checkpointer(workdir, _ckpt_config())
  try:
    step, state, data_state = ckpt.restore_latest(abstract, workdir)
  finally:
    ckpt.close()
  assert step == 2 and data_state == {'step': 2}
  assert float(np.asarray(state['params']['w']).min()) >= 2.0
  aside = [n for n in os.listdir(directory) if n.startswith('3.corrupt-')]
  assert len(aside) == 1 and checkpointing.list_steps(workdir) == [1, 2]
  assert any('IS UNREADABLE' in r.message and 'moved it to' in r.message for r in caplog.records)


def test_every_step_unreadable_is_one_line_and_all_are_moved_aside(tmp_path):
  workdir = str(tmp_path)
  abstract = checkpoint_faults.save_steps(workdir, [1, 2])
  for step in (1, 2):
    checkpoint_faults.half_delete(os.path.join(checkpointing.checkpoint_dir(workdir), str(step)))
  ckpt = checkpointing.Checkpointer(workdir, _ckpt_config())
  try:
    with pytest.raises(checkpointing.UnreadableCheckpointError,
                       match=r'moved 2 unreadable step\(s\) aside .* run again to start at step 0'):
      ckpt.restore_latest(abstract, workdir)
  finally:
    ckpt.close()
  assert checkpointing.list_steps(workdir) == []


def test_an_evaluator_skips_a_half_deleted_step_with_a_warning(tmp_path, caplog):
  """--all over steps 1..3 with step 2 half deleted (kill -9 during the keep policy's
  delete): 1 and 3 are evaluated, 2 is skipped and reported; the default mode (latest)
  falls back to the newest readable step."""
  workdir = str(tmp_path)
  checkpoint_faults.save_steps(workdir, [1, 2, 3])
  checkpoint_faults.half_delete(os.path.join(checkpointing.checkpoint_dir(workdir), '2'))
  assert checkpointing.list_steps(workdir) == [1, 2, 3]   # still listed: it must be skipped

  def evaluate_step(step):
    got, params = checkpointing.restore_params(workdir, step)
    assert got == step and int(np.asarray(params['w']).min()) == step

  list_steps = lambda: checkpointing.list_steps(workdir)  # noqa: E731
  options = runner.Options(workdir=workdir, all=True)
  assert runner.run('skip_test', options, list_steps, evaluate_step) == [1, 3]
  assert any('skipped 1 unreadable checkpoint step(s): 2' in r.message for r in caplog.records)

  checkpoint_faults.half_delete(os.path.join(checkpointing.checkpoint_dir(workdir), '3'))
  latest = runner.Options(workdir=workdir, force=True)
  assert runner.run('skip_test', latest, list_steps, evaluate_step) == [1]
  with pytest.raises(FileNotFoundError, match='step 3 .* is unreadable'):
    runner.run('skip_test', runner.Options(workdir=workdir, step=3, force=True), list_steps,
               evaluate_step)
  assert sorted(os.listdir(checkpointing.checkpoint_dir(workdir))) == ['1', '2', '3']  # read-only


def test_resuming_with_another_model_is_one_line_naming_the_parameters(tmp_path, capsys,
                                                                       monkeypatch):
  """A workdir trained with vocabulary 256, restarted with 512: one line naming the
  parameters that differ (not Orbax's tree diff), and what to do instead."""
  from m5_jax import train  # pylint: disable=g-import-not-at-top
  tiny = ['--config', 'configs/m5_mmt.py:runlocal,modalities=t', '--config.input.dataset=synthetic',
          '--config.modality.text.max_len=8', '--config.model.encoder_layers=0',
          '--config.total_steps=0', '--workdir', str(tmp_path)]
  vocab = lambda n: [f'--config.model.vocab_size={n}', f'--config.modality.text.vocab_size={n}']  # noqa: E731
  monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  monkeypatch.setattr(train, 'compile_cached', lambda *a: pytest.fail('compiled'))
  assert train.main(tiny + vocab(256)) == 0
  capsys.readouterr()
  assert train.main(tiny + vocab(512)) == 1
  err = [l for l in capsys.readouterr().err.splitlines() if 'error' in l]
  assert len(err) == 1 and len(err[0]) < 800, err
  assert err[0] == (
      f'm5_jax.train: error: workdir {tmp_path} holds a checkpoint (step 0) of another model: 2 '
      'parameters differ: heads_text/bias (256,) in the checkpoint, (512,) in the config; '
      'word_embed/embedding (256, 64) in the checkpoint, (512, 64) in the config. Start fresh '
      'with a new --workdir, or start a new workdir from its weights with '
      f'--config.init_from.path={tmp_path}')
  assert checkpointing.list_steps(str(tmp_path)) == [0]   # nothing moved aside or deleted
  assert config_lib_vocab(tmp_path) == 256                  # config.json not overwritten


def config_lib_vocab(workdir) -> int:
  from m5_jax import config_lib  # pylint: disable=g-import-not-at-top
  return config_lib.load_workdir_config(str(workdir)).model.vocab_size
