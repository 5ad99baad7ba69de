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
import os
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from m5_jax import checkpointing
from m5_jax.evaluate import features as features_lib
from m5_jax.evaluate import metrics as metrics_lib
from m5_jax.evaluate import model_features
from m5_jax.evaluate import plots
from m5_jax.evaluate import results_io
from m5_jax.evaluate import runner
from m5_jax.evaluate import search
from m5_jax.evaluate import tables
from m5_jax.evaluate.features import default_subsets

CURVE_KS = tuple(range(1, 101))


def parse_pairs(text: str, available: Sequence[str]
                ) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
  """'T,IT,T:I' -> [(query subset, gallery subset), ...]; 'Q' alone means 'Q:Q'
  ('' = features.default_subsets)."""
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
                  fusion: str = 'sum',
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
      combined = gallery_split.combine(gallery_subset, normalize, means, fusion)
      galleries[gallery_subset] = (combined, search.ShardedGallery(
          combined.features, valid=combined.has_any, mesh=mesh, gallery_block=gallery_block))
    gallery, index = galleries[gallery_subset]
    query = query_split.combine(query_subset, normalize, means, fusion)
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


# ----------------------------------------------------------------------------- the binaries


def binary_main(task: str, query_split: str, gallery_split: str, key: str
                ) -> Callable[[Sequence[str]], None]:
  """The `main(argv)` of a retrieval binary (runner.main over `run_task`)."""
  def main(argv: Sequence[str]) -> None:
    runner.main(task, argv, lambda options, config, _: run_task(
        task, query_split, gallery_split, key, options, config))
  return main


def run_task(task: str, query_split: str, gallery_split: str, key: str,
             options: runner.Options, config, embedder=None) -> list[int]:
  """Evaluates the selected checkpoints of one retrieval binary (coarse_retrieval,
  fine_retrieval): `query_split` against `gallery_split`, positives sharing `key`."""
  embedder = embedder or model_features.Embedder(
      options.workdir, config, batch_size=options.batch_size or None, feature=options.feature)
  pairs = parse_pairs(options.subsets, tuple(config.modalities))
  exclude = exclusions(model_features.read_item_ids(config, query_split),
                       model_features.read_item_ids(config, gallery_split))

  def evaluate_step(step: int) -> None:
    embedder.restore(step)
    store = embedder.store()
    results = evaluate_sets(store.get(query_split), store.get(gallery_split), key, pairs,
                            exclude=exclude, normalize=options.normalize,
                            fusion=options.fusion, mesh=None)
    results['queries_in_gallery'] = int((exclude >= 0).sum())
    results['options'] = {'feature': options.feature, 'normalize': options.normalize,
                          'fusion': options.fusion,
                          'query_split': query_split, 'gallery_split': gallery_split}
    results = results_io.with_saved_rows(options.workdir, task, step, results, options.variant)
    results_io.write_step(options.workdir, task, step, results, tables.retrieval_tables(results),
                          options.variant)
    out_dir = runner.output_dir(options.workdir, task, options.variant)
    plots.plot_precision_curves(results['curves'], os.path.join(out_dir, 'precision_at_k.png'),
                                title=f'{task}, step {step} (M5Product P@K)')

  final_step = config.get('total_steps', None)
  return runner.run(task, options, lambda: checkpointing.list_steps(options.workdir),
                    evaluate_step, final_step=final_step if isinstance(final_step, int) else None)
