"""Known-answer tests for m5_jax.evaluate.metrics, cross-checked against sklearn and
a literal per-query NumPy reference of DESIGN.md section 3."""
import numpy as np
import pytest
from sklearn import metrics as skm

from m5_jax.evaluate import metrics


def reference_query(ranked_relevant, num_positives, num_ranked, K):
  """DESIGN.md section 3, literally, for one query (ranked_relevant: full ranking)."""
  rel = list(ranked_relevant)
  k = min(K, num_positives, num_ranked)
  hit_ranks = [i for i in range(1, k + 1) if rel[i - 1]]
  precisions = [sum(rel[:i]) / i for i in hit_ranks]
  m5_ap = sum(precisions) / len(hit_ranks) if hit_ranks else 0.0
  m5_prec = len(hit_ranks) / k
  std_hits = [i for i in range(1, min(K, num_ranked) + 1) if rel[i - 1]]
  std_ap = sum(sum(rel[:i]) / i for i in std_hits) / min(K, num_positives)
  recall = len(std_hits) / num_positives
  return m5_ap, m5_prec, std_ap, recall, float(len(std_hits) > 0)


def test_hand_computed_example():
  # Ranks 1 and 3 are hits; 2 positives among 10 ranked items.
  hits = np.array([[1, 0, 1, 0, 0, 0, 0, 0, 0, 0]], bool)
  out = metrics.retrieval_metrics(hits, [2], 10, ks=(1, 5, 10))
  # M5: k = min(5, 2, 10) = 2 -> one hit at rank 1 -> AP = 1/1, Prec = 1/2.
  assert out['m5_map@5'] == pytest.approx(100.0)
  assert out['m5_prec@5'] == pytest.approx(50.0)
  assert out['m5_map@1'] == pytest.approx(100.0) and out['m5_prec@1'] == pytest.approx(100.0)
  # Standard: (1/1 + 2/3) / min(5, 2); recall 2/2.
  assert out['std_map@5'] == pytest.approx(100.0 * (1 + 2 / 3) / 2)
  assert out['recall@5'] == pytest.approx(100.0)
  assert out['recall@1'] == pytest.approx(50.0)
  assert out['hit_rate@1'] == pytest.approx(100.0)


def test_no_hit_gives_zero_and_no_positive_is_counted_not_averaged():
  hits = np.zeros((3, 5), bool)
  hits[1, 0] = True
  out = metrics.retrieval_metrics(hits, [3, 1, 0], 5, ks=(1, 5))
  assert out['num_queries'] == 2 and out['queries_without_positives'] == 1
  assert out['m5_map@5'] == pytest.approx(50.0)  # (0 + 1) / 2
  assert out['m5_prec@1'] == pytest.approx(50.0)


def test_fewer_ranked_than_k():
  # 3 items ranked, 3 positives, K=10: k = 3.
  hits = np.array([[1, 0, 1] + [0] * 7], bool)
  out = metrics.retrieval_metrics(hits, [3], 3, ks=(10,))
  assert out['m5_prec@10'] == pytest.approx(100.0 * 2 / 3)
  assert out['m5_map@10'] == pytest.approx(100.0 * (1 + 2 / 3) / 2)


def test_matches_bruteforce_reference_on_random_rankings():
  rng = np.random.default_rng(0)
  num_q, num_ranked, ks = 60, 120, (1, 5, 10, 50, 100)
  rel = rng.random((num_q, num_ranked)) < rng.uniform(0.0, 0.3, (num_q, 1))
  num_pos = rel.sum(1)
  num_pos[:5] += 3  # some positives never ranked (e.g. beyond the gallery cut)
  out = metrics.retrieval_metrics(rel[:, :100], num_pos, num_ranked, ks=ks)
  scored = num_pos > 0
  for K in ks:
    ref = np.array([reference_query(rel[q], num_pos[q], num_ranked, K)
                    for q in range(num_q) if scored[q]])
    for col, name in enumerate(('m5_map', 'm5_prec', 'std_map', 'recall', 'hit_rate')):
      assert out[f'{name}@{K}'] == pytest.approx(100.0 * ref[:, col].mean()), (name, K)


def test_standard_ap_equals_sklearn_on_full_ranking():
  rng = np.random.default_rng(1)
  num_items = 40
  for _ in range(5):
    scores = rng.normal(size=num_items)
    relevant = rng.random(num_items) < 0.3
    relevant[0] = True
    order = np.argsort(-scores)
    out = metrics.retrieval_metrics(relevant[order][None], [relevant.sum()], num_items,
                                    ks=(num_items,))
    assert out[f'std_map@{num_items}'] == pytest.approx(
        100.0 * skm.average_precision_score(relevant, scores))


def test_ranked_hits_and_count_positives():
  gallery_labels = np.array([0, 1, 1, 2, -1, 1])
  topk = np.array([[1, 2, 0, -1], [4, 3, 5, 1]])
  query_labels = np.array([1, -1])
  hits = metrics.ranked_hits(topk, query_labels, gallery_labels)
  np.testing.assert_array_equal(hits, [[1, 1, 0, 0], [0, 0, 0, 0]])
  np.testing.assert_array_equal(
      metrics.count_positives([1, 2, -1, 7], gallery_labels, [True, False, True, False]),
      [2, 1, 0, 0])


def test_k_larger_than_ranks_given_is_an_error():
  with pytest.raises(ValueError, match='top 100'):
    metrics.retrieval_metrics(np.zeros((1, 10), bool), [1], 10, ks=(100,))


def test_clustering_metrics_match_sklearn():
  rng = np.random.default_rng(2)
  for num_labels, num_clusters in ((5, 5), (7, 3), (2, 9)):
    labels = rng.integers(0, num_labels, 500)
    clusters = np.where(rng.random(500) < 0.6, labels % num_clusters,
                        rng.integers(0, num_clusters, 500))
    out = metrics.clustering_metrics(labels, clusters)
    assert out['nmi'] == pytest.approx(100 * skm.normalized_mutual_info_score(labels, clusters))
    assert out['ari'] == pytest.approx(100 * skm.adjusted_rand_score(labels, clusters))
    table = skm.cluster.contingency_matrix(labels, clusters)
    assert out['purity'] == pytest.approx(100 * table.max(0).sum() / table.sum())


def test_clustering_known_answers():
  labels = np.array([0, 0, 0, 1, 1, 1, -1])
  perfect = metrics.clustering_metrics(labels, np.array([5, 5, 5, 9, 9, 9, 0]))
  assert perfect['nmi'] == pytest.approx(100) and perfect['ari'] == pytest.approx(100)
  assert perfect['num_examples'] == 6  # unknown label excluded
  # One cluster holding everything: purity = majority share, NMI 0.
  lumped = metrics.clustering_metrics(np.array([0, 0, 0, 1]), np.zeros(4, int))
  assert lumped['purity'] == pytest.approx(75.0) and lumped['nmi'] == pytest.approx(0.0)


def test_accuracy():
  out = metrics.accuracy(np.array([0, 1, 1, 2, 0]), np.array([0, 1, 2, 2, -1]))
  assert out['accuracy'] == pytest.approx(75.0) and out['num_examples'] == 4
  assert metrics.per_class_accuracy(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2])) == {
      0: 100.0, 1: 100.0, 2: 50.0}
  assert out['mean_class_accuracy'] == pytest.approx(250.0 / 3)
