"""Product ids end to end (issue 15) and the dataset-keyed feature cache, on the real binaries.

The tiny text+image M5-MMT trained on mini (`mini_trained`) is evaluated with
fine_retrieval on its mini release rebuilt with other instance ids: 12-digit
numbers (617074902229 wraps negative in int32) and text ids (62-bit hashes).
Every fine query that has a positive must be scored, and the ids the evaluator
caches must equal the builder's. The second build goes into the same data_dir
with other content, so the cache of the first must not be served.
"""
import json
import os
import shutil

import numpy as np
import pytest

from data_prep import release
from data_prep.m5product import M5ProductConfig
from data_prep.m5product import examples
from m5_jax.evaluate import features, fine_retrieval
from m5_jax.evaluate import results_io

pytest_plugins = ['m5_fixtures', 'train_fixtures']

FINE = M5ProductConfig(name='raw_fine', form='raw', splits=('fine_query', 'fine_gallery'))
STEP = 24


def _release_with_instances(source, root, rename):
  """A copy of the mini release (media hard-linked) whose instance ids are rename(old id)."""
  shutil.copytree(source, root, copy_function=os.link)
  path = os.path.join(root, release.ReleaseLayout.instances)
  instances = release.read_instances(path)
  os.remove(path)  # a link to the source's file: write a new one
  with open(path, 'w', encoding='utf-8') as f:
    f.write(''.join(f'{item}\t{rename(item, old)}\n' for item, old in instances.items()))
  return {item: rename(item, old) for item, old in instances.items()}


def _build(root, data_dir):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import data_prep.m5product  # pylint: disable=g-import-not-at-top,unused-import
  shutil.rmtree(os.path.join(data_dir, 'm5product', FINE.name), ignore_errors=True)  # --overwrite
  builder = tfds.builder('m5product', config=FINE, data_dir=data_dir, file_format='array_record')
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=root))
  source = {s: builder.as_data_source(s) for s in FINE.splits}
  return {s: {src[i]['item_id'].decode(): int(src[i]['instance']) for i in range(len(src))}
          for s, src in source.items()}


def _queries_with_positives(built):
  """Fine queries whose instance another gallery item has (from the build, not the evaluator)."""
  gallery = built['fine_gallery']
  return sum(1 for item, key in built['fine_query'].items()
             if key >= 0 and any(k == key and g != item for g, k in gallery.items()))


def _evaluate(workdir, data_dir):
  fine_retrieval.main(['--workdir', workdir, '--step', str(STEP), '--subsets', 'all', '--force',
                       f'--config.input.data_dir={data_dir}',
                       f'--config.input.dataset=m5product/{FINE.name}'])
  with open(results_io.step_path(workdir, 'fine_retrieval', STEP)) as f:
    return json.load(f)['sets']['T+I']


def _cached(workdir, split):
  """{dataset key: instance ids} of every cached build of `split`."""
  root = features.cache_dir(workdir, STEP, split)
  return {key: np.load(os.path.join(root, key, 'instance.npy')) for key in sorted(os.listdir(root))
          if os.path.isfile(os.path.join(root, key, 'meta.json'))}


def _item_order(data_dir, split):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  src = tfds.builder(f'm5product/{FINE.name}', data_dir=data_dir).as_data_source(split)
  return [src[i]['item_id'].decode() for i in range(len(src))]


