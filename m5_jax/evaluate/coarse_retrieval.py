"""Coarse-grained retrieval: positives are gallery items of the query's category.

    python -m m5_jax.evaluate.coarse_retrieval --workdir DIR [--step N | --all | --watch] \
        [--subsets T,I,IT,T:I,all] [--feature pooled|encoder_pooled]

Splits coarse_query against coarse_gallery. Writes <workdir>/eval/coarse_retrieval/
(step_<N>.json, results.md, TensorBoard scalars, precision_at_k.png); see runner.py
for the modes and report.py for the outputs.
"""
from __future__ import annotations

import os
import sys

from m5_jax import checkpointing
from m5_jax.evaluate import model_features
from m5_jax.evaluate import report
from m5_jax.evaluate import retrieval
from m5_jax.evaluate import runner

TASK = 'coarse_retrieval'


def run_retrieval(task: str, query_split: str, gallery_split: str, key: str,
                  options: runner.Options, config, embedder=None) -> list[int]:
  """Evaluates the selected checkpoints of one retrieval task (shared with fine_retrieval)."""
  embedder = embedder or model_features.Embedder(
      options.workdir, config, batch_size=options.batch_size or None, feature=options.feature)
  pairs = retrieval.parse_pairs(options.subsets, tuple(config.modalities))
  exclude = retrieval.exclusions(model_features.read_item_ids(config, query_split),
                                 model_features.read_item_ids(config, gallery_split))

  def evaluate_step(step: int) -> None:
    embedder.restore(step)
    store = embedder.store()
    results = retrieval.evaluate_sets(store.get(query_split), store.get(gallery_split), key,
                                      pairs, exclude=exclude, normalize=options.normalize,
                                      mesh=None)
    results['queries_in_gallery'] = int((exclude >= 0).sum())
    results['options'] = {'feature': options.feature, 'normalize': options.normalize,
                          'query_split': query_split, 'gallery_split': gallery_split}
    results = report.with_saved_rows(options.workdir, task, step, results, options.variant)
    report.write_step(options.workdir, task, step, results, report.retrieval_tables(results),
                      options.variant)
    out_dir = runner.output_dir(options.workdir, task, options.variant)
    report.plot_precision_curves(results['curves'], os.path.join(out_dir, 'precision_at_k.png'),
                                 title=f'{task}, step {step} (M5Product P@K)')

  final_step = config.get('total_steps', None)
  return runner.run(task, options, lambda: checkpointing.list_steps(options.workdir),
                    evaluate_step, final_step=final_step if isinstance(final_step, int) else None)


def main(argv):
  runner.main(TASK, argv, lambda options, config, _: run_retrieval(
      TASK, 'coarse_query', 'coarse_gallery', 'label', options, config))


if __name__ == '__main__':
  main(sys.argv[1:])
