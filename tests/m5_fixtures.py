"""Session fixtures for the m5product builder tests (a plugin: `pytest_plugins`).

Builds are the slow part of these tests, so each (release, config, path) is
built once per test run and shared (made_once: also across xdist workers).
"""
from __future__ import annotations

import hashlib
import json
import os

import pytest

import m5_tiny_release
from made_once import made_once


def build(root, data_dir, config='raw', file_format=None, beam=False, **download_options):
  """Builds with the Python API; returns (builder, report). download_options: more
  DownloadConfig fields (e.g. nondeterministic_order, num_shards)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import data_prep.m5product  # pylint: disable=g-import-not-at-top,unused-import
  kwargs = {'file_format': file_format} if file_format else {}
  builder = tfds.builder('m5product', config=config, data_dir=str(data_dir), **kwargs)
  download_config = tfds.download.DownloadConfig(manual_dir=str(root), **download_options)
  if beam:
    import apache_beam as beam_lib  # pylint: disable=g-import-not-at-top
    download_config.beam_options = beam_lib.options.pipeline_options.PipelineOptions(
        flags=['--runner=DirectRunner', '--direct_num_workers=1'])
  builder.download_and_prepare(download_config=download_config)
  with open(os.path.join(builder.data_dir, 'build_report.json')) as f:
    return builder, json.load(f)


def tree_digest(root) -> dict[str, str]:
  """{path relative to root: sha256} of every file below root (byte-identity checks)."""
  out = {}
  for folder, _, files in os.walk(root):
    for name in files:
      path = os.path.join(folder, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
  return out


def observed_absences(root, item_id, record, config='raw') -> dict[str, str]:
  """{modality: reason} found by the project's own decoders (data_prep.decode), for
  one listing of a release at `root` as the `config` ('raw' | 'features') build sees it."""
  from data_prep import decode, release  # pylint: disable=g-import-not-at-top
  layout = release.ReleaseLayout()
  out = {}
  for modality, field in (('text', 'title'), ('table', 'pv')):
    value = record.get(field)
    if value is None or not value.strip():
      out[modality] = 'missing_field'
    elif release.has_bad_encoding(value):
      out[modality] = 'bad_encoding'
    elif modality == 'table':
      try:
        assert release.parse_pv(value)
      except release.MalformedPV:
        out[modality] = 'malformed_field'
  checks = {
      'raw': {
          'image': lambda: decode.decode_image(layout.media_path(root, 'image', item_id), 32),
          'video': lambda: decode.decode_video(layout.media_path(root, 'video', item_id), 32),
          'audio': lambda: decode.decode_audio(layout.media_path(root, 'audio', item_id)),
      },
      'features': {
          m: (lambda names=names: [decode.load_feature(
              layout.feature_path(root, n, item_id), release.FEATURE_SHAPES[n],
              variable_axis=axis) for n, axis in names])
          for m, names in (('image', [('image_regions', None), ('image_boxes', None)]),
                           ('video', [('video_s3d', 0)]), ('audio', [('audio_mel', 1)]))
      },
  }[config]
  for modality, check in checks.items():
    try:
      check()
    except decode.Absent as e:
      out[modality] = e.reason
  return out


def read_split(builder, split):
  """{item_id: example} with numpy values (ArrayRecord is read as a data source)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if builder.info.file_format.value == 'array_record':
    source = builder.as_data_source(split=split)
    examples = [source[i] for i in range(len(source))]
  else:
    examples = tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))
  return {e['item_id'].decode() if isinstance(e['item_id'], bytes) else e['item_id']: e
          for e in examples}


@pytest.fixture(scope='session')
def tiny_release(tmp_path_factory):
  return made_once(tmp_path_factory, 'tiny_release', lambda root: m5_tiny_release.write(str(root)))


def _built_once(tmp_path_factory, release, config):
  """build() once per run; the other workers open the finished build (a no-op prepare)."""
  data_dir = made_once(tmp_path_factory, f'tiny_{config}',
                       lambda path: build(release, path, config))
  return build(release, data_dir, config)


@pytest.fixture(scope='session')
def tiny_raw(tiny_release, tmp_path_factory):
  return _built_once(tmp_path_factory, tiny_release, 'raw')


@pytest.fixture(scope='session')
def tiny_features(tiny_release, tmp_path_factory):
  return _built_once(tmp_path_factory, tiny_release, 'features')


MINI_PRODUCTS = 24  # small: generation and the raw build dominate this suite's time


@pytest.fixture(scope='session')
def mini_release(tmp_path_factory):
  """M5Product-mini from data_prep.make_mini (with features), generated once."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  root = made_once(tmp_path_factory, 'mini_release', lambda path: subprocess.run(
      [sys.executable, '-m', 'data_prep.make_mini', '--out', str(path),
       '--num_products', str(MINI_PRODUCTS), '--seed', '1', '--features'],
      check=True, capture_output=True, text=True))
  with open(root / 'mini_manifest.json', encoding='utf-8') as f:
    return root, json.load(f)
