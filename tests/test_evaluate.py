"""Evaluation with fake models of known answers, subsets, the done-list runner, reports."""
import json
import os

import numpy as np
import pytest

from m5_jax import config_lib
from m5_jax.evaluate import classification, clustering, features, report, retrieval, runner

MODALITIES = ('text', 'table', 'image')


def fake_split(labels, vectors_by_modality, present=None):
  num = len(labels)
  present = present or {m: np.ones(num, bool) for m in vectors_by_modality}
  return features.SplitFeatures(
      pooled={m: np.asarray(v, np.float32) for m, v in vectors_by_modality.items()},
      present=present, label=np.asarray(labels), instance=np.asarray(labels))


def perfect_vectors(labels, num_classes, dim=32, noise=0.0, seed=0):
  """One direction per class (+ optional noise): a model that knows the answer."""
  rng = np.random.default_rng(seed)
  directions = np.linalg.qr(rng.normal(size=(dim, dim)))[0][:num_classes]
  return directions[labels] + noise * rng.normal(size=(len(labels), dim))


@pytest.fixture(scope='module')
def toy():
  rng = np.random.default_rng(0)
  num_classes = 8
  q_labels, g_labels = rng.integers(0, num_classes, 120), rng.integers(0, num_classes, 400)
  query = fake_split(q_labels, {'text': perfect_vectors(q_labels, num_classes),
                                'table': rng.normal(size=(120, 32)),
                                'image': perfect_vectors(q_labels, num_classes, noise=0.3)})
  gallery = fake_split(g_labels, {'text': perfect_vectors(g_labels, num_classes),
                                  'table': rng.normal(size=(400, 32)),
                                  'image': perfect_vectors(g_labels, num_classes, noise=0.3)})
  return query, gallery, num_classes


def test_perfect_embeddings_give_map_100_and_random_give_chance(toy):
  query, gallery, num_classes = toy
  pairs = retrieval.parse_pairs('T,P', MODALITIES)
  out = retrieval.evaluate_sets(query, gallery, 'label', pairs)
  perfect, rand = out['sets']['T'], out['sets']['P']
  for k in (1, 5, 10, 50, 100):
    assert perfect[f'm5_map@{k}'] == pytest.approx(100.0)
    assert perfect[f'm5_prec@{k}'] == pytest.approx(100.0)
  assert perfect['recall@100'] > 95.0  # ~50 positives per query, all in the top 100
  # Random features: precision is the positives' share of the gallery (~1/8).
  share = 100.0 * np.mean([(gallery.label == l).mean() for l in query.label])
  assert rand['m5_prec@10'] == pytest.approx(share, abs=4.0)
  assert rand['m5_prec@100'] == pytest.approx(share, abs=2.5)
  assert rand['m5_map@1'] < 35.0
  assert out['curves']['T']['m5_prec'][0] == pytest.approx(100.0)


def test_query_excluded_from_its_own_ranking(toy):
  query, _, _ = toy
  # Gallery = the query split itself: without exclusion every query finds itself first.
  singletons = fake_split(np.arange(120), {'text': np.eye(120, 32, dtype=np.float32) + 1.0})
  pairs = retrieval.parse_pairs('T', ('text',))
  excluded = retrieval.evaluate_sets(singletons, singletons, 'label', pairs,
                                     exclude=retrieval.exclusions(range(120), range(120)))
  assert excluded['sets']['T']['num_queries'] == 0  # nobody has another positive
  assert excluded['sets']['T']['queries_without_positives'] == 120
  self_match = retrieval.evaluate_sets(query, query, 'label', pairs,
                                       exclude=np.arange(120, dtype=np.int32))
  assert self_match['sets']['T']['m5_map@1'] == pytest.approx(100.0)  # other same-class items


def test_subsets_sum_present_modalities_and_count_missing():
  labels = np.array([0, 1, 2])
  split = fake_split(labels, {'text': np.eye(3, 4), 'image': 2 * np.eye(3, 4)[::-1]},
                     present={'text': np.array([1, 0, 1], bool), 'image': np.array([1, 0, 0], bool)})
  both = split.combine(('text', 'image'), normalize='none')
  np.testing.assert_allclose(both.features[0], [1, 0, 2, 0])
  np.testing.assert_allclose(both.features[1], 0)
  np.testing.assert_allclose(both.features[2], [0, 0, 1, 0])
  np.testing.assert_array_equal(both.has_any, [True, False, True])
  assert both.missing == {'text': 1, 'image': 2}
  unit = split.combine(('text', 'image'), normalize='modality')
  np.testing.assert_allclose(unit.features[0], [1, 0, 1, 0])


def test_centering_removes_the_common_component_that_hides_content():
  # Two modalities whose vectors share a large offset (like transformer outputs);
  # class c is a small direction on top of it. Half the items lack the image.
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(4), 20)
  eye = np.eye(16)
  offset = {'text': 10.0 * eye[8:12].sum(0), 'image': 10.0 * eye[12:16].sum(0)}
  vectors = {m: offset[m] + eye[labels + 4 * (m == 'image')] + 0.05 * rng.normal(size=(80, 16))
             for m in offset}
  present = {'text': np.ones(80, bool), 'image': np.arange(80) % 2 == 0}
  split = fake_split(labels, vectors, present=present)
  pair = [(('text', 'image'), ('text', 'image'))]
  exclude = np.arange(80, dtype=np.int32)

  def precision_at_positives(normalize):  # M5Product P@K: k = min(K, #positives) = 19
    out = retrieval.evaluate_sets(split, split, 'label', pair, exclude=exclude,
                                  normalize=normalize)
    return out['sets']['T+I']['m5_prec@50']

  # L2 only: items with the same modalities present outrank same-class items with
  # other modalities, so about half of each query's 19 positives are missed.
  assert precision_at_positives('modality') < 60.0
  # Centred on the gallery's means: the class directions decide.
  assert precision_at_positives('center') == pytest.approx(100.0)
  means = split.modality_means()
  np.testing.assert_allclose(means['text'], vectors['text'].mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(means['image'], vectors['image'][present['image']].mean(0),
                             rtol=1e-5, atol=1e-6)
