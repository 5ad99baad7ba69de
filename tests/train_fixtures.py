"""Shared fixtures of the train tests (a plugin: `pytest_plugins = ['train_fixtures']`).

The train tests are compile-bound, so they share work:

  * one reference run (`reference_run`): the tiny synthetic model trained
    REFERENCE_STEPS steps in-process on 8 devices, checkpointed every 4 steps. It is
    the uninterrupted run of the SIGTERM test and the one-process run of the
    two-process test. The schedule is constant after a 2-step warmup, so a run
    stopped earlier (the two-process run) follows the same learning rates;
  * one M5Product-mini TFDS build + tokenizer (`mini_tfds`), from the session's
    shared mini release (m5_fixtures.mini_release).

No persistent compilation cache (JAX_COMPILATION_CACHE_DIR) for the subprocesses:
with jax 0.10.2 a CPU train step *loaded* from the cache deadlocks in its first
collective ("Expected 8 threads to join the rendezvous, but only 7 of them
arrived"), so every binary compiles for itself.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from made_once import made_once

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A small text+table M5-MMT on synthetic data (masked modeling + contrastive): the
# embedders, one joint fusion block (attention + MLP: what tensor parallelism splits),
# the tied MLM heads and the text<->table contrastive loss.
# Adam's eps is raised so that float rounding in near-zero gradients is not amplified
# to lr-sized updates (which would make sharded-vs-single comparisons meaningless).
TINY = ['--config', 'configs/m5_mmt.py:runlocal,modalities=tp',
        '--config.input.dataset=synthetic', '--config.modality.text.max_len=16',
        '--config.modality.table.max_len=16', '--config.model.dropout=0.0',
        '--config.model.vocab_size=256', '--config.modality.text.vocab_size=256',
        '--config.modality.table.vocab_size=256', '--config.optimizer.eps=1e-3',
        '--config.schedule.name=constant', '--config.model.encoder_layers=0']
# The reference run's mesh (FSDP over 2 devices x data over 4) and checkpoints.
REFERENCE = TINY + ['--config.mesh.fsdp=2', '--config.sharding.rules=fsdp',
                    '--config.checkpoint.every_steps=4', '--config.checkpoint.keep=0']
REFERENCE_STEPS = 24


def subprocess_env(devices: int | None = None, **extra) -> dict:
  """The test environment (conftest's XLA flags), optionally with another device count."""
  env = dict(os.environ, **extra)
  if devices is not None:
    flags = [f for f in env.get('XLA_FLAGS', '').split()
             if not f.startswith('--xla_force_host_platform_device_count')]
    env['XLA_FLAGS'] = ' '.join(flags + [f'--xla_force_host_platform_device_count={devices}'])
  return env


def start_binary(args, workdir: str, log_path: str, **env_kwargs):
  """`python -m m5_jax.train ARGS --workdir WORKDIR` with stderr to `log_path`."""
  log = open(log_path, 'w')  # pylint: disable=consider-using-with
  return subprocess.Popen([sys.executable, '-m', 'm5_jax.train', *args, '--workdir', workdir],
                          cwd=REPO, env=subprocess_env(**env_kwargs),
                          stdout=subprocess.DEVNULL, stderr=log)


def parse(args):
  from m5_jax import config_lib  # pylint: disable=g-import-not-at-top
  return config_lib.parse_command_line(list(args), {})[0]


@pytest.fixture(scope='session')
def reference_run(tmp_path_factory) -> str:
  """Workdir of the in-process reference run (metrics every step, checkpoints every 4)."""
  config = parse(REFERENCE + [f'--config.total_steps={REFERENCE_STEPS}'])
  return str(made_once(tmp_path_factory, 'reference_run',
                       lambda workdir: _train_in_repo(config, workdir)))


def _train_in_repo(config, workdir) -> None:
  """train.train in-process from the repository root (configs/ paths are relative)."""
  from m5_jax import train  # pylint: disable=g-import-not-at-top
  cwd = os.getcwd()
  os.chdir(REPO)
  try:
    train.train(config, str(workdir))
  finally:
    os.chdir(cwd)


@pytest.fixture(scope='session')
def mini_tfds(mini_release, tmp_path_factory):
  """(data_dir, tokenizer path, vocab size): the shared mini release as m5product/raw
  in ArrayRecord, and a sentencepiece tokenizer trained on its pretrain split."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from data_prep import tokenizer  # pylint: disable=g-import-not-at-top
  import data_prep.m5product  # pylint: disable=g-import-not-at-top,unused-import
  release, _ = mini_release
  vocab_size = 600

  def make(root):
    tfds.builder('m5product', config='raw', data_dir=str(root / 'data'),
                 file_format='array_record').download_and_prepare(
                     download_config=tfds.download.DownloadConfig(manual_dir=str(release)))
    tokenizer.train(tokenizer.iter_training_text(str(release)), str(root / 'spm.model'),
                    vocab_size=vocab_size)

  root = made_once(tmp_path_factory, 'mini_tfds', make)
  return str(root / 'data'), str(root / 'spm.model'), vocab_size


# A tiny text+image M5-MMT trained on mini (`mini_trained`): the run of the
# loss-falls test and the checkpoint the eval binaries are tested on.
MINI_TRAINED_STEPS = 24


def mini_train_args(data_dir: str, tokenizer: str, vocab: int) -> list[str]:
  return ['--config', 'configs/m5_mmt.py:runlocal,modalities=ti',
          f'--config.input.data_dir={data_dir}', f'--config.input.tokenizer={tokenizer}',
          f'--config.model.vocab_size={vocab}', f'--config.modality.text.vocab_size={vocab}',
          '--config.modality.text.max_len=16', '--config.modality.image.image_size=32',
          '--config.model.dropout=0.0', '--config.optimizer.lr=3e-3',
          f'--config.total_steps={MINI_TRAINED_STEPS}', '--config.checkpoint.every_steps=12']


@pytest.fixture(scope='session')
def mini_trained(mini_tfds, tmp_path_factory) -> str:
  """Workdir of a tiny text+image M5-MMT trained MINI_TRAINED_STEPS steps on mini
  (in-process, 8 devices; checkpoints at 12 and 24). Read it, do not write to it."""
  config = parse(mini_train_args(*mini_tfds))
  return str(made_once(tmp_path_factory, 'mini_trained',
                       lambda workdir: _train_in_repo(config, workdir)))
