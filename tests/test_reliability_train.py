"""Training under faults: preemption (SIGTERM at random steps and during an async save),
a non-finite loss at step k, an unwritable or full checkpoint disk.

The preemption test runs the train loop in this process (a real SIGTERM to itself,
caught by the train binary's handler) so that the restarts reuse one compiled step
(`train.compile_cached`); tests/test_train.py kills the real binary once.
"""
import os
import signal

import jax
import numpy as np
import pytest

from m5_jax import checkpointing
from m5_jax import train
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
  assert checkpointing.tree_equal(resumed, expected)
