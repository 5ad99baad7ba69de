"""Known-answer tests for m5_jax.evaluate.metrics, cross-checked against sklearn and
a literal per-query NumPy reference of the design notes' section 3 (../shared/DESIGN.md,
beside the repository)."""
import numpy as np
import pytest
from sklearn import metrics as skm

from m5_jax.evaluate import metrics


def reference_query(ranked_relevant, num_positives, num_ranked, K):
  """The design notes' section 3, literally, for one query (ranked_relevant: full ranking)."""
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


# ----------------------------------------------------------------------------- bootstrap


def test_per_query_values_average_to_the_metrics():
  rng = np.random.default_rng(3)
  hits = rng.random((50, 100)) < 0.2
  positives = rng.integers(0, 30, 50)
  scored, values = metrics.per_query_retrieval(hits, positives, 200)
  out = metrics.retrieval_metrics(hits, positives, 200)
  assert scored.sum() == out['num_queries'] and len(values) == 5 * len(metrics.DEFAULT_KS)
  for name, per_query in values.items():
    assert per_query.shape == (scored.sum(),)
    assert out[name] == pytest.approx(100.0 * per_query.mean())


def test_equal_values_give_a_zero_width_interval():
  ci = metrics.bootstrap_means({'ap': np.full(500, 0.37), 'correct': np.ones(500)})
  assert ci['ap'] == pytest.approx([37.0, 37.0], abs=1e-4)
  assert ci['correct'] == pytest.approx([100.0, 100.0], abs=1e-4)


def test_binomial_interval_matches_the_normal_approximation():
  # 600 correct of 2000: p = 0.3, 95% half-width 1.96 sqrt(p(1-p)/n) = 2.01 points.
  correct = np.zeros(2000)
  correct[:600] = 1.0
  low, high = metrics.bootstrap_means({'accuracy': correct})['accuracy']
  half_width = 100 * 1.96 * np.sqrt(0.3 * 0.7 / 2000)
  assert low == pytest.approx(30.0 - half_width, abs=0.25)
  assert high == pytest.approx(30.0 + half_width, abs=0.25)
  assert metrics.too_small({'accuracy': [low, high]}) == []
  # 30 items: the interval is ~33 points wide, far too wide to separate 5 points.
  small = metrics.bootstrap_means({'accuracy': correct[::67][:30]})
  assert small['accuracy'][1] - small['accuracy'][0] > 20
  assert metrics.too_small(small) == ['accuracy']


def test_bootstrap_is_deterministic_under_the_seed():
  values = {'x': np.random.default_rng(0).random(300)}
  assert metrics.bootstrap_means(values) == metrics.bootstrap_means(values)
  assert metrics.bootstrap_means(values, seed=1) != metrics.bootstrap_means(values)
  labels = np.repeat(np.arange(5), 20)
  clusters = np.where(np.arange(100) % 3 == 0, 0, labels)
  assert (metrics.bootstrap_clustering(labels, clusters)
          == metrics.bootstrap_clustering(labels, clusters))


def test_bootstrap_with_many_units_brackets_every_mean():
  # 25 metrics, 1000 resamples of 10k queries in one pass (~0.2 s idle; timed in
  # benchmarks, not here). Each interval brackets its mean and is narrow at 10k units.
  rng = np.random.default_rng(4)
  _, values = metrics.per_query_retrieval(rng.random((10_000, 100)) < 0.1,
                                          rng.integers(1, 40, 10_000), 5000)
  intervals = metrics.bootstrap_means(values)
  assert set(intervals) == set(values) and len(intervals) == 25
  for name, (low, high) in intervals.items():
    mean = 100 * float(np.mean(values[name]))
    assert low <= mean <= high, name
  for name in ('m5_map@10', 'hit_rate@10', 'm5_prec@10'):
    assert intervals[name][1] - intervals[name][0] < 3.0, name


