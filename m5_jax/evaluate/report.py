"""Summaries across tasks and runs: the paper's table and the method comparison.

The eval binaries' outputs per task and step are written by results_io.py (JSON,
.npz, results.md, TensorBoard), tables.py (Markdown) and plots.py (PNG); this
module reads them back.

Summaries (`python -m m5_jax.evaluate.report`):
  --workdir DIR [--step N]    the paper's modality-set table: rows = modality sets,
                              columns Acc, mAP@1/5/10, P@1/5/10 (M5Product metric);
  --compare name=DIR,...      the method comparison: Acc, mAP@1, NMI, Purity, then
                              each run against the first, paired on the same eval
                              items: difference [95% interval] win / tie / loss.
  --feature F --normalize N   the variant the eval binaries wrote with those flags;
                              without them, the variant found in the workdir(s) (the
                              demo's: feature=encoder_pooled), named in the first line.

Tables give each number with its 95% interval, `61.7 [55.2, 68.0]`, and an
'eval set' column that says 'too small' where an interval of mAP@10, Recall@10,
accuracy or NMI reaches more than 5 points either side of the estimate
(metrics.SEPARATION_POINTS): such a set cannot separate a 5-point difference.
"""
from __future__ import annotations

import json
import sys
from typing import Any, Mapping, Sequence

import numpy as np

from m5_jax.evaluate import metrics as metrics_lib
from m5_jax.evaluate import runner
from m5_jax.evaluate.results_io import (choose_variant, find_step, find_variants, load_step,
                                        load_units)
from m5_jax.evaluate.tables import INTERVAL_NOTE, PAPER_KS, eval_set_flag, markdown_table, metric_ci


def paper_table(classification: Mapping[str, Any] | None, retrieval: Mapping[str, Any] | None,
                ks: Sequence[int] = PAPER_KS) -> str:
  """Rows = modality sets; columns Acc, mAP@1/5/10, P@1/5/10 (the paper's layout)."""
  cls_sets = (classification or {}).get('sets', {})
  ret_sets = (retrieval or {}).get('sets', {})
  labels = list(dict.fromkeys([*cls_sets, *ret_sets]))
  rows = []
  for label in labels:
    c, r = cls_sets.get(label), ret_sets.get(label)
    rows.append([label, metric_ci(c, 'accuracy')] + [metric_ci(r, f'm5_map@{k}') for k in ks]
                + [metric_ci(r, f'm5_prec@{k}') for k in ks]
                + [eval_set_flag(c, r, prefixes=('cls', 'retrieval'))])
  return markdown_table(['Modalities', 'Acc'] + [f'mAP@{k}' for k in ks]
                        + [f'P@{k}' for k in ks] + ['eval set'], rows)


def resolve_set(sets: Sequence[str], modality_set: str) -> str | None:
  """The row label for `modality_set` ('all': the row with the most modalities), or None."""
  if modality_set in sets:
    return modality_set
  if modality_set == 'all' and sets:
    return max(sets, key=lambda label: label.count('+'))
  return None


def _pick_set(name: str, task: str, results: Mapping[str, Any] | None,
              modality_set: str | None) -> str | None:
  """The row label of a run's task results that method tables use (see method_table)."""
  sets = (results or {}).get('sets', {})
  if modality_set is None and len(sets) > 1:
    raise ValueError(f'{name}: {task} has rows {sorted(sets)}; choose one with --modality_set')
  label = resolve_set(list(sets), modality_set) if modality_set else next(iter(sets), None)
  return label if label in sets else None


METHOD_TASKS = ('classification', 'coarse_retrieval', 'clustering')


def method_table(runs: Mapping[str, str], modality_set: str | None = None,
                 variant: str = '') -> str:
  """Method comparison: Acc, mAP@1, NMI, Purity; one row per (name -> workdir).

  Each number is the `modality_set` row of its task (see resolve_set; '-' where
  that run has no such row); without `modality_set`, a task must have exactly one row.
  """
  rows = []
  for name, workdir in runs.items():
    picked = []
    for task in METHOD_TASKS:
      results = load_step(workdir, task, variant=variant)
      label = _pick_set(name, task, results, modality_set)
      picked.append(results['sets'][label] if label else None)
    cls, ret, clu = picked
    rows.append([name, metric_ci(cls, 'accuracy'), metric_ci(ret, 'm5_map@1'),
                 metric_ci(clu, 'nmi'), metric_ci(clu, 'purity'),
                 eval_set_flag(cls, ret, clu, prefixes=('cls', 'coarse', 'clustering'))])
  return markdown_table(['Method', 'Acc', 'mAP@1', 'NMI', 'Purity', 'eval set'], rows)


# The per-unit values (step_<N>.npz) a metric is the mean of; clustering metrics
# are recomputed from 'label' and 'cluster' instead.
UNIT_VALUES = {'accuracy': 'correct'}
PAIRED_COLUMNS = (('Acc', 'classification', 'accuracy'), ('mAP@1', 'coarse_retrieval', 'm5_map@1'),
                  ('mAP@10', 'coarse_retrieval', 'm5_map@10'), ('NMI', 'clustering', 'nmi'),
                  ('Purity', 'clustering', 'purity'))


