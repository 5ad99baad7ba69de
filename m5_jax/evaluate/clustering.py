"""Clustering: k-means with k = the number of classes on the features; NMI, purity, ARI.

    python -m m5_jax.evaluate.clustering --workdir DIR [--step N | --all | --watch] \
        [--subsets T,I,IT,all] [--split cls_test]

For each modality set, the items of the split that have at least one of the
set's modalities and a known label are clustered on device (m5_jax/evaluate/
kmeans.py: k-means++ seeding, deterministic in --seed) into as many clusters as
there are distinct labels among them. NMI and purity carry 95% bootstrap
intervals over the clustered items (the clustering fixed; metrics.py). Outputs
in <workdir>/eval/clustering/: step_<N>.json, step_<N>.npz (per item: 'unit',
its row in the split, 'label' and 'cluster'), results.md, TensorBoard scalars
and projection.png (a 2-D PCA of the last set's features, coloured by category).
"""
from __future__ import annotations

import logging
import os
import sys

import numpy as np

from m5_jax import checkpointing
from m5_jax.evaluate import features as features_lib
from m5_jax.evaluate import kmeans as kmeans_lib
from m5_jax.evaluate import metrics as metrics_lib
from m5_jax.evaluate import model_features
from m5_jax.evaluate import plots
from m5_jax.evaluate import results_io
from m5_jax.evaluate import runner
from m5_jax.evaluate import tables

TASK = 'clustering'


def cluster(combined: features_lib.Combined, labels: np.ndarray, *, seed: int = 0,
            max_iterations: int = 100) -> tuple[dict, dict[str, np.ndarray]]:
  """k-means (k = #distinct known labels) on the items with features.

  Returns (metrics with 95% intervals, per-item units: 'unit', 'label', 'cluster').
  """
  rows = combined.has_any & (labels >= 0)
  k = len(np.unique(labels[rows]))
  if k == 0:
    raise ValueError('clustering: no item with features and a known label')
  result = kmeans_lib.kmeans(combined.features[rows], k, seed=seed,
                             max_iterations=max_iterations)
  assignments = np.asarray(result.assignments)
  out = metrics_lib.with_intervals(
      metrics_lib.clustering_metrics(labels[rows], assignments),
      metrics_lib.bootstrap_clustering(labels[rows], assignments))
  out.update(k=k, inertia=result.inertia, iterations=result.iterations,
             converged=result.converged, without_features=int((~combined.has_any).sum()))
  units = {'unit': np.flatnonzero(rows).astype(np.int64),
           'label': np.asarray(labels[rows], np.int64), 'cluster': assignments.astype(np.int32)}
  return out, units


def run(options: runner.Options, config, extra) -> list[int]:
  embedder = model_features.Embedder(options.workdir, config,
                                     batch_size=options.batch_size or None,
                                     feature=options.feature)
  subsets = features_lib.parse_subsets(options.subsets, tuple(config.modalities))
  split = extra['split']

  def evaluate_step(step: int) -> None:
    embedder.restore(step)
    items = embedder.store().get(split)
    results = {'sets': {}, 'split': split, 'units': {},
               'bootstrap': metrics_lib.bootstrap_settings(f'{split} item')}
    for subset in subsets:
      label = features_lib.subset_label(subset)
      combined = items.combine(subset, options.normalize, fusion=options.fusion)
      metrics, results['units'][label] = cluster(combined, items.label, seed=options.seed)
      results['sets'][label] = metrics
      logging.info('%s: NMI %.2f %s purity %.2f ARI %.2f', label, metrics['nmi'],
                   metrics['ci95']['nmi'], metrics['purity'], metrics['ari'])
    results = results_io.with_saved_rows(options.workdir, TASK, step, results, options.variant)
    results_io.write_step(options.workdir, TASK, step, results, tables.markdown_table(
        ['Modalities', 'NMI', 'Purity', 'ARI', 'k', 'items', 'eval set'],
        [[label, tables.metric_ci(m, 'nmi'), tables.metric_ci(m, 'purity'), m['ari'], m['k'],
          m['num_examples'], tables.eval_set_flag(m)]
         for label, m in results['sets'].items()]), options.variant)
    rows = combined.has_any
    plots.plot_projection(combined.features[rows], items.label[rows],
                           os.path.join(runner.output_dir(options.workdir, TASK, options.variant),
                                        'projection.png'),
                           seed=options.seed, title=f'{label} features, step {step} (PCA)')

  final_step = config.get('total_steps', None)
  return runner.run(TASK, options, lambda: checkpointing.list_steps(options.workdir),
                    evaluate_step, final_step=final_step if isinstance(final_step, int) else None)


def main(argv):
  runner.main(TASK, argv, run, extra_flags={'split': 'cls_test'})


if __name__ == '__main__':
  main(sys.argv[1:])
