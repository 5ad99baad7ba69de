"""Strict configs: args, overrides with nearest-key errors, durations, workdir round trip."""
import glob
import os
import subprocess
import sys
import time

import ml_collections
import pytest

from m5_jax import config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config():
  return ml_collections.ConfigDict({
      'seed': 0, 'modalities': ('text', 'image'), 'name': 'x', 'flag': False,
      'optimizer': {'lr': 1e-3, 'betas': (0.9, 0.98), 'freeze': ''},
      'total_steps': 100, 'total_epochs': None, 'total_examples': None,
      'maybe': None})


def test_parse_arg_types_and_bare_flags():
  args = config_lib.parse_arg('size=tiny,runlocal,batch_size=16', size='base', runlocal=False,
                              batch_size=256)
  assert (args.size, args.runlocal, args.batch_size) == ('tiny', True, 16)


def test_parse_arg_unknown_names_the_nearest():
  with pytest.raises(config_lib.ConfigError, match="unknown config argument 'sise'; did you mean 'size'"):
    config_lib.parse_arg('sise=tiny', size='base', runlocal=False)


def test_overrides_parse_by_current_type():
  c = config_lib.apply_overrides(_config(), [
      ('seed', '7'), ('optimizer.lr', '3e-4'), ('flag', 'true'), ('modalities', 'text,table'),
      ('optimizer.betas', '(0.8, 0.9)'), ('name', 'run 1'), ('maybe', '[1, 2]')])
  assert c.seed == 7 and c.optimizer.lr == 3e-4 and c.flag is True
  assert c.modalities == ('text', 'table') and c.optimizer.betas == (0.8, 0.9)
  assert c.name == 'run 1' and c.maybe == [1, 2]


@pytest.mark.parametrize('key,value,message', [
    ('optimizer.lrr', '1', "unknown config key 'optimizer.lrr'; did you mean 'optimizer.lr'?"),
    ('optimiser.lr', '1', "did you mean 'optimizer.lr'?"),
    ('seed', 'abc', "bad value 'abc' for config key 'seed': 'abc' is not an integer; give an "
                    "int, e.g. --config.seed=0"),
    ('flag', 'maybe', "bad value 'maybe' for config key 'flag'"),
    ('optimizer', '1', "config key 'optimizer' is a group"),
])
def test_bad_overrides_give_one_line(key, value, message):
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.apply_overrides(_config(), [(key, value)])
  assert message in str(e.value) and '\n' not in str(e.value)


def test_duration_override_clears_the_other_units():
  c = config_lib.apply_overrides(_config(), [('total_epochs', '3')])
  assert (c.total_steps, c.total_epochs) == (None, 3)
  assert config_lib.to_steps(c, 'total', batch_size=10, examples_per_epoch=95) == 29


def test_to_steps_units_and_errors():
  node = ml_collections.ConfigDict({'x_steps': None, 'x_epochs': None, 'x_examples': 1001})
  assert config_lib.to_steps(node, 'x', batch_size=10) == 101
  node.x_examples = None
  assert config_lib.to_steps(node, 'x', batch_size=10, default=5) == 5
  node.x_epochs = 2
  with pytest.raises(config_lib.ConfigError, match='epoch size'):
    config_lib.to_steps(node, 'x', batch_size=10)
  node.x_steps = 3
  with pytest.raises(config_lib.ConfigError, match='set only one of x_steps, x_epochs'):
    config_lib.to_steps(node, 'x', batch_size=10)


def test_workdir_config_round_trip(tmp_path):
  c = _config()
  config_lib.save_workdir_config(c, str(tmp_path))
  back = config_lib.load_workdir_config(str(tmp_path))
  assert back.modalities == ('text', 'image') and back.optimizer.lr == 1e-3
  assert back.to_dict() == c.to_dict()


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(REPO, 'configs', '[a-z]*.py'))))
def test_every_config_loads_with_runlocal(path):
  if os.path.basename(path) == 'common.py':
    pytest.skip('library')
  if os.path.basename(path) == 'matrix.py':  # the benchmark matrix's, not a train config
    assert config_lib.load_config(f'{path}:size=smoke').pretrain.size == 'tiny'
    return
  config = config_lib.load_config(f'{path}:runlocal')
  assert config.model.size == 'tiny' and config.input.batch_size == 8
  assert config.total_steps == 20
  with open(path) as f:
    assert f.read().startswith('"""python -m m5_jax.train --config configs/')


def test_command_line_parses_config_and_flags():
  config, flags = config_lib.parse_command_line(
      ['--config', 'configs/clip.py:size=tiny', '--workdir=/tmp/x', '--config.seed', '3'],
      {'workdir': ''})
  assert flags['workdir'] == '/tmp/x' and config.seed == 3 and config.model.method == 'clip'
  with pytest.raises(config_lib.ConfigError, match="unknown flag '--workdri'; did you mean '--workdir'"):
    config_lib.parse_command_line(['--config', 'configs/clip.py', '--workdri=x'], {'workdir': ''})



