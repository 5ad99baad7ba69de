"""Training under faults: preemption (SIGTERM at random steps and during an async save),
a non-finite loss at step k, an unwritable or full checkpoint disk.

The preemption test runs the train loop in this process (a real SIGTERM to itself,
caught by the train binary's handler) so that the restarts reuse one compiled step
(`train.compile_cached`); tests/test_train.py kills the real binary once.
"""
import os
import shutil
import signal
import sys

import jax
import numpy as np
import pytest

from m5_jax import checkpointing
from m5_jax import train
from tests import state_testlib
pytest.register_assert_rewrite('train_fixtures')
from train_fixtures import REFERENCE, REFERENCE_STEPS, TINY, parse  # pylint: disable=g-import-not-at-top

pytest_plugins = ['m5_fixtures', 'train_fixtures']
PREEMPTION_SEED = 20261125
ASYNC_SAVE_STEP = 12   # a periodic checkpoint of the reference config (every 4 steps)


class _SigtermAtStep:
  """Wraps the input iterator: SIGTERM to this process when step `at` asks for its batch."""

  def __init__(self, data, start_step: int, at: int):
    self._data, self._step, self._at = data, start_step, at

  def __next__(self):
    if self._step == self._at:
      os.kill(os.getpid(), signal.SIGTERM)
    self._step += 1
    return next(self._data)

  def __getattr__(self, name):
    return getattr(self._data, name)


def _run(config, workdir, monkeypatch, *, sigterm_at_step=None, sigterm_after_save=None):
  """One (re)start of the train loop with one SIGTERM hook; -> the async-save evidence."""
  start = max(checkpointing.list_steps(workdir) or [0])
  evidence = {}
  with monkeypatch.context() as m:
    if sigterm_at_step is not None:
      create_input = train.create_input
      m.setattr(train, 'create_input', lambda c, mesh: _SigtermAtStep(
          create_input(c, mesh), start, sigterm_at_step))
    if sigterm_after_save is not None:
      save = checkpointing.Checkpointer.save

      def save_then_sigterm(self, step, *args, **kwargs):
        started = save(self, step, *args, **kwargs)
        if step == sigterm_after_save and not evidence:
          # The async save has started, not finished: its temporary directory exists.
          evidence['in_flight'] = [n for n in os.listdir(self.directory)
                                   if n.startswith(f'{step}.') and 'tmp' in n]
          os.kill(os.getpid(), signal.SIGTERM)
        return started
      m.setattr(checkpointing.Checkpointer, 'save', save_then_sigterm)
    train.train(config, workdir)
  return evidence


def test_sigterm_at_three_random_steps_and_during_an_async_save(reference_run, tmp_path,
                                                                 monkeypatch, capsys):
  """Every restart resumes where the last one stopped; the end state equals the
  uninterrupted reference run's bit for bit."""
  rng = np.random.default_rng(PREEMPTION_SEED)
  at_steps = sorted(rng.choice(np.arange(1, REFERENCE_STEPS - 1), 3, replace=False).tolist())
  with capsys.disabled():
    print(f'\n[preemption] seed {PREEMPTION_SEED}: SIGTERM during steps {at_steps}, and during '
          f'the async save of step {ASYNC_SAVE_STEP}')
  config = parse(REFERENCE + [f'--config.total_steps={REFERENCE_STEPS}'])
  workdir = str(tmp_path)
  events = [('step', k) for k in at_steps] + [('save', ASYNC_SAVE_STEP)]
  events.sort(key=lambda e: e[1] + (0.5 if e[0] == 'save' else 0))
  for kind, at in events:
    before = checkpointing.list_steps(workdir)
    if before and at < max(before):   # already past it (a random step before the save)
      continue
    if kind == 'step':
      _run(config, workdir, monkeypatch, sigterm_at_step=at)
      expected_stop = at + 1          # step `at` finishes, then the loop saves and exits
    else:
      evidence = _run(config, workdir, monkeypatch, sigterm_after_save=at)
      assert evidence['in_flight'], 'the SIGTERM did not arrive during an async save'
      expected_stop = at
    steps = checkpointing.list_steps(workdir)
    assert max(steps) == expected_stop, (kind, at, steps)
  _run(config, workdir, monkeypatch)
  assert max(checkpointing.list_steps(workdir)) == REFERENCE_STEPS
  _, expected = checkpointing.restore_params(reference_run)
  _, resumed = checkpointing.restore_params(workdir)
  assert state_testlib.tree_equal(resumed, expected)


