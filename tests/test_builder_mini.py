"""Acceptance: M5Product-mini builds through the `tfds build` CLI and Python, and
every count reconciles exactly with the generator's manifest of injected defects."""
import collections
import json
import os
import subprocess
import sys

from data_prep import release
from m5_fixtures import build, read_split

pytest_plugins = ['m5_fixtures']
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _check_against_manifest(builder, report, manifest, config):
  """items in = written + rejected; absent (modality, reason) counts and the
  absent (item, modality) pairs equal the manifest's, exactly."""
  expected = collections.Counter((m, r) for _, m, r in manifest[f'absent_{config}'])
  total = report['total']
  assert total['items_in'] == total['items_written'] + sum(total['rejected'].values())
  assert total['items_written'] == manifest['num_items']
  got = collections.Counter({(m, r): n for m, reasons in total['absent'].items()
                             for r, n in reasons.items()})
  assert got == expected
  absent_pairs = set()
  for split, size in manifest['split_sizes'].items():
    examples = read_split(builder, split)
    assert len(examples) == size == report['splits'][split]['items_written'], split
    absent_pairs |= {(item_id, m) for item_id, e in examples.items()
                     for m in release.MODALITIES if not e['present'][m]}
  assert absent_pairs == {(i, m) for i, m, _ in manifest[f'absent_{config}']}


def test_cli_build_raw_reconciles_with_manifest(mini_release, tmp_path):
  root, manifest = mini_release
  tfds_cli = os.path.join(os.path.dirname(sys.executable), 'tfds')
  result = subprocess.run(
      [tfds_cli, 'build', 'data_prep/m5product', '--manual_dir', str(root),
       '--data_dir', str(tmp_path), '--config', 'raw'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'm5product build: items in' in result.stdout  # the printed summary
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder_from_directory(str(tmp_path / 'm5product' / 'raw' / '1.0.0'))
  with open(os.path.join(builder.data_dir, 'build_report.json')) as f:
    report = json.load(f)
  _check_against_manifest(builder, report, manifest, 'raw')


def test_python_build_features_reconciles_with_manifest(mini_release, tmp_path):
  root, manifest = mini_release
  builder, report = build(root, tmp_path, 'features')
  _check_against_manifest(builder, report, manifest, 'features')
