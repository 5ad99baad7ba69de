"""Markdown tables of evaluation results: numbers with their 95% intervals, the
'eval set' flag, and the retrieval tables of one step.

Tables give each number with its 95% interval, `61.7 [55.2, 68.0]`, and an
'eval set' column that says 'too small' where an interval of mAP@10, Recall@10,
accuracy or NMI reaches more than 5 points either side of the estimate
(metrics.SEPARATION_POINTS): such a set cannot separate a 5-point difference.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from m5_jax.evaluate import metrics as metrics_lib

PAPER_KS = (1, 5, 10)


def fmt(value: Any) -> str:
  """A table cell: '-' for a missing or NaN value, floats to 2 decimals."""
  return '-' if value is None or (isinstance(value, float) and math.isnan(value)) else (
      f'{value:.2f}' if isinstance(value, float) else str(value))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(fmt(v) for v in row) + ' |' for row in rows]
  return '\n'.join(lines)


INTERVAL_NOTE = (f'[low, high]: {metrics_lib.CI_LEVEL:.0f}% percentile-bootstrap interval over '
                 f'the evaluation units ({metrics_lib.BOOTSTRAP_RESAMPLES} resamples of the '
                 'queries, test items or clustered items). Eval set "TOO SMALL": '
                 f'{metrics_lib.SMALL_SET_RULE}.')
PRETTY = {'m5_map@10': 'mAP@10', 'recall@10': 'Recall@10', 'accuracy': 'Acc', 'nmi': 'NMI'}


def with_ci(value: Any, interval: Sequence[Any] | None = None) -> str:
  """'61.7 [55.2, 68.0]'; the plain number where there is no interval."""
  if (value is None or interval is None or any(v is None for v in interval)
      or any(math.isnan(float(v)) for v in (value, *interval))):
    return fmt(value)
  return f'{value:.1f} [{interval[0]:.1f}, {interval[1]:.1f}]'


def metric_ci(metrics: Mapping[str, Any] | None, name: str) -> str:
  """One metric of a modality set's results, with its interval when saved."""
  metrics = metrics or {}
  return with_ci(metrics.get(name), metrics.get('ci95', {}).get(name))


def eval_set_flag(*sets: Mapping[str, Any] | None, prefixes: Sequence[str] = ()) -> str:
  """'TOO SMALL (mAP@10, ...)' when a flagged interval's half-width exceeds 5 points, 'ok'
  when the intervals are narrower, '-' without intervals (an older results file)."""
  flagged, measured = [], False
  for i, metrics in enumerate(sets):
    if not metrics or 'too_small_to_separate_5_points' not in metrics:
      continue
    measured = True
    prefix = prefixes[i] + ' ' if i < len(prefixes) and prefixes[i] else ''
    # From the intervals when saved (the current rule), else the flag as saved.
    names = (metrics_lib.too_small(metrics['ci95']) if metrics.get('ci95')
             else metrics['too_small_to_separate_5_points'])
    flagged += [prefix + PRETTY.get(name, name) for name in names]
  if flagged:
    return f'TOO SMALL ({", ".join(flagged)})'
  return 'ok' if measured else '-'


def retrieval_tables(results: Mapping[str, Any], ks: Sequence[int] = PAPER_KS) -> str:
  """M5Product mAP@K/P@K per modality set, then the standard metrics beside them."""
  sets = results['sets']
  m5 = markdown_table(
      ['Modalities'] + [f'mAP@{k}' for k in ks] + [f'P@{k}' for k in ks]
      + ['queries', 'eval set'],
      [[label] + [metric_ci(m, f'm5_map@{k}') for k in ks]
       + [metric_ci(m, f'm5_prec@{k}') for k in ks]
       + [m.get('num_queries'), eval_set_flag(m)] for label, m in sets.items()])
  standard = markdown_table(
      ['Modalities'] + [f'std mAP@{k}' for k in ks] + [f'Recall@{k}' for k in ks]
      + [f'HitRate@{k}' for k in ks],
      [[label] + [metric_ci(m, f'std_map@{k}') for k in ks]
       + [metric_ci(m, f'recall@{k}') for k in ks]
       + [metric_ci(m, f'hit_rate@{k}') for k in ks] for label, m in sets.items()])
  return (f'M5Product metric (k = min(K, #positives, #ranked)):\n\n{m5}\n\n'
          f'Standard metrics:\n\n{standard}\n')
