"""Retrieval evaluation shared by the coarse- and fine-grained binaries.

For each (query set, gallery set) pair of modality subsets - chosen
independently, e.g. 'IT' (I+T against I+T) or 'T:I' (text queries against an
image gallery) - the features are the sums of the present modality vectors
(`SplitFeatures.combine`), scored by dot product with the exact sharded top-K
search. Positives share the query's key: the category label (coarse) or the
product instance (fine). The query's own item, when the gallery holds it too,
is excluded from its ranking and from its positives.

Items with none of a subset's modalities present have no feature: such queries
are not scored and such gallery items are not ranked; both are counted
(`queries_without_features`, `gallery_without_features`), as are the missing
modalities per set.

Every metric carries its 95% bootstrap interval over the scored queries
('ci95'; metrics.bootstrap_means), and the per-query values are returned
('units') for the step's .npz, so that two runs can be compared query by query.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable, Sequence

import numpy as np

from m5_jax.evaluate import features as features_lib
from m5_jax.evaluate import metrics as metrics_lib
from m5_jax.evaluate import search

CURVE_KS = tuple(range(1, 101))


def default_subsets(available: Sequence[str]) -> str:
  """Each modality alone, I+T when both exist, and all of them: e.g. 'T,P,I,V,A,IT,all'."""
  codes = {n: c for c, n in features_lib.modality_codes(available).items()}
  parts = [codes[m].upper() for m in available]
  if 'image' in available and 'text' in available and len(available) > 2:
    parts.append('IT')
  if len(available) > 1:
    parts.append('all')
  return ','.join(parts)


def parse_pairs(text: str, available: Sequence[str]
                ) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
  """'T,IT,T:I' -> [(query subset, gallery subset), ...]; 'Q' alone means 'Q:Q'."""
  pairs = []
  for item in (text or default_subsets(available)).split(','):
    query_text, _, gallery_text = item.strip().partition(':')
    query = features_lib.parse_subset(query_text, available)
    gallery = features_lib.parse_subset(gallery_text or query_text, available)
    pairs.append((query, gallery))
  return pairs


def pair_label(query: Sequence[str], gallery: Sequence[str]) -> str:
  q, g = features_lib.subset_label(query), features_lib.subset_label(gallery)
  return q if q == g else f'{q}->{g}'


def exclusions(query_ids: Sequence[Any], gallery_ids: Sequence[Any]) -> np.ndarray:
  """int[Q]: the gallery row holding each query's own item, -1 when it is not there."""
  row_of = {item: row for row, item in enumerate(gallery_ids)}
  return np.array([row_of.get(item, -1) for item in query_ids], np.int32)


def evaluate_pair(query: features_lib.Combined, gallery_index: search.ShardedGallery,
                  gallery_valid: np.ndarray, query_keys: np.ndarray, gallery_keys: np.ndarray,
                  exclude: np.ndarray, ks: Sequence[int]
                  ) -> tuple[dict[str, Any], dict, dict[str, np.ndarray]]:
  """(metrics with 95% intervals, P@K curve, per-query values) for one query set
  against one (already placed) gallery.

  The per-query values are those of the scored queries (with a positive):
  'unit' (the query's row in its split) and 'm5_map@K', ... (fractions, float32).
  """
  # Positives by key alone (features aside): a query that has one but gets no score
  # is counted and logged (evaluate_sets), never dropped silently.
  has_positive = metrics_lib.count_positives(query_keys, gallery_keys, exclude >= 0) > 0
  scored = query.has_any & (query_keys >= 0)
  rows = np.flatnonzero(scored)
  exclude = exclude[rows]
  own_ranked = (exclude >= 0) & gallery_valid[np.maximum(exclude, 0)]
  exclude = np.where(own_ranked, exclude, -1)
  k = max(max(ks), max(CURVE_KS))
  _, top = gallery_index.search(query.features[rows], k, exclude=exclude)
  known_gallery_keys = np.where(gallery_valid, gallery_keys, -1)
  hits = metrics_lib.ranked_hits(top, query_keys[rows], known_gallery_keys)
  positives = metrics_lib.count_positives(query_keys[rows], known_gallery_keys, own_ranked)
  num_ranked = int(gallery_valid.sum()) - own_ranked.astype(np.int64)
  scored, per_query = metrics_lib.per_query_retrieval(hits, positives, num_ranked, ks)
  out = metrics_lib.with_intervals(metrics_lib.summarize_retrieval(scored, per_query),
                                   metrics_lib.bootstrap_means(per_query))
  units = {'unit': rows[scored].astype(np.int64),
           **{name: values.astype(np.float32) for name, values in per_query.items()}}
  curve_metrics = metrics_lib.retrieval_metrics(hits, positives, num_ranked, CURVE_KS)
  curve = {'k': list(CURVE_KS), 'm5_prec': [curve_metrics[f'm5_prec@{c}'] for c in CURVE_KS],
           'm5_map': [curve_metrics[f'm5_map@{c}'] for c in CURVE_KS]}
  out['queries_without_features'] = int((~query.has_any).sum())
  out['queries_without_label'] = int((query.has_any & (query_keys < 0)).sum())
  out['num_query_items'] = len(query_keys)  # = the four counts above, every query once
  unscored = has_positive.copy()
  unscored[rows[scored]] = False
  out['queries_with_positives'] = int(has_positive.sum())
  out['queries_with_positives_unscored'] = int(unscored.sum())
  out['queries_with_positives_without_features'] = int((unscored & ~query.has_any).sum())
  return out, curve, units