# ----------------------------------------------------------------------------- non-finite loss

NONFINITE_SKIP_STEP = 22   # logged step numbers (1 = the first update)
NONFINITE_STOP_STEP = 8    # also a checkpoint step: the stop must come before that save


class _PoisonAtStep:
  """Wraps the input iterator: logged step `at` gets text token ids past the vocabulary
  (a corrupt batch; the embedding lookup returns NaN, so the loss is NaN)."""

  def __init__(self, data, start_step: int, at: int):
    self._data, self._step, self._at, self.poisoned_now = data, start_step, at, False

  def __next__(self):
    self._step += 1
    batch = next(self._data)
    self.poisoned_now = self._step == self._at
    if self.poisoned_now:
      ids = batch['text']['ids']
      batch = dict(batch, text=dict(batch['text'], ids=jax.device_put(
          np.full(ids.shape, 10**6, np.int32), ids.sharding)))
    return batch

  def __getattr__(self, name):
    return getattr(self._data, name)


def _run_poisoned(config, workdir, monkeypatch, at):
  """Trains with step `at` poisoned; -> (params before, params after) that step."""
  seen = {}
  with monkeypatch.context() as m:
    create_input, compile_cached = train.create_input, train.compile_cached
    start = max(checkpointing.list_steps(workdir) or [0])
    m.setattr(train, 'create_input', lambda c, mesh: seen.setdefault(
        'data', _PoisonAtStep(create_input(c, mesh), start, at)))

    def compile_and_watch(lowered):
      compiled = compile_cached(lowered)

      def step(state, batch):
        if not seen['data'].poisoned_now:
          return compiled(state, batch)
        seen['before'] = jax.device_get(state['params'])  # (the state is donated)
        state, metrics = compiled(state, batch)
        seen['after'] = jax.device_get(state['params'])
        return state, metrics
      return step
    m.setattr(train, 'compile_cached', compile_and_watch)
    train.train(config, workdir)
  return seen['before'], seen['after']


def _resume_from_reference(reference_run, workdir, step=4):
  """Starts `workdir` from a copy of the reference run's checkpoint `step` (no init compile)."""
  shutil.copytree(os.path.join(checkpointing.checkpoint_dir(reference_run), str(step)),
                  os.path.join(checkpointing.checkpoint_dir(workdir), str(step)))


def _assert_checkpoint_equals_reference(workdir, reference_run, step):
  _, got = checkpointing.restore_params(workdir, step=step)
  _, want = checkpointing.restore_params(reference_run, step=step)
  assert state_testlib.tree_equal(got, want), f'checkpoint {step} differs from the reference'


def test_nonfinite_loss_stop_names_the_step_and_keeps_the_checkpoint_before(
    reference_run, tmp_path, monkeypatch):
  config = parse(REFERENCE + [f'--config.total_steps={REFERENCE_STEPS}',
                              '--config.nonfinite=stop'])
  _resume_from_reference(reference_run, str(tmp_path))
  with pytest.raises(FloatingPointError,
                     match=rf'non-finite loss \(nan\) at step {NONFINITE_STOP_STEP};'):
    _run_poisoned(config, str(tmp_path), monkeypatch, NONFINITE_STOP_STEP)
  assert checkpointing.list_steps(str(tmp_path)) == [4]   # nothing saved at or after step 8
  _assert_checkpoint_equals_reference(str(tmp_path), reference_run, 4)


def test_nonfinite_loss_skip_leaves_the_state_unchanged_and_goes_on(
    reference_run, tmp_path, monkeypatch):
  from m5_jax import train_logging  # pylint: disable=g-import-not-at-top
  config = parse(REFERENCE + [f'--config.total_steps={REFERENCE_STEPS}',
                              '--config.nonfinite=skip'])
  _resume_from_reference(reference_run, str(tmp_path), step=20)
  before, after = _run_poisoned(config, str(tmp_path), monkeypatch, NONFINITE_SKIP_STEP)
  assert state_testlib.tree_equal(before, after)   # the poisoned update was not applied
  rows = {r['step']: r for r in train_logging.read_metrics(str(tmp_path))}
  assert rows[NONFINITE_SKIP_STEP]['skipped'] == 1.0
  assert all(rows[s]['skipped'] == 0.0 for s in rows if s != NONFINITE_SKIP_STEP)
  assert min(rows) == 21   # resumed after the copied checkpoint
  assert checkpointing.list_steps(str(tmp_path)) == [20, REFERENCE_STEPS]
  _assert_checkpoint_equals_reference(str(tmp_path), reference_run, 20)
  _, final = checkpointing.restore_params(str(tmp_path))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(final))


