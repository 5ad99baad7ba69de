"""Argument and config defects (issue 16): each must stop the binary with one line, within
seconds, before any data read or compile.

    from benchmarks.reliability import config_faults
    result = config_faults.run_case(name, WORK_DIR)   # {'survived', 'problems', 'line', ...}

`CASES` maps a name to (binary, args, exit code, the start of the one stderr line).
Paths `{data}` and `{spm}` are a fake TFDS build (`write_fake_build`: only its
dataset_info.json, since the checks read metadata, never examples) and a 300-piece
sentencepiece model trained there. `run_case` runs the real binary as a process;
tests/test_reliability_config.py runs every case through `m5_jax.train.main` in
process (no compile, no data read allowed); the reliability suite
(benchmarks/reliability/run.py) tabulates them (tried, survived, items lost).
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = 'm5_jax.train'
BASE = ['--config', 'configs/m5_mmt.py:runlocal,modalities=t', '--config.input.dataset=synthetic']
# A real-data run on the fake build ({data}) with the test tokenizer ({spm}).
DATA = ['--config', 'configs/m5_mmt.py:runlocal,modalities=tp,vocab_size=300',
        '--config.input.data_dir={data}', '--config.input.tokenizer={spm}']
SPLITS = ('pretrain', 'coarse_query', 'coarse_gallery', 'fine_query', 'fine_gallery', 'cls_train',
          'cls_test')
TOKENIZER_PIECES = 300
MAX_SECONDS = 30   # a process that takes longer read data or compiled first

CASES: dict[str, tuple[str, list[str], int, str]] = {
    'unknown key': (TRAIN, BASE + ['--config.optimizer.lrr=0.1'], 2,
                    "unknown config key 'optimizer.lrr'; did you mean 'optimizer.lr'?"),
    'wrong type': (TRAIN, BASE + ['--config.input.batch_size=eight'], 2,
                   "bad value 'eight' for config key 'input.batch_size': 'eight' is not an "
                   'integer; give an int, e.g. --config.input.batch_size=8 (the current value)'),
    'impossible mesh': (TRAIN, BASE + ['--config.mesh.data=3', '--config.mesh.fsdp=2'], 1,
                        'mesh (data=3, fsdp=2, tensor=1) needs 6 devices, have 8; set '
                        '--config.mesh.{data,fsdp,tensor} so that their product is 8 (one of '
                        'them may be -1: the remaining devices)'),
    'batch not divisible': (TRAIN, BASE + ['--config.mesh.data=4', '--config.mesh.fsdp=2',
                                           '--config.input.batch_size=12'], 1,
                            "global batch size 12 is not divisible by the 8 batch shards of "
                            "mesh {'data': 4, 'fsdp': 2, 'tensor': 1}; set "
                            '--config.input.batch_size to a multiple of 8 (or change config.mesh)'),
    # Enum-like fields and ranges (m5_jax/config_lib.SCHEMA).
    'negative batch': (TRAIN, BASE + ['--config.input.batch_size=-8'], 2,
                       "bad value '-8' for config key 'input.batch_size': must be >= 1"),
    'zero batch': (TRAIN, BASE + ['--config.input.batch_size=0'], 2,
                   "bad value '0' for config key 'input.batch_size': must be >= 1"),
    'modality letters': (TRAIN, BASE + ['--config', 'configs/m5_mmt.py:runlocal,modalities=tpx'],
                         2, "bad value 'tpx' for config argument 'modalities': 'x' unknown; "
                         'expected letters from t (text), p (table), i (image), v (video), '
                         'a (audio)'),
    'size': (TRAIN, BASE + ['--config', 'configs/m5_mmt.py:runlocal,size=huge'], 2,
             "bad value 'huge' for config argument 'size': expected one of tiny, small, base, "
             'large'),
    'dataset': (TRAIN, BASE + ['--config.input.dataset=bogus'], 2,
                "bad value 'bogus' for config key 'input.dataset': expected synthetic or "
                'm5product/<builder config>, e.g. m5product/raw, m5product/features'),
    'sharding rules': (TRAIN, BASE + ['--config.sharding.rules=foo'], 2,
                       "bad value 'foo' for config key 'sharding.rules': expected one of dp, "
                       'fsdp, fsdp_tp'),
    'optimizer': (TRAIN, BASE + ['--config.optimizer.name=sgdx'], 2,
                  "bad value 'sgdx' for config key 'optimizer.name': expected one of adamw"),
    'schedule': (TRAIN, BASE + ['--config.schedule.name=zigzag'], 2,
                 "bad value 'zigzag' for config key 'schedule.name': expected one of cosine, "
                 'linear, constant'),
    'microbatches': (TRAIN, BASE + ['--config.num_microbatches=3'], 2,
                     "config key 'num_microbatches' (3) must divide input.batch_size (8); give a "
                     'divisor, e.g. --config.num_microbatches=1'),
    'nonfinite': (TRAIN, BASE + ['--config.nonfinite=bogus'], 2,
                  "bad value 'bogus' for config key 'nonfinite': expected one of stop, skip"),
    'instance weight': (TRAIN, BASE + ['--config.loss.instance_weight=-1'], 2,
                        "bad value '-1.0' for config key 'loss.instance_weight': must be >= 0"),
    # The data and the tokenizer, checked from metadata (m5_jax/train.check_input).
    'missing data_dir': (TRAIN, DATA + ['--config.input.data_dir={data}/nowhere'], 1,
                         "config key 'input.data_dir': {data}/nowhere does not exist; give the "
                         'directory that holds m5product/raw'),
    'empty data_dir': (TRAIN, DATA + ['--config.input.data_dir='], 1,
                       "config key 'input.data_dir' is empty; give the --data_dir that holds "
                       'm5product/raw'),
    'data_dir without the build': (TRAIN, DATA + ['--config.input.dataset=m5product/features'], 1,
                                   "config key 'input.dataset': no complete build of "
                                   'm5product/features in {data} (config.input.data_dir; builds '
                                   'there: m5product/raw); give one of them, or build it with '
                                   '`tfds build data_prep/m5product --config features'),
    'unknown builder config': (TRAIN, DATA + ['--config.input.dataset=m5product/bogus'], 1,
                               "config key 'input.dataset': no complete build of "
                               'm5product/bogus in {data} (config.input.data_dir; builds there: '
                               'm5product/raw)'),
    'train split': (TRAIN, DATA + ['--config.input.train_split=bogus'], 1,
                    "config key 'input.train_split': 'bogus' is not a split of m5product/raw in "
                    '{data}/m5product/raw/1.0.0; its splits are ' + ', '.join(SPLITS)),
    'missing tokenizer': (TRAIN, DATA + ['--config.input.tokenizer={data}/none.model'], 1,
                          "config key 'input.tokenizer': {data}/none.model not found; train one "
                          'with `python -m data_prep.tokenizer'),
    'empty tokenizer': (TRAIN, DATA + ['--config.input.tokenizer='], 1,
                        "config key 'input.tokenizer' is empty, but text, table need a "
                        'sentencepiece model'),
    'not sentencepiece': (TRAIN, DATA + ['--config.input.tokenizer={data}/m5product/raw/1.0.0/'
                                         'dataset_info.json'], 1,
                          "config key 'input.tokenizer': {data}/m5product/raw/1.0.0/"
                          'dataset_info.json is not a sentencepiece model of this project'),
    'vocab smaller than the tokenizer': (
        TRAIN, DATA + ['--config', 'configs/m5_mmt.py:runlocal,modalities=tp,vocab_size=200'], 1,
        'model.vocab_size=200, modality.text.vocab_size=200, modality.table.vocab_size=200 is '
        "smaller than the tokenizer's vocabulary (300 pieces in {spm}): its ids past the table "
        'would have no embedding (non-finite loss); set the config argument vocab_size=300'),
    # The eval binaries' flags (m5_jax/config_lib.FLAG_SCHEMA).
    'eval feature': ('m5_jax.evaluate.coarse_retrieval',
                     ['--config', 'configs/m5_mmt.py:runlocal', '--feature', 'bogus'], 2,
                     "bad value 'bogus' for --feature: expected one of pooled, encoder_pooled"),
    'eval normalize': ('m5_jax.evaluate.fine_retrieval',
                       ['--config', 'configs/m5_mmt.py:runlocal', '--normalize', 'l2'], 2,
                       "bad value 'l2' for --normalize: expected one of center, modality, none"),
}


def write_fake_build(data_dir: str, spm_path: str) -> None:
  """A TFDS data_dir whose m5product/raw/1.0.0 holds only dataset_info.json, and a
  sentencepiece model of TOKENIZER_PIECES pieces (the project's special ids)."""
  from data_prep import tokenizer  # pylint: disable=g-import-not-at-top
  build = os.path.join(data_dir, 'm5product', 'raw', '1.0.0')
  os.makedirs(build, exist_ok=True)
  with open(os.path.join(build, 'dataset_info.json'), 'w') as f:
    json.dump({'name': 'm5product', 'fileFormat': 'array_record',
               'splits': [{'name': s} for s in SPLITS]}, f)
  rng = random.Random(0)
  words = [''.join(rng.choice('abcdefghijklmnop') for _ in range(rng.randint(2, 7)))
           for _ in range(300)]
  tokenizer.train([' '.join(rng.choice(words) for _ in range(8)) for _ in range(500)], spm_path,
                  vocab_size=TOKENIZER_PIECES)


def with_paths(text: str, paths: dict[str, str]) -> str:
  return text.replace('{data}', paths['data']).replace('{spm}', paths['spm'])


def fake_paths(work: str) -> dict[str, str]:
  """{'data', 'spm'} under `work`, written once."""
  paths = {'data': os.path.join(work, 'fake_tfds'), 'spm': os.path.join(work, 'spm.model')}
  if not os.path.exists(paths['spm']):
    write_fake_build(paths['data'], paths['spm'])
  return paths


def resolved(name: str, paths: dict[str, str]) -> tuple[str, list[str], int, str]:
  """(binary, args, exit code, the whole expected line's start) with the paths filled in."""
  binary, args, code, line = CASES[name]
  return binary, [with_paths(a, paths) for a in args], code, f'{binary}: error: ' + with_paths(
      line, paths)


def test_env() -> dict:
  """The test suite's machine (tests/conftest.py): 8 CPU devices, as the mesh cases expect."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2')
  flags = [f for f in env.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  env['XLA_FLAGS'] = ' '.join(flags + ['--xla_force_host_platform_device_count=8'])
  return env


def run_case(name: str, work: str) -> dict:
  """Runs the case's binary as a process (on `test_env`): {'survived', 'problems', 'line',
  'seconds'}. Survived: the expected exit code, exactly one stderr line starting with the
  expected text, within MAX_SECONDS, and no checkpoint written."""
  paths = fake_paths(work)
  binary, args, want_code, want_line = resolved(name, paths)
  workdir = os.path.join(work, 'run_' + name.replace(' ', '_'))
  start = time.time()
  proc = subprocess.run([sys.executable, '-m', binary, *args, '--workdir', workdir], cwd=REPO,
                        capture_output=True, text=True, timeout=300, env=test_env())
  seconds = round(time.time() - start, 1)
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  problems = []
  if proc.returncode != want_code:
    problems.append(f'exit code {proc.returncode}, want {want_code}')
  if len(lines) != 1:
    problems.append(f'{len(lines)} stderr lines, want 1 (last: {lines[-1][:200] if lines else ""})')
  elif not lines[0].startswith(want_line):
    problems.append(f'stderr {lines[0][:200]!r}')
  if seconds > MAX_SECONDS:
    problems.append(f'took {seconds} s (> {MAX_SECONDS} s: read data or compiled first?)')
  if os.path.exists(os.path.join(workdir, 'checkpoints')):
    problems.append('wrote checkpoints')
  return {'survived': not problems, 'problems': problems, 'seconds': seconds,
          'line': lines[-1] if lines else ''}