def evaluate_sets(query_split: features_lib.SplitFeatures,
                  gallery_split: features_lib.SplitFeatures, key: str,
                  pairs: Iterable[tuple[tuple[str, ...], tuple[str, ...]]], *,
                  exclude: np.ndarray | None = None,
                  ks: Sequence[int] = metrics_lib.DEFAULT_KS, normalize: str = 'center',
                  mesh=None, gallery_block: int = search.GALLERY_BLOCK) -> dict[str, Any]:
  """Results for every (query subset, gallery subset): {'sets', 'curves', 'missing',
  'units' (per-query values, see `evaluate_pair`), 'bootstrap'}."""
  if key not in ('label', 'instance'):
    raise ValueError(f"retrieval key must be 'label' or 'instance', got {key!r}")
  query_keys, gallery_keys = getattr(query_split, key), getattr(gallery_split, key)
  if exclude is None:
    exclude = np.full((query_split.num_items,), -1, np.int32)
  galleries: dict[tuple[str, ...], Any] = {}  # a gallery subset is placed on devices once
  means = gallery_split.modality_means()  # 'center': queries are centred like the gallery
  results: dict[str, Any] = {'sets': {}, 'curves': {}, 'missing': {}, 'units': {},
                             'bootstrap': metrics_lib.bootstrap_settings('query')}
  for query_subset, gallery_subset in pairs:
    label = pair_label(query_subset, gallery_subset)
    if gallery_subset not in galleries:
      combined = gallery_split.combine(gallery_subset, normalize, means)
      galleries[gallery_subset] = (combined, search.ShardedGallery(
          combined.features, valid=combined.has_any, mesh=mesh, gallery_block=gallery_block))
    gallery, index = galleries[gallery_subset]
    query = query_split.combine(query_subset, normalize, means)
    metrics, curve, units = evaluate_pair(query, index, gallery.has_any, query_keys,
                                          gallery_keys, exclude, ks)
    metrics['gallery_without_features'] = int((~gallery.has_any).sum())
    if metrics['queries_with_positives_unscored']:
      logging.warning(
          'WARNING %s: %d of %d queries with a positive (same %s) in the gallery are NOT '
          'scored: %d have no %s feature, the others no positive with a %s feature',
          label, metrics['queries_with_positives_unscored'], metrics['queries_with_positives'],
          key, metrics['queries_with_positives_without_features'],
          features_lib.subset_label(query_subset), features_lib.subset_label(gallery_subset))
    results['sets'][label] = metrics
    results['curves'][label] = curve
    results['units'][label] = units
    results['missing'][label] = {'query': query.missing, 'gallery': gallery.missing}
    logging.info('%s: %d queries, mAP@1 %.2f, mAP@10 %.2f %s, P@10 %.2f (M5Product metric)',
                 label, metrics['num_queries'], metrics.get('m5_map@1', float('nan')),
                 metrics.get('m5_map@10', float('nan')),
                 metrics['ci95'].get('m5_map@10', '-'), metrics.get('m5_prec@10', float('nan')))
  return results
