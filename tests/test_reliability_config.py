"""Bad configs stop the train binary with one line that says what to change, no traceback,
before any compile. Run through `m5_jax.train.main` (what `python -m m5_jax.train` runs;
tests/test_config_lib.py also runs one case as a real subprocess)."""
import os

import pytest

from m5_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = ['--config', 'configs/m5_mmt.py:runlocal,modalities=t', '--config.input.dataset=synthetic']

CASES = {
    'unknown key': (['--config.optimizer.lrr=0.1'], 2,
                    "m5_jax.train: error: unknown config key 'optimizer.lrr'; did you mean "
                    "'optimizer.lr'?"),
    'wrong type': (['--config.input.batch_size=eight'], 2,
                   "m5_jax.train: error: bad value 'eight' for config key 'input.batch_size': "
                   "'eight' is not an integer; give an int, e.g. --config.input.batch_size=8 "
                   '(the current value)'),
    'impossible mesh': (['--config.mesh.data=3', '--config.mesh.fsdp=2'], 1,
                        'm5_jax.train: error: mesh (data=3, fsdp=2, tensor=1) needs 6 devices, '
                        'have 8; set --config.mesh.{data,fsdp,tensor} so that their product is 8 '
                        '(one of them may be -1: the remaining devices)'),
    'batch not divisible': (['--config.mesh.data=4', '--config.mesh.fsdp=2',
                             '--config.input.batch_size=12'], 1,
                            "m5_jax.train: error: global batch size 12 is not divisible by the 8 "
                            "batch shards of mesh {'data': 4, 'fsdp': 2, 'tensor': 1}; set "
                            '--config.input.batch_size to a multiple of 8 (or change config.mesh)'),
}


@pytest.mark.parametrize('case', list(CASES))
def test_bad_config_is_one_line_saying_what_to_change(case, tmp_path, capsys, monkeypatch):
  overrides, want_code, want_line = CASES[case]
  monkeypatch.chdir(REPO)

  def no_compile(*args, **kwargs):
    raise AssertionError('compiled despite a bad config')
  monkeypatch.setattr(train, 'compile_cached', no_compile)
  try:
    code = train.main(BASE + overrides + ['--workdir', str(tmp_path / 'run')])
  except SystemExit as e:   # argument errors exit from config_lib.exit_with
    code = e.code
  err = capsys.readouterr().err
  assert code == want_code
  assert 'Traceback' not in err
  errors = [line for line in err.splitlines() if 'error' in line.lower()]
  assert errors == [want_line] or errors[-1].startswith(want_line), err[-2000:]
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints')