def compare_units(task: str, metric: str, a: Sequence[Mapping[str, np.ndarray]],
                  b: Sequence[Mapping[str, np.ndarray]]) -> dict[str, Any]:
  """Run a minus run b on one metric, paired (metrics.paired_comparison or its
  clustering form): one units dict ({name: per-unit array} of a modality set) per
  seed for each, seeds pooled. Raises ValueError when they scored other units."""
  everything = [*a, *b]
  for units in everything[1:]:
    if not np.array_equal(units['unit'], everything[0]['unit']):
      raise ValueError(f'{task}: the runs were not scored on the same items')
  if task == 'clustering':
    return metrics_lib.paired_clustering_comparison(
        everything[0]['label'], [u['cluster'] for u in a], [u['cluster'] for u in b],
        metric=metric)
  name = UNIT_VALUES.get(metric, metric)
  return metrics_lib.paired_comparison(np.stack([u[name] for u in a]),
                                       np.stack([u[name] for u in b]))


def paired_table(runs: Mapping[str, str], modality_set: str | None = None,
                 variant: str = '') -> str:
  """Every run after the first against the first, on the same eval units: the
  difference [paired 95% interval] and win / tie / loss per metric ('-' where a
  run has no per-unit values, e.g. results written before they were saved)."""
  names = list(runs)
  units = {}
  for name in names:
    for task in METHOD_TASKS:
      path = find_step(runs[name], task, variant=variant)
      results = None
      if path:
        with open(path) as f:
          results = json.load(f)
      label = _pick_set(name, task, results, modality_set)
      units[name, task] = load_units(path).get(label) if label else None
  rows = []
  for name in names[1:]:
    row = [f'{name} - {names[0]}']
    for _, task, metric in PAIRED_COLUMNS:
      a, b = units[name, task], units[names[0], task]
      if a is None or b is None:
        row.append('-')
        continue
      result = compare_units(task, metric, [a], [b])
      low, high = result['difference_ci95']
      row.append(f'{result["difference"]:+.1f} [{low:+.1f}, {high:+.1f}] {result["verdict"]}')
    rows.append(row)
  return markdown_table(['Paired difference'] + [c for c, _, _ in PAIRED_COLUMNS], rows)


def variant_note(variant: str, available: Sequence[str]) -> str:
  """The line a report starts with when it chose the variant itself."""
  others = [v or 'default' for v in available if v != variant]
  return (f'Variant shown: {variant or "default"} (results in '
          f'eval/<task>/{variant + "/" if variant else ""})'
          + (f'; also found: {", ".join(others)} (choose with --feature / --normalize)'
             if others else '') + '.')



# ----------------------------------------------------------------------------- CLI


def main(argv: Sequence[str]) -> None:
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(prog='m5_jax.evaluate.report', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', help='one run: the modality-set table')
  parser.add_argument('--step', type=int, default=None)
  parser.add_argument('--compare', help='name=WORKDIR,name=WORKDIR,...: the method table')
  parser.add_argument('--modality_set', default=None,
                      help="row used by --compare, e.g. I+T ('all': the most modalities)")
  parser.add_argument('--feature', default=None,
                      help="the eval binaries' --feature (default: the variant found, see below)")
  parser.add_argument('--normalize', default=None,
                      help="the eval binaries' --normalize (default: the variant found)")
  parser.add_argument('--out', default=None, help='Markdown file to write (default: print)')
  args = parser.parse_args(argv)
  runs = dict(item.split('=', 1) for item in args.compare.split(',')) if args.compare else {}
  parts = []
  if args.feature is None and args.normalize is None:
    # No variant asked for: the one the eval binaries wrote (the demo's is
    # feature=encoder_pooled), said in the output's first line.
    workdirs = ([args.workdir] if args.workdir else []) + list(runs.values())
    tasks = METHOD_TASKS if runs else ('classification', 'coarse_retrieval')
    if not workdirs:
      parser.error('give --workdir and/or --compare')
    try:
      variant, available = choose_variant(workdirs, tasks)
    except ValueError as e:
      parser.error(str(e))
    parts.append(variant_note(variant, available))
  else:
    defaults = runner.Options()
    variant = runner.variant_of(runner.Options(feature=args.feature or defaults.feature,
                                               normalize=args.normalize or defaults.normalize))
  if args.workdir:
    cls = load_step(args.workdir, 'classification', args.step, variant)
    ret = load_step(args.workdir, 'coarse_retrieval', args.step, variant)
    if cls is None and ret is None:
      found = sorted(find_variants(args.workdir, ('classification', 'coarse_retrieval')))
      parser.error('no classification or coarse_retrieval results in '
                   f'{runner.output_dir(args.workdir, "<task>", variant)}'
                   + (f' at step {args.step}' if args.step is not None else '')
                   + f'; variants found: {", ".join(v or "default" for v in found) or "none"}')
    parts.append(paper_table(cls, ret))
  if runs:
    try:
      parts.append(method_table(runs, args.modality_set, variant))
      if len(runs) > 1:
        parts.append(f'Paired against {next(iter(runs))} (the same eval items resampled for '
                     'both; win / loss: the interval is above / below 0, else tie):\n\n'
                     + paired_table(runs, args.modality_set, variant))
    except ValueError as e:
      parser.error(str(e))
  if not parts:
    parser.error('give --workdir and/or --compare')
  text = '\n\n'.join([*parts, INTERVAL_NOTE]) + '\n'
  if args.out:
    with open(args.out, 'w') as f:
      f.write(text)
  else:
    sys.stdout.write(text)


if __name__ == '__main__':
  main(sys.argv[1:])
