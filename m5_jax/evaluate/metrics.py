"""Metrics for the four downstream tasks (DESIGN.md section 3), in NumPy.

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
"""
from __future__ import annotations

from typing import Iterable, Sequence

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
  query_keys = np.asarray(query_keys, np.int64)
  gallery_keys = np.asarray(gallery_keys, np.int64)
  known = gallery_keys[gallery_keys >= 0]
  size = int(max(known.max(initial=-1), query_keys.max(initial=-1))) + 1
  per_key = np.bincount(known, minlength=size)
  out = np.where(query_keys >= 0, per_key[np.maximum(query_keys, 0)], 0)
  if query_in_gallery is not None:
    out = out - (np.asarray(query_in_gallery) & (query_keys >= 0))
  return out.astype(np.int64)


def _check_ks(hits: np.ndarray, ks: Sequence[int]) -> None:
  if max(ks) > hits.shape[1]:
    raise ValueError(f'K={max(ks)} needs the top {max(ks)} ranks, got {hits.shape[1]}')


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

  out: dict[str, float] = {
      'num_queries': int(scored.sum()),
      'queries_without_positives': int((~scored).sum()),
  }
  rows = np.arange(hits.shape[0])
  for k_cut in ks:
    # M5Product: cut at k = min(K, P, R).
    k = np.minimum(np.minimum(k_cut, num_positives), num_ranked)
    k = np.maximum(k, 1)  # R >= P >= 1 for scored queries; guard the index.
    hits_k = cum_hits[rows, k - 1]
    ap = np.where(hits_k > 0, cum_precision[rows, k - 1] / np.maximum(hits_k, 1), 0.0)
    out[f'm5_map@{k_cut}'] = _mean_percent(ap)
    out[f'm5_prec@{k_cut}'] = _mean_percent(hits_k / k)
    # Standard.
    hits_K = cum_hits[:, k_cut - 1]
    std_ap = cum_precision[:, k_cut - 1] / np.minimum(k_cut, num_positives)
    out[f'std_map@{k_cut}'] = _mean_percent(std_ap)
    out[f'recall@{k_cut}'] = _mean_percent(hits_K / num_positives)
    out[f'hit_rate@{k_cut}'] = _mean_percent(hits_K > 0)
  return out


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
