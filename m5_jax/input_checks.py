"""Start-up checks of the input, from metadata, before any data is read or anything
compiled (the train binary's `check_input`): each problem is a one-line ConfigError
naming the config key and what to do.
"""
from __future__ import annotations

import json
import os

from m5_jax import config_lib



class _Files:
  """isdir / exists / listdir / open for local paths (no TensorFlow import: start-up
  checks stay fast) and, through tf.io.gfile, for remote ones (gs://...)."""

  def __init__(self, path: str):
    if '://' in path:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      gfile = tf.io.gfile
      self.isdir, self.exists, self.listdir, self.open = (gfile.isdir, gfile.exists,
                                                          gfile.listdir, gfile.GFile)
    else:
      self.isdir, self.exists, self.listdir, self.open = (os.path.isdir, os.path.exists,
                                                          os.listdir, open)


def _built_versions(files: _Files, name_dir: str) -> list[str]:
  """The complete builds (version folders with a dataset_info.json) under a config folder."""
  if not files.isdir(name_dir):
    return []
  versions = []
  for version in files.listdir(name_dir):
    version = version.rstrip('/')
    parts = version.split('.')
    if (len(parts) == 3 and all(p.isdigit() for p in parts)
        and files.exists(os.path.join(name_dir, version, 'dataset_info.json'))):
      versions.append(version)
  return sorted(versions, key=lambda v: tuple(int(p) for p in v.split('.')))


def _dataset_info(config) -> tuple[str, dict]:
  """(build directory, its dataset_info.json) of config.input.dataset
  (`m5product/<config>[:version]`) in data_dir: that version, or the latest built
  there. Raises ConfigError (one line, naming the builds there) when there is none."""
  dataset, data_dir = config.input.dataset, (config.input.data_dir or '').strip()
  name, _, version = dataset.partition(':')
  builder_name, _, builder_config = name.partition('/')
  build_hint = (f'build it with `tfds build data_prep/m5product --config {builder_config} '
                '--file_format array_record --data_dir DIR`')
  if not data_dir:
    raise config_lib.ConfigError(f"config key 'input.data_dir' is empty; give the --data_dir "
                                 f'that holds {dataset} ({build_hint})')
  data_dir = os.path.expanduser(data_dir)
  files = _Files(data_dir)
  if not files.isdir(data_dir):
    raise config_lib.ConfigError(f"config key 'input.data_dir': {data_dir} does not exist; "
                                 f'give the directory that holds {dataset} ({build_hint})')
  versions = _built_versions(files, os.path.join(data_dir, builder_name, builder_config))
  if version:
    versions = [v for v in versions if v == version]
  if not versions:
    builder_dir = os.path.join(data_dir, builder_name)
    there = [f'{builder_name}/{c.rstrip("/")}' for c in (
        sorted(files.listdir(builder_dir)) if files.isdir(builder_dir) else [])
             if _built_versions(files, os.path.join(builder_dir, c.rstrip('/')))]
    raise config_lib.ConfigError(
        f"config key 'input.dataset': no complete build of {dataset} in {data_dir} "
        f'(config.input.data_dir; builds there: {", ".join(there) or "none"}); give one of '
        f'them, or {build_hint}')
  build_dir = os.path.join(data_dir, builder_name, builder_config, versions[-1])
  with files.open(os.path.join(build_dir, 'dataset_info.json')) as f:
    return build_dir, json.load(f)


def _check_tokenizer(config) -> None:
  """The tokenizer exists, is a sentencepiece model with the project's special ids, and
  every vocabulary of the config holds all of its pieces."""
  text_like = [m for m in config.modalities if 'vocab_size' in config.modality.get(m, {})]
  if not text_like:
    return
  path = (config.input.tokenizer or '').strip()
  hint = 'train one with `python -m data_prep.tokenizer --manual_dir RELEASE --out FILE`'
  if not path:
    raise config_lib.ConfigError(f"config key 'input.tokenizer' is empty, but {', '.join(text_like)} "
                                 f'need a sentencepiece model; {hint}')
  path = os.path.expanduser(path)
  files = _Files(path)
  if not files.exists(path) or files.isdir(path):
    raise config_lib.ConfigError(f"config key 'input.tokenizer': {path} not found; {hint}")
  from m5_jax.modalities import text  # pylint: disable=g-import-not-at-top
  from m5_jax.models import public_checkpoints  # pylint: disable=g-import-not-at-top
  with files.open(path, 'rb') as f:
    proto = f.read()
  try:
    if public_checkpoints.is_checkpoint_vocab(path):  # a BERT or CLIP checkpoint's vocabulary
      pieces = public_checkpoints.checkpoint_tokenizer(path).vocab_size
    else:
      pieces = text.SentencePieceTokenizer(proto).vocab_size
  except Exception as e:  # pylint: disable=broad-except  (sentencepiece raises RuntimeError)
    reason = ' '.join(str(e).split())[:200]
    raise config_lib.ConfigError(f"config key 'input.tokenizer': {path} is not a sentencepiece "
                                 f'model of this project ({reason}); {hint}') from None
  sizes = {'model.vocab_size': config.model.vocab_size}
  sizes.update({f'modality.{m}.vocab_size': config.modality[m].vocab_size for m in text_like})
  small = {k: v for k, v in sizes.items() if v < pieces}
  if small:
    raise config_lib.ConfigError(
        f'{", ".join(f"{k}={v}" for k, v in small.items())} is smaller than the tokenizer\'s '
        f'vocabulary ({pieces} pieces in {path}): its ids past the table would have no '
        f'embedding (non-finite loss); set the config argument vocab_size={pieces} '
        f'(--config configs/<method>.py:...,vocab_size={pieces})')


def check_input(config) -> None:
  """What the input needs, checked from metadata before any data is read or anything
  compiled (each a one-line ConfigError): data_dir holds a build of config.input.dataset
  in ArrayRecord with the train split, and the tokenizer fits the model."""
  if config.input.dataset == 'synthetic':
    return
  build_dir, info = _dataset_info(config)
  splits = [s.get('name') for s in info.get('splits', [])]
  split = config.input.train_split
  if split.partition('[')[0] not in splits:
    raise config_lib.ConfigError(f"config key 'input.train_split': {split!r} is not a split of "
                                 f'{config.input.dataset} in {build_dir}; its splits are '
                                 f'{", ".join(splits)}')
  if info.get('fileFormat', 'array_record') != 'array_record':
    raise config_lib.ConfigError(
        f'{build_dir} is in {info["fileFormat"]}, but training reads examples by index: build '
        'with --file_format array_record, or run `tfds convert_format --out_file_format '
        f'array_record` on it')
  _check_tokenizer(config)