def test_clustering_scores_on_weights_match_the_repeated_items():
  rng = np.random.default_rng(5)
  labels = rng.integers(0, 6, 300)
  clusters = np.where(rng.random(300) < 0.5, labels, rng.integers(0, 4, 300))
  weights = rng.integers(0, 3, 300)
  partition = metrics._Partition(labels, clusters)  # pylint: disable=protected-access
  nmi, purity = partition.scores(weights[None].astype(np.float32))
  repeated = np.repeat(np.arange(300), weights)
  reference = metrics.clustering_metrics(labels[repeated], clusters[repeated])
  assert 100 * nmi[0] == pytest.approx(reference['nmi'])
  assert 100 * purity[0] == pytest.approx(reference['purity'])


def test_clustering_interval_holds_the_estimate_and_perfect_is_exact():
  rng = np.random.default_rng(6)
  labels = rng.integers(0, 20, 2000)
  clusters = rng.integers(0, 20, 2000)  # chance: resampling alone would inflate NMI
  estimate = metrics.clustering_metrics(labels, clusters)
  ci = metrics.bootstrap_clustering(labels, clusters)
  for name in ('nmi', 'purity'):
    assert ci[name][0] < estimate[name] < ci[name][1]
  perfect = metrics.bootstrap_clustering(labels, labels + 100)
  assert perfect['nmi'] == pytest.approx([100.0, 100.0]) and perfect['purity'] == pytest.approx(
      [100.0, 100.0])


def test_paired_comparison_win_tie_loss():
  rng = np.random.default_rng(7)
  base = (rng.random(400) < 0.5).astype(float)
  better = base.copy()
  better[np.flatnonzero(base == 0)[:24]] = 1.0  # +6 points, on the same units
  win = metrics.paired_comparison(better, base)
  assert win['difference'] == pytest.approx(6.0) and win['verdict'] == 'win'
  assert win['difference_ci95'][0] > 0 and win['units'] == 400 and win['seeds'] == 1
  # Pairing: the unpaired intervals (+-5 points each) overlap, the paired one is narrow.
  assert win['a_ci95'][0] < win['b_ci95'][1]
  assert metrics.paired_comparison(base, better)['verdict'] == 'loss'
  assert metrics.paired_comparison(base, base) == {**metrics.paired_comparison(base, base),
                                                   'difference': 0.0, 'verdict': 'tie'}
  one_better = base[:30].copy()
  one_better[np.argmin(one_better)] = 1.0  # one unit of 30: +3.3 points, but a fluke
  tie = metrics.paired_comparison(one_better, base[:30])
  assert tie['verdict'] == 'tie' and tie['difference_ci95'][0] <= 0 <= tie['difference_ci95'][1]
  # Two seeds pooled: each unit's values averaged over the seeds.
  pooled = metrics.paired_comparison(np.stack([better, base]), np.stack([base, base]))
  assert pooled['difference'] == pytest.approx(3.0) and pooled['seeds'] == 2
  with pytest.raises(ValueError, match='same units'):
    metrics.paired_comparison(base, base[:-1])


def test_paired_clustering_resamples_the_same_items():
  rng = np.random.default_rng(8)
  labels = rng.integers(0, 8, 1000)
  good = np.where(rng.random(1000) < 0.8, labels, rng.integers(0, 8, 1000))
  chance = rng.integers(0, 8, 1000)
  result = metrics.paired_clustering_comparison(labels, good, chance)
  expected = (metrics.clustering_metrics(labels, good)['nmi']
              - metrics.clustering_metrics(labels, chance)['nmi'])
  assert result['difference'] == pytest.approx(expected) and result['verdict'] == 'win'
  assert result['a_ci95'] == pytest.approx(metrics.bootstrap_clustering(labels, good)['nmi'])
  same = metrics.paired_clustering_comparison(labels, good, good, metric='purity')
  assert same['difference_ci95'] == pytest.approx([0.0, 0.0]) and same['verdict'] == 'tie'
  pooled = metrics.paired_clustering_comparison(labels, [good, chance], [chance, chance])
  assert pooled['difference'] == pytest.approx(expected / 2) and pooled['seeds'] == 2
