"""Bad configs stop the train binary with one line that says what to change, no traceback,
before any data read or compile. Run through `m5_jax.train.main` (what `python -m m5_jax.train`
runs; tests/test_config_lib.py runs cases as real subprocesses and checks the time).

The data cases point at a fake TFDS build (only its dataset_info.json: the checks read
metadata, never examples) and a 300-piece sentencepiece model trained here."""
import json
import os
import random

import pytest

from m5_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = ['--config', 'configs/m5_mmt.py:runlocal,modalities=t', '--config.input.dataset=synthetic']
# A real-data run on the fake build ({data}) with the test tokenizer ({spm}).
DATA = ['--config', 'configs/m5_mmt.py:runlocal,modalities=tp,vocab_size=300',
        '--config.input.data_dir={data}', '--config.input.tokenizer={spm}']
SPLITS = ('pretrain', 'coarse_query', 'coarse_gallery', 'fine_query', 'fine_gallery', 'cls_train',
          'cls_test')
TOKENIZER_PIECES = 300

CASES = {
    'unknown key': (BASE + ['--config.optimizer.lrr=0.1'], 2,
                    "m5_jax.train: error: unknown config key 'optimizer.lrr'; did you mean "
                    "'optimizer.lr'?"),
    'wrong type': (BASE + ['--config.input.batch_size=eight'], 2,
                   "m5_jax.train: error: bad value 'eight' for config key 'input.batch_size': "
                   "'eight' is not an integer; give an int, e.g. --config.input.batch_size=8 "
                   '(the current value)'),
    'impossible mesh': (BASE + ['--config.mesh.data=3', '--config.mesh.fsdp=2'], 1,
                        'm5_jax.train: error: mesh (data=3, fsdp=2, tensor=1) needs 6 devices, '
                        'have 8; set --config.mesh.{data,fsdp,tensor} so that their product is 8 '
                        '(one of them may be -1: the remaining devices)'),
    'batch not divisible': (BASE + ['--config.mesh.data=4', '--config.mesh.fsdp=2',
                             '--config.input.batch_size=12'], 1,
                            "m5_jax.train: error: global batch size 12 is not divisible by the 8 "
                            "batch shards of mesh {'data': 4, 'fsdp': 2, 'tensor': 1}; set "
                            '--config.input.batch_size to a multiple of 8 (or change config.mesh)'),
    # issue 16: enum-like fields and ranges (config_lib.SCHEMA)
    'negative batch': (BASE + ['--config.input.batch_size=-8'], 2,
                       "m5_jax.train: error: bad value '-8' for config key 'input.batch_size': "
                       'must be >= 1'),
    'zero batch': (BASE + ['--config.input.batch_size=0'], 2,
                   "m5_jax.train: error: bad value '0' for config key 'input.batch_size': "
                   'must be >= 1'),
    'modality letters': (BASE + ['--config', 'configs/m5_mmt.py:runlocal,modalities=tpx'], 2,
                         "m5_jax.train: error: bad value 'tpx' for config argument 'modalities': "
                         "'x' unknown; expected letters from t (text), p (table), i (image), "
                         'v (video), a (audio)'),
    'size': (BASE + ['--config', 'configs/m5_mmt.py:runlocal,size=huge'], 2,
             "m5_jax.train: error: bad value 'huge' for config argument 'size': expected one of "
             'tiny, small, base, large'),
    'dataset': (BASE + ['--config.input.dataset=m5product/bogus'], 2,
                "m5_jax.train: error: bad value 'm5product/bogus' for config key 'input.dataset': "
                'expected one of synthetic, m5product/raw, m5product/features'),
    'sharding rules': (BASE + ['--config.sharding.rules=foo'], 2,
                       "m5_jax.train: error: bad value 'foo' for config key 'sharding.rules': "
                       'expected one of dp, fsdp, fsdp_tp'),
    'optimizer': (BASE + ['--config.optimizer.name=sgdx'], 2,
                  "m5_jax.train: error: bad value 'sgdx' for config key 'optimizer.name': expected "
                  'one of adamw'),
    'schedule': (BASE + ['--config.schedule.name=zigzag'], 2,
                 "m5_jax.train: error: bad value 'zigzag' for config key 'schedule.name': expected "
                 'one of cosine, linear, constant'),
    'microbatches': (BASE + ['--config.num_microbatches=3'], 2,
                     "m5_jax.train: error: config key 'num_microbatches' (3) must divide "
                     'input.batch_size (8); give a divisor, e.g. --config.num_microbatches=1'),
    'nonfinite': (BASE + ['--config.nonfinite=bogus'], 2,
                  "m5_jax.train: error: bad value 'bogus' for config key 'nonfinite': expected one "
                  'of stop, skip'),
    'instance weight': (BASE + ['--config.loss.instance_weight=-1'], 2,
                        "m5_jax.train: error: bad value '-1.0' for config key "
                        "'loss.instance_weight': must be >= 0"),
    # issue 16: the data and the tokenizer, checked from metadata
    'missing data_dir': (DATA + ['--config.input.data_dir={data}/nowhere'], 1,
                         "m5_jax.train: error: config key 'input.data_dir': {data}/nowhere does "
                         'not exist; give the directory that holds m5product/raw'),
    'empty data_dir': (DATA + ['--config.input.data_dir='], 1,
                       "m5_jax.train: error: config key 'input.data_dir' is empty; give the "
                       '--data_dir that holds m5product/raw'),
    'data_dir without the build': (DATA + ['--config.input.dataset=m5product/features'], 1,
                                   'm5_jax.train: error: no complete build of m5product/features '
                                   'in {data} (config.input.data_dir)'),
    'train split': (DATA + ['--config.input.train_split=bogus'], 1,
                    "m5_jax.train: error: config key 'input.train_split': 'bogus' is not a split "
                    'of m5product/raw in {data}/m5product/raw/1.0.0; its splits are '
                    + ', '.join(SPLITS)),
    'missing tokenizer': (DATA + ['--config.input.tokenizer={data}/none.model'], 1,
                          "m5_jax.train: error: config key 'input.tokenizer': {data}/none.model "
                          'not found; train one with `python -m data_prep.tokenizer'),
    'empty tokenizer': (DATA + ['--config.input.tokenizer='], 1,
                        "m5_jax.train: error: config key 'input.tokenizer' is empty, but text, "
                        'table need a sentencepiece model'),
    'not sentencepiece': (DATA + ['--config.input.tokenizer={data}/m5product/raw/1.0.0/'
                                  'dataset_info.json'], 1,
                          "m5_jax.train: error: config key 'input.tokenizer': "
                          '{data}/m5product/raw/1.0.0/dataset_info.json is not a sentencepiece '
                          'model of this project'),
    'vocab smaller than the tokenizer': (
        DATA + ['--config', 'configs/m5_mmt.py:runlocal,modalities=tp,vocab_size=200'], 1,
        "m5_jax.train: error: model.vocab_size=200, modality.text.vocab_size=200, "
        "modality.table.vocab_size=200 is smaller than the tokenizer's vocabulary (300 pieces in "
        '{spm}): its ids past the table would have no embedding (non-finite loss); set the '
        'config argument vocab_size=300'),
}


