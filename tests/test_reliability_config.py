"""Bad configs stop the binaries with one line that says what to change, no traceback,
before any data read or compile (issue 16).

The cases live in benchmarks/reliability/config_faults.py, shared with the reliability
suite's table. Here the train cases run through `m5_jax.train.main` (what
`python -m m5_jax.train` runs) in this process, with compiling and reading data made
errors; the eval-flag cases and a sample of the train cases run as real processes
(tests/test_config_lib.py also checks a bad override of every binary)."""
import os
import sys

import pytest

from m5_jax import config_lib
from m5_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks.reliability import config_faults  # noqa: E402  pylint: disable=wrong-import-position

TRAIN_CASES = [n for n, c in config_faults.CASES.items() if c[0] == config_faults.TRAIN]
PROCESS_CASES = [n for n, c in config_faults.CASES.items() if c[0] != config_faults.TRAIN] + [
    'negative batch', 'modality letters', 'train split', 'vocab smaller than the tokenizer']


@pytest.fixture(scope='module')
def fake_work(tmp_path_factory):
  work = str(tmp_path_factory.mktemp('config_faults'))
  config_faults.fake_paths(work)
  return work


@pytest.mark.parametrize('case', TRAIN_CASES)
def test_bad_config_is_one_line_saying_what_to_change(case, fake_work, tmp_path, capsys,
                                                      monkeypatch):
  _, args, want_code, want_line = config_faults.resolved(case, config_faults.fake_paths(fake_work))
  monkeypatch.chdir(REPO)

  def no_compile(*unused_args, **unused_kwargs):
    raise AssertionError('compiled despite a bad config')

  def no_data(*unused_args, **unused_kwargs):
    raise AssertionError('read data despite a bad config')
  monkeypatch.setattr(train, 'compile_cached', no_compile)
  monkeypatch.setattr(train, 'create_input', no_data)
  try:
    code = train.main(args + ['--workdir', str(tmp_path / 'run')])
  except SystemExit as e:   # argument errors exit from config_lib.exit_with
    code = e.code
  err = capsys.readouterr().err
  assert code == want_code
  assert 'Traceback' not in err
  errors = [line for line in err.splitlines() if 'error' in line.lower()]
  assert len(errors) == 1 and errors[0].startswith(want_line), err[-2000:]
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints')


@pytest.mark.parametrize('case', PROCESS_CASES)
def test_bad_config_as_a_process_is_one_stderr_line_within_seconds(case, fake_work):
  result = config_faults.run_case(case, fake_work)
  assert result['problems'] == [], result


def test_a_good_data_config_passes_the_start_up_checks(fake_work):
  paths = config_faults.fake_paths(fake_work)
  cwd = os.getcwd()
  os.chdir(REPO)
  try:
    config, _ = config_lib.parse_command_line(
        [config_faults.with_paths(a, paths) for a in config_faults.DATA])
  finally:
    os.chdir(cwd)
  train.check_input(config)  # no error: the build, the split and the tokenizer fit
  config.input.train_split = 'cls_train[:50%]'  # TFDS slicing of an existing split
  config.input.dataset = 'm5product/raw:1.0.0'    # an explicit version
  train.check_input(config)
  config.input.dataset = 'm5product/raw:2.0.0'
  with pytest.raises(config_lib.ConfigError, match='no complete build of m5product/raw:2.0.0'):
    train.check_input(config)
