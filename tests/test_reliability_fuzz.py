"""Corrupted-release fuzz: >= 200 faults of 15 kinds in a copy of M5Product-mini; both
TFDS configs build, and every listing is accounted for exactly as the fault manifest says.

The full-size run (1000 items, 1000 faults) is benchmarks/reliability/run.py.
"""
import collections
import copy
import json
import os

import pytest

from data_prep import decode
from data_prep import fuzz_reconcile
from data_prep import fuzz_release
from m5_fixtures import tree_digest

pytest_plugins = ['m5_fixtures']
NUM_FAULTS = 200



@pytest.fixture(scope='module')
def fuzzed(mini_release, tmp_path_factory):
  source, _ = mini_release
  before = tree_digest(source)
  out = str(tmp_path_factory.mktemp('fuzzed') / 'release')
  manifest = fuzz_release.fuzz(str(source), out, NUM_FAULTS, seed=0)
  assert tree_digest(source) == before  # hard-linked copy: the source is never written through
  return out, manifest


@pytest.fixture(scope='module')
def builds(fuzzed, tmp_path_factory):
  """{config: (report, presence)} of the fuzzed release, built once."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import data_prep.m5product  # pylint: disable=g-import-not-at-top,unused-import
  out, manifest = fuzzed
  data_dir = str(tmp_path_factory.mktemp('fuzzed_tfds'))
  result = {}
  for config in fuzz_release.CONFIGS:
    builder = tfds.builder('m5product', config=config, data_dir=data_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=out))
    with open(os.path.join(builder.data_dir, 'build_report.json')) as f:
      report = json.load(f)
    result[config] = report, fuzz_reconcile.read_presence(
        builder, manifest['expected'][config]['splits'])
  return result


def test_fuzz_injects_at_least_200_faults_of_at_least_10_kinds(fuzzed):
  out, manifest = fuzzed
  kinds = collections.Counter(f['kind'] for f in manifest['faults'])
  assert len(manifest['faults']) == NUM_FAULTS and len(kinds) == len(fuzz_release.KINDS) >= 10
  assert min(kinds.values()) >= NUM_FAULTS // len(kinds)
  # Every fault is seen by at least one config, and the files really are broken.
  assert all(any(f['effect'].values()) for f in manifest['faults'])
  for fault in manifest['faults']:
    if fault['kind'] == 'zero_byte_file':
      assert os.path.getsize(os.path.join(out, fault['target'])) == 0
    if fault['kind'] == 'deleted_file':
      assert not os.path.exists(os.path.join(out, fault['target']))
  with open(os.path.join(out, 'product5m_id_label.json'), 'rb') as f:
    annotations = f.read()
  with pytest.raises(UnicodeDecodeError):  # non-UTF-8 bytes really are in the file
    annotations.decode('utf-8')


@pytest.mark.parametrize('config', fuzz_release.CONFIGS)
def test_build_accounts_for_every_item_exactly(fuzzed, builds, config):
  _, manifest = fuzzed
  report, presence = builds[config]
  result = fuzz_reconcile.reconcile(manifest, config, report, presence)
  assert result['mismatches'] == []
  assert result['items_lost'] == 0
  assert result['faults_survived'] == result['faults_visible'] > 0
  total = report['total']
  assert total['items_in'] == total['items_written'] + sum(total['rejected'].values())


def test_reconcile_notices_a_wrong_count_and_a_lost_item(fuzzed, builds):
  """The check itself can fail: a report that lost an item or miscounted one reason."""
  _, manifest = fuzzed
  report, presence = builds['raw']
  fault = next(f for f in manifest['faults'] if f['kind'] == 'truncated_jpeg')
  lost = copy.deepcopy(presence)
  del lost[fault['split']][fault['item_id']]
  result = fuzz_reconcile.reconcile(manifest, 'raw', report, lost)
  assert result['items_lost'] == 1 and result['mismatches']
  assert result['faults_survived'] < result['faults_visible']
  miscounted = copy.deepcopy(report)
  reasons = miscounted['splits'][fault['split']]['absent']['image']
  reasons['corrupt_file'] -= 1
  reasons['missing_file'] = reasons.get('missing_file', 0) + 1
  result = fuzz_reconcile.reconcile(manifest, 'raw', miscounted, presence)
  assert any('absent image' in m for m in result['mismatches'])
  assert result['faults_survived'] < result['faults_visible']


def test_each_file_fault_kind_gives_its_reason(fuzzed):
  """Decoder-level check of every file fault (no build): the documented reason."""
  out, manifest = fuzzed
  shapes = {'image_regions': ((36, 2048), None), 'image_boxes': ((36, 5), None),
            'video_s3d': ((12, 1024), 0), 'audio_mel': ((80, 751), 1)}
  seen = set()
  for fault in manifest['faults']:
    target, kind = fault['target'], fault['kind']
    effect = fault['effect']['raw'] or fault['effect']['features']
    if effect[0] != 'absent' or '/' not in target or (kind, target.split('/')[0]) in seen:
      continue
    seen.add((kind, target.split('/')[0]))
    path = os.path.join(out, target)
    with pytest.raises(decode.Absent) as e:
      if target.startswith('images/'):
        decode.decode_image(path, 32)
      elif target.startswith('videos/'):
        decode.decode_video(path, 32)
      elif target.startswith('audios/'):
        decode.decode_audio(path)
      else:
        feature = target.split('/')[1]
        decode.load_feature(path, shapes[feature][0], shapes[feature][1])
    assert e.value.reason == effect[2], (fault, str(e.value))
  assert len(seen) >= 15


def test_a_png_named_jpg_is_still_an_image(tmp_path, mini_release):
  """Not every extension mismatch is a fault: crawled '.jpg' files are often PNGs."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  source, _ = mini_release
  name = sorted(os.listdir(source / 'images'))[0]
  path = str(tmp_path / 'png.jpg')
  Image.open(source / 'images' / name).save(path, format='PNG')
  assert decode.decode_image(path, 32).shape == (32, 32, 3)


def test_cli_refuses_an_existing_output_folder(mini_release, tmp_path, capsys):
  source, _ = mini_release
  assert fuzz_release.main(['--release', str(source), '--out', str(tmp_path)]) == 2
  assert capsys.readouterr().err.strip() == (
      f'fuzz_release: error: --out {tmp_path} exists; give a new folder')


@pytest.mark.slow
def test_beam_path_accounts_for_every_item_exactly(fuzzed, tmp_path):
  """The Beam path (records cross workers as JSON, counts come from Beam metrics)."""
  from m5_fixtures import build, read_split  # pylint: disable=g-import-not-at-top
  out, manifest = fuzzed
  builder, report = build(out, tmp_path, 'features', beam=True)
  presence = {s: {i: {m: bool(e['present'][m]) for m in e['present']}
                  for i, e in read_split(builder, s).items()}
              for s in manifest['expected']['features']['splits']}
  result = fuzz_reconcile.reconcile(manifest, 'features', report, presence)
  assert result['mismatches'] == [] and result['items_lost'] == 0
  assert result['faults_survived'] == result['faults_visible']