def test_fine_queries_scored_with_wide_ids_and_cache_follows_the_build(
    mini_release, mini_trained, tmp_path):
  source, _ = mini_release
  workdir = str(tmp_path / 'run')
  shutil.copytree(mini_trained, workdir)
  data_dir = str(tmp_path / 'tfds')

  # 1. 12-digit numeric instance ids, past 2^31 (the first wraps negative in int32).
  old_ids = sorted(set(release.read_instances(
      os.path.join(source, release.ReleaseLayout.instances)).values()))
  numeric = {old: str(617074902229 + 1000 * n) for n, old in enumerate(old_ids)}
  ids = _release_with_instances(source, str(tmp_path / 'numeric'), lambda _, old: numeric[old])
  built = _build(str(tmp_path / 'numeric'), data_dir)
  for split in built.values():
    for item, value in split.items():
      assert value == (int(ids[item]) if item in ids else -1) and (value > 2**31 or value == -1)
  metrics = _evaluate(workdir, data_dir)
  expected = _queries_with_positives(built)
  assert expected >= 1
  assert metrics['queries_with_positives'] == expected
  assert metrics['num_queries'] == expected and metrics['queries_with_positives_unscored'] == 0
  [(first_key, cached)] = _cached(workdir, 'fine_query').items()
  np.testing.assert_array_equal(
      cached, [built['fine_query'][i] for i in _item_order(data_dir, 'fine_query')])

  # 2. Rebuilt in the same data_dir: text instance ids (hashed), and the last query
  # moved to an instance of its own -> fewer queries with a positive.
  queries = release.read_id_list(os.path.join(source, 'splits', 'fine_query.txt'))
  moved = queries[-1]
  text = lambda item, old: f'SKU-{item}' if item == moved else f'SKU-款{old}'  # noqa: E731
  ids = _release_with_instances(source, str(tmp_path / 'text'), text)
  built_again = _build(str(tmp_path / 'text'), data_dir)
  for split in built_again.values():
    for item, value in split.items():
      assert value == (examples.hash_id(ids[item]) if item in ids else -1)
  assert any(v > 2**31 for v in built_again['fine_gallery'].values())
  metrics = _evaluate(workdir, data_dir)
  expected_again = _queries_with_positives(built_again)
  assert expected_again < expected  # the data changed, and the results with it
  assert metrics['queries_with_positives'] == metrics['num_queries'] == expected_again
  assert metrics['queries_with_positives_unscored'] == 0
  caches = _cached(workdir, 'fine_query')
  assert set(caches) - {first_key}, 'the rebuilt dataset was scored from the stale cache'
  [new_key] = set(caches) - {first_key}
  np.testing.assert_array_equal(
      caches[new_key], [built_again['fine_query'][i] for i in _item_order(data_dir, 'fine_query')])


def test_unscored_queries_with_positives_are_counted_and_logged(caplog):
  """A query with a positive but no feature is not dropped silently."""
  from m5_jax.evaluate import retrieval  # pylint: disable=g-import-not-at-top
  keys = np.array([617074902229, 617074902229, 2**62 + 5, 2**62 + 5, -1])
  split = features.SplitFeatures(
      pooled={'image': np.eye(5, 4, dtype=np.float32)},
      present={'image': np.array([True, True, False, True, True])}, label=keys, instance=keys)
  with caplog.at_level('WARNING'):
    out = retrieval.evaluate_sets(split, split, 'instance', [(('image',), ('image',))],
                                  exclude=np.arange(5, dtype=np.int32))
  metrics = out['sets']['I']
  assert metrics['queries_with_positives'] == 4 and metrics['num_queries'] == 2
  # Query 2 has no image; query 3's only positive (item 2) has none either.
  assert metrics['queries_with_positives_unscored'] == 2
  assert metrics['queries_with_positives_without_features'] == 1
  assert any('2 of 4 queries with a positive' in r.getMessage() for r in caplog.records)


def test_feature_store_never_serves_another_builds_cache(tmp_path):
  calls = []

  def embed(split):
    calls.append(split)
    n = len(calls)
    return features.SplitFeatures(pooled={'text': np.full((3, 2), n, np.float32)},
                                  present={'text': np.ones(3, bool)},
                                  label=np.full(3, 2**40 + n), instance=np.full(3, 2**62 + n))

  build = {'dataset': 'm5product/raw/1.0.0', 'data_dir': '/d', 'fingerprint': 'a' * 64}
  rebuilt = dict(build, fingerprint='b' * 64)
  clash = dict(build, fingerprint='a' * 16 + 'c' * 48)  # same folder name, other build
  first = features.FeatureStore(str(tmp_path), 5, embed, build).get('fine_query')
  again = features.FeatureStore(str(tmp_path), 5, embed, build).get('fine_query')
  assert calls == ['fine_query'] and again.instance.dtype == np.int64
  np.testing.assert_array_equal(again.instance, first.instance)  # 2^62 + 1, exact
  assert features.FeatureStore(str(tmp_path), 5, embed, rebuilt).get('fine_query').label[0] \
      == 2**40 + 2
  assert features.FeatureStore(str(tmp_path), 5, embed, clash).get('fine_query').label[0] \
      == 2**40 + 3
  assert len(calls) == 3