# ----------------------------------------------------------------------------- disk full


def test_disk_full_during_a_train_checkpoint_is_one_line_and_keeps_the_last_one(
    reference_run, tmp_path, monkeypatch, capsys):
  """The array writer fails with ENOSPC while step 8's (async) checkpoint is written
  (simulated in-process: Orbax's array-writing coroutine raises ENOSPC, as the tensorstore
  write does when the disk is full; tests/test_reliability_checkpoint.py has a real kernel write failure)."""
  import errno  # pylint: disable=g-import-not-at-top
  from orbax.checkpoint._src.serialization import serialization  # pylint: disable=g-import-not-at-top
  _resume_from_reference(reference_run, str(tmp_path))
  save = checkpointing.Checkpointer.save

  def save_onto_a_full_disk(self, step, *args, **kwargs):
    if step == 8:
      async def disk_full(*unused_args, **unused_kwargs):
        raise OSError(errno.ENOSPC, 'No space left on device')
      monkeypatch.setattr(serialization, 'async_serialize_from_host', disk_full)
    return save(self, step, *args, **kwargs)
  monkeypatch.setattr(checkpointing.Checkpointer, 'save', save_onto_a_full_disk)
  args = REFERENCE + [f'--config.total_steps={REFERENCE_STEPS}', '--workdir', str(tmp_path)]
  monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert train.main(args) == 1
  last = capsys.readouterr().err.strip().splitlines()[-1]
  assert last.startswith(f'm5_jax.train: error: could not write checkpoint step 8 to {tmp_path}')
  assert 'No space left on device' in last and 'the last complete checkpoint is step 4' in last
  assert checkpointing.list_steps(str(tmp_path)) == [4]
  _assert_checkpoint_equals_reference(str(tmp_path), reference_run, 4)


# ----------------------------------------------------------------------------- processes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from benchmarks.reliability import checkpoint_faults  # noqa: E402  pylint: disable=wrong-import-position
NO_STEPS = TINY + ['--config.total_steps=0']   # init + a step-0 checkpoint, no compile


def _main(args, monkeypatch, capsys):
  """train.main in this process (no train-step compile allowed) -> (code, stderr errors)."""
  monkeypatch.chdir(REPO)
  monkeypatch.setattr(train, 'compile_cached', lambda *a: pytest.fail('compiled'))
  capsys.readouterr()
  code = train.main(args)
  return code, [l for l in capsys.readouterr().err.splitlines()
                if 'm5_jax.train: error' in l or 'Traceback' in l]


def test_a_second_trainer_on_a_workdir_is_refused_in_one_line_and_a_dead_ones_lock_is_stale(
    tmp_path, monkeypatch, capsys):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'run')
  holder = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])
  try:
    checkpoint_faults.write_lock(workdir, holder.pid)
    code, errors = _main(NO_STEPS + ['--workdir', workdir], monkeypatch, capsys)
    assert code == 1 and len(errors) == 1, errors
    assert errors[0].startswith(f'm5_jax.train: error: workdir {workdir} is in use by another '
                                f'trainer (pid {holder.pid} on ')
    assert errors[0].endswith(f'delete {workdir}/{checkpointing.LOCK_FILENAME} if that trainer '
                              'is gone (a lock of another host expires 300 s after its last '
                              'heartbeat)')
    assert not os.path.exists(os.path.join(workdir, 'checkpoints'))
  finally:
    holder.kill()
    holder.wait()
  # The holder is dead: its lock is stale and taken over; released at the end.
  code, errors = _main(NO_STEPS + ['--workdir', workdir], monkeypatch, capsys)
  assert code == 0 and not errors
  assert checkpointing.list_steps(workdir) == [0]
  assert not os.path.exists(os.path.join(workdir, checkpointing.LOCK_FILENAME))