def test_parse_flags_types_values_and_keeps_overrides_in_order():
  values, overrides = config_lib.parse_flags(
      ['--steps', '7', '--all', '--config.a.b=1', '--name=x', '--config.a.b', '2'],
      {'steps': 0, 'all': False, 'name': ''})
  assert values == {'steps': 7, 'all': True, 'name': 'x'}
  assert overrides == [('a.b', '1'), ('a.b', '2')]
  with pytest.raises(config_lib.ConfigError, match="bad value 'x' for --steps"):
    config_lib.parse_flags(['--steps=x'], {'steps': 0})
  with pytest.raises(config_lib.ConfigError, match='--steps needs a value'):
    config_lib.parse_flags(['--steps'], {'steps': 0})


def test_help_prints_the_docstring_and_the_flags(capsys):
  with pytest.raises(SystemExit) as exit_info:
    config_lib.parse_flags(['--steps=2', '--help'], {'steps': 3}, 'A tool.')
  out = capsys.readouterr().out
  assert exit_info.value.code == 0 and out.startswith('A tool.') and '--steps=3' in out

BINARIES = ['m5_jax.train'] + [f'm5_jax.evaluate.{task}' for task in (
    'coarse_retrieval', 'fine_retrieval', 'classification', 'clustering')]


def run_binary(binary: str, args, timeout: float = 120) -> tuple[int, list[str], float]:
  """(exit code, non-empty stderr lines, seconds) of `python -m BINARY ARGS`."""
  start = time.time()
  proc = subprocess.run([sys.executable, '-m', binary, *args], cwd=REPO, capture_output=True,
                        text=True, timeout=timeout)
  return proc.returncode, [l for l in proc.stderr.splitlines() if l.strip()], time.time() - start


@pytest.mark.parametrize('binary', BINARIES)
def test_binary_bad_override_is_one_clean_line(binary, tmp_path):
  code, lines, _ = run_binary(binary, ['--config', 'configs/m5_mmt.py:size=tiny', '--workdir',
                                       str(tmp_path), '--config.optimizer.lrr=0.1'])
  assert code == 2
  assert lines == [f"{binary}: error: unknown config key 'optimizer.lrr'; "
                   "did you mean 'optimizer.lr'?"], lines
  assert not os.listdir(tmp_path)


def test_schema_choices_agree_with_the_code():
  from m5_jax import objectives  # pylint: disable=g-import-not-at-top
  from m5_jax import sharding  # pylint: disable=g-import-not-at-top
  from m5_jax.evaluate import features  # pylint: disable=g-import-not-at-top
  from m5_jax.evaluate import model_features  # pylint: disable=g-import-not-at-top
  from m5_jax.models import sizes  # pylint: disable=g-import-not-at-top
  assert config_lib.MODEL_SIZES == tuple(sizes.SIZES)
  assert set(config_lib.SHARDING_PRESETS) | set(config_lib.SHARDING_ALIASES) == set(
      sharding.RULE_PRESETS)
  assert sharding.RULE_PRESETS['data_parallel'] is sharding.RULE_PRESETS['dp']
  assert tuple(model_features.FEATURE_CHOICES) == config_lib.EVAL_FEATURES
  assert tuple(features.NORMALIZE_CHOICES) == config_lib.EVAL_NORMALIZE
  assert tuple(features.FUSION_CHOICES) == config_lib.EVAL_FUSION
  assert tuple(objectives.INSTANCE_VIEWS) == config_lib.INSTANCE_VIEWS


def test_validate_replaces_aliases_and_checks_only_present_keys():
  config = ml_collections.ConfigDict({'sharding': {'rules': 'fsdp_tensor'}, 'seed': 0})
  assert config_lib.validate(config).sharding.rules == 'fsdp_tp'
  config.sharding.rules = 'tp'
  with pytest.raises(config_lib.ConfigError, match="'sharding.rules': expected one of dp, fsdp"):
    config_lib.validate(config)


def test_binaries_do_not_import_tensorflow_before_parsing_flags():
  # TensorFlow prints banners to stderr on import on some CPUs (oneDNN, AVX-512), and
  # TF_CPP_MIN_LOG_LEVEL does not silence them: a flag error must come first.
  code = ('import sys\n' + ''.join(f'import {b}\n' for b in BINARIES) +
          'print(sorted(m for m in ("tensorflow", "clu") if m in sys.modules))')
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                        text=True, timeout=120, check=True)
  assert proc.stdout.strip() == '[]', proc.stdout
