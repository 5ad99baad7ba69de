"""Metrics for the four downstream tasks (design notes section 3: ../shared/DESIGN.md,
beside the repository, not in it), in NumPy.

Retrieval metrics work on a ranked hit matrix: `hits[q, i]` is True when the
i-th ranked gallery item (0-based) of query q is a positive. Only the top
max(K) ranks are needed, so the full Q x N similarity matrix never exists.

Two families, reported side by side and never mixed up:

* M5Product's metric (the paper's code). For one query with P positives among
  the R items it ranks (the query itself excluded):
      k        = min(K, P, R)
      AP@K     = (sum of precision@i over hit ranks i <= k) / (#hits in top k),
                 0 when there is no hit in the top k;
      Prec@K   = (#hits in top k) / k.
  Note the cut at k <= P: with 1 positive, mAP@10 and P@10 only look at rank 1.
* Standard ones:
      std_AP@K = (sum of precision@i over hit ranks i <= K) / min(K, P)
                 (the common "apk" definition; equals sklearn's
                 average_precision_score when K >= R);
      Recall@K = (#hits in top K) / P;
      HitRate@K = 1 if any hit in the top K (the "Recall@K" of metric learning).

All are averaged over queries with at least one positive; queries without one
have no defined value and are counted (`queries_without_positives`), not
averaged in as zeros.

Uncertainty (end of file): 95% percentile-bootstrap intervals over the
evaluation units (queries, test items, clustered items), a small-set flag (an
interval reaching more than 5 points either side of the estimate), and the paired comparison of two runs on the
same units (win / tie / loss).
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np

DEFAULT_KS = (1, 5, 10, 50, 100)


# ----------------------------------------------------------------------------
# Retrieval.


def ranked_hits(topk_indices: np.ndarray, query_keys: np.ndarray,
                gallery_keys: np.ndarray) -> np.ndarray:
  """bool[Q, K]: the ranked gallery item has the query's key (label/instance).

  topk_indices: int[Q, K] gallery rows, -1 for empty slots (never a hit).
  Keys < 0 mean "unknown" and never match.
  """
  topk_indices = np.asarray(topk_indices)
  valid = topk_indices >= 0
  keys = np.asarray(gallery_keys)[np.where(valid, topk_indices, 0)]
  query_keys = np.asarray(query_keys)[:, None]
  return valid & (keys == query_keys) & (query_keys >= 0)


def count_positives(query_keys: np.ndarray, gallery_keys: np.ndarray,
                    query_in_gallery: np.ndarray | None = None) -> np.ndarray:
  """int[Q]: gallery items sharing each query's key, the query itself excluded.

  query_in_gallery: bool[Q], True when the query's own item is in the gallery
  (it then has the query's key but is excluded from the ranking).
  """
  # Keys are int64 ids (12-digit product ids, 62-bit hashes): counted by sorted
  # lookup, not bincount (whose table would have one slot per possible id).
  query_keys = np.asarray(query_keys, np.int64)
  gallery_keys = np.asarray(gallery_keys, np.int64)
  keys, per_key = np.unique(gallery_keys[gallery_keys >= 0], return_counts=True)
  out = np.zeros(query_keys.shape, np.int64)
  if len(keys):
    slot = np.minimum(np.searchsorted(keys, query_keys), len(keys) - 1)
    out = np.where((query_keys >= 0) & (keys[slot] == query_keys), per_key[slot], 0)
  if query_in_gallery is not None:
    out = out - (np.asarray(query_in_gallery) & (query_keys >= 0))
  return out.astype(np.int64)


def _check_ks(hits: np.ndarray, ks: Sequence[int]) -> None:
  if max(ks) > hits.shape[1]:
    raise ValueError(f'K={max(ks)} needs the top {max(ks)} ranks, got {hits.shape[1]}')


def per_query_retrieval(hits: np.ndarray, num_positives: np.ndarray,
                        num_ranked: np.ndarray | int, ks: Iterable[int] = DEFAULT_KS
                        ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """(scored, values): each scored query's 'm5_map@K', ..., 'hit_rate@K' as fractions.

  scored: bool[Q], the queries with at least one positive (the units averaged
  over); values: {name: float[#scored]}, in query order. The per-query values
  are what the bootstrap (`bootstrap_means`, `paired_comparison`) resamples.
  Arguments as in `retrieval_metrics`.
  """
  ks = tuple(int(k) for k in ks)
  hits = np.asarray(hits, bool)
  _check_ks(hits, ks)
  num_positives = np.asarray(num_positives, np.int64)
  num_ranked = np.broadcast_to(np.asarray(num_ranked, np.int64), num_positives.shape)
  scored = num_positives > 0
  hits, num_positives, num_ranked = hits[scored], num_positives[scored], num_ranked[scored]

  kmax = max(ks)
  hits = hits[:, :kmax]
  cum_hits = np.cumsum(hits, axis=1)                       # hits in top i
  ranks = np.arange(1, kmax + 1)
  precision_at_hit = np.where(hits, cum_hits / ranks, 0.0)  # precision@i at hit ranks
  cum_precision = np.cumsum(precision_at_hit, axis=1)

  values: dict[str, np.ndarray] = {}
  rows = np.arange(hits.shape[0])
  for k_cut in ks:
    # M5Product: cut at k = min(K, P, R).
    k = np.minimum(np.minimum(k_cut, num_positives), num_ranked)
    k = np.maximum(k, 1)  # R >= P >= 1 for scored queries; guard the index.
    hits_k = cum_hits[rows, k - 1]
    values[f'm5_map@{k_cut}'] = np.where(
        hits_k > 0, cum_precision[rows, k - 1] / np.maximum(hits_k, 1), 0.0)
    values[f'm5_prec@{k_cut}'] = hits_k / k
    # Standard.
    hits_K = cum_hits[:, k_cut - 1]
    values[f'std_map@{k_cut}'] = cum_precision[:, k_cut - 1] / np.minimum(k_cut, num_positives)
    values[f'recall@{k_cut}'] = hits_K / num_positives
    values[f'hit_rate@{k_cut}'] = (hits_K > 0).astype(np.float64)
  return scored, values


def summarize_retrieval(scored: np.ndarray, values: dict[str, np.ndarray]) -> dict[str, float]:
  """`per_query_retrieval`'s output -> the means in percent and the query counts."""
  out: dict[str, float] = {
      'num_queries': int(scored.sum()),
      'queries_without_positives': int((~scored).sum()),
  }
  out.update({name: _mean_percent(v) for name, v in values.items()})
  return out


def retrieval_metrics(hits: np.ndarray, num_positives: np.ndarray,
                      num_ranked: np.ndarray | int, ks: Iterable[int] = DEFAULT_KS
                      ) -> dict[str, float]:
  """M5Product mAP@K / Prec@K and standard mAP@K / Recall@K / HitRate@K.

  Args:
    hits: bool[Q, >= max(ks)] ranked hits (see `ranked_hits`).
    num_positives: int[Q] positives in the gallery for each query (excluding
      the query itself).
    num_ranked: int[Q] or int, how many gallery items each query ranks.
    ks: the cut-offs.

  Returns:
    {'m5_map@K', 'm5_prec@K', 'std_map@K', 'recall@K', 'hit_rate@K' (percent),
     'num_queries', 'queries_without_positives'}.
  """
  return summarize_retrieval(*per_query_retrieval(hits, num_positives, num_ranked, ks))


def _mean_percent(values: np.ndarray) -> float:
  return float(100.0 * np.mean(values)) if values.size else float('nan')


# ----------------------------------------------------------------------------
# Classification.


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """Top-1 accuracy and mean per-class accuracy (percent) over known labels."""
  predictions, labels = np.asarray(predictions), np.asarray(labels)
  known = labels >= 0
  correct = predictions[known] == labels[known]
  per_class = per_class_accuracy(predictions, labels)
  return {
      'accuracy': _mean_percent(correct),
      'mean_class_accuracy': float(np.nanmean(list(per_class.values()))) if per_class else float('nan'),
      'num_examples': int(known.sum()),
  }


def per_class_accuracy(predictions: np.ndarray, labels: np.ndarray) -> dict[int, float]:
  """{class: accuracy in percent} for every class present in `labels`."""
  predictions, labels = np.asarray(predictions), np.asarray(labels)
  known = labels >= 0
  predictions, labels = predictions[known], labels[known]
  classes, inverse, totals = np.unique(labels, return_inverse=True, return_counts=True)
  correct = np.bincount(inverse, weights=(predictions == labels), minlength=len(classes))
  return {int(c): float(100.0 * n / t) for c, n, t in zip(classes, correct, totals)}


# ----------------------------------------------------------------------------
# Clustering. A sparse contingency table, so 6k classes x 6k clusters is cheap.


def _contingency(labels: np.ndarray, clusters: np.ndarray):
  """(counts n_ij > 0, row sums a_i, column sums b_j, N) of the label x cluster table."""
  labels = np.unique(np.asarray(labels), return_inverse=True)[1].ravel()
  clusters = np.unique(np.asarray(clusters), return_inverse=True)[1].ravel()
  pair = labels.astype(np.int64) * (clusters.max(initial=0) + 1) + clusters
  pair_ids, counts = np.unique(pair, return_counts=True)
  return (pair_ids // (clusters.max(initial=0) + 1), pair_ids % (clusters.max(initial=0) + 1),
          counts.astype(np.float64), np.bincount(labels).astype(np.float64),
          np.bincount(clusters).astype(np.float64), float(labels.size))


def _entropy(counts: np.ndarray, total: float) -> float:
  p = counts[counts > 0] / total
  return float(-(p * np.log(p)).sum())


def clustering_metrics(labels: np.ndarray, clusters: np.ndarray) -> dict[str, float]:
  """NMI (arithmetic normalisation, as sklearn), purity and ARI, over known labels.

  purity = (1/N) sum over clusters of the size of its most frequent label.
  """
  labels, clusters = np.asarray(labels), np.asarray(clusters)
  known = labels >= 0
  labels, clusters = labels[known], clusters[known]
  if labels.size == 0:
    raise ValueError('clustering_metrics: no example with a known label')
  rows, cols, n_ij, a, b, n = _contingency(labels, clusters)

  mutual_info = float((n_ij / n * np.log(n * n_ij / (a[rows] * b[cols]))).sum())
  h_labels, h_clusters = _entropy(a, n), _entropy(b, n)
  if h_labels == 0.0 and h_clusters == 0.0:
    nmi = 1.0  # both trivial partitions: identical (sklearn's convention)
  else:
    nmi = mutual_info / max((h_labels + h_clusters) / 2.0, np.finfo(np.float64).eps)

  purity_sum = np.zeros(len(b))
  np.maximum.at(purity_sum, cols, n_ij)
  purity = float(purity_sum.sum() / n)

  def pairs(x):
    return (x * (x - 1.0) / 2.0).sum()
  sum_ij, sum_a, sum_b, total = pairs(n_ij), pairs(a), pairs(b), n * (n - 1.0) / 2.0
  expected = sum_a * sum_b / total if total > 0 else 0.0
  max_index = (sum_a + sum_b) / 2.0
  ari = 1.0 if max_index == expected else float((sum_ij - expected) / (max_index - expected))
  return {'nmi': 100.0 * nmi, 'purity': 100.0 * purity, 'ari': 100.0 * ari,
          'num_examples': int(labels.size)}


# ----------------------------------------------------------------------------
# Uncertainty: percentile bootstrap over the evaluation units (queries for
# retrieval, test items for classification, items for clustering; the model and
# the clustering stay fixed). Every resample draws as many units as there are,
# with replacement; the 95% interval is the 2.5th and 97.5th percentile of the
# metric over the resamples. The draws depend only on (number of units,
# resamples, seed), so two runs scored on the same units are resampled alike:
# that is the paired comparison (`paired_comparison`). NMI and purity are
# biased upward by resampling (repeated items), so their resampled values are
# re-centred on the estimate first (`_clustering_resamples`).

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
CI_LEVEL = 95.0
# An eval set is too small to separate a 5-point difference when a headline
# metric's 95% interval has a half-width (high - low) / 2 above this many points:
# a 5-point change is then within one run's sampling noise. (Comparing two runs on
# the SAME items, the paired interval of their difference is narrower still.)
SEPARATION_POINTS = 5.0
FLAG_METRICS = ('m5_map@10', 'recall@10', 'accuracy', 'nmi')
SMALL_SET_RULE = (f'the {CI_LEVEL:.0f}% bootstrap interval of mAP@10, Recall@10, accuracy or '
                  f'NMI reaches more than {SEPARATION_POINTS:.0f} points either side of the estimate: the '
                  f'eval set cannot '
                  f'separate a {SEPARATION_POINTS:.0f}-point difference')
_CHUNK_ELEMENTS = 1 << 22  # resample counts are built this many at a time (16 MB)


def bootstrap_settings(unit: str, resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED) -> dict:
  """What the intervals of a results file mean (saved beside them)."""
  return {'unit': unit, 'resamples': resamples, 'seed': seed, 'level': CI_LEVEL,
          'method': 'percentile', 'small_set_rule': SMALL_SET_RULE}


def _resample_counts(num_units: int, resamples: int, seed: int):
  """Yields float32[b, num_units] blocks of resamples: how often each unit is drawn.

  (Whole numbers, exact in float32; float32 keeps the products with the values a
  fast BLAS call: 1000 resamples of 10k units take ~0.2 s.)
  """
  rng = np.random.default_rng(seed)
  block = max(1, _CHUNK_ELEMENTS // max(num_units, 1))
  for start in range(0, resamples, block):
    rows = min(block, resamples - start)
    draws = rng.integers(0, num_units, (rows, num_units), dtype=np.int64)
    draws += (np.arange(rows, dtype=np.int64) * num_units)[:, None]
    yield np.bincount(draws.ravel(), minlength=rows * num_units).reshape(
        rows, num_units).astype(np.float32)


def _resampled_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
  """float[resamples, M]: the mean of each column of values [n, M] in every resample."""
  n = values.shape[0]
  values = np.asarray(values, np.float32)
  return np.concatenate([(counts @ values).astype(np.float64) / n
                         for counts in _resample_counts(n, resamples, seed)], axis=0)


def _percentile_interval(samples: np.ndarray) -> np.ndarray:
  """[2, ...]: the central CI_LEVEL% of samples along axis 0."""
  tail = (100.0 - CI_LEVEL) / 2.0
  return np.percentile(samples, [tail, 100.0 - tail], axis=0)


def _nan_interval() -> list[float]:
  return [float('nan'), float('nan')]


def bootstrap_means(values: Mapping[str, np.ndarray], *,
                    resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
                    ) -> dict[str, list[float]]:
  """{name: [low, high]}, the 95% interval (percent) of the mean of each per-unit array.

  values: {name: float[n]} per-unit values in [0, 1] (per-query AP, correct flags),
  all over the same n units: one set of resamples serves them all. n = 0 gives NaN.
  """
  names = list(values)
  if not names:
    return {}
  matrix = np.stack([np.asarray(values[name], np.float64) for name in names], axis=1)
  if matrix.shape[0] == 0:
    return {name: _nan_interval() for name in names}
  low, high = 100.0 * _percentile_interval(_resampled_means(matrix, resamples, seed))
  return {name: [float(lo), float(hi)] for name, lo, hi in zip(names, low, high)}


class _Partition:
  """One labelling x clustering of n items, scored on any reweighting of the items.

  The items are grouped by (label, cluster) pair once; a resample's contingency
  table is then the sum of its counts over each group.
  """

  def __init__(self, labels: np.ndarray, clusters: np.ndarray):
    labels = np.unique(np.asarray(labels), return_inverse=True)[1].ravel().astype(np.int64)
    clusters = np.unique(np.asarray(clusters), return_inverse=True)[1].ravel().astype(np.int64)
    pair_ids, pair_of_item = np.unique(labels * (clusters.max(initial=0) + 1) + clusters,
                                       return_inverse=True)
    pair_of_item = pair_of_item.ravel()
    self.item_order = np.argsort(pair_of_item, kind='stable')
    self.pair_starts = np.flatnonzero(np.r_[True, np.diff(pair_of_item[self.item_order]) != 0])
    pair_label = pair_ids // (clusters.max(initial=0) + 1)
    pair_cluster = pair_ids % (clusters.max(initial=0) + 1)
    # pair_ids are sorted by label, then cluster: each label's pairs are contiguous.
    self.label_starts = np.flatnonzero(np.r_[True, np.diff(pair_label) != 0])
    self.pair_order_by_cluster = np.argsort(pair_cluster, kind='stable')
    self.cluster_starts = np.flatnonzero(
        np.r_[True, np.diff(pair_cluster[self.pair_order_by_cluster]) != 0])

  def scores(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(NMI, purity) as fractions, one per row of counts [b, n] (item weights)."""
    n_ij = np.add.reduceat(counts[:, self.item_order], self.pair_starts, axis=1
                           ).astype(np.float64)  # whole numbers: exact in float32
    a = np.add.reduceat(n_ij, self.label_starts, axis=1)
    by_cluster = n_ij[:, self.pair_order_by_cluster]
    b = np.add.reduceat(by_cluster, self.cluster_starts, axis=1)
    total = counts.sum(axis=1, dtype=np.float64)

    def xlogx(x):
      return (x * np.log(np.where(x > 0, x, 1.0))).sum(axis=1)
    n_log_n = total * np.log(total)
    mutual_info = (xlogx(n_ij) - xlogx(a) - xlogx(b) + n_log_n) / total
    h_labels = np.log(total) - xlogx(a) / total
    h_clusters = np.log(total) - xlogx(b) / total
    trivial = (np.abs(h_labels) < 1e-12) & (np.abs(h_clusters) < 1e-12)
    mean_entropy = np.maximum((h_labels + h_clusters) / 2.0, np.finfo(np.float64).eps)
    nmi = np.where(trivial, 1.0, np.maximum(mutual_info, 0.0) / mean_entropy)
    purity = np.maximum.reduceat(by_cluster, self.cluster_starts, axis=1).sum(axis=1) / total
    return nmi, purity


def _known(labels: np.ndarray, *clusterings: np.ndarray):
  labels = np.asarray(labels)
  known = labels >= 0
  return labels[known], [np.asarray(c)[known] for c in clusterings]


def _clustering_resamples(labels: np.ndarray, clusterings: Sequence[np.ndarray],
                          resamples: int, seed: int) -> dict[str, np.ndarray]:
  """{'nmi', 'purity'}: float[len(clusterings), resamples], every clustering scored on
  the same resampled items, re-centred on its estimate.

  Resampling with replacement repeats items, and repeated items inflate NMI and
  purity (for a random clustering of 10k items into 100 clusters, NMI 12 becomes
  ~20 in every resample), so the raw percentiles can miss the estimate
  altogether. The interval is therefore the estimate plus the resampled spread:
  each clustering's values are shifted by (estimate - their mean).
  """
  partitions = [_Partition(labels, c) for c in clusterings]
  scores = {'nmi': [[] for _ in partitions], 'purity': [[] for _ in partitions]}
  for counts in _resample_counts(len(labels), resamples, seed):
    for i, partition in enumerate(partitions):
      for name, values in zip(('nmi', 'purity'), partition.scores(counts)):
        scores[name][i].append(values)
  estimates = [partition.scores(np.ones((1, len(labels)), np.float32)) for partition in partitions]
  out = {}
  for j, name in enumerate(('nmi', 'purity')):
    samples = np.array([np.concatenate(x) for x in scores[name]])
    points = np.array([e[j][0] for e in estimates])
    out[name] = samples - samples.mean(axis=1, keepdims=True) + points[:, None]
  return out


def bootstrap_clustering(labels: np.ndarray, clusters: np.ndarray, *,
                         resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
                         ) -> dict[str, list[float]]:
  """{'nmi', 'purity': [low, high]} (percent) over items resampled, the clustering fixed
  (re-centred on the estimate: see `_clustering_resamples`).

  Items with an unknown label (< 0) are left out, as in `clustering_metrics`.
  """
  labels, (clusters,) = _known(labels, clusters)
  if labels.size == 0:
    return {'nmi': _nan_interval(), 'purity': _nan_interval()}
  samples = _clustering_resamples(labels, [clusters], resamples, seed)
  return {name: [float(v) for v in 100.0 * _percentile_interval(samples[name][0])]
          for name in ('nmi', 'purity')}


def too_small(ci95: Mapping[str, Sequence[float]], names: Sequence[str] = FLAG_METRICS
              ) -> list[str]:
  """The metrics among `names` whose interval's half-width exceeds SEPARATION_POINTS.

  Non-empty means the eval set is too small to separate a 5-point difference.
  """
  return [name for name in names if name in ci95 and ci95[name][1] is not None
          and (ci95[name][1] - ci95[name][0]) / 2 > SEPARATION_POINTS]


def with_intervals(metrics: dict, ci95: Mapping[str, Sequence[float]]) -> dict:
  """metrics with 'ci95' ({name: [low, high]}) and the small-set flag added."""
  metrics['ci95'] = dict(ci95)
  metrics['too_small_to_separate_5_points'] = too_small(ci95)
  return metrics


# ----------------------------------------------------------------------------
# Paired comparison of two runs on the same units.


def verdict(low: float, high: float) -> str:
  """'win' when the difference's interval is above 0, 'loss' when below, else 'tie'."""
  return 'win' if low > 0 else 'loss' if high < 0 else 'tie'


def _comparison(samples_a: np.ndarray, samples_b: np.ndarray, point_a: float,
                point_b: float, units: int, seeds: int) -> dict[str, Any]:
  """The paired result from per-resample values of a and b (fractions, same resamples)."""
  intervals = 100.0 * _percentile_interval(
      np.stack([samples_a, samples_b, samples_a - samples_b], axis=1))
  low, high = intervals[0, 2], intervals[1, 2]
  return {'a': 100.0 * point_a, 'a_ci95': [float(intervals[0, 0]), float(intervals[1, 0])],
          'b': 100.0 * point_b, 'b_ci95': [float(intervals[0, 1]), float(intervals[1, 1])],
          'difference': 100.0 * (point_a - point_b),
          'difference_ci95': [float(low), float(high)],
          'verdict': verdict(low, high), 'units': units, 'seeds': seeds}


def _per_seed(values, name: str) -> np.ndarray:
  values = np.asarray(values, np.float64)
  if values.ndim not in (1, 2):
    raise ValueError(f'{name}: per-unit values must be [units] or [seeds, units], '
                     f'got shape {values.shape}')
  return values.reshape(-1, values.shape[-1])


def paired_comparison(a, b, *, resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = BOOTSTRAP_SEED) -> dict[str, Any]:
  """Run a minus run b on a mean metric (AP@10, Recall@10, correct flags), paired.

  a, b: per-unit values (fractions) of the two runs on the same units in the
  same order: float[n], or float[seeds, n] to pool several seeds (each unit's
  value averaged over the seeds). Both are resampled with the same unit indices.
  Returns {'a', 'a_ci95', 'b', 'b_ci95', 'difference', 'difference_ci95' (percent
  points), 'verdict': win | tie | loss, 'units', 'seeds'}.
  """
  a, b = _per_seed(a, 'a'), _per_seed(b, 'b')
  if a.shape != b.shape:
    raise ValueError(f'paired comparison needs the same units and seeds; got {a.shape} '
                     f'and {b.shape}')
  if a.shape[1] == 0:
    raise ValueError('paired comparison: no unit to compare on')
  means = _resampled_means(np.stack([a.mean(0), b.mean(0)], axis=1), resamples, seed)
  return _comparison(means[:, 0], means[:, 1], float(a.mean()), float(b.mean()),
                     a.shape[1], a.shape[0])


def paired_clustering_comparison(labels: np.ndarray, clusters_a, clusters_b, *,
                                 metric: str = 'nmi', resamples: int = BOOTSTRAP_RESAMPLES,
                                 seed: int = BOOTSTRAP_SEED) -> dict[str, Any]:
  """Clustering a minus clustering b of the same items ('nmi' or 'purity'), paired.

  clusters_a, clusters_b: int[n] assignments, or [seeds, n] to pool seeds (the
  metric averaged over the seeds in every resample); labels: int[n], the same
  for all. Both are scored on the same resampled items. Returns as `paired_comparison`.
  """
  if metric not in ('nmi', 'purity'):
    raise ValueError(f"paired clustering metric must be 'nmi' or 'purity', got {metric!r}")
  clusters_a, clusters_b = np.atleast_2d(clusters_a), np.atleast_2d(clusters_b)
  if clusters_a.shape != clusters_b.shape or clusters_a.shape[1] != np.shape(labels)[0]:
    raise ValueError(f'paired clustering needs assignments of the same items and seeds; got '
                     f'{clusters_a.shape}, {clusters_b.shape} for {np.shape(labels)[0]} labels')
  labels, assignments = _known(labels, *clusters_a, *clusters_b)
  if labels.size == 0:
    raise ValueError('paired clustering: no item with a known label')
  samples = _clustering_resamples(labels, assignments, resamples, seed)[metric]
  points = samples.mean(axis=1)  # = the estimates (re-centred samples)
  seeds = len(clusters_a)
  return _comparison(samples[:seeds].mean(0), samples[seeds:].mean(0),
                     float(points[:seeds].mean()), float(points[seeds:].mean()),
                     labels.size, seeds)