def write_fake_build(data_dir: str, spm_path: str) -> None:
  """A TFDS data_dir whose m5product/raw/1.0.0 holds only dataset_info.json, and a
  sentencepiece model of TOKENIZER_PIECES pieces (the project's special ids)."""
  from data_prep import tokenizer  # pylint: disable=g-import-not-at-top
  build = os.path.join(data_dir, 'm5product', 'raw', '1.0.0')
  os.makedirs(build)
  with open(os.path.join(build, 'dataset_info.json'), 'w') as f:
    json.dump({'name': 'm5product', 'fileFormat': 'array_record',
               'splits': [{'name': s} for s in SPLITS]}, f)
  rng = random.Random(0)
  words = [''.join(rng.choice('abcdefghijklmnop') for _ in range(rng.randint(2, 7)))
           for _ in range(300)]
  tokenizer.train([' '.join(rng.choice(words) for _ in range(8)) for _ in range(500)], spm_path,
                  vocab_size=TOKENIZER_PIECES)


@pytest.fixture(scope='module')
def fake_data(tmp_path_factory):
  root = tmp_path_factory.mktemp('fake_tfds')
  data, spm = str(root / 'data'), str(root / 'spm.model')
  write_fake_build(data, spm)
  return {'data': data, 'spm': spm}


def with_paths(text: str, fake: dict) -> str:
  return text.replace('{data}', fake['data']).replace('{spm}', fake['spm'])


@pytest.mark.parametrize('case', list(CASES))
def test_bad_config_is_one_line_saying_what_to_change(case, fake_data, tmp_path, capsys,
                                                      monkeypatch):
  args, want_code, want_line = CASES[case]
  args, want_line = [with_paths(a, fake_data) for a in args], with_paths(want_line, fake_data)
  monkeypatch.chdir(REPO)

  def no_compile(*args, **kwargs):
    raise AssertionError('compiled despite a bad config')

  def no_data(*args, **kwargs):
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


def test_a_good_data_config_passes_the_start_up_checks(fake_data):
  from m5_jax import config_lib  # pylint: disable=g-import-not-at-top
  cwd = os.getcwd()
  os.chdir(REPO)
  try:
    config, _ = config_lib.parse_command_line([with_paths(a, fake_data) for a in DATA])
  finally:
    os.chdir(cwd)
  train.check_input(config)  # no error: the build, the split and the tokenizer fit
  config.input.train_split = 'cls_train[:50%]'  # TFDS slicing of an existing split
  train.check_input(config)