def test_the_workdir_lock_of_another_host_is_refused_and_only_process_0_takes_it(tmp_path,
                                                                                 monkeypatch):
  import time  # pylint: disable=g-import-not-at-top
  path = checkpoint_faults.write_lock(str(tmp_path), 4242, host='another-host')
  with pytest.raises(checkpointing.WorkdirLockedError, match='pid 4242 on another-host'):
    checkpointing.WorkdirLock(str(tmp_path)).acquire()
  # Its heartbeat stopped 10 minutes ago (a trainer killed there): stale, taken over.
  os.utime(path, (time.time() - 600, time.time() - 600))
  monkeypatch.setattr(checkpointing.WorkdirLock, 'HEARTBEAT_S', 0.05)
  with checkpointing.WorkdirLock(str(tmp_path)) as lock:
    with open(lock.path) as f:
      assert f'"pid": {os.getpid()}' in f.read()
    os.utime(lock.path, (time.time() - 600, time.time() - 600))
    time.sleep(0.5)
    assert time.time() - os.path.getmtime(lock.path) < 5   # the holder's heartbeat
  assert not os.path.exists(path)
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  with checkpointing.WorkdirLock(str(tmp_path)):
    assert not os.listdir(tmp_path)   # process 1 leaves the lock to process 0
  monkeypatch.setattr(jax, 'process_index', lambda: 0)
  with checkpointing.WorkdirLock(str(tmp_path)) as lock:
    assert os.path.isfile(lock.path)
    with pytest.raises(checkpointing.WorkdirLockedError):  # held by this very trainer
      other = checkpointing.WorkdirLock(str(tmp_path))
      monkeypatch.setattr(os, 'getpid', lambda: 1)     # as seen from another process
      other.acquire()
  assert not os.path.exists(lock.path)


def test_sigterm_during_start_up_saves_and_returns_0(tmp_path, monkeypatch, capsys):
  """SIGTERM while the run restores (before any compile): the start step is saved and
  main returns 0, the documented preemption exit, not death by signal (-15)."""
  restore_latest = checkpointing.Checkpointer.restore_latest

  def sigterm_then_restore(self, *args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return restore_latest(self, *args, **kwargs)
  monkeypatch.setattr(checkpointing.Checkpointer, 'restore_latest', sigterm_then_restore)
  previous = signal.getsignal(signal.SIGTERM)
  workdir = str(tmp_path)
  code, errors = _main(TINY + ['--config.total_steps=5', '--workdir', workdir], monkeypatch,
                       capsys)
  assert code == 0 and not errors
  assert checkpointing.list_steps(workdir) == [0]
  assert signal.getsignal(signal.SIGTERM) == previous   # the handler is put back


@pytest.mark.parametrize('name', ['sigterm_start_up', 'failed_save_exit', 'corrupt_latest'])
def test_the_real_binary_under_the_fault(name, tmp_path):
  """The suite's cases (benchmarks/reliability/checkpoint_faults.py) that need a real
  process: SIGTERM to a starting trainer exits 0 with its start step saved; a failed save
  (Orbax's threads left waiting 5 minutes) exits 1 at once; a restart over a damaged
  latest checkpoint moves it aside and resumes from the step before."""
  (case,) = [c for c in checkpoint_faults.CASES if c.name == name]
  result = case.run(str(tmp_path))
  assert result['problems'] == [] and result['survived'] and result['items_lost'] == 0, result
  if name == 'failed_save_exit':  # the binary ends through exit_promptly, crashes included
    with open(os.path.join(REPO, 'm5_jax', 'train.py')) as f:
      assert f.read().rstrip().endswith("if __name__ == '__main__':\n  run_main(sys.argv[1:])")


def test_run_main_ends_through_exit_promptly_after_an_error_or_a_crash(monkeypatch):
  ended = []
  monkeypatch.setattr(train, 'exit_promptly', lambda code: ended.append(code) or code)
  for outcome, want in ((lambda argv: 1, 1), (lambda argv: 0, 0), (lambda argv: 1 / 0, 1)):
    monkeypatch.setattr(train, 'main', outcome)
    with pytest.raises(SystemExit) as e:
      train.run_main([])
    assert e.value.code == want and ended[-1] == want
